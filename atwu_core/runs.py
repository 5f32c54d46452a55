"""Run folders: one per job, everything needed to reopen it elsewhere (see docs/architecture.md).

Whole files are written atomically (temp file + os.replace) so a reader never sees half a file; records are
appended one JSON line at a time and flushed, so a reader can follow a job while it runs. The files' contents
are the typed records of `atwu_core.records`; this module moves them to and from disk
and makes the few edits the app makes to a run folder (rename, tag, delete).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from atwu_core.config import JobConfig, migrate
from atwu_core.files import json_line, read_json, write_json_at, write_json_atomic
from atwu_core.metrics_record import Metrics
from atwu_core.records import (
    TOKEN_MAPS,
    BeforeRecord,
    FinalRecord,
    RecordError,
    SampleRecord,
    Status,
    StepRecord,
    TokenValues,
    check_config,
    parse_line,
)


def runs_root() -> Path:
    """Where new runs go by default: $ATWU_RUNS or ./runs."""
    return Path(os.environ.get("ATWU_RUNS", "runs"))


def new_run_dir(method: str, root: Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = root or runs_root()
    path = root / f"{stamp}-{method}"
    k = 1
    while path.exists():
        k += 1
        path = root / f"{stamp}-{method}-{k}"
    return path


RANK_SCRATCH = ".rank-"  # other ranks' scratch folders inside the run folder (distributed jobs)


class RunFolderError(ValueError):
    """The run folder cannot be written; the message says which and what to do."""


def check_run_dir(run_dir: Path) -> None:
    """Refuse a folder we must not write into, before any model is loaded: one that holds anything already
    (a finished run, a model, ...) or one we cannot write to."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file; give --out a new folder.")
    if run_dir.is_dir() and any(not p.name.startswith(RANK_SCRATCH) for p in run_dir.iterdir()):
        what = "a run" if (run_dir / "records.jsonl").is_file() else "other files"
        raise FileExistsError(f"{run_dir} already holds {what}; give --out a new or empty folder.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test.")
        probe.close()
    except OSError as err:
        raise RunFolderError(
            f"cannot write the run folder {run_dir}: {err.strerror or err}; give --out a writable folder."
        ) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunFolderMoved(RunFolderError):
    """The run folder was moved, deleted or replaced while its job ran."""


class RunWriter:
    """The job's side of a run folder. Claims the folder by creating records.jsonl exclusively, so two jobs
    given the same folder cannot both write into it. Holds the folder open by identity: every write goes into
    that folder (wherever it is now, never a re-created path), and `check()` before each write stops the job
    once the folder at the path is no longer the one it claimed."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._folder = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        st = os.fstat(self._folder)
        self._identity = (st.st_dev, st.st_ino)
        try:
            fd = os.open(
                "records.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666, dir_fd=self._folder
            )
        except FileExistsError:
            os.close(self._folder)
            raise FileExistsError(
                f"{self.dir} already holds a run (another job claimed it); choose a new --out folder."
            ) from None
        self._records = os.fdopen(fd, "w", encoding="utf-8")

    def check(self) -> None:
        """Raise RunFolderMoved if the path no longer names the folder this job claimed."""
        try:
            st = os.stat(self.dir)
            moved = (st.st_dev, st.st_ino) != self._identity
        except FileNotFoundError:
            moved = True
        if moved:
            raise RunFolderMoved(
                f"the run folder {self.dir} was moved, deleted or replaced while the job ran; the job stopped "
                "(what it wrote so far is in the moved folder, if it still exists)."
            )

    def write_json(self, name: str, data: object, *, check: bool = True) -> None:
        if check:
            self.check()
        try:
            write_json_at(self._folder, name, data, self.dir / name)
        except OSError:
            if check:
                self.check()  # the folder went while this was written: say that, not "no such file"
            raise

    def status(self, status: Status, *, check: bool = True) -> None:
        """Write status.json; `check=False` writes it even into a moved folder (the job's last word)."""
        status.updated, status.pid, status.host = _now(), os.getpid(), socket.gethostname()
        self.write_json("status.json", status.to_json(), check=check)

    def append(self, record: BeforeRecord | StepRecord | FinalRecord) -> None:
        self.check()
        try:
            self._records.write(json_line(record.to_json()))
            self._records.flush()
        except OSError as err:
            self.check()
            raise OSError(err.errno, err.strerror or str(err), str(self.dir / "records.jsonl")) from None

    def close(self) -> None:
        """Close the records file and the folder; a flush that fails again (a full disk) was reported already."""
        with contextlib.suppress(OSError):
            self._records.close()
        os.close(self._folder)


@dataclass
class RunSnapshot:
    """Everything in a run folder, each file parsed once: what a view reads per refresh."""

    dir: Path
    config: dict
    status: Status
    samples: list[SampleRecord]
    before: BeforeRecord | None
    step_records: list[StepRecord]
    final: FinalRecord | None
    metrics: Metrics | None
    skipped_lines: int = 0
    sample_index: dict[str, SampleRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sample_index = {s.record_id: s for s in self.samples}

    @property
    def job_config(self) -> JobConfig:
        """The job this run ran, typed (`config` is config.json as saved, migrated)."""
        return JobConfig.from_json(self.config)

    def matrix(self, sample_id: str, key: str = "scores") -> tuple[list[int], list[list[float]]]:
        """Steps x tokens of `key` (scores, loss_weights or probs) for one sample, over the steps whose batch held
        it."""
        steps, rows = [], []
        for rec in self.step_records:
            values = getattr(rec, key).get(sample_id)
            if values is not None:
                steps.append(rec.step)
                rows.append(values)
        return steps, rows

    def latest(self, key: str = "scores") -> TokenValues:
        """Each sample's latest values of `key`: the final pass if the job got there, else the last recorded ones."""
        if self.final is not None:
            return getattr(self.final, key)
        out: TokenValues = {}
        for rec in self.step_records:
            out.update(getattr(rec, key))
        return out


MAX_JSON_BYTES = {  # per run-folder file: far above what a job writes, far below what stalls a page
    "config.json": 1 << 20,
    "status.json": 64 << 10,
    "samples.json": 256 << 20,
    "metrics.json": 64 << 20,
}
MAX_RECORD_LINE = 64 << 20  # one records.jsonl line (a final pass over 400 long samples is ~10 MB)
READ_CHUNK = 1 << 20


class RecordLog:
    """records.jsonl parsed incrementally: each `update()` reads only the bytes appended since the last one
    (a live view of a long job parses each line once), in chunks, holding at most one line of MAX_RECORD_LINE
    bytes. A line that is not a valid record, refers to an unknown sample, or has a token list of the wrong
    length is skipped and counted; a trailing line without its newline is still being written and waits for the
    next update. A file that shrank or was replaced is read again from its start."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self.identity, self.offset, self.skipped = identity, 0, 0
        self.before: BeforeRecord | None = None
        self.steps: list[StepRecord] = []
        self.final: FinalRecord | None = None

    def update(self, lengths: dict[str, int]) -> None:
        """Parse what was appended; `lengths` is each sample's token count (from samples.json)."""
        with self._lock:
            try:
                fh = self.path.open("rb")
            except FileNotFoundError:
                self._reset(None)
                return
            with fh:
                st = os.fstat(fh.fileno())
                if (st.st_dev, st.st_ino) != self.identity or st.st_size < self.offset:
                    self._reset((st.st_dev, st.st_ino))
                fh.seek(self.offset)
                self._read(fh, lengths)

    def _read(self, fh: io.BufferedReader, lengths: dict[str, int]) -> None:
        pos, line, dropping = self.offset, bytearray(), False  # dropping: inside a line over MAX_RECORD_LINE
        while chunk := fh.read(READ_CHUNK):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                if dropping or len(line) + end - start > MAX_RECORD_LINE:
                    self.skipped += 1
                else:
                    line += chunk[start:end]
                    self._add(bytes(line), lengths)
                self.offset = pos + end + 1
                line, dropping, start = bytearray(), False, end + 1
            if not dropping:
                line += chunk[start:]
                if len(line) > MAX_RECORD_LINE:
                    line, dropping = bytearray(), True
            pos += len(chunk)

    def _add(self, line: bytes, lengths: dict[str, int]) -> None:
        try:
            record = parse_line(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, RecordError):
            self.skipped += 1
            return
        if record is None:
            return
        before = isinstance(record, BeforeRecord)
        maps = [record.probs] if before else [getattr(record, key) for key in TOKEN_MAPS]
        if any(lengths.get(sid) != len(v) for values in maps for sid, v in values.items()):
            self.skipped += 1
        elif before:
            self.before = self.before or record
        elif isinstance(record, StepRecord):
            self.steps.append(record)
        else:
            self.final = self.final or record


class RunReader:
    """Reopen a run folder, finished or still running. Every file is parsed into its typed record with sizes,
    types and ranges checked (run folders travel between people); an error is a ValueError naming the file and
    the field. Each call re-reads the files; `snapshot()` reads them once."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not (self.dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.dir}: not a run folder (no config.json).")

    def _json(self, name: str, check):
        path = self.dir / name
        data = read_json(path, MAX_JSON_BYTES[name])
        if data is None:
            return None
        try:
            return check(data)
        except RecordError as err:
            raise ValueError(f"{path}: {err}.") from None

    @property
    def config(self) -> dict:
        """config.json in today's keys (`config.migrate`), with the run's name, tags and creation time beside the
        settings: the view a listing wants (it opens whatever the settings say); `job_config` is the typed job."""
        config = self._json("config.json", check_config)
        if config is None:
            raise FileNotFoundError(f"{self.dir}: not a run folder (no config.json).")
        return migrate(config)

    @property
    def job_config(self) -> JobConfig:
        """The job this run ran, typed; a ValueError when it no longer builds (a method not registered here)."""
        return JobConfig.from_json(self.config)

    @property
    def status(self) -> Status:
        """The job's status; a "running" job whose process is gone on this host reads as "interrupted"."""
        status = self._json("status.json", Status.from_json) or Status(state="unknown")
        if status.state == "running" and status.host == socket.gethostname() and not _alive(status.pid):
            status.state = "interrupted"
            status.error = "the process running this job ended before it finished; the records so far are kept."
        return status

    @property
    def samples(self) -> list[SampleRecord]:
        return self._json("samples.json", _samples) or []

    @property
    def metrics(self) -> Metrics | None:
        return self._json("metrics.json", Metrics.from_json)

    def records(self, log: RecordLog | None = None) -> RecordLog:
        """records.jsonl parsed: `log` continues from where an earlier call stopped (only new lines are read)."""
        log = log or RecordLog(self.dir / "records.jsonl")
        log.update({s.record_id: len(s.tokens) for s in self.samples})
        return log

    def step_records(self) -> list[StepRecord]:
        return self.records().steps

    @property
    def final(self) -> FinalRecord | None:
        return self.records().final

    def snapshot(self, log: RecordLog | None = None) -> RunSnapshot:
        """Every file parsed once; pass the `log` of the previous snapshot to parse only the new records."""
        samples = self.samples
        log = log or RecordLog(self.dir / "records.jsonl")
        log.update({s.record_id: len(s.tokens) for s in samples})
        return RunSnapshot(
            dir=self.dir,
            config=self.config,
            status=self.status,
            samples=samples,
            before=log.before,
            step_records=list(log.steps),
            final=log.final,
            metrics=self.metrics,
            skipped_lines=log.skipped,
        )


def _samples(data: object) -> list[SampleRecord]:
    if not isinstance(data, list):
        raise RecordError(f"must be a list of samples, got {type(data).__name__}")
    out = []
    for k, item in enumerate(data):
        try:
            out.append(SampleRecord.from_json(item))
        except RecordError as err:
            raise RecordError(f"sample {k + 1}: {err}") from None
    return out


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True  # written by an older version: cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _summary(path: Path) -> dict:
    run = RunReader(path)
    config, status, metrics = run.config, run.status, run.metrics
    return {
        "run_dir": str(path),
        "name": config.get("name") or path.name,
        "tags": config.get("tags", []),
        "method": config.get("method"),
        "model": config.get("model"),
        "data": config.get("data"),
        "created": config.get("created"),
        "state": status.state,
        "steps": status.steps_done,
        "error": status.error,
        "auroc": metrics and metrics.alignment and metrics.alignment.auroc,
        "forgetting_auroc": metrics and metrics.forgetting and metrics.forgetting.auroc,
        "forget_exact": metrics and metrics.exact_after("forget"),
        "retain_exact": metrics and metrics.exact_after("retain"),
    }


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Summaries of the run folders under `root`, newest first. A folder that cannot be read is listed with
    state "unreadable" and the reason, so one bad folder never hides the others."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    out = []
    for path in sorted(root.iterdir(), key=mtime, reverse=True):
        if path.name.startswith("."):
            continue
        try:
            out.append(_summary(path))
        except FileNotFoundError as err:  # not a run folder, unless it is a dangling link or vanished mid-read
            if path.is_symlink() and not path.exists():
                out.append(
                    {
                        "run_dir": str(path),
                        "name": path.name,
                        "state": "unreadable",
                        "error": f"{path}: a link to {os.readlink(path)}, which does not exist.",
                    }
                )
            elif path.is_dir() and (path / "config.json").exists():
                out.append({"run_dir": str(path), "name": path.name, "state": "unreadable", "error": str(err)})
        except Exception as err:  # noqa: BLE001 - whatever one folder holds, the others are still listed
            out.append({"run_dir": str(path), "name": path.name, "state": "unreadable", "error": str(err)})
    return out


def wait_for_state(run_dir: str | Path, states: tuple[str, ...], timeout: float) -> Status:
    """Poll a run's status until it reaches one of `states` (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    state = "not started"
    while time.monotonic() < deadline:
        if (Path(run_dir) / "status.json").is_file():
            try:
                status = RunReader(run_dir).status
            except (FileNotFoundError, ValueError):
                status = None
            if status is not None:
                state = status.state
                if state in states:
                    return status
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} did not reach {states} within {timeout} s (now {state}).")


# ------------------------------------------------------------------------------------------ editing runs


def _edit_config(run_dir: str | Path, **changes: object) -> dict:
    path = RunReader(run_dir).dir / "config.json"
    config = {**RunReader(run_dir).config, **changes}
    write_json_atomic(path, config)
    return config


def rename_run(run_dir: str | Path, name: str) -> dict:
    """Give a run a display name (kept in its config.json; the folder keeps its name)."""
    name = name.strip()
    if not name:
        raise ValueError("a run name cannot be empty.")
    return _edit_config(run_dir, name=name)


def tag_run(run_dir: str | Path, tags: Iterable[str]) -> dict:
    """Set a run's tags (kept in its config.json), trimmed, without empties or repeats, in the given order."""
    return _edit_config(run_dir, tags=list(dict.fromkeys(t.strip() for t in tags if t.strip())))


def delete_run(run_dir: str | Path) -> None:
    """Delete a run folder; refuses a folder that is not a run and a run whose job is still running."""
    reader = RunReader(run_dir)  # raises on a folder without config.json: never delete anything else
    if reader.status.state == "running":
        raise ValueError(f"{reader.dir.name} is still running; cancel it before deleting it.")
    shutil.rmtree(reader.dir)
