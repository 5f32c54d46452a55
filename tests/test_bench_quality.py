"""bench/quality.py's report: a failed job is listed once, with its error, even when the sweep holds it too."""

from __future__ import annotations

import pytest

from atwu_core.metrics_record import Metrics


@pytest.fixture(scope="module")
def quality(bench):
    return bench("quality")


def test_a_failed_job_is_listed_once(quality, bench, tmp_path):
    result = bench("common").JobResult
    ok = result("demo", "wga", 0, 40, Metrics.from_json({"forget": {"after": {"exact": 0.0}}}), wall_seconds=1.0)
    failed = result("demo", "gt-mask", 0, 40, None, wall_seconds=0.5, error="DataError: needs spans")
    mode = quality.MODES["full"]
    section = quality.report(
        {"demo": [ok, failed]},
        {"demo": "a note"},
        {"wga": {40: ok}, "gt-mask": {40: failed}},  # the sweep's 40-step point is the table's seed-0 job
        [40],
        ["demo"],
        ["wga", "gt-mask"],
        mode,
        "env",
        tmp_path,
        {"demo": "demo"},
        "python bench/quality.py",
    )
    assert section.count("- demo gt-mask seed 0 steps 40: DataError: needs spans") == 1
    assert "wga seed 0 steps 40:" not in section
