"""Alignment study: do the token scores find the forget-specific (span) tokens, and does the forgetting land
there? ATWU's objective pairs and presets beside the token-weighting baselines, uniform methods and the `gt-mask`
oracle, on several worlds per model, job seeds 0..N-1 (mean ± std).

Per job: score AUROC (the final token scores against the span tokens), forgetting AUROC and span share (each
answer token's NLL increase, after vs before, against the spans), forget and retain exact-match, and the score
AUROC at every recorded step (the trajectory figure). Every variant says which world its settings were tuned on;
tuning worlds are marked and never count as held-out. Per world and method, facts forgotten against retain kept.
Writes the alignment section of `<out>/results.md`, `<out>/figures/alignment_trajectory.png` and
`<out>/figures/leak_vs_retain.png`; re-running regenerates them (finished jobs come from the cache).

    python bench/alignment.py                       # tiny model: demo + two generated worlds, 3 seeds; writes docs/
    python bench/alignment.py --quick               # CI smoke (< 3 min): demo world, 4 variants, 1 seed, writes nothing
    python bench/alignment.py --models tiny,smollm2 # adds SmolLM2 (hours on a CPU: teaching and 4-min jobs)
    python bench/alignment.py --tuning --models smollm2 --seeds 1 --workers 1   # the SmolLM2 sweep, demo-smollm2 only
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    CACHE,
    REPO,
    WORLD_NAMES,
    JobResult,
    ResultCache,
    RunOptions,
    Task,
    World,
    WorldOptions,
    cache_note,
    command_line,
    environment_line,
    given,
    leak_by_label_table,
    load_world,
    lookup,
    markdown_table,
    mean_or_none,
    mean_std,
    quiet,
    run_tasks,
    save_figure,
    write_results_section,
)

from atwu_core.config import JobConfig, make_config, preset_params
from atwu_core.methods import MethodParams, method_spec
from atwu_core.weighting.params import ScorerParams

# ----------------------------------------------------------------------------------------- variants and worlds


@dataclass(frozen=True)
class Variant:
    """A row of the study: a method with the method settings of a preset (None: the world's own preset), plus
    explicit overrides. Job settings (lr, batch sizes, LoRA) are always the world's preset's; so are the steps,
    unless the row is about the job's length (`steps`; `--steps` still overrides every row)."""

    name: str
    method: str
    tuned_on: str  # where its method settings were chosen
    params_from: str | None = None
    params: tuple[tuple[str, object], ...] = ()
    steps: int | None = None  # None: the world's preset's

    @property
    def atwu(self) -> bool:
        """An ATWU row (inside GA or NPO): its method has a scorer, so the targets and the verdicts judge it."""
        return issubclass(method_spec(self.method).params, ScorerParams)

    def method_params(self, world_preset: str) -> MethodParams:
        """The row's method parameters as the engine resolves them (on a world with `world_preset`)."""
        params = preset_params(self.method, self.params_from, None).to_json() if self.params_from else {}
        return preset_params(self.method, world_preset, {**params, **dict(self.params)})

    def config(self, world_preset: str, task: Task, eval_cap: int | None) -> JobConfig:
        params = self.method_params(world_preset).to_json()
        return make_config(
            self.method, world_preset, params, steps=task.steps, seed=task.seed, **given(eval_max_samples=eval_cap)
        )


PAPER = "none: the paper's values"
# the headline pair at the `demo` preset's faster scorer schedule: the `smollm2` preset's ATWU (atwu-headline-fast)
FAST = (("pair", "headline"), ("reward_norm", False), ("beta", 5.0))
VARIANTS: tuple[Variant, ...] = (
    Variant("atwu-paper", "atwu", PAPER, "paper"),
    Variant("atwu-matched", "atwu", PAPER, "paper", (("pair", "matched"),)),
    Variant("atwu-demo", "atwu", "`seed7` (the `demo` preset)", "demo"),
    # the matched pair + reward_norm at the demo schedule with the paper's beta 5 (the `smollm2` preset's ATWU until
    # the SmolLM2 sweep below preferred the next row)
    Variant("atwu-matched-norm", "atwu", "`seed7` (n, b, γ); β the paper's", "demo", (("beta", 5.0),)),
    # ours: the headline pair at the demo preset's faster scorer schedule (n 2, b 0.4, γ 2): the `smollm2` preset's ATWU
    Variant("atwu-headline-fast", "atwu", "n, b, γ: `seed7`; the pair: `demo-smollm2` (the `smollm2` preset)", "demo",
            FAST),
    Variant("gt-mask", "gt-mask", "oracle: the spans themselves"),
    Variant("wga", "wga", "method defaults"),
    Variant("satimp", "satimp", "method defaults"),
    Variant("tokenunlearn", "tokenunlearn", "method defaults"),
    Variant("graddiff", "graddiff", "method defaults"),
    Variant("npo", "npo", "method defaults"),
    Variant("simnpo", "simnpo", "method defaults"),
)  # fmt: skip
# The sweeps that chose each preset's ATWU settings, each run on its model's tuning world only (`--tuning`), one
# knob changed per row. Tiny: from the matched pair + reward_norm at the demo schedule and beta 5; beta 2 won and is
# `demo`. SmolLM2: which of the ATWU rows (the headline pair at the demo schedule won and is `smollm2`), and whether
# centring the scorer's input (which removes the hidden states' shared mean direction, along which the first scorer
# step points) helps either pair.
SWEPT = "`seed7` (this sweep)"
SWEPT_SMOLLM2 = "`demo-smollm2` (this sweep)"
UNTUNED = "the length not run on `demo-smollm2`"
TUNING: tuple[Variant, ...] = (
    Variant("tune-rms", "atwu", SWEPT, "demo", (("beta", 5.0), ("hidden_norm", "rms"))),
    Variant("tune-centre", "atwu", SWEPT, "demo", (("beta", 5.0), ("hidden_centre", True))),
    Variant("tune-mlp", "atwu", SWEPT, "demo", (("beta", 5.0), ("scorer_layers", 2))),
    Variant("tune-joint", "atwu", SWEPT, "demo", (("beta", 5.0), ("update", "joint"))),
    Variant("tune-layer-2", "atwu", SWEPT, "demo", (("beta", 5.0), ("hidden_layer", -2))),
    Variant("tune-headline-rms", "atwu", SWEPT, "demo",
            (("beta", 5.0), ("pair", "headline"), ("reward_norm", False), ("hidden_norm", "rms"))),
    Variant("tune-beta2", "atwu", SWEPT, "demo", (("beta", 2.0),)),
    Variant("tune-beta1", "atwu", SWEPT, "demo", (("beta", 1.0),)),
    Variant("tune-beta1-centre", "atwu", SWEPT, "demo", (("beta", 1.0), ("hidden_centre", True))),
    Variant("tune-beta2-centre", "atwu", SWEPT, "demo", (("beta", 2.0), ("hidden_centre", True))),
    Variant("tune-beta2-rms", "atwu", SWEPT, "demo", (("beta", 2.0), ("hidden_norm", "rms"))),
)  # fmt: skip
# The real-text study's hypotheses (issue 25), from the two targeted SmolLM2 rows: the paper's scorer was still
# climbing at step 40 and `smollm2`'s peaked mid-run (longer jobs); its first scorer step points away from the spans
# because a memorised answer's NLL is ~0 everywhere (a warm start lets the NLL move first; the Δ NLL reward reads
# only what moved); the last layer's states share a large mean direction (a middle layer, below the LoRA blocks, so
# the scorer's input does not drift as the model unlearns). The EMA of the scores is a column of every row.
TUNING_SMOLLM2: tuple[Variant, ...] = (
    Variant("tune-smollm2-paper-centre", "atwu", SWEPT_SMOLLM2, "paper", (("hidden_centre", True),)),
    Variant("tune-smollm2-centre", "atwu", SWEPT_SMOLLM2, "demo", (("beta", 5.0), ("hidden_centre", True))),
    # the length rows were never run on the tuning world: their settings are their 40-step rows', the length untuned
    Variant("tune-smollm2-paper-80", "atwu", f"{PAPER}; {UNTUNED}", "paper", steps=80),
    Variant("tune-smollm2-paper-160", "atwu", f"{PAPER}; {UNTUNED}", "paper", steps=160),
    Variant("tune-smollm2-fast-80", "atwu", f"`smollm2` preset's; {UNTUNED}", "demo", FAST, steps=80),
    Variant("tune-smollm2-fast-160", "atwu", f"`smollm2` preset's; {UNTUNED}", "demo", FAST, steps=160),
    Variant("tune-smollm2-start5", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("scorer_start", 5))),
    Variant("tune-smollm2-start10", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("scorer_start", 10))),
    Variant("tune-smollm2-delta", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("reward", "delta_nll"))),
    Variant("tune-smollm2-layer15", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("hidden_layer", 15))),
    # ours, from the trajectories: `smollm2`'s scores peak at step ~25 and fall as forgetting spreads off the spans
    # (forgetting AUROC 0.46 at the end on `smollm2-seed11`), while the paper's, at γ 1, is less spilled (0.56) and
    # still climbing; γ 1 halves the forget push, so the spill comes later, at the fast scorer schedule
    Variant("tune-smollm2-gamma1", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("gamma", 1.0))),
    # the two knobs that moved the seed-0 sweep (layer 15: 0.94, warm start 10: 0.90, from 0.79), together
    Variant("tune-smollm2-layer15-start10", "atwu", SWEPT_SMOLLM2, "demo",
            (*FAST, ("hidden_layer", 15), ("scorer_start", 10))),
    # ours, from TOFU's held-out failure (layer 15 ranks its spans at 0.32): the paper's scorer never sees retain
    # data, so tokens a forget answer shares in form with retain answers ("The author's ... was born in") can hold
    # the budget; the retain contrast (λ_R 1) shows it the retain batch's tokens as negatives
    Variant("tune-smollm2-contrast", "atwu", SWEPT_SMOLLM2, "demo", (*FAST, ("retain_contrast", 1.0))),
    Variant("tune-smollm2-layer15-contrast", "atwu", SWEPT_SMOLLM2, "demo",
            (*FAST, ("hidden_layer", 15), ("retain_contrast", 1.0))),
    # ours, from the held-out trajectories at job seed 1: at layer 15 the scores' level swings between all ~0 and
    # all ~1 (the budget term and momentum SGD acting on a probe over the raw residual stream, whose scale the last
    # layer's final norm no longer sets); RMS-normalising the input gives the probe the last layer's scale back
    Variant("tune-smollm2-layer15-rms", "atwu", SWEPT_SMOLLM2, "demo",
            (*FAST, ("hidden_layer", 15), ("hidden_norm", "rms"))),
    # ours, from a kept TOFU run folder of the RMS row (seed 0): the headline reward reads the NLL, which GA drives
    # past 10 nats on every answer token by step 16 and then higher off the spans than on them (22 against 17 nats
    # at step 40), so the reward points off the spans and the scores saturate (0.97 on and off them); the matched
    # pair's reward p^β nll (β 2, the `demo` preset's) peaks at the forgetting frontier (nll = 1/β) and vanishes on
    # tokens already forgotten
    Variant("tune-smollm2-layer15-rms-matched", "atwu", SWEPT_SMOLLM2, "demo",
            (("beta", 2.0), ("hidden_layer", 15), ("hidden_norm", "rms"))),
    # ours, from TOFU's ΔNLL: GA drives every answer token's NLL past 10 nats by step 16, where the headline reward
    # points off the spans; NPO's loss saturates per answer (NPO alone raises TOFU's NLL 4.8 nats on the spans, 3.6
    # off them), so the scorer inside NPO (`atwu-npo`, the authors' variant) reads an NLL that stays in the range
    # where the spans move first; its weights g T / Σ g are scale-free, so the budget alone sets the level
    Variant("tune-smollm2-npo-layer15-rms", "atwu-npo", SWEPT_SMOLLM2, "demo",
            (("hidden_layer", 15), ("hidden_norm", "rms"))),
    # ours, from the same run folder: its scores saturated (0.98 on the spans and 0.97 off them; selected share 1.0
    # against a budget of 0.4) because a reward of tens of nats outweighs the budget; standardised within each answer
    # the reward only ranks tokens and the budget sets the level; capped at log(vocabulary) = 10.8 nats (chance), the
    # tokens GA pushed past chance read alike, so its overshoot off the spans cannot steer the scorer
    Variant("tune-smollm2-layer15-rms-std", "atwu", SWEPT_SMOLLM2, "demo",
            (*FAST, ("hidden_layer", 15), ("hidden_norm", "rms"), ("reward_standardise", True))),
    Variant("tune-smollm2-layer15-rms-std-cap", "atwu", SWEPT_SMOLLM2, "demo",
            (*FAST, ("hidden_layer", 15), ("hidden_norm", "rms"), ("reward_standardise", True), ("reward_cap", 10.8))),
)  # fmt: skip
ATWU = tuple(v.name for v in VARIANTS if v.atwu)
SWEEPS = {  # model -> (its tuning world, the sweep's rows: baselines first)
    "tiny": ("seed7", ("atwu-matched-norm", *(v.name for v in TUNING))),
    "smollm2": ("demo-smollm2", (*ATWU, *(v.name for v in TUNING_SMOLLM2))),
}
BY_NAME = {v.name: v for v in (*VARIANTS, *TUNING, *TUNING_SMOLLM2)}
# per model, the paper's ATWU and the project's preset for that model (issue 10, item 6): `demo` on the tiny model,
# `smollm2` (whose ATWU is atwu-headline-fast) on SmolLM2
TARGETED = {"tiny": ("atwu-paper", "atwu-demo"), "smollm2": ("atwu-paper", "atwu-headline-fast")}
HEURISTICS = ("wga", "satimp")  # the targets ask ATWU to rank spans above these

MODEL_WORLDS = {  # default worlds per model; sizes differ from the demo world's 30 people / 5 forgotten
    "tiny": ("demo", "seed11-p12-f3", "seed23-p32-f6"),
    "smollm2": ("demo-smollm2", "smollm2-seed11", "smollm2-seed13-p12-f3", "smollm2-tofu"),
}
TUNING_WORLDS = {  # a world some preset was tuned on: reported, marked, never counted as held-out
    "seed7": "the `demo` preset's method and job settings were tuned on it",
    "demo-smollm2": "the `smollm2` preset's lr and ATWU objective were chosen on it",
}
# per model, (the worst held-out world's mean score AUROC, the lowest single run): issue 10's for the tiny model,
# issue 25's for SmolLM2 (whose stretch goal is issue 10's 0.85)
AUROC_TARGET = {"tiny": (0.90, 0.75), "smollm2": (0.80, 0.70)}
MAX_FORGET_EXACT, MIN_RETAIN_KEPT = 0.05, 0.95
QUICK_VARIANTS = ("atwu-paper", "atwu-demo", "wga", "gt-mask")


def model_of(world: str) -> str:
    return "smollm2" if "smollm2" in world else "tiny"


def held_out(world: str) -> bool:
    return world not in TUNING_WORLDS


def tuning_mark(world: str) -> str:
    """What a world's name is followed by in tables and titles."""
    return "" if held_out(world) else " (tuning world)"


def study_worlds(models: list[str]) -> dict[str, str]:
    """world -> its model: each model's tuning world first, then its default worlds, each once."""
    return {w: m for m in models for w in (SWEEPS[m][0], *MODEL_WORLDS[m])}


# ----------------------------------------------------------------------------------------- per-job numbers


def retain_kept(result: JobResult) -> float | None:
    """Retain exact-match after as a fraction of before: the target is relative to what the model knew."""
    after, before = lookup(result, "metrics.retain.after.exact"), lookup(result, "metrics.retain.before.exact")
    return after / before if after is not None and before else None


def metric(path: str) -> Callable[[JobResult], float | None]:
    return lambda result: lookup(result, path)


def score_gap(result: JobResult) -> float | None:
    """The mean final score on span tokens minus on the others: the magnitude beside the score AUROC."""
    span, other = lookup(result, "metrics.alignment.score_in_span"), lookup(result, "metrics.alignment.score_out_span")
    return span - other if span is not None and other is not None else None


# (column header, per-job value)
COLUMNS: tuple[tuple[str, Callable[[JobResult], float | None]], ...] = (
    ("score AUROC ↑", metric("metrics.alignment.auroc")),
    ("score gap ↑", score_gap),
    ("EMA score AUROC ↑", metric("metrics.alignment.ema_auroc")),
    ("forgetting AUROC ↑", metric("metrics.forgetting.auroc")),
    ("span share ↑", metric("metrics.forgetting.span_share")),
    ("ΔNLL span ↑", metric("metrics.forgetting.magnitude.mean_increase_span")),
    ("leak rate ↓", metric("metrics.facts.leak_rate")),
    ("forget exact ↓", metric("metrics.forget.after.exact")),
    ("retain exact ↑", metric("metrics.retain.after.exact")),
    ("retain kept ↑", retain_kept),
    ("wall s", metric("wall_seconds")),
)
SCORE = COLUMNS[0][1]


def values(results: list[JobResult], variant: str, get: Callable[[JobResult], float | None]) -> list[float]:
    return [v for r in results if r.method == variant and (v := get(r)) is not None]


def trajectory(results: list[JobResult], variant: str, key: str = "score_auroc") -> dict[int, float]:
    """Mean over seeds of a per-step trajectory (`metrics.trajectory`), by step."""
    by_step: dict[int, list[float]] = {}
    for r in results:
        traj = r.metrics.trajectory if r.metrics else None
        if r.method == variant and traj is not None:
            for step, value in zip(traj.step, getattr(traj, key), strict=True):
                if value is not None:
                    by_step.setdefault(step, []).append(value)
    return {step: statistics.mean(vs) for step, vs in sorted(by_step.items())}


# ----------------------------------------------------------------------------------------- tables


def world_table(results: list[JobResult], variants: list[str]) -> str:
    """One row per variant, mean ± std over seeds; the first row is the model before unlearning."""
    before = next((r for r in results if r.metrics and r.metrics.forget), None)
    before_row = (
        ["(before)", ""]
        + ["–"] * 6
        + [mean_std([lookup(before, f"metrics.{s}.before.exact")]) for s in ("forget", "retain")]
    )
    rows = [before_row + ["1.000", "", ""]]
    for v in variants:
        cells = [mean_std(values(results, v, get)) for _, get in COLUMNS]
        finished = sum(r.method == v and r.error is None for r in results)
        rows.append([v, BY_NAME[v].tuned_on, *cells, str(finished)])
    return markdown_table(["variant", "tuned on", *[c for c, _ in COLUMNS], "n"], rows)


def check(value: float | None, target: float, at_least: bool) -> str:
    """`value ✓`, or `value ✗ (missed by d)`."""
    if value is None:
        return "n/a"
    ok = value >= target if at_least else value <= target
    return f"{value:.3f} ✓" if ok else f"{value:.3f} ✗ (by {abs(value - target):.3f})"


def targets_table(by_world: dict[str, list[JobResult]], model: str, variants: list[str]) -> str:
    """Issue 10's targets per ATWU variant, each at its worst held-out world of `model` (per-world means over
    seeds; the margin over WGA and SatImp per world)."""
    worlds = [w for w in by_world if model_of(w) == model and held_out(w) and by_world[w]]
    if not worlds:
        return ""

    def worst(variant: str, get: Callable[[JobResult], float | None], lowest: bool) -> float | None:
        means = [m for w in worlds if (m := mean_or_none(values(by_world[w], variant, get))) is not None]
        return (min(means) if lowest else max(means)) if means else None

    def margin(variant: str) -> float | None:
        gaps = []
        for w in worlds:
            mine = mean_or_none(values(by_world[w], variant, SCORE))
            others = [m for h in HEURISTICS if (m := mean_or_none(values(by_world[w], h, SCORE))) is not None]
            if mine is not None and others:
                gaps.append(mine - max(others))
        return min(gaps) if gaps else None

    world_target, run_target = AUROC_TARGET[model]
    rows = []
    for v in [v for v in variants if BY_NAME[v].atwu]:
        runs = [x for w in worlds for x in values(by_world[w], v, SCORE)]
        rows.append([
            f"**{v}**" if v in TARGETED[model] else v,
            check(worst(v, SCORE, True), world_target, True),
            check(min(runs) if runs else None, run_target, True),
            check(margin(v), 0.0, True),
            check(worst(v, metric("metrics.forget.after.exact"), False), MAX_FORGET_EXACT, False),
            check(worst(v, retain_kept, True), MIN_RETAIN_KEPT, True),
        ])  # fmt: skip
    head = [
        "variant",
        f"score AUROC, worst world mean ≥ {world_target}",
        f"lowest single run ≥ {run_target}",
        "minus max(WGA, SatImp), worst world > 0",
        f"forget exact, worst ≤ {MAX_FORGET_EXACT}",
        f"retain kept, worst ≥ {MIN_RETAIN_KEPT}",
    ]
    return f"Held-out worlds: {', '.join(f'`{w}`' for w in worlds)}.\n\n" + markdown_table(head, rows)


def trajectory_table(by_world: dict[str, list[JobResult]], variants: list[str]) -> str:
    """Per world and token-scoring variant: where the score AUROC peaks and where it ends, and the realised
    forgetting's AUROC at the end: the why behind a missed target (too slow, or decaying once tokens are forgotten)."""
    rows = []
    for world, results in by_world.items():
        for v in variants:
            traj = trajectory(results, v)
            if not traj or all(abs(x - 0.5) < 1e-9 for x in traj.values()):  # uniform weights: 0.5 throughout
                continue
            peak = max(traj, key=traj.get)
            steps = list(traj)
            mid = steps[len(steps) // 2]
            forgetting = trajectory(results, v, "forgetting_auroc")
            rows.append([
                world, v, f"{traj[steps[0]]:.3f}", f"{traj[mid]:.3f} (step {mid})", f"{traj[peak]:.3f} (step {peak})",
                f"{traj[steps[-1]]:.3f}", f"{forgetting[max(forgetting)]:.3f}" if forgetting else "n/a",
            ])  # fmt: skip
    head = ["world", "variant", "first", "middle", "peak", "final", "forgetting AUROC, final step"]
    return markdown_table(head, rows) if rows else ""


# ----------------------------------------------------------------------------------------- facts against retain

LEAK_BASELINES = ("wga", "npo", "graddiff", "simnpo")  # what ATWU's facts per unit of retain damage is set beside
MIN_DAMAGE = 0.01  # retain damage below this is none: a ratio over it would divide by noise


def facts_forgotten(result: JobResult) -> float | None:
    """The share of the judged forget spans no longer said in the final greedy answers: 1 - leak rate."""
    leak = lookup(result, "metrics.facts.leak_rate")
    return None if leak is None else 1.0 - leak


def trade_off(results: list[JobResult], variant: str) -> tuple[float, float, float] | None:
    """(facts forgotten, retain damage = 1 - retain kept, facts forgotten per unit of damage: inf below MIN_DAMAGE),
    from the means over seeds; None when the variant has no facts or no retain numbers."""
    forgotten = mean_or_none(values(results, variant, facts_forgotten))
    kept = mean_or_none(values(results, variant, retain_kept))
    if forgotten is None or kept is None:
        return None
    damage = max(0.0, 1.0 - kept)
    if damage < MIN_DAMAGE:
        return forgotten, damage, math.inf if forgotten > 0 else 0.0
    return forgotten, damage, forgotten / damage


def leak_retain_table(by_world: dict[str, list[JobResult]], variants: list[str]) -> str:
    """Per world and method: facts still said (leak rate) and forgotten against retain kept, and the facts forgotten
    per unit of retain damage; then, per ATWU row, whether it forgets more facts per unit of damage than each of
    LEAK_BASELINES on that world (equal ratios, both without damage: more facts forgotten wins)."""
    rows, verdicts = [], []
    for world, results in by_world.items():
        points = {v: t for v in variants if (t := trade_off(results, v)) is not None}
        for v, (forgotten, damage, ratio) in points.items():
            rows.append([
                world, v, mean_std(values(results, v, metric("metrics.facts.leak_rate"))), f"{forgotten:.3f}",
                mean_std(values(results, v, retain_kept)), f"{damage:.3f}",
                f"{ratio:.1f}" if math.isfinite(ratio) else f"no damage (< {MIN_DAMAGE})",
            ])  # fmt: skip
        for v in (v for v in points if BY_NAME[v].atwu):
            mine = points[v][2], points[v][0]
            theirs = {b: (points[b][2], points[b][0]) for b in LEAK_BASELINES if b in points}
            cells = [
                ("more" if mine > theirs[b] else "fewer" if mine < theirs[b] else "same") if b in theirs else "n/a"
                for b in LEAK_BASELINES
            ]
            verdicts.append([world, v, *cells])
    if not rows:
        return ""
    head = ["world", "variant", "leak rate ↓", "facts forgotten ↑", "retain kept ↑", "retain damage ↓",
            "facts forgotten per unit of retain damage ↑"]  # fmt: skip
    table = markdown_table(head, rows)
    if verdicts:
        vs = [f"than `{b}`" for b in LEAK_BASELINES]
        table += (
            "\n\nDoes ATWU forget more facts per unit of retain damage than the baselines (per world, means over "
            "seeds)?\n\n" + markdown_table(["world", "ATWU row", *vs], verdicts)
        )
    return table


def plot_leak_retain(by_world: dict[str, list[JobResult]], variants: list[str], path: Path) -> bool:
    """Facts forgotten (1 - leak rate) against retain kept per method (mean ± std over seeds), one panel per world;
    False when no job recorded facts."""
    import matplotlib.pyplot as plt

    panels = {w: [v for v in variants if trade_off(res, v) is not None] for w, res in by_world.items()}
    panels = {w: vs for w, vs in panels.items() if vs}
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    for ax, (world, shown) in zip(axes.flat, panels.items(), strict=False):
        for v in shown:
            kept = values(by_world[world], v, retain_kept)
            forgotten = values(by_world[world], v, facts_forgotten)
            x, y = statistics.mean(kept), statistics.mean(forgotten)
            sx = statistics.stdev(kept) if len(kept) > 1 else 0.0
            sy = statistics.stdev(forgotten) if len(forgotten) > 1 else 0.0
            atwu = BY_NAME[v].atwu
            ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o" if atwu else "s", markersize=7 if atwu else 5, capsize=2)
            ax.annotate(v, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(world + tuning_mark(world))
        ax.set_xlabel("retain kept (retain exact after / before)")
        ax.set_xlim(-0.03, 1.08)
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("facts forgotten (1 - leak rate)")
    fig.suptitle("Facts forgotten against retain kept (top right is best), mean ± std over seeds")
    save_figure(fig, path, dpi=110)
    return True


def plot_trajectories(by_world: dict[str, list[JobResult]], variants: list[str], path: Path) -> bool:
    """Score AUROC against step per variant (mean over seeds), one panel per world; False when no job recorded
    a trajectory."""
    import matplotlib.pyplot as plt

    panels = {w: {v: t for v in variants if (t := trajectory(res, v))} for w, res in by_world.items()}
    panels = {w: lines for w, lines in panels.items() if lines}
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}  # a variant keeps its colour in every panel
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False, sharey=True)
    for ax, (world, lines) in zip(axes.flat, panels.items(), strict=False):
        for v, traj in lines.items():
            width = 2.2 if v.startswith("atwu") else 1.1
            ax.plot(list(traj), list(traj.values()), color=colours[v], linewidth=width, label=v)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(world + tuning_mark(world))
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.03)  # the oracle's 1.0 stays visible
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("score AUROC (recorded scores vs spans)")
    drawn = {label: line for ax in axes.flat for line, label in zip(*ax.get_legend_handles_labels())}
    axes[0][0].legend(drawn.values(), drawn.keys(), fontsize=7)  # every variant drawn, not just the first panel's
    fig.suptitle("Score AUROC per step, mean over seeds")
    save_figure(fig, path, dpi=110)
    return True


# ----------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Grid:
    worlds: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: int
    steps: int | None  # None: each world's preset's
    eval_cap: int | None  # None: each world's preset's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: demo world, 4 variants, 1 seed, 10 steps; writes nothing unless --out",
    )
    ap.add_argument(
        "--tuning",
        action="store_true",
        help="the sweep that chose each --models model's ATWU settings, on its tuning world only (its own section)",
    )
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny, smollm2 (default tiny)")
    ap.add_argument("--worlds", help=f"comma-separated, instead of the models' default worlds: {WORLD_NAMES}")
    ap.add_argument("--variants", help=f"comma-separated (default: all but the tune- ones): {', '.join(BY_NAME)}")
    ap.add_argument("--seeds", type=int, help="job seeds 0..N-1 per world and variant (default 3)")
    ap.add_argument("--steps", type=int, help="unlearning steps (default: each world's preset's)")
    ap.add_argument(
        "--eval-max-samples", type=int, help="records per split in the before/after evaluation (default 32)"
    )
    ap.add_argument(
        "--teach-steps", type=int, default=600, help="at most this many steps teaching a new world's tiny model"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="jobs run in this many processes at once (default 2)")
    ap.add_argument("--fresh", action="store_true", help="rerun every job, ignoring results cached by earlier runs")
    ap.add_argument("--report-only", action="store_true", help="run nothing: tables and figure from cached jobs only")
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep the run folders of the jobs this run runs in this folder, one per job (cached jobs are not run: "
        "add --fresh), for bench/token_signals.py --runs",
    )
    ap.add_argument("--out", help="folder for results.md and figures/ (default: docs, or nothing with --quick)")
    return ap.parse_args(argv)  # fmt: skip


def resolve(args: argparse.Namespace) -> tuple[Grid, Path | None]:
    """The run's grid with the command line's overrides, and where it writes (None: nowhere)."""
    if args.quick:
        grid = Grid(("demo",), QUICK_VARIANTS, 1, 10, 8)
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODEL_WORLDS]
        if unknown:
            raise SystemExit(f"unknown models {unknown}; choose from {', '.join(MODEL_WORLDS)}.")
        if args.tuning:
            rows = dict.fromkeys(v for m in models for v in SWEEPS[m][1])
            grid = Grid(tuple(SWEEPS[m][0] for m in models), tuple(rows), 3, None, 32)
        else:
            grid = Grid(tuple(w for m in models for w in MODEL_WORLDS[m]), tuple(v.name for v in VARIANTS), 3, None, 32)
    worlds = tuple(w.strip() for w in args.worlds.split(",") if w.strip()) if args.worlds else grid.worlds
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else grid.variants
    unknown = [v for v in variants if v not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(BY_NAME)}.")
    grid = Grid(
        worlds, variants, args.seeds or grid.seeds, args.steps or grid.steps, args.eval_max_samples or grid.eval_cap
    )
    out = Path(args.out) if args.out else (None if args.quick else REPO / "docs")
    return grid, out


def plan(grid: Grid, worlds: dict[str, World]) -> tuple[dict[Task, JobConfig], dict[str, str]]:
    """Every job, seed by seed over worlds and variants (a cut-short run still fills every table), and the
    variants the engine cannot build (a method or parameter it does not offer), with the reason."""
    jobs: dict[Task, JobConfig] = {}
    unavailable: dict[str, str] = {}
    for seed in range(grid.seeds):
        for name, world in worlds.items():
            preset_steps = make_config("graddiff", world.preset).steps
            for v in grid.variants:
                if v in unavailable:
                    continue
                task = Task(name, v, seed, grid.steps or BY_NAME[v].steps or preset_steps)
                try:
                    jobs[task] = BY_NAME[v].config(world.preset, task, grid.eval_cap)
                except ValueError as err:
                    unavailable[v] = str(err)
    return jobs, unavailable


def variants_table(variants: list[str], presets: set[str]) -> str:
    """What each variant runs: its pair and scorer settings as resolved by the engine, and where they were tuned."""
    rows = []
    for v in variants:
        var = BY_NAME[v]
        params = var.method_params(min(presets)).to_json()  # no job: a warm-start row needs no step count here
        keys = ("pair", "scorer_every", "budget", "gamma", "beta", "reward_norm")
        keys += tuple(k for k, _ in var.params if k not in keys)  # what a row changes beyond those
        shown = ", ".join(f"{k} {params[k]}" for k in keys if k in params) if var.atwu else "method defaults"
        preset = f"`{var.params_from}` preset" if var.params_from else "–"
        rows.append([v, f"`{var.method}`", preset, shown, str(var.steps or "the world's preset's"), var.tuned_on])
    head = ["variant", "method", "method settings from", "ATWU settings", "steps", "tuned on"]
    return markdown_table(head, rows)


def report(
    by_world: dict[str, list[JobResult]],
    notes: dict[str, str],
    grid: Grid,
    variants: list[str],
    unavailable: dict[str, str],
    presets: dict[str, str],
    env: str,
    command: str,
    out: Path,
    name: str,
) -> str:
    """Section `name` of results.md; draws its figure into `out/figures`."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    jobs = [r for res in by_world.values() for r in res]
    walls = [r.wall_seconds for r in jobs]
    steps = sorted({r.steps for r in jobs})
    parts = [
        f"## {'Tuning ATWU' if name.startswith('alignment-tuning') else 'Alignment'} (`{command}`)",
        env,
        (
            f"Grid: worlds {', '.join(f'`{w}`' for w in grid.worlds)}; {len(variants)} variants; "
            f"job seeds 0–{grid.seeds - 1}; "
            f"{'/'.join(map(str, steps)) or '?'} LoRA steps with each world's preset's job settings "
            f"({', '.join(f'`{p}` on `{w}`' for w, p in presets.items())}); before/after evaluation on up to "
            f"{grid.eval_cap or 'the preset’s number of'} records per split. {len(jobs)} jobs, median job "
            f"{statistics.median(walls) if walls else float('nan'):.0f} s (wall, evaluation included)."
        ),
        (
            "Score AUROC = the final token scores against the span tokens (uniform-weight methods: 0.5 by "
            "construction); score gap = the mean final score on span tokens minus on the others (its magnitude: "
            "n/a in results cached before it was recorded); forgetting AUROC = each answer token's NLL increase "
            "(after vs before) against the spans; span share = the span tokens' share of the positive NLL "
            "increase; ΔNLL span = its mean size on span tokens (nats); leak rate = share of span texts still in "
            "the final greedy answers; retain kept = retain exact after / before. Mean ± std over seeds. A tuning "
            "world is marked and excluded from the targets."
        ),
        variants_table(variants, set(presets.values())),
    ]
    if unavailable:
        parts.append(
            "Not run (the engine does not offer them yet):\n\n"
            + "\n".join(f"- `{v}`: {why}" for v, why in unavailable.items())
        )
    for model in MODEL_WORLDS:
        worlds = [w for w in by_world if model_of(w) == model]
        if not worlds:
            continue
        parts.append(f"### {'Tiny model' if model == 'tiny' else 'SmolLM2-135M'}")
        for w in worlds:
            mark = f" — tuning world ({TUNING_WORLDS[w]}), not held-out" if not held_out(w) else " — held-out"
            table = world_table(by_world[w], variants) if by_world[w] else "No job on this world has finished yet."
            parts.append(f"#### World `{w}`{mark}\n\n{notes[w]}\n\n{table}")
            by_label = leak_by_label_table(by_world[w], variants)
            if by_label:
                parts.append(f"Facts still said after unlearning, per span label (`{w}`):\n\n{by_label}")
        targets = targets_table(by_world, model, variants)
        if targets:
            source = "issue 25" if model == "smollm2" else "issue 10"
            parts.append(f"#### Targets on the {model} model ({source}; bold: the targeted presets)\n\n{targets}")
    leak = leak_retain_table(by_world, variants)
    if leak:
        figure = f"leak_vs_retain{name.removeprefix('alignment')}.png"
        drawn = plot_leak_retain(by_world, variants, out / "figures" / figure)
        parts.append(
            "### Facts forgotten against retain kept\n\nFacts forgotten = 1 − leak rate (the share of the judged "
            "forget spans no longer in the final greedy answers); retain damage = 1 − retain kept; their ratio is the "
            "facts forgotten per unit of retain damage (from the means over seeds); the leak rate per span label is in "
            "the table under each world.\n\n"
            + leak
            + (f"\n\n![facts forgotten against retain kept](figures/{figure})" if drawn else "")
        )
    traj = trajectory_table(by_world, variants)
    if traj:
        parts.append(f"### Score AUROC over training (mean over seeds)\n\n{traj}")
    figures = out / "figures"
    if plot_trajectories(by_world, variants, figures / f"{name}_trajectory.png"):
        parts.append(f"![score AUROC against step](figures/{name}_trajectory.png)")
    failed = [r for r in jobs if r.error is not None]
    if failed:
        parts.append(
            "### Failed jobs\n\n" + "\n".join(f"- {r.world} {r.method} seed {r.seed}: {r.error}" for r in failed)
        )
    return "\n\n".join(parts)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    grid, out = resolve(args)
    env, t_start = environment_line(args.threads, "Written"), time.perf_counter()
    options = WorldOptions(teach_steps=args.teach_steps)
    worlds = {name: w for name in grid.worlds if (w := load_world(name, options)) is not None}  # teaches once, here
    if not worlds:
        print("no world could be run.", file=sys.stderr)
        return 1
    jobs, unavailable = plan(grid, worlds)
    for v, why in unavailable.items():
        print(f"skipping {v}: {why}", file=sys.stderr)
    variants = [v for v in grid.variants if v not in unavailable]
    cache = ResultCache(CACHE / "results", worlds, args.fresh)
    run = RunOptions(args.workers, args.threads, args.report_only, args.keep)
    results = run_tasks(jobs, worlds, cache, run, options)
    by_world = {name: [r for t, r in results.items() if t.world == name] for name in worlds}
    elapsed = time.perf_counter() - t_start
    for name, res in by_world.items():
        print(f"\n## {name}{tuning_mark(name)}\n\n{world_table(res, variants)}", flush=True)
    for model in MODEL_WORLDS:
        if targets := targets_table(by_world, model, variants):
            print(f"\n## targets, {model}\n\n{targets}")
    if leak := leak_retain_table(by_world, variants):
        print(f"\n## facts forgotten against retain kept\n\n{leak}")
    print(f"\nalignment study: {elapsed:.0f} s")
    if out is not None:
        env += cache_note(elapsed, len(results), cache.hits)
        notes = {name: w.note for name, w in worlds.items()}
        presets = {name: w.preset for name, w in worlds.items()}
        models = sorted({model_of(w) for w in worlds})  # a section per model set: a SmolLM2 run keeps the tiny one
        name = "-".join(["alignment", *(["tuning"] if args.tuning else []), *(models if models != ["tiny"] else [])])
        command = command_line("alignment.py", argv)
        section = report(by_world, notes, grid, variants, unavailable, presets, env, command, out, name)
        print(f"wrote the {name} section of {write_results_section(out, name, section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
