"""The job queue with real worker processes on the demo model: jobs in turn, a job that cannot start, cancels."""

from __future__ import annotations

import os

import pytest

from atwu_core.config import make_config
from atwu_core.runs import RunReader
from atwu_core.worker import JobQueue

FAST = {"forget_batch_size": 8, "retain_batch_size": 8, "eval_max_samples": 2}


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> JobQueue:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers on a shared 2-core machine: one thread each
    q = JobQueue()
    yield q
    q.cancel()
    q.wait(120)


def test_jobs_run_in_turn_in_worker_processes_and_end_with_their_reason(queue, demo_world, tmp_path):
    """Three jobs: one completes, one waits its turn and then fails to load its model, one is cancelled while it
    waits. (Cancelling a running job and a worker killed mid-job are driven through the app in test_app.py.)"""
    a = queue.submit(make_config("ga", steps=2, **FAST), demo_world, tmp_path / "a")
    no_model = str(tmp_path / "no-model")
    b = queue.submit(make_config("ga", steps=2, model=no_model, **FAST), demo_world, tmp_path / "b")
    c = queue.submit(make_config("ga", steps=2, **FAST), demo_world, tmp_path / "c")
    assert queue.running() is a and queue.waiting() == [b, c] and queue.tracks(b.run_dir)
    assert queue.cancel(c.run_dir) and not c.run_dir.exists() and queue.waiting() == [b]
    assert not any(b.run_dir.iterdir())  # b waits: its folder is reserved, nothing runs in it yet
    assert queue.wait(300) and not queue.tracks(a.run_dir)
    status = RunReader(a.run_dir).status
    assert status.state == "completed", status.error
    assert status.pid != os.getpid()  # it ran in a worker, not here
    assert (a.run_dir / "adapter" / "adapter_config.json").is_file()
    failed = RunReader(b.run_dir)
    assert failed.status.state == "failed" and no_model in failed.status.error
    assert failed.config["model"] == no_model  # the folder opens as a run


def test_a_job_cancelled_as_its_worker_starts_ends_cancelled(queue, demo_world, tmp_path):
    job = queue.submit(make_config("ga", steps=200, **FAST), demo_world, tmp_path / "r")
    assert queue.cancel(job.run_dir)  # most likely before the worker has set its handler: SIGTERM ends it at once
    assert queue.wait(120)
    status = RunReader(job.run_dir).status
    assert status.state == "cancelled" and status.steps_done < 200


def test_bad_settings_are_refused_at_submit(queue, demo_world, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        queue.submit(make_config("ga", steps=0), demo_world, tmp_path / "r")
    assert not queue.busy() and not (tmp_path / "r").exists()
