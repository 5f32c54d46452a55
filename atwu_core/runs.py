"""Run folders: one per job, everything needed to reopen it elsewhere (see docs/architecture.md).

Whole files are written atomically (temp file + os.replace) so a reader never sees half a file; records are
appended one JSON line at a time and flushed, so a reader can follow a job while it runs. The files' contents
are the typed records of `atwu_core.records`; this module only moves them to and from disk.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from atwu_core.files import FILE_MODE, json_line, write_json_atomic
from atwu_core.records import BeforeRecord, FinalRecord, SampleRecord, Status, StepRecord, TokenValues, parse_line


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


class RunFolderError(ValueError):
    """The run folder cannot be written; the message says which and what to do."""


def check_run_dir(run_dir: Path) -> None:
    """Refuse a folder we must not write into, before any model is loaded: one that holds anything already
    (a finished run, a model, ...) or one we cannot write to."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file; give --out a new folder.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
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


class RunWriter:
    """The job's side of a run folder. Claims the folder by creating records.jsonl exclusively, so two jobs
    given the same folder cannot both write into it."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._records = (self.dir / "records.jsonl").open("x", encoding="utf-8")
        except FileExistsError:
            raise FileExistsError(
                f"{self.dir} already holds a run (another job claimed it); choose a new --out folder."
            ) from None
        os.chmod(self._records.name, FILE_MODE)

    def write_json(self, name: str, data: object) -> None:
        write_json_atomic(self.dir / name, data)

    def status(self, status: Status) -> None:
        status.updated, status.pid, status.host = _now(), os.getpid(), socket.gethostname()
        self.write_json("status.json", status.to_json())

    def append(self, record: BeforeRecord | StepRecord | FinalRecord) -> None:
        self._records.write(json_line(record.to_json()))
        self._records.flush()

    def close(self) -> None:
        self._records.close()


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
    metrics: dict | None
    skipped_lines: int = 0
    sample_index: dict[str, SampleRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sample_index = {s.record_id: s for s in self.samples}

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


class RunReader:
    """Reopen a run folder, finished or still running. Each call re-reads the files; `snapshot()` reads them once."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not (self.dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.dir}: not a run folder (no config.json).")

    def _json(self, name: str) -> object:
        path = self.dir / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not readable JSON ({err}).") from None

    @property
    def config(self) -> dict:
        config = self._json("config.json")
        if not isinstance(config, dict):
            raise ValueError(f"{self.dir / 'config.json'}: not a JSON object.")
        return config

    @property
    def status(self) -> Status:
        """The job's status; a "running" job whose process is gone on this host reads as "interrupted"."""
        raw = self._json("status.json")
        try:
            status = Status.from_json(raw) if raw is not None else Status(state="unknown")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.dir / 'status.json'}: {err}.") from None
        if status.state == "running" and status.host == socket.gethostname() and not _alive(status.pid):
            status.state = "interrupted"
            status.error = "the process running this job ended before it finished; the records so far are kept."
        return status

    @property
    def samples(self) -> list[SampleRecord]:
        return [SampleRecord.from_json(s) for s in self._json("samples.json") or []]

    @property
    def metrics(self) -> dict | None:
        return self._json("metrics.json")

    def records(self) -> tuple[list[BeforeRecord | StepRecord | FinalRecord], int]:
        """Every complete line of records.jsonl and how many were unreadable. A trailing line without its
        newline is still being written and is left for the next read; a bad line in the middle is skipped."""
        path = self.dir / "records.jsonl"
        if not path.is_file():
            return [], 0
        *lines, _partial = path.read_bytes().split(b"\n")
        out, skipped = [], 0
        for line in lines:
            try:
                record = parse_line(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                skipped += 1
                continue
            if record is not None:
                out.append(record)
        return out, skipped

    def step_records(self) -> list[StepRecord]:
        return [r for r in self.records()[0] if isinstance(r, StepRecord)]

    @property
    def final(self) -> FinalRecord | None:
        return next((r for r in self.records()[0] if isinstance(r, FinalRecord)), None)

    def snapshot(self) -> RunSnapshot:
        records, skipped = self.records()
        return RunSnapshot(
            dir=self.dir,
            config=self.config,
            status=self.status,
            samples=self.samples,
            before=next((r for r in records if isinstance(r, BeforeRecord)), None),
            step_records=[r for r in records if isinstance(r, StepRecord)],
            final=next((r for r in records if isinstance(r, FinalRecord)), None),
            metrics=self.metrics,
            skipped_lines=skipped,
        )


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
    config, status, metrics = run.config, run.status, run.metrics or {}
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
        "auroc": (metrics.get("alignment") or {}).get("auroc"),
        "forgetting_auroc": (metrics.get("forgetting") or {}).get("auroc"),
        "forget_exact": ((metrics.get("forget") or {}).get("after") or {}).get("exact"),
        "retain_exact": ((metrics.get("retain") or {}).get("after") or {}).get("exact"),
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
        except (OSError, ValueError, TypeError, AttributeError) as err:
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
