"""A data-parallel job (2 processes, gloo, launched by torchrun through the CLI) equals the 1-process job with the
same global batch, and writes its run folder once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atwu_core.config import make_config
from atwu_core.job import run_job
from atwu_core.runs import RunReader

STEPS = 3
SETTINGS = {"steps": STEPS, "eval_max_samples": 2}
PARAMS = {"retain_loss": "kl", "scorer_every": 1}  # KL gathers full log-distributions; the scorer learns every step
# Per-token values differ only by fp32 summation order (shards pad to other lengths; gradients summed over ranks).
TOL = {"rel": 1e-4, "abs": 1e-5}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """`torchrun --nproc-per-node 2 -m atwu_core.cli unlearn ...`: the command a user runs."""
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "runs" / "atwu-2proc"
    sets = [f"{k}={v}" for k, v in {**PARAMS, "eval_max_samples": SETTINGS["eval_max_samples"]}.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "atwu_core.cli",
        "unlearn",
        "--model",
        "demo",
        "--method",
        "atwu",
        "--steps",
        str(STEPS),
        "--out",
        str(run_dir),
        *[a for s in sets for a in ("--set", s)],
    ]
    env = {**os.environ, "ATWU_RUNS": str(root / "runs"), "OMP_NUM_THREADS": "1", "TMPDIR": str(root)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_two_processes_equal_one(two_process_run, demo_loaded, demo_world, tmp_path):
    run_dir, proc = two_process_run
    one = run_job(
        make_config("atwu", params=PARAMS, **SETTINGS), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "one"
    )
    a, b = RunReader(one.run_dir), RunReader(run_dir)
    assert b.status.state == "completed"
    for ra, rb in zip(a.step_records(), b.step_records(), strict=True):
        assert ra.tokens == rb.tokens
        assert rb.losses == pytest.approx(ra.losses, **TOL)
        for key in ("scores", "loss_weights", "probs"):
            va, vb = getattr(ra, key), getattr(rb, key)
            assert va.keys() == vb.keys()
            for sid in va:
                assert vb[sid] == pytest.approx(va[sid], **TOL), (ra.step, key, sid)
    for sid, scores in a.final.scores.items():
        assert b.final.scores[sid] == pytest.approx(scores, **TOL)
        assert b.final.probs[sid] == pytest.approx(a.final.probs[sid], **TOL)
    assert _numbers(b.metrics.to_json()) == pytest.approx(_numbers(a.metrics.to_json()), **TOL)


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a metrics.json, by its path, but the timing (wall clock)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "timing":
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = value
    return out


def test_only_rank_zero_writes_and_prints(two_process_run):
    run_dir, proc = two_process_run
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]  # no second run folder
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + STEPS + 1  # before, one per step, final: not one set per rank
    assert not list(run_dir.glob(".rank-*")), "the other rank's scratch folder (in the run folder) is removed"
    assert not list(run_dir.parent.parent.glob("*rank-*")), "nothing in $TMPDIR"
    assert proc.stdout.count("run folder:") == 1
    assert proc.stdout.count(f"step    1/{STEPS}") == 1
