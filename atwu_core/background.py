"""Jobs on a worker thread, for UIs: at most one per process, cancellable, never calling the UI."""

from __future__ import annotations

import threading
from pathlib import Path

from atwu_core.config import JobConfig
from atwu_core.data import Dataset
from atwu_core.job import CancelToken, UnlearningJob
from atwu_core.models import LoadedModel


class JobBusyError(RuntimeError):
    """Another job is already running in this process."""


class BackgroundJob:
    """One job on a daemon thread. `start` is the process's one guard: a second start while one runs is refused."""

    _active: BackgroundJob | None = None
    _guard = threading.Lock()

    def __init__(self, job: UnlearningJob):
        self.job = job
        self.run_dir = job.run_dir
        self.error: str | None = None
        self._cancel = CancelToken()
        self._thread = threading.Thread(target=self._run, name=f"atwu-job-{job.run_dir.name}", daemon=True)

    @classmethod
    def start(
        cls, config: JobConfig, loaded: LoadedModel, dataset: Dataset | None = None, run_dir: str | Path | None = None
    ) -> BackgroundJob:
        with cls._guard:
            if cls._active is not None and cls._active.is_alive():
                raise JobBusyError(f"a job is already running ({cls._active.run_dir}); wait for it or cancel it first.")
            bg = cls(UnlearningJob(config, loaded=loaded, dataset=dataset, run_dir=run_dir))
            cls._active = bg
            bg._thread.start()
            return bg

    @classmethod
    def active(cls) -> BackgroundJob | None:
        """The running job, if any."""
        bg = cls._active
        return bg if bg is not None and bg.is_alive() else None

    def _run(self) -> None:
        try:
            self.job.run(self._cancel)
        except Exception as err:  # recorded in status.json too; kept here for the UI
            self.error = str(err)

    def cancel(self) -> None:
        self._cancel.cancel()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
