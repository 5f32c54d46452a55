"""atwu_core.run_table: run colours, settings except the seed, and groups with mean ± std, on run folders made
by hand (their numbers are known)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from atwu_core import run_table
from atwu_core.config import make_config


def write_run(root: Path, name: str, seed: int, auroc: float | None, tags: list[str], lr: float = 1e-3) -> Path:
    run = root / name
    run.mkdir()
    config = {**make_config("wga", "demo", steps=5, seed=seed, lr=lr).to_json(), "tags": tags}
    (run / "config.json").write_text(json.dumps(config))
    (run / "status.json").write_text(json.dumps({"state": "completed", "steps_done": 5, "steps_total": 5}))
    if auroc is not None:
        (run / "metrics.json").write_text(json.dumps({"alignment": {"auroc": auroc}, "forgetting": {"auroc": 0.6}}))
    return run


def test_run_colour_is_one_per_run() -> None:
    colour = run_table.run_colour("/some/runs/20250101-atwu")
    assert colour == run_table.run_colour("20250101-atwu")  # the same run by path or by name
    assert colour in run_table.RUN_PALETTE
    many = {run_table.run_colour(f"run-{k}") for k in range(50)}
    assert len(many) > 5  # spread over the palette, not one colour


def test_runs_shown_together_never_share_a_colour() -> None:
    ids = [f"run-{k}" for k in range(50)]
    first = ids[0]
    twin = next(i for i in ids[1:] if run_table.run_colour(i) == run_table.run_colour(first))  # a hash collision
    together = run_table.run_colours([first, twin])
    assert together[first] == run_table.run_colour(first) and together[twin] != together[first]
    assert len(set(run_table.run_colours(ids[: len(run_table.RUN_PALETTE)]).values())) == len(run_table.RUN_PALETTE)


def test_groups_by_settings_except_seed_and_by_tag(tmp_path: Path) -> None:
    write_run(tmp_path, "s0", 0, 0.70, ["base"])
    write_run(tmp_path, "s1", 1, 0.80, ["base", "keep"])
    write_run(tmp_path, "s2", 2, 0.90, [])
    write_run(tmp_path, "fast", 0, 0.50, ["keep"], lr=1e-2)
    rows = run_table.runs_table(tmp_path)
    assert {r["name"]: r["seed"] for r in rows} == {"s0": 0, "s1": 1, "s2": 2, "fast": 0}
    assert "--seed" not in rows[0]["settings"] and "--method wga" in rows[0]["settings"]
    by_settings = {g["group"]: g for g in run_table.group_runs(rows, "settings")}
    assert sorted(g["runs"] for g in by_settings.values()) == [1, 3]
    [three] = [g for g in by_settings.values() if g["runs"] == 3]
    sd = statistics.stdev([0.7, 0.8, 0.9])
    assert three["score AUROC"] == f"0.800 ± {sd:.3f}" and three["forgetting AUROC"] == "0.600 ± 0.000"
    assert sorted(three["seeds"].split(", ")) == ["0", "1", "2"] and three["forget exact"] == "n/a"
    [one] = [g for g in by_settings.values() if g["runs"] == 1]
    assert "--lr 0.01" in one["group"] and one["score AUROC"] == "0.500"
    by_tag = {g["group"]: g for g in run_table.group_runs(rows, "tags")}
    assert {k: g["runs"] for k, g in by_tag.items()} == {"base": 2, "keep": 2, run_table.NO_TAG: 1}
    assert by_tag["keep"]["score AUROC"] == f"0.650 ± {statistics.stdev([0.8, 0.5]):.3f}"
    with pytest.raises(ValueError, match="tags or settings"):
        run_table.group_runs(rows, "seed")


def test_mean_std_format() -> None:
    assert run_table.mean_std([]) == "n/a" and run_table.mean_std([None, 0.25]) == "0.250"
    assert run_table.mean_std([0.0, 1.0]) == f"0.500 ± {statistics.stdev([0.0, 1.0]):.3f}"
