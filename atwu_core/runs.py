"""Run folders: one per job, everything needed to reopen it elsewhere (see docs/architecture.md).

Whole files are written atomically (temp file + os.replace) so a reader never sees half a file; step records
are appended one JSON line at a time and flushed, so a reader can follow a job while it runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from atwu_core.data import EncodedSample


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


def _finite(obj):
    """JSON has no NaN/inf: write them as null rather than producing a file other tools cannot parse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_finite(data), fh, indent=1, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """The job's side of a run folder."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if (self.dir / "records.jsonl").exists():
            raise FileExistsError(f"{self.dir} already holds a run; choose a new --out folder.")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._records = (self.dir / "records.jsonl").open("a", encoding="utf-8")

    def write_json(self, name: str, data: object) -> None:
        write_json_atomic(self.dir / name, data)

    def status(self, state: str, steps_done: int, steps_total: int, error: str | None = None) -> None:
        self.write_json("status.json", {"state": state, "error": error, "steps_done": steps_done,
                                        "steps_total": steps_total, "updated": _now(),
                                        "pid": os.getpid(), "host": socket.gethostname()})

    def append(self, record: dict) -> None:
        self._records.write(json.dumps(_finite(record), separators=(",", ":")) + "\n")
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class RunReader:
    """Reopen a run folder, finished or still running (re-reads the files on each access)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not (self.dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.dir}: not a run folder (no config.json).")

    def _json(self, name: str) -> dict | list | None:
        path = self.dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    @property
    def config(self) -> dict:
        return self._json("config.json")

    @property
    def status(self) -> dict:
        """The job's status; a "running" job whose process is gone on this host reads as "interrupted"."""
        status = self._json("status.json") or {"state": "unknown", "error": None, "steps_done": 0, "steps_total": 0}
        if status["state"] == "running" and status.get("host") == socket.gethostname() and not _alive(status.get("pid")):
            status = {**status, "state": "interrupted",
                      "error": "the process running this job ended before it finished; the records so far are kept."}
        return status

    @property
    def samples(self) -> list[dict]:
        return self._json("samples.json") or []

    def encoded_samples(self) -> list[EncodedSample]:
        """The forget samples as answer-only EncodedSamples: what the alignment metrics take."""
        return [
            EncodedSample(record_id=s["id"], input_ids=list(s["token_ids"]), labels=list(s["token_ids"]), prompt_length=0,
                          answer_tokens=list(s["tokens"]), answer_offsets=[tuple(o) for o in s["offsets"]],
                          span_mask=[bool(m) for m in s["span_mask"]], has_ground_truth=bool(s["has_ground_truth"]))
            for s in self.samples
        ]

    @property
    def metrics(self) -> dict | None:
        return self._json("metrics.json")

    def records(self) -> list[dict]:
        """Every complete line of records.jsonl (a line still being written is skipped)."""
        path = self.dir / "records.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def steps(self) -> list[dict]:
        return [r for r in self.records() if r.get("type") == "step"]

    @property
    def final(self) -> dict | None:
        return next((r for r in self.records() if r.get("type") == "final"), None)

    def weight_matrix(self, sample_id: str, key: str = "weights") -> tuple[list[int], list[list[float]]]:
        """Steps × tokens for one sample, carrying the last weights forward for steps where it was not in the batch."""
        steps, rows, last = [], [], None
        for rec in self.steps():
            last = rec[key].get(sample_id, last)
            if last is not None:
                steps.append(rec["step"])
                rows.append(last)
        return steps, rows

    def final_weights(self) -> dict[str, list[float]]:
        """Each sample's final weights: the final pass if the job got there, else the last recorded ones."""
        if self.final is not None:
            return self.final["weights"]
        latest: dict[str, list[float]] = {}
        for rec in self.steps():
            latest.update(rec["weights"])
        return latest


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


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Summaries of the run folders under `root`, newest first."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            run = RunReader(path)
            config = run.config
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            continue
        metrics = run.metrics or {}
        out.append({
            "run_dir": str(path),
            "method": config.get("method"),
            "model": config.get("model"),
            "data": config.get("data"),
            "created": config.get("created"),
            "state": run.status["state"],
            "steps": run.status.get("steps_done"),
            "auroc": (metrics.get("alignment") or {}).get("auroc"),
            "forget_exact": ((metrics.get("forget") or {}).get("after") or {}).get("exact"),
            "retain_exact": ((metrics.get("retain") or {}).get("after") or {}).get("exact"),
        })
    return out


def wait_for_state(run_dir: str | Path, states: tuple[str, ...], timeout: float) -> dict:
    """Poll a run's status until it reaches one of `states` (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    status_file = Path(run_dir) / "status.json"
    state = "not started"
    while time.monotonic() < deadline:
        if status_file.is_file():
            status = json.loads(status_file.read_text(encoding="utf-8"))
            state = status["state"]
            if state in states:
                return status
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} did not reach {states} within {timeout} s (now {state}).")
