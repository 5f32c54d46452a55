"""A run folder written from a worker thread: the training loop hands over records and status and goes on queueing
device work, while the thread turns them into JSON, appends them and fsyncs status.json.

Writes happen in the order they were handed over. A write that failed (a full disk, ...) is raised in the loop at its
next hand-over or at `flush()`, so a job fails at most one step later than a direct write would; `close()` drains
what is queued and never raises (it runs while another error may be on its way out).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from atwu_core.records import BeforeRecord, FinalRecord, Status, StepRecord
from atwu_core.runs import RunWriter


class WriterThread:
    """RunWriter's interface (`append`, `status`, `write_json`, `check`, `close`), each write done on one worker
    thread."""

    def __init__(self, writer: RunWriter):
        self.dir = writer.dir
        self._writer = writer
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"atwu-writer-{writer.dir.name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:  # after a failed write, later ones would only add to the damage
                    job()
            except BaseException as err:  # handed to the loop, which decides what the job does about it
                self._error = err
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _put(self, job: Callable[[], None]) -> None:
        self._raise()
        self._jobs.put(job)

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def append(self, record: BeforeRecord | StepRecord | FinalRecord) -> None:
        self._put(lambda: self._writer.append(record))

    def status(self, status: Status, *, check: bool = True) -> None:
        snapshot = Status(**status.to_json())  # the loop keeps changing its Status object
        self._put(lambda: self._writer.status(snapshot, check=check))

    def write_json(self, name: str, data: object, *, check: bool = True) -> None:
        self._put(lambda: self._writer.write_json(name, data, check=check))

    def check(self) -> None:
        """RunWriter.check, now (it only compares the folder's identity: safe beside the thread's writes)."""
        self._writer.check()

    def flush(self) -> None:
        """Wait until everything handed over is on disk; raise the first write that failed."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._writer.close()
