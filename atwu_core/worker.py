"""Jobs in worker processes, one at a time in submission order, for UIs whose own process must stay free: a model
load or a query in the server never slows a job, and a job never holds the server's model.

    server:  JobQueue.submit(config, dataset) -> a run folder reserved; the job waits its turn
    worker:  `python -m atwu_core.worker SPEC` runs the job into that folder (the only channel back)
    cancel:  SIGTERM to the worker, which sets the job's CancelToken (honoured before the next step; the job then
             finishes as "cancelled", with its final pass and adapter)
    death:   a worker that exits without a final status gets "failed" with its exit code and last stderr lines
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from atwu_core.config import JobConfig
from atwu_core.data import Dataset, load_dataset_dir, save_dataset_dir
from atwu_core.files import write_json_atomic
from atwu_core.records import Status
from atwu_core.runs import RunReader, new_run_dir

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # on the worker's PYTHONPATH, whatever the server's cwd
LOG_LINES = 5  # the worker's last stderr lines kept in a failed status


@dataclass
class QueuedJob:
    """A submitted job; its run folder's status.json says how far it got and how it ended."""

    config: JobConfig
    run_dir: Path
    spec_dir: Path  # job.json, the dataset and the worker's log; removed when the worker has exited
    process: subprocess.Popen | None = field(default=None, repr=False)  # once started
    cancelled: bool = False  # SIGTERM sent


class JobQueue:
    """Runs submitted jobs one at a time, each in a fresh worker process. Thread-safe; a waiter thread per
    running worker starts the next job when it exits, so the queue advances with nobody watching."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[QueuedJob] = deque()
        self._current: QueuedJob | None = None
        self.last: QueuedJob | None = None  # the most recently submitted job

    def submit(self, config: JobConfig, dataset: Dataset, run_dir: str | Path | None = None) -> QueuedJob:
        """Queue a job (settings checked now, so bad ones are refused here); it starts when the jobs before it end."""
        config.validate()
        with self._lock:
            path = Path(run_dir) if run_dir is not None else new_run_dir(config.method)
            path.mkdir(parents=True, exist_ok=True)  # reserves the name; an empty folder is not yet a run
            spec_dir = Path(tempfile.mkdtemp(prefix="atwu-job-"))
            save_dataset_dir(dataset, spec_dir / "data")
            write_json_atomic(spec_dir / "job.json", {"config": config.to_json(), "run_dir": str(path.resolve())})
            job = QueuedJob(config, path, spec_dir)
            self._queue.append(job)
            self.last = job
            self._advance()
            return job

    def running(self) -> QueuedJob | None:
        with self._lock:
            return self._current

    def waiting(self) -> list[QueuedJob]:
        """The queued jobs, next first."""
        with self._lock:
            return list(self._queue)

    def tracks(self, run_dir: str | Path) -> bool:
        """Whether the job of `run_dir` is queued or running here."""
        with self._lock:
            return any(j.run_dir == Path(run_dir) for j in (self._current, *self._queue) if j is not None)

    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or bool(self._queue)

    def cancel(self, run_dir: str | Path | None = None) -> bool:
        """Cancel the running job, or the job of `run_dir` (running or queued); False if there was none. A queued
        job leaves the queue and its reserved folder; a running one gets SIGTERM and ends "cancelled"."""
        with self._lock:
            target = Path(run_dir) if run_dir is not None else None
            queued = next((j for j in self._queue if j.run_dir == target), None)
            if queued is not None:
                self._queue.remove(queued)
                _remove_empty(queued.run_dir)
                shutil.rmtree(queued.spec_dir, ignore_errors=True)
                return True
            job = self._current
            if job is None or (target is not None and job.run_dir != target):
                return False
            job.process.send_signal(signal.SIGTERM)
            job.cancelled = True
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits (for scripts and tests); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ------------------------------------------------------------------------------------------ internals

    def _advance(self) -> None:
        """Start the next job if none runs (called with the lock held); one whose worker cannot start fails."""
        while self._current is None and self._queue:
            job = self._queue.popleft()
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
            try:
                with (job.spec_dir / "worker.log").open("wb") as log:
                    job.process = subprocess.Popen(
                        [sys.executable, "-m", "atwu_core.worker", str(job.spec_dir)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
            except OSError as err:
                self._ended(job, "failed", f"could not start the worker process: {err}.")
                continue
            self._current = job
            threading.Thread(
                target=self._wait_for, args=(job,), name=f"atwu-worker-{job.run_dir.name}", daemon=True
            ).start()

    def _wait_for(self, job: QueuedJob) -> None:
        code = job.process.wait()
        if job.cancelled and code == -signal.SIGTERM:  # cancelled before the worker could take the signal
            self._ended(job, "cancelled", "cancelled before the job started.")
        else:
            self._ended(job, "failed", _exit_reason(code, job.spec_dir / "worker.log"))
        with self._lock:
            self._current = None
            self._advance()

    @staticmethod
    def _ended(job: QueuedJob, state: str, reason: str) -> None:
        """The worker is gone: give a job without a final status `state` and `reason`, and clean its spec."""
        with contextlib.suppress(OSError):  # an unwritable run folder reads as interrupted: nothing more to do
            end_if_unfinished(job.run_dir, job.config, state, reason)
        shutil.rmtree(job.spec_dir, ignore_errors=True)


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty (the worker got to it) or already gone


def _exit_reason(code: int, log: Path) -> str:
    """Why a worker ended: its exit code or signal, then the last lines it wrote (a traceback's last line)."""
    if code < 0:
        why = f"the worker process was killed by {signal.Signals(-code).name}"
        if code == -signal.SIGKILL:
            why += " (often: out of memory)"
    else:
        why = f"the worker process exited with code {code}"
    try:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return why + (": " + " | ".join(lines[-LOG_LINES:]) if lines else "") + "."


def end_if_unfinished(run_dir: Path, config: JobConfig, state: str, reason: str) -> None:
    """A job whose worker ended without a final status (it died, or failed before claiming its folder) gets
    `state` and `reason`, and a config.json so that the folder opens as a run."""
    try:
        status = RunReader(run_dir).status if (run_dir / "config.json").is_file() else None
    except ValueError:
        status = None
    if status is not None and status.state not in ("running", "interrupted", "unknown"):
        return
    if not (run_dir / "config.json").is_file():
        write_json_atomic(run_dir / "config.json", config.to_json())
    ended = Status(state=state, error=reason)
    if status is not None:
        ended.steps_done, ended.steps_total, ended.phase = status.steps_done, status.steps_total, status.phase
    write_json_atomic(run_dir / "status.json", ended.to_json())


# ------------------------------------------------------------------------------------------ the worker process


def work(spec_dir: Path) -> int:
    """Run the job described in `spec_dir`; SIGTERM cancels it (the job finishes its step, then ends cancelled)."""
    from atwu_core.cancel import CancelToken
    from atwu_core.job import UnlearningJob

    spec = json.loads((spec_dir / "job.json").read_text(encoding="utf-8"))
    config, run_dir = JobConfig.from_json(spec["config"]), Path(spec["run_dir"])
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: cancel.cancel())
    try:
        UnlearningJob(config, dataset=load_dataset_dir(spec_dir / "data"), run_dir=run_dir).run(cancel)
    except Exception as err:  # noqa: BLE001 - the run folder says why (the job's own errors are already there)
        end_if_unfinished(run_dir, config, "failed", f"{type(err).__name__}: {err}")
        print(f"atwu worker: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(work(Path(sys.argv[1])))
