"""The job queue with real worker processes on the demo model: jobs in turn, cancel, a dead worker, a bad job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from atwu_core.config import make_config
from atwu_core.runs import RunReader, wait_for_state
from atwu_core.worker import JobQueue

FAST = {"forget_batch_size": 8, "retain_batch_size": 8, "eval_max_samples": 2}


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> JobQueue:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers on a shared 2-core machine: one thread each
    q = JobQueue()
    yield q
    q.cancel()
    q.wait(120)


def first_step(run_dir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ((run_dir / "records.jsonl").is_file() and '"step"' in (run_dir / "records.jsonl").read_text()):
        assert time.monotonic() < deadline, f"no step in {run_dir} within {timeout} s"
        time.sleep(0.1)


def test_jobs_run_in_turn_in_worker_processes_and_a_queued_one_can_be_cancelled(queue, demo_world, tmp_path):
    a = queue.submit(make_config("ga", steps=2, **FAST), demo_world, tmp_path / "a")
    b = queue.submit(make_config("wga", steps=2, **FAST), demo_world, tmp_path / "b")
    c = queue.submit(make_config("ga", steps=2, **FAST), demo_world, tmp_path / "c")
    assert queue.running() is a and queue.waiting() == [b, c]
    assert queue.cancel(c.run_dir) and not c.run_dir.exists() and queue.waiting() == [b]
    assert not any(b.run_dir.iterdir())  # b waits: its folder is reserved, nothing runs in it yet
    assert queue.wait(300)
    for job in (a, b):
        status = RunReader(job.run_dir).status
        assert status.state == "completed", status.error
        assert status.pid != os.getpid()  # it ran in a worker, not here
        assert (job.run_dir / "adapter" / "adapter_config.json").is_file()
    assert RunReader(b.run_dir).config["method"] == "wga"
    assert time.strptime(RunReader(a.run_dir).status.updated[:19], "%Y-%m-%dT%H:%M:%S") <= time.strptime(
        RunReader(b.run_dir).config["created"][:19], "%Y-%m-%dT%H:%M:%S"
    )  # b started after a ended


def test_cancel_reaches_the_worker(queue, demo_world, tmp_path):
    job = queue.submit(make_config("atwu", steps=500, **FAST), demo_world, tmp_path / "r")
    first_step(job.run_dir)
    assert queue.cancel()
    assert queue.wait(120)
    status = RunReader(job.run_dir).status
    assert status.state == "cancelled" and 0 < status.steps_done < 500
    assert "auroc" in RunReader(job.run_dir).metrics["alignment"]  # a cancelled job still finishes its records


def test_a_killed_worker_is_failed_with_its_reason(queue, demo_world, tmp_path):
    job = queue.submit(make_config("ga", steps=500, **FAST), demo_world, tmp_path / "r")
    wait_for_state(job.run_dir, ("running",), timeout=120)
    os.kill(job.process.pid, signal.SIGKILL)
    assert queue.wait(60)
    status = RunReader(job.run_dir).status
    assert status.state == "failed" and "killed by SIGKILL" in status.error


def test_a_job_that_cannot_start_fails_with_its_reason(queue, demo_world, tmp_path):
    job = queue.submit(make_config("ga", steps=2, model=str(tmp_path / "no-model"), **FAST), demo_world, tmp_path / "r")
    assert queue.wait(120)
    status = RunReader(job.run_dir).status
    assert status.state == "failed" and "no-model" in status.error
    assert RunReader(job.run_dir).config["model"] == str(tmp_path / "no-model")  # the folder opens as a run


def test_bad_settings_are_refused_at_submit(queue, demo_world, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        queue.submit(make_config("ga", steps=0), demo_world, tmp_path / "r")
    assert not queue.busy() and not (tmp_path / "r").exists()


def test_a_job_cancelled_as_its_worker_starts_ends_cancelled(queue, demo_world, tmp_path):
    job = queue.submit(make_config("ga", steps=200, **FAST), demo_world, tmp_path / "r")
    assert queue.cancel(job.run_dir)  # most likely before the worker has set its handler: SIGTERM ends it at once
    assert queue.wait(120)
    status = RunReader(job.run_dir).status
    assert status.state == "cancelled" and status.steps_done < 200
