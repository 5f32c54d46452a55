"""What a job tells its run folder: the header, where it is (status, phase, seconds per phase), its records and
metrics. The job reports; the recorder owns the one `Status` (its `state` is the job's state) and the clock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from atwu_core.config import JobConfig
from atwu_core.evaluation import Progress
from atwu_core.metrics_record import Metrics
from atwu_core.models import ModelInfo
from atwu_core.records import BeforeRecord, FinalRecord, SampleRecord, Status, StepRecord
from atwu_core.runs import RunWriter
from atwu_core.writer_thread import WriterThread


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


class RunRecorder:
    """The main process's recorder: every write goes to the run folder through a `WriterThread`, in order."""

    def __init__(
        self,
        run_dir: Path,
        steps_total: int,
        loading_seconds: float,
        on_status: Callable[[Status], None] | None = None,
    ):
        self.status = Status(
            state="running", steps_total=steps_total, phase_seconds={"loading": round(loading_seconds, 3)}
        )
        self.on_status = on_status  # told of every status write (the CLI's bars)
        self._writer = self._open(run_dir)
        self._tick = time.perf_counter()

    def _open(self, run_dir: Path) -> WriterThread | _NullWriter:
        return WriterThread(RunWriter(run_dir))

    def header(self, config: JobConfig, model_info: ModelInfo, samples: list[SampleRecord]) -> None:
        """config.json (the settings, library versions, creation time, model facts) and samples.json."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info = {"versions": _versions(), "created": created, "model_info": asdict(model_info)}
        self._writer.write_json("config.json", {**config.to_json(), **info})
        self._writer.write_json("samples.json", [s.to_json() for s in samples])

    def phase(self, phase: str, done: int, total: int, steps_done: int) -> None:
        """Enter (or advance within) `phase`; the time since the last write counts to the phase it was in."""
        self._lap()
        self.status.phase, self.status.phase_done, self.status.phase_total = phase, done, total
        self.status.steps_done = steps_done
        self._writer.status(self.status)
        if self.on_status is not None:
            self.on_status(self.status)

    def progress(self, phase: str, steps_done: int) -> Progress:
        """A (done, total) callback for a phase that counts samples (reference, before, final, after)."""
        return lambda done, total: self.phase(phase, done, total, steps_done)

    def record(self, record: BeforeRecord | StepRecord | FinalRecord) -> None:
        self._writer.append(record)

    def metrics(self, metrics: Metrics) -> None:
        self._writer.write_json("metrics.json", metrics.to_json())

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase so far, the current one included (readers calibrate ETAs on them)."""
        self._lap()
        return dict(self.status.phase_seconds)

    def end(self, state: str, steps_done: int) -> None:
        """The job finished (completed or cancelled): the last status write."""
        self.status.state = state
        self.phase("done", 0, 0, steps_done)

    def check(self) -> None:
        """Raise `runs.RunFolderMoved` if the run folder was moved, deleted or replaced (before a write that
        would re-create its path, such as a save)."""
        self._writer.check()

    def stop(self, state: str, error: str | None, steps_done: int) -> None:
        """The job stopped early (cancelled or failed): status.json says how, if the disk still takes it (into the
        claimed folder, even if it was moved)."""
        self.status.state, self.status.error, self.status.steps_done = state, error, steps_done
        with contextlib.suppress(OSError):  # e.g. a full disk: the original error is what the caller must see
            self._writer.status(self.status, check=False)

    def flush(self) -> None:
        """Wait until everything handed over is on disk; raise the first write that failed."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _lap(self) -> None:
        now, seconds = time.perf_counter(), self.status.phase_seconds
        seconds[self.status.phase] = round(seconds.get(self.status.phase, 0.0) + now - self._tick, 3)
        self._tick = now


class NullRecorder(RunRecorder):
    """A non-main process's recorder: it keeps the status and the clock (its job still reports to its caller)
    but writes nothing; rank 0 writes the run folder."""

    def _open(self, run_dir: Path) -> WriterThread | _NullWriter:
        return _NullWriter()


class _NullWriter:
    """`WriterThread`'s interface, writing nothing."""

    def write_json(self, name: str, data: object, *, check: bool = True) -> None:
        pass

    def status(self, status: Status, *, check: bool = True) -> None:
        pass

    def check(self) -> None:
        pass

    def append(self, record: BeforeRecord | StepRecord | FinalRecord) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def recorder_for(
    is_main: bool, run_dir: Path, steps_total: int, loading_seconds: float, on_status: Callable[[Status], None] | None
) -> RunRecorder:
    return (RunRecorder if is_main else NullRecorder)(run_dir, steps_total, loading_seconds, on_status)
