"""The bench scripts' pure helpers (bench/common.py): formatting, lookup and the results-section writer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def common(bench):
    return bench("common")


def test_mean_std(common):
    assert common.mean_std([]) == "n/a"
    assert common.mean_std([None, 0.5]) == "0.500"
    assert common.mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"


def test_lookup(common):
    metrics = {"forget": {"after": {"exact": 0.25}}, "flag": True, "text": "x"}
    assert common.lookup(metrics, "forget.after.exact") == 0.25
    assert common.lookup(metrics, "forget.before.exact") is None
    assert common.lookup(metrics, "flag") is None  # a bool is not a number to average
    assert common.lookup(metrics, "text") is None


def test_results_section_replaced_others_kept(common, tmp_path):
    common.write_results_section(tmp_path, "a", "first A")
    common.write_results_section(tmp_path, "b", "only B")
    common.write_results_section(tmp_path, "a", "second A")
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- bench:a -->") == 1


def test_command_line_drops_out(common):
    assert common.command_line("x.py", ["--seeds", "2", "--out", "docs", "--out=d2"]) == "python bench/x.py --seeds 2"
