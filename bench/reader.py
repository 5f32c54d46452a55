"""What reading a large run folder costs: the first snapshot, and each live refresh after it.

A real 3-step demo job writes the run folder; its step lines are then repeated (renumbered) up to `--steps`, as a
long job would have written them. Prints the file size, the first snapshot's time and memory, and the time of a
refresh that finds one new line (the live view's case: `RecordLog` parses only what was appended).

    python bench/reader.py [--steps 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from atwu_core.config import make_config
from atwu_core.job import run_job
from atwu_core.runs import RecordLog, RunReader


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def grow(run_dir: Path, steps: int) -> str:
    """Repeat the job's step lines up to `steps` (before line first, final line last); returns one more step line."""
    path = run_dir / "records.jsonl"
    lines = path.read_text().splitlines()
    before, final = lines[0], lines[-1]
    step_lines = [json.loads(line) for line in lines[1:-1]]
    with path.open("w") as fh:
        fh.write(before + "\n")
        for k in range(steps):
            fh.write(json.dumps({**step_lines[k % len(step_lines)], "step": k + 1}, separators=(",", ":")) + "\n")
        fh.write(final + "\n")
    return json.dumps({**step_lines[0], "step": steps + 1}, separators=(",", ":")) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = run_job(make_config("atwu", steps=3, eval_max_samples=2), run_dir=Path(tmp) / "run")
        extra = grow(job.run_dir, args.steps)
        size = (job.run_dir / "records.jsonl").stat().st_size / 2**20
        reader, log = RunReader(job.run_dir), RecordLog(job.run_dir / "records.jsonl")
        rss, t0 = rss_mb(), time.perf_counter()
        snap = reader.snapshot(log)
        first, grown = time.perf_counter() - t0, rss_mb() - rss
        with (job.run_dir / "records.jsonl").open("a") as fh:
            fh.write(extra)
        t0 = time.perf_counter()
        again = reader.snapshot(log)
        refresh = time.perf_counter() - t0
        assert len(again.step_records) == len(snap.step_records) + 1
        load = os.getloadavg()[0]
        print(f"records.jsonl: {size:.1f} MB, {args.steps} steps (load average {load:.1f})")
        print(f"first snapshot: {first:.2f} s, +{grown:.0f} MB resident ({first / size:.3f} s/MB)")
        print(f"refresh with one new line: {refresh * 1000:.1f} ms")


if __name__ == "__main__":
    main()
