"""The alignment study's grid (bench/alignment.py): the tuning sweep changes what each row says it changes, its
winner is what `demo` ships, and no tuning world is ever counted as held-out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from atwu_core.config import make_config


@pytest.fixture(scope="module")
def alignment(bench):
    return bench("alignment")


def _params(alignment, variant: str, preset: str = "demo") -> dict:
    task = alignment.Task("w", variant, 0, 40)
    return alignment.BY_NAME[variant].config(preset, task, None).params.to_json()


def test_tuning_grid_is_each_models_sweep_on_its_tuning_world(alignment):
    grid, out = alignment.resolve(alignment.parse_args(["--tuning", "--out", "/tmp/x"]))
    assert grid.worlds == ("seed7",) and not alignment.held_out("seed7")
    assert grid.variants[0] == "atwu-matched-norm" and set(grid.variants[1:]) == {v.name for v in alignment.TUNING}
    assert grid.seeds == 3 and out == Path("/tmp/x")
    grid, _ = alignment.resolve(alignment.parse_args(["--tuning", "--models", "smollm2"]))
    assert grid.worlds == ("demo-smollm2",) and not alignment.held_out("demo-smollm2")
    assert {"atwu-paper", "atwu-matched", "atwu-demo", "atwu-matched-norm", "atwu-headline-fast"} < set(grid.variants)
    assert set(grid.variants) - set(alignment.ATWU) == {v.name for v in alignment.TUNING_SMOLLM2}


def test_each_tuning_row_changes_only_what_it_names(alignment):
    task = alignment.Task("w", "base", 0, 40)
    for v in (*alignment.TUNING, *alignment.TUNING_SMOLLM2):
        base = _params(alignment, "atwu-paper" if v.params_from == "paper" else "atwu-matched-norm")
        if v.method != "atwu":  # ATWU inside NPO: its own preset's settings, nothing changed
            base = dataclasses.replace(v, params=(), steps=None).config("demo", task, None).params.to_json()
        row = _params(alignment, v.name)
        changed = {k for k in row if row[k] != base[k]}
        assert changed <= {k for k, _ in v.params}, (v.name, changed)
        assert changed or v.steps, f"{v.name} runs the baseline itself"


def test_the_sweeps_winner_is_what_demo_ships(alignment):
    assert (
        _params(alignment, "tune-beta2")
        == make_config("atwu", "demo").params.to_json()
        == _params(alignment, "atwu-demo")
    )
    # and the SmolLM2 sweep's winner is the smollm2 preset's ATWU, as the README says
    assert _params(alignment, "atwu-headline-fast", "smollm2") == make_config("atwu", "smollm2").params.to_json()


def test_default_grid_reports_only_held_out_worlds_and_no_tuning_rows(alignment):
    grid, _ = alignment.resolve(alignment.parse_args([]))
    assert all(alignment.held_out(w) for w in grid.worlds)
    assert not any(v.startswith("tune-") for v in grid.variants)
    assert {"atwu-paper", "atwu-matched", "atwu-demo", "gt-mask", "wga", "satimp", "npo"} <= set(grid.variants)


def test_each_hypothesis_is_a_smollm2_tuning_row_and_smollm2_tofu_is_held_out(alignment):
    rows = {v.name: v for v in alignment.TUNING_SMOLLM2}
    assert {rows[f"tune-smollm2-{p}-{n}"].steps for p in ("paper", "fast") for n in (80, 160)} == {80, 160}
    assert _params(alignment, "tune-smollm2-start10", "smollm2")["scorer_start"] == 10
    assert _params(alignment, "tune-smollm2-delta", "smollm2")["reward"] == "delta_nll"
    assert _params(alignment, "tune-smollm2-layer15", "smollm2")["hidden_layer"] == 15
    assert _params(alignment, "tune-smollm2-contrast", "smollm2")["retain_contrast"] == 1.0
    std_cap = _params(alignment, "tune-smollm2-layer15-rms-std-cap", "smollm2")
    assert std_cap["reward_standardise"] and std_cap["reward_cap"] == 10.8 and std_cap["hidden_norm"] == "rms"
    npo = alignment.BY_NAME["tune-smollm2-npo-layer15-rms"]
    assert npo.atwu and npo.method_params("smollm2").hidden_layer == 15  # an ATWU row, judged by the targets
    fast = _params(alignment, "atwu-headline-fast", "smollm2")
    one_knob = ("tune-smollm2-fast-80", "tune-smollm2-start5", "tune-smollm2-delta", "tune-smollm2-layer15")
    for name in (*one_knob, "tune-smollm2-contrast"):
        changed = {k for k, v in _params(alignment, name, "smollm2").items() if v != fast[k]}
        assert len(changed) <= 1, (name, changed)  # one knob away from the `smollm2` preset's ATWU
    grid, _ = alignment.resolve(alignment.parse_args(["--models", "smollm2"]))
    assert "smollm2-tofu" in grid.worlds and alignment.held_out("smollm2-tofu") and "simnpo" in grid.variants
    # a row's own steps reach its job; --steps overrides every row
    world = {"w": alignment.World("w", None, None, "", (), "smollm2")}
    one = alignment.Grid(("w",), ("tune-smollm2-paper-160", "atwu-paper"), 1, None, None)
    assert sorted(t.steps for t in alignment.plan(one, world)[0]) == [40, 160]
    assert {t.steps for t in alignment.plan(dataclasses.replace(one, steps=4), world)[0]} == {4}


def test_a_quick_run_writes_the_tables_and_the_leak_against_retain_figure(alignment, monkeypatch, tmp_path):
    """A real run on the tiny model (2 variants, 10 steps): EMA column, facts against retain table and figure."""
    monkeypatch.setattr(alignment, "CACHE", tmp_path / "cache")
    argv = ["--quick", "--variants", "atwu-demo,wga", "--workers", "1", "--out", str(tmp_path / "out")]
    assert alignment.main(argv) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    section = text.split("### Facts forgotten against retain kept")[1].split("###")[0]
    assert "| demo | atwu-demo |" in section and "| demo | wga |" in section
    *_, verdict = (line.split(" | ") for line in section.splitlines() if line.startswith("| demo | atwu-demo | "))
    assert verdict[2] in ("more", "fewer", "same") and verdict[3] == "n/a"  # compared with wga; npo did not run
    assert (tmp_path / "out" / "figures" / "leak_vs_retain.png").stat().st_size > 10_000
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant | tuned on | score AUROC"))
    head, atwu, wga = (next(r for r in lines[start:] if r.startswith(k)).split(" | ") for k in ("| v", "| a", "| w"))
    ema = head.index("EMA score AUROC ↑")
    assert 0 < float(atwu[ema].split()[0]) < 1 and wga[ema] == "n/a"  # ATWU's scores averaged over the job, judged


def test_the_trajectory_figure_names_every_variant_in_one_colour_across_panels(alignment, monkeypatch, tmp_path):
    """A variant that only a later panel draws is in the legend, and keeps its colour from panel to panel."""
    from atwu_core.metrics_record import Metrics

    def result(world: str, variant: str, values: list[float]) -> object:
        n = len(values)
        per_step = dict.fromkeys(("forgetting_auroc", "score_in_span", "score_out_span"), [None] * n)
        older = dict.fromkeys(("mean_increase_span", "mean_increase_other", "strong_drop_share"))  # may be None
        trajectory = {"step": list(range(1, n + 1)), "score_auroc": values, **per_step, **older}
        return alignment.JobResult(world, variant, 0, n, Metrics.from_json({"trajectory": trajectory}), 1.0)

    by_world = {
        "a": [result("a", "wga", [0.5, 0.5]), result("a", "atwu-demo", [0.4, 0.6])],
        "b": [result("b", "tune-x", [0.3, 0.2]), result("b", "atwu-demo", [0.5, 0.7])],
    }
    figures = []
    monkeypatch.setattr(alignment, "save_figure", lambda fig, path, dpi=120: figures.append(fig))
    assert alignment.plot_trajectories(by_world, ["atwu-demo", "tune-x", "wga"], tmp_path / "t.png")
    (fig,) = figures
    first, second = fig.axes[:2]
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["atwu-demo", "wga", "tune-x"]
    colour = [{line.get_label(): line.get_color() for line in ax.lines} for ax in (first, second)]
    assert colour[0]["atwu-demo"] == colour[1]["atwu-demo"]
    assert len({colour[0]["atwu-demo"], colour[0]["wga"], colour[1]["tune-x"]}) == 3
