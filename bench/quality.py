"""Quality benchmark: does each method forget the forget set, keep the retain set, and put its weight on the
ground-truth span tokens? Every method in METHODS, several seeds (mean ± std), on several worlds.

Worlds: `demo` (the embedded model and its world), `seedN` (a new world from `generate_world(N)` with other
sizes, taught to a fresh tiny model, cached), `tofu` (TOFU forget01 + a slice of retain99 from ../shared,
taught to a fresh tiny model, cached; no spans, so no alignment). A sweep over the number of unlearning
steps on the first world gives each method's forget–retain trade-off curve. Writes the quality section of
`<out>/results.md` and the figures in `<out>/figures/`; re-running regenerates them.

    python bench/quality.py                       # demo, seed7, tofu; 3 seeds; writes docs/
    python bench/quality.py --quick               # CI smoke (< 2 min): demo only, 3 methods, 1 seed, writes nothing
    python bench/quality.py --worlds demo --methods atwu,graddiff --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
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

from atwu_core.config import METHODS, JobConfig, make_config

QUICK_METHODS = ("atwu", "graddiff", "wga")

# (column header, a job's number as its attribute path on `JobResult`, lower is better)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("forget exact ↓", "metrics.forget.after.exact", True),
    ("forget ROUGE-L ↓", "metrics.forget.after.rouge_l", True),
    ("forget prob ↓", "metrics.forget.after.prob", True),
    ("retain exact ↑", "metrics.retain.after.exact", False),
    ("retain ROUGE-L ↑", "metrics.retain.after.rouge_l", False),
    ("retain prob ↑", "metrics.retain.after.prob", False),
    ("leak rate ↓", "metrics.facts.leak_rate", True),
    ("extractable ↓", "metrics.facts.extractable_rate", True),
    ("ΔNLL span ↑", "metrics.forgetting.magnitude.mean_increase_span", False),
    ("AUROC ↑", "metrics.alignment.auroc", False),
    ("AUPRC ↑", "metrics.alignment.auprc", False),
    ("wall s", "wall_seconds", True),
)
TRADEOFF_X, TRADEOFF_Y = "metrics.forget.after.rouge_l", "metrics.retain.after.rouge_l"
AUROC = "metrics.alignment.auroc"


# --------------------------------------------------------------------------------------------- jobs


def job_config(preset: str, task: Task, eval_cap: int | None) -> JobConfig:
    """The job a task runs: the world's preset, the task's method, seed and steps (eval cap None: the preset's)."""
    return make_config(task.method, preset, steps=task.steps, seed=task.seed, **given(eval_max_samples=eval_cap))


# --------------------------------------------------------------------------------------------- tables


def quality_table(results: list[JobResult], methods: list[str]) -> str:
    """One row per method, mean ± std over seeds; the first row is the model before unlearning."""
    before = next((r for r in results if r.metrics and r.metrics.forget), None)
    before_row = ["(before)"] + [
        mean_std([lookup(before, path.replace(".after.", ".before."))]) if ".after." in path else "–"
        for _, path, _ in COLUMNS
    ]
    before_row.append("")
    rows = [
        [m]
        + [mean_std(lookup(r, path) for r in results if r.method == m) for _, path, _ in COLUMNS]
        + [str(sum(r.method == m and r.error is None for r in results))]
        for m in methods
    ]
    return markdown_table(["method"] + [c for c, _, _ in COLUMNS] + ["n"], [before_row] + rows)


def atwu_standing(results: list[JobResult], methods: list[str]) -> str:
    """ATWU's rank on each column against every other method (means over seeds): where it wins and where it loses."""
    if "atwu" not in methods or len(methods) < 2:
        return ""
    rows = []
    for header, path, lower in COLUMNS:
        if path == "wall_seconds":  # jobs share the machine with each other and with others: no fair ranking by time
            continue
        means = {m: mean_or_none(lookup(r, path) for r in results if r.method == m) for m in methods}
        means = {m: v for m, v in means.items() if v is not None}
        if "atwu" not in means or len(means) < 2:
            continue
        sign = 1 if lower else -1
        best = min((m for m in means if m != "atwu"), key=lambda m: sign * means[m])
        rank = 1 + sum(sign * v < sign * means["atwu"] for v in means.values())  # ties share a rank
        rows.append([header, f"{means['atwu']:.3f}", f"{rank}/{len(means)}", f"{best} {means[best]:.3f}"])
    return markdown_table(["metric", "atwu", "atwu's rank", "best other method"], rows) if rows else ""


def tradeoff_table(sweep: dict[str, dict[int, JobResult]], steps: list[int]) -> str:
    head = ["method"] + [f"{s} steps: forget / retain ROUGE-L" for s in steps]
    rows = [
        [m]
        + [
            f"{mean_std([lookup(points[s], TRADEOFF_X)])} / {mean_std([lookup(points[s], TRADEOFF_Y)])}"
            if s in points
            else "not run"
            for s in steps
        ]
        for m, points in sweep.items()
    ]
    return markdown_table(head, rows)


# --------------------------------------------------------------------------------------------- figures


def plot_tradeoff(sweep: dict[str, dict[int, JobResult]], world: str, path: Path) -> None:
    """Retain ROUGE-L against forget ROUGE-L, one curve per method through its step counts; top left is best."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for method, points in sweep.items():
        runs = [points[s] for s in sorted(points) if lookup(points[s], TRADEOFF_X) is not None]
        xs = [lookup(r, TRADEOFF_X) for r in runs]
        ys = [lookup(r, TRADEOFF_Y) for r in runs]
        (line,) = ax.plot(xs, ys, marker="o", linewidth=2.5 if method.startswith("atwu") else 1.2, label=method)
        for r, x, y in zip(runs, xs, ys, strict=True):
            ax.annotate(
                str(r.steps), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=line.get_color()
            )
    ax.set_xlabel("forget ROUGE-L after (lower = more forgotten)")
    ax.set_ylabel("retain ROUGE-L after (higher = more kept)")
    ax.set_title(f"Forget–retain trade-off over unlearning steps ({world} world, labels = steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, path)


def plot_alignment(by_world: dict[str, list[JobResult]], methods: list[str], path: Path) -> bool:
    """Alignment AUROC per method (mean ± std over seeds), one bar group per world with spans; False if none has
    spans."""
    import matplotlib.pyplot as plt
    import numpy as np

    worlds = [w for w, res in by_world.items() if any(lookup(r, AUROC) is not None for r in res)]
    if not worlds:
        return False
    fig, ax = plt.subplots(figsize=(min(11.0, max(6.0, 0.5 * len(methods) * len(worlds))), 4.5))
    width = 0.8 / len(worlds)
    for k, world in enumerate(worlds):
        vals = [[v for r in by_world[world] if r.method == m and (v := lookup(r, AUROC)) is not None] for m in methods]
        means = [statistics.mean(v) if v else np.nan for v in vals]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
        ax.bar(
            np.arange(len(methods)) + (k - (len(worlds) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=world,
        )
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (uniform weights)")
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("alignment AUROC (token weights vs spans)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Alignment: token weights against the ground-truth spans")
    save_figure(fig, path)
    return True


# --------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Mode:
    seeds: int  # on the first world
    other_seeds: int  # on the other worlds
    steps: int | None  # None: the demo preset's
    sweep: tuple[int, ...]
    eval_cap: int | None  # None: each world's preset's
    worlds: str
    methods: tuple[str, ...]


MODES = {
    "full": Mode(
        seeds=3,
        other_seeds=1,
        steps=None,
        sweep=(10, 20, 40),
        eval_cap=None,
        worlds="demo,seed7",
        methods=tuple(METHODS),
    ),
    "quick": Mode(seeds=1, other_seeds=1, steps=10, sweep=(5, 10), eval_cap=8, worlds="demo", methods=QUICK_METHODS),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: demo world, 3 methods, 1 seed, few steps; writes nothing unless --out",
    )
    ap.add_argument("--worlds", help=f"comma-separated: {WORLD_NAMES} (default demo,seed7)")
    ap.add_argument("--methods", help="comma-separated methods (default: every method in METHODS)")
    ap.add_argument("--seeds", type=int, help="job seeds per method on the first world (default 3)")
    ap.add_argument("--other-seeds", type=int, help="job seeds per method on the other worlds (default 1)")
    ap.add_argument("--steps", type=int, help="unlearning steps of the main table (default: the demo preset's)")
    ap.add_argument(
        "--sweep", help="comma-separated step counts for the trade-off curves on the first world ('' to skip)"
    )
    ap.add_argument(
        "--eval-max-samples", type=int, help="samples per split in the before/after evaluation (default 64)"
    )
    ap.add_argument("--people", type=int, default=20, help="seedN worlds: people (the demo world has 30)")
    ap.add_argument("--forget-people", type=int, default=4, help="seedN worlds: forget people (the demo world has 5)")
    ap.add_argument("--tofu-retain", type=int, default=60, help="tofu: how many retain99 records to use")
    ap.add_argument(
        "--teach-steps", type=int, default=600, help="at most this many steps teaching a new world's tiny model"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared CPU more threads than free cores slows torch down badly)",
    )
    ap.add_argument("--fresh", action="store_true", help="rerun every job, ignoring results cached by earlier runs")
    ap.add_argument(
        "--report-only", action="store_true", help="run nothing: tables and figures from the cached jobs only"
    )
    ap.add_argument("--workers", type=int, default=2, help="jobs run in this many processes at once (default 2)")
    ap.add_argument("--out", help="folder for results.md and figures/ (default: docs, or nothing with --quick)")
    return ap.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Mode, list[str], list[str], list[int], Path | None]:
    """The run's mode with the command line's overrides: (mode, worlds, methods, sweep steps, output folder)."""
    base = MODES["quick" if args.quick else "full"]
    mode = Mode(
        seeds=args.seeds or base.seeds,
        other_seeds=args.other_seeds or base.other_seeds,
        steps=args.steps or base.steps or make_config("atwu", "demo").steps,
        sweep=base.sweep,
        eval_cap=args.eval_max_samples or base.eval_cap,
        worlds=base.worlds,
        methods=base.methods,
    )
    worlds = [w.strip() for w in (args.worlds or mode.worlds).split(",") if w.strip()]
    methods = [m.strip() for m in (args.methods or ",".join(mode.methods)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    sweep = sorted({int(s) for s in args.sweep.split(",") if s.strip()}) if args.sweep is not None else list(mode.sweep)
    out = Path(args.out) if args.out else (None if args.quick else REPO / "docs")
    return mode, worlds, methods, sweep, out


def plan(world_names: list[str], methods: list[str], mode: Mode, sweep_steps: list[int]) -> list[Task]:
    """The main tables' jobs, seed by seed over every world (so a cut-short run still fills every table), then
    the sweep's (seed 0, first world) that the tables do not hold."""
    tasks = [
        Task(w, m, seed, mode.steps)
        for seed in range(max(mode.seeds, mode.other_seeds))
        for k, w in enumerate(world_names)
        if seed < (mode.seeds if k == 0 else mode.other_seeds)
        for m in methods
    ]
    sweep = [Task(world_names[0], m, 0, st) for st in sweep_steps for m in methods]
    return list(dict.fromkeys(tasks + sweep))


def seeds_of(mode: Mode, world_names: list[str], name: str) -> int:
    return mode.seeds if name == world_names[0] else mode.other_seeds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    mode, world_names, methods, sweep_steps, out = resolve(args)
    env, t_start = environment_line(args.threads, "Written"), time.perf_counter()
    options = WorldOptions(args.people, args.forget_people, args.teach_steps, args.tofu_retain)
    worlds = {
        name: w for name in world_names if (w := load_world(name, options)) is not None
    }  # teaches new worlds once, here
    notes = {name: worlds[name].note if name in worlds else "skipped: data not found" for name in world_names}
    if not worlds:
        print("no world could be run.", file=sys.stderr)
        return 1
    first = next(iter(worlds))
    cache = ResultCache(CACHE / "results", worlds, args.fresh)
    # the oracle refuses a forget set with any record lacking spans (a DataError): not run there, and said so
    spanless = {name for name, w in worlds.items() if not all(r.forget_spans for r in w.dataset.forget)}
    for name in spanless:
        notes[name] += "; `gt-mask` not run (it needs spans on every forget record)"
    jobs = {
        t: job_config(worlds[t.world].preset, t, mode.eval_cap)
        for t in plan(list(worlds), methods, mode, sweep_steps)
        if not (t.method == "gt-mask" and t.world in spanless)
    }
    results = run_tasks(jobs, worlds, cache, RunOptions(args.workers, args.threads, args.report_only), options)
    by_world = {
        name: [
            r
            for m in methods
            for s in range(seeds_of(mode, list(worlds), name))
            if (r := results.get(Task(name, m, s, mode.steps))) is not None
        ]
        for name in worlds
    }
    sweep = {m: {st: r for st in sweep_steps if (r := results.get(Task(first, m, 0, st))) is not None} for m in methods}
    sweep = {m: points for m, points in sweep.items() if points}
    elapsed = time.perf_counter() - t_start
    for name, res in by_world.items():
        print(f"\n## {name}\n\n{quality_table(res, methods)}", flush=True)
    if sweep:
        print(f"\n## trade-off ({first})\n\n{tradeoff_table(sweep, sweep_steps)}")
    print(f"\nquality benchmark: {elapsed:.0f} s")
    if out is not None:
        env += cache_note(elapsed, len(results), cache.hits)
        section = report(
            by_world,
            notes,
            sweep,
            sweep_steps,
            world_names,
            methods,
            mode,
            env,
            out,
            {name: w.preset for name, w in worlds.items()},
            command_line("quality.py", argv),
        )
        print(f"wrote the quality section of {write_results_section(out, 'quality', section)}")
    return 0


def presets_text(presets: dict[str, str]) -> str:
    return ", ".join(f"`{preset}` on `{name}`" for name, preset in presets.items())


def eval_cap_text(mode: Mode, presets: dict[str, str]) -> str:
    if mode.eval_cap is not None:
        return str(mode.eval_cap)
    return ", ".join(f"{make_config('atwu', preset).eval_max_samples} on `{name}`" for name, preset in presets.items())


def report(
    by_world: dict[str, list[JobResult]],
    notes: dict[str, str],
    sweep: dict[str, dict[int, JobResult]],
    sweep_steps: list[int],
    world_names: list[str],
    methods: list[str],
    mode: Mode,
    env: str,
    out: Path,
    presets: dict[str, str],
    command: str,
) -> str:
    """The quality section of results.md; draws its figures into `out/figures`."""
    first = next(iter(by_world))
    parts = [
        f"## Quality (`{command}`)",
        env,
        (
            f"Every method with its world's preset ({presets_text(presets)}; {mode.steps} steps unless swept), "
            f"LoRA; job seeds 0–{mode.seeds - 1} on `{first}` and 0–{mode.other_seeds - 1} on the other worlds (the "
            "job seed sets LoRA's init and the batch order); mean ± std over seeds. Quality is evaluated on up to "
            f"{eval_cap_text(mode, presets)} records per split: `exact` = the greedy answer equals the answer, "
            "`ROUGE-L` = recall of the greedy answer, `prob` = exp(-mean answer-token NLL), `leak rate` = share of "
            "span texts still in the greedy answers (up to 200 new tokens), `extractable` = share of spans whose "
            "every token is still the teacher-forced top-1, `ΔNLL span` = mean rise in span-token NLL (nats). "
            "Alignment = the final token weights against the ground-truth span tokens. `wall s` = the whole job, "
            "evaluation included; "
            "`n` = seeds that finished."
        ),
    ]
    for name in world_names:
        parts.append(f"### World `{name}`\n\n{notes.get(name, '')}")
        if name in by_world and not by_world[name]:
            parts.append("No job on this world has finished yet; `python bench/quality.py` runs (or resumes) them.")
        elif name in by_world:
            parts.append(quality_table(by_world[name], methods))
            by_label = leak_by_label_table(by_world[name], methods)
            if by_label:
                parts.append(f"Facts still said after unlearning, per span label (`{name}`):\n\n{by_label}")
            standing = atwu_standing(by_world[name], methods)
            if standing:
                parts.append(
                    f"ATWU against the other methods on `{name}` (means over seeds; rank 1 = best):\n\n{standing}"
                )
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    if sweep:
        parts.append(
            f"### Forget–retain trade-off (`{first}` world, seed 0, steps {', '.join(map(str, sweep_steps))})\n\n"
            f"{tradeoff_table(sweep, sweep_steps)}"
        )
        plot_tradeoff(sweep, first, figures / "tradeoff.png")
        parts.append("![forget-retain trade-off](figures/tradeoff.png)")
    if plot_alignment(by_world, methods, figures / "alignment_auroc.png"):
        parts.append("### Alignment AUROC per method\n\n![alignment AUROC](figures/alignment_auroc.png)")
    failed = [
        r for res in [*by_world.values(), *(p.values() for p in sweep.values())] for r in res if r.error is not None
    ]
    if failed:
        parts.append(
            "### Failed jobs\n\n"
            + "\n".join(
                f"- {r.world} {r.method} seed {r.seed} steps {r.steps}: {r.error}"
                for r in {(r.world, r.method, r.seed, r.steps): r for r in failed}.values()  # the sweep repeats jobs
            )
        )
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
