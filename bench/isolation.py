"""Job isolation: does work in the app's server process slow a job that runs at the same time?

The app runs each job in a worker process (`atwu_core.worker.JobQueue`); it used to run it on a thread of the
server. This script runs a demo ATWU job both ways and measures its steps/s over a window with the server idle,
then over a window while the server process loads models and answers questions (what the Model and Query pages
do), with one torch thread in every process. Prints a table; the machine's load is on its first line.

    python bench/isolation.py                   # 20 s windows, the server loads the demo model
    python bench/isolation.py --window 10 --server-model demo-smollm2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import environment_line, markdown_table, quiet

from atwu_core.cancel import CancelToken
from atwu_core.config import make_config
from atwu_core.data import Dataset, encode_records, load_data
from atwu_core.generation import greedy_answers
from atwu_core.job import UnlearningJob
from atwu_core.models import load_model
from atwu_core.runs import RunReader
from atwu_core.worker import JobQueue

Start = Callable[[Path], tuple[Callable[[], object], Callable[[], object]]]  # run folder -> (stop, wait)


def steps_done(run_dir: Path) -> int:
    try:
        return RunReader(run_dir).status.steps_done
    except (FileNotFoundError, ValueError):  # not started, or status.json mid-replace
        return 0


def rate(run_dir: Path, seconds: float, work: Callable[[], None] | None = None) -> float:
    """The job's steps/s over `seconds`, with `work` repeated in this thread meanwhile."""
    start, t0 = steps_done(run_dir), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        work() if work else time.sleep(0.1)
    return (steps_done(run_dir) - start) / (time.perf_counter() - t0)


def server_work(dataset: Dataset, model: str) -> Callable[[], None]:
    """What the server does for the Model and Query pages: load a model, answer questions with it."""

    def work() -> None:
        loaded = load_model(model)
        greedy_answers(loaded.model, loaded.tokenizer, encode_records(dataset.forget[:8], loaded.tokenizer))

    return work


def in_worker(dataset: Dataset) -> Start:
    def start(run_dir: Path):
        queue = JobQueue()
        queue.submit(make_config("atwu", steps=100_000, eval_max_samples=2), dataset, run_dir)
        return queue.cancel, queue.wait

    return start


def on_thread(dataset: Dataset) -> Start:
    def start(run_dir: Path):
        job, cancel = UnlearningJob(make_config("atwu", steps=100_000, eval_max_samples=2), dataset=dataset,
                                    run_dir=run_dir), CancelToken()  # fmt: skip
        thread = threading.Thread(target=job.run, args=(cancel,), daemon=True)
        thread.start()
        return cancel.cancel, thread.join

    return start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per measurement window (default 20)")
    parser.add_argument("--server-model", default="demo", help="the model the server loads and queries (default demo)")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the workers' torch threads
    dataset, rows = load_data("demo"), []
    header = environment_line(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, start in (("a worker process (the app now)", in_worker), ("a thread of the server", on_thread)):
            run_dir = Path(tmp) / name.split()[1]
            stop, wait = start(dataset)(run_dir)
            while steps_done(run_dir) < 2:  # training under way
                time.sleep(0.1)
            idle = rate(run_dir, args.window)
            busy = rate(run_dir, args.window, server_work(dataset, args.server_model))
            stop()
            wait()
            rows.append([name, f"{idle:.2f}", f"{busy:.2f}", f"{busy / idle:.2f}"])
    table = markdown_table(["job runs on", "steps/s, server idle", "steps/s, server loading + querying", "ratio"], rows)
    return f"{header}\n\n{table}"


if __name__ == "__main__":
    print(main())
