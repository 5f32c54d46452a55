"""The alignment study's grid (bench/alignment.py): the tuning sweep changes what each row says it changes, its
winner is what `demo` ships, and no tuning world is ever counted as held-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from atwu_core.config import make_config


@pytest.fixture(scope="module")
def alignment(bench):
    return bench("alignment")


def _params(alignment, variant: str, preset: str = "demo") -> dict:
    task = alignment.Task("w", variant, 0, 40)
    return alignment.BY_NAME[variant].config(preset, task, None).params.to_dict()


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
    for v in (*alignment.TUNING, *alignment.TUNING_SMOLLM2):
        base = _params(alignment, "atwu-paper" if v.params_from == "paper" else "atwu-matched-norm")
        row = _params(alignment, v.name)
        changed = {k for k in row if row[k] != base[k]}
        assert changed <= {k for k, _ in v.params}, (v.name, changed)
        assert changed, f"{v.name} runs the baseline itself"


def test_the_sweeps_winner_is_what_demo_ships(alignment):
    assert (
        _params(alignment, "tune-beta2")
        == make_config("atwu", "demo").params.to_dict()
        == _params(alignment, "atwu-demo")
    )
    # and the SmolLM2 sweep's winner is the smollm2 preset's ATWU, as the README says
    assert _params(alignment, "atwu-headline-fast", "smollm2") == make_config("atwu", "smollm2").params.to_dict()


def test_default_grid_reports_only_held_out_worlds_and_no_tuning_rows(alignment):
    grid, _ = alignment.resolve(alignment.parse_args([]))
    assert all(alignment.held_out(w) for w in grid.worlds)
    assert not any(v.startswith("tune-") for v in grid.variants)
    assert {"atwu-paper", "atwu-matched", "atwu-demo", "gt-mask", "wga", "satimp", "npo"} <= set(grid.variants)
