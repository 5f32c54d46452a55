"""Speed benchmark: what ATWU's per-token weighting costs next to its baselines, and how responsive a job is.

Step time: every method runs as a real `UnlearningJob` on its own copy of the model, same seed, same
config but the method, and the jobs advance round-robin one step at a time, so a busy shared CPU slows
them all alike. A step's time is one `next()` on the job's generator: the step itself plus building and
appending its record, exactly what a user waits for. The engine's own methods are wrapped with timers for a
per-component breakdown (forward, retain loss, weighting, scorer update, record building), and the
precomputation before step 1 (TokenUnlearn's importance, NPO's reference NLL) is reported on its own.

    python bench/speed.py                 # full run on the demo model, writes the speed section of docs/results.md
    python bench/speed.py --quick         # CI smoke (< 1 min), writes nothing unless --out is given
    python bench/speed.py --model smollm2 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atwu_core import metrics
from atwu_core.config import default_preset, make_config
from atwu_core.data import Dataset, load_data
from atwu_core.job import BackgroundJob, StepRecord, UnlearningJob, run_job
from atwu_core.models import LoadedModel, load_model
from atwu_core.runs import RunWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import command_line, environment_line, markdown_table, quiet, write_results_section  # noqa: E402  (bench/ is a folder of scripts)

SPEED_METHODS = ("graddiff", "atwu", "npo", "wga", "tokenunlearn")
BASELINE = "graddiff"
TARGET_RATIO = 1.15
# engine methods timed per call: (name in the report, owner, attribute)
STEP_COMPONENTS = (
    ("forward", "job", "_forget_forward"),
    ("retain", "job", "_retain_loss"),
    ("weigh", "scheme", "weigh"),
    ("update", "scheme", "update"),
    ("record", "job", "_collect"),
)
# created inside the job's loop, so timed on the class and charged to whichever job is stepping
WRITE_COMPONENTS = ((StepRecord, "to_json"), (RunWriter, "append"), (RunWriter, "status"))
PREP_COMPONENTS = (("prepare", "scheme", "prepare"), ("reference_nll", "job", "_sequence_nll"))


# --------------------------------------------------------------------------------------------- timing jobs


class CallTimer:
    """Sums the wall time of calls to wrapped instance methods, so the breakdown comes from the engine's own code."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - start

        setattr(owner, attr, timed)


@dataclass
class TimedJob:
    """One method's job, advanced a step at a time by the benchmark."""

    method: str
    job: UnlearningJob
    timer: CallTimer
    steps: Iterator[StepRecord]
    step_seconds: list[float] = field(default_factory=list)
    step_cpu: list[float] = field(default_factory=list)  # process CPU seconds: the work, whatever else runs on the machine
    prep: dict[str, float] = field(default_factory=dict)
    breakdown: dict[str, float] = field(default_factory=dict)
    last: StepRecord | None = None

    def advance(self) -> None:
        written = WRITE_TIMER.totals["write"]
        start, cpu = time.perf_counter(), time.process_time()
        self.last = next(self.steps)
        self.step_seconds.append(time.perf_counter() - start)
        self.step_cpu.append(time.process_time() - cpu)
        self.timer.totals["write"] += WRITE_TIMER.totals["write"] - written


WRITE_TIMER = CallTimer()


def instrument_writing() -> None:
    """Time record serialisation and run-folder writes (JSON line + atomic status.json with fsync) as "write"."""
    for owner, attr in WRITE_COMPONENTS:
        WRITE_TIMER.wrap(owner, attr, "write")


def timed_job(method: str, model_spec: str, dataset: Dataset, steps: int, seed: int, run_dir: Path) -> TimedJob:
    """A job on a fresh copy of the model (jobs wrap their model in LoRA, so interleaved jobs cannot share one)."""
    config = make_config(method, default_preset(model_spec), steps=steps, seed=seed)
    job = UnlearningJob(config, loaded=load_model(model_spec), dataset=dataset, run_dir=run_dir)
    timer = CallTimer()
    owners = {"job": job, "scheme": job.method.scheme}
    for name, owner, attr in STEP_COMPONENTS + PREP_COMPONENTS:
        timer.wrap(owners[owner], attr, name)
    return TimedJob(method, job, timer, job.steps())


def run_round_robin(jobs: list[TimedJob], warmup: int, measured: int) -> None:
    """Advance every job one step per round, rotating the order; snapshot the timers after the warm-up."""
    for k in range(warmup + measured):
        for job in jobs[k % len(jobs):] + jobs[: k % len(jobs)]:
            job.advance()
            if k == warmup - 1:
                job.prep = {name: job.timer.totals.get(name, 0.0) for name, _, _ in PREP_COMPONENTS}
                job.breakdown = dict(job.timer.totals)
    for job in jobs:
        job.breakdown = {name: (job.timer.totals[name] - job.breakdown.get(name, 0.0)) / measured for name in step_parts()}
        job.steps.close()  # a cancel without the final pass: the model copy is unwrapped again


def step_parts() -> list[str]:
    return [name for name, _, _ in STEP_COMPONENTS] + ["write"]


def step_time(job: TimedJob, warmup: int) -> float:
    """Median step time after the warm-up: robust to the other users of a shared CPU."""
    return statistics.median(job.step_seconds[warmup:])


def step_cpu(job: TimedJob, warmup: int) -> float:
    return statistics.median(job.step_cpu[warmup:])


# --------------------------------------------------------------------------------------------- memory, in a child


def _reset_peak(device: torch.device) -> None:
    """Start a new peak after loading: CUDA's allocator statistics, or Linux's resident high-water mark (VmHWM),
    which the import of torch and transformers would otherwise set once and for all."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device: torch.device) -> float:
    status = Path("/proc/self/status")
    if device.type != "cuda" and status.is_file():
        hwm = next((line for line in status.read_text().splitlines() if line.startswith("VmHWM:")), None)
        if hwm:
            return int(hwm.split()[1]) / 1024
    return metrics.peak_memory_mb(device)


def _peak_memory_child(method: str, model_spec: str, data_spec: str, steps: int, threads: int, run_dir: str) -> tuple[float, float]:
    """(peak MiB, increase over the loaded model's baseline MiB) of a few steps of one method, alone in a process."""
    torch.set_num_threads(threads)
    quiet()
    loaded = load_model(model_spec)
    job = UnlearningJob(make_config(method, default_preset(model_spec), steps=steps), loaded=loaded, dataset=load_data(data_spec), run_dir=run_dir)
    device = next(loaded.model.parameters()).device
    _reset_peak(device)
    baseline = _peak_mb(device)
    gen = job.steps()
    for _ in range(steps):
        next(gen)
    gen.close()
    peak = _peak_mb(device)
    return peak, peak - baseline


def peak_memory(methods: list[str], model_spec: str, data_spec: str, threads: int, root: Path) -> dict[str, tuple[float, float]]:
    """Peak memory per method, each in its own spawned process: a process's peak RSS never goes down, so one
    process cannot tell methods apart on CPU."""
    ctx = multiprocessing.get_context("spawn")
    out = {}
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for method in methods:
            args = (method, model_spec, data_spec, 3, threads, str(root / f"memory-{method}"))
            out[method] = pool.apply(_peak_memory_child, args)
    return out


# --------------------------------------------------------------------------------------------- job-level measures


def throughput(loaded: LoadedModel, preset: str, dataset: Dataset, steps: int | None, eval_cap: int | None, run_dir: Path) -> dict:
    """A default ATWU job end to end: training tokens/s as the engine reports it, plus the wall time with evaluation."""
    start = time.perf_counter()
    job = run_job(make_config("atwu", preset, steps=steps, eval_max_samples=eval_cap), loaded=loaded, dataset=dataset, run_dir=run_dir)
    return {**job.metrics["timing"], "wall_seconds": time.perf_counter() - start, "steps_total": job.config.steps,
            "eval_max_samples": job.config.eval_max_samples}


def first_step_latency(method: str, loaded: LoadedModel, preset: str, dataset: Dataset, run_dir: Path) -> tuple[float, float]:
    """(seconds inside `BackgroundJob.start`, seconds from calling it to the first step line in records.jsonl):
    what the app's Run page waits before its first live update."""
    records = run_dir / "records.jsonl"
    start = time.perf_counter()
    bg = BackgroundJob.start(make_config(method, preset), loaded, dataset, run_dir)
    started = time.perf_counter() - start
    while bg.is_alive() and not (records.is_file() and records.read_text(encoding="utf-8").count("\n") >= 1):
        time.sleep(0.005)
    first = time.perf_counter() - start
    bg.cancel()
    bg.join()
    if bg.error:
        raise RuntimeError(f"{method}: the background job failed: {bg.error}")
    return started, first


def append_cost(record: StepRecord, root: Path, repeats: int) -> dict[str, float]:
    """Seconds per `StepRecord.to_json` and per `RunWriter.append` of a real record, and the line's size."""
    start = time.perf_counter()
    for _ in range(repeats):
        line = record.to_json()
    to_json = (time.perf_counter() - start) / repeats
    writer = RunWriter(root / "append-cost")
    start = time.perf_counter()
    for _ in range(repeats):
        writer.append(line)
    append = (time.perf_counter() - start) / repeats
    writer.close()
    size = (root / "append-cost" / "records.jsonl").stat().st_size / repeats
    return {"to_json": to_json, "append": append, "bytes": size}


def profile_steps(method: str, model_spec: str, dataset: Dataset, steps: int, root: Path, top: int = 20) -> str:
    """torch.profiler's op table (self CPU time) over a few steps of one method, after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    job = timed_job(method, model_spec, dataset, steps + 1, 0, root / f"profile-{method}")
    job.advance()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            job.advance()
    job.steps.close()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


# --------------------------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def speed_lines(jobs: list[TimedJob], warmup: int) -> list[str]:
    """The headline: `<method> <step seconds> <ratio>x`, ratio over GradDiff's step time."""
    base = next((step_time(j, warmup) for j in jobs if j.method == BASELINE), None)
    return [f"{j.method} {step_time(j, warmup):.4f} {step_time(j, warmup) / base:.2f}x" if base else
            f"{j.method} {step_time(j, warmup):.4f} n/a" for j in jobs]


def breakdown_table(jobs: list[TimedJob], warmup: int, memory: dict[str, tuple[float, float]]) -> str:
    names = step_parts()
    base = next((j for j in jobs if j.method == BASELINE), jobs[0])
    head = ["method", "step ms (median)", "step ms (mean)", "step CPU ms (median)", f"CPU ratio over {base.method}"] + \
        [f"{n} ms" for n in names] + \
        ["rest ms (backward, optimiser)", "precompute s", "peak MiB", "peak increase MiB"]
    rows = []
    for j in jobs:
        parts = [j.breakdown[n] for n in names]
        mean = statistics.mean(j.step_seconds[warmup:])
        mem = memory.get(j.method)
        cpu_ratio = f"{step_cpu(j, warmup) / step_cpu(base, warmup):.2f}x"
        rows.append([j.method, _ms(step_time(j, warmup)), _ms(mean), _ms(step_cpu(j, warmup)), cpu_ratio] + [_ms(p) for p in parts] +
                    [_ms(mean - sum(parts)), f"{sum(j.prep.values()):.2f}",
                     f"{mem[0]:.0f}" if mem else "n/a", f"{mem[1]:.0f}" if mem else "n/a"])
    return markdown_table(head, rows)


def verdict(jobs: list[TimedJob], warmup: int) -> str:
    """Whether ATWU meets its overhead target, and where its extra time goes relative to GradDiff."""
    by = {j.method: j for j in jobs}
    if "atwu" not in by or BASELINE not in by:
        return "ATWU or GradDiff not measured: no verdict."
    atwu, base = by["atwu"], by[BASELINE]
    ratio = step_time(atwu, warmup) / step_time(base, warmup)
    cpu_ratio = step_cpu(atwu, warmup) / step_cpu(base, warmup)
    extra = {n: atwu.breakdown[n] - base.breakdown[n] for n in step_parts()}
    extra["rest"] = step_time(atwu, warmup) - sum(atwu.breakdown.values()) - (step_time(base, warmup) - sum(base.breakdown.values()))
    parts = ", ".join(f"{n} {1000 * v:+.1f} ms" for n, v in sorted(extra.items(), key=lambda kv: -abs(kv[1])))
    status = "meets" if ratio <= TARGET_RATIO else "MISSES"
    return (f"ATWU / GradDiff = {ratio:.2f}x in wall time ({cpu_ratio:.2f}x in CPU time): {status} the <= {TARGET_RATIO:.2f}x "
            f"target. ATWU minus GradDiff per step (wall): {parts}.")


# --------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Settings:
    warmup: int
    measured: int
    throughput_steps: int | None  # None: the demo preset's
    eval_cap: int | None  # None: the preset's
    append_repeats: int
    memory: bool  # peak memory needs a process per method
    all_latencies: bool  # time-to-first-step for every method, or ATWU's only


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(warmup=1, measured=3, throughput_steps=3, eval_cap=4, append_repeats=50, memory=False, all_latencies=False)
    return Settings(warmup=2, measured=20, throughput_steps=None, eval_cap=None, append_repeats=500, memory=True, all_latencies=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: few steps, no memory processes, writes nothing unless --out")
    ap.add_argument("--model", default="demo", help="model spec for load_model (default: the embedded demo model)")
    ap.add_argument("--data", default="demo", help="data spec for load_data (default: the demo world)")
    ap.add_argument("--methods", default=",".join(SPEED_METHODS), help="comma-separated methods (graddiff is the ratio's base)")
    ap.add_argument("--steps", type=int, help="measured steps per method, after the warm-up (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared CPU more threads than free cores slows torch down badly)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's op table for ATWU and GradDiff steps")
    ap.add_argument("--out", help="folder whose results.md gets the speed section (default: docs, or nothing with --quick)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    instrument_writing()
    cfg = settings(args.quick)
    measured = args.steps or cfg.measured
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out) if args.out else (None if args.quick else Path(__file__).resolve().parent.parent / "docs")
    env, dataset, t_start = environment_line(args.threads), load_data(args.data), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atwu-speed-") as tmp:
        root = Path(tmp)
        jobs = [timed_job(m, args.model, dataset, cfg.warmup + measured, args.seed, root / m) for m in methods]
        run_round_robin(jobs, cfg.warmup, measured)
        headline = [f"# step seconds: median of {measured} steps after {cfg.warmup} warm-up, round-robin; ratio over {BASELINE}",
                    *speed_lines(jobs, cfg.warmup)]
        print("\n".join(headline), flush=True)
        report = _report_tail(args, cfg, jobs, dataset, root)
    report = f"{report}\n\nBenchmark wall time: {time.perf_counter() - t_start:.0f} s."
    print(report)
    if out is not None:
        title = f"## Speed (`{command_line('speed.py', argv)}`)"
        section = "\n\n".join([title, env, "```\n" + "\n".join(headline) + "\n```", report])
        name = "speed" if args.model == "demo" else f"speed {args.model}"  # one section per model
        print(f"wrote the {name} section of {write_results_section(out, name, section)}")
    return 0


def _report_tail(args: argparse.Namespace, cfg: Settings, jobs: list[TimedJob], dataset: Dataset, root: Path) -> str:
    """Everything after the headline lines, as markdown: breakdown, verdict, memory, throughput, responsiveness, writing cost."""
    memory = peak_memory([j.method for j in jobs], args.model, args.data, args.threads, root) if cfg.memory else {}
    loaded = load_model(args.model)
    preset = default_preset(args.model)
    tp = throughput(loaded, preset, dataset, cfg.throughput_steps, cfg.eval_cap, root / "throughput")
    ref = next((j for j in jobs if j.method == "atwu"), jobs[0])
    latency = {j.method: first_step_latency(j.method, loaded, preset, dataset, root / f"latency-{j.method}")
               for j in (jobs if cfg.all_latencies else [ref])}
    cost = append_cost(ref.last, root, cfg.append_repeats)
    sections = [
        "### Per-step breakdown (ms per step; precompute = before step 1, once per job)\n\n" + breakdown_table(jobs, cfg.warmup, memory),
        "`record` = turning weights and probabilities into per-sample lists; `write` = `StepRecord.to_json`, "
        "`RunWriter.append` and the atomic `status.json` (with fsync) of each step.",
        verdict(jobs, cfg.warmup),
        "Peak memory: " + ("each method alone in a fresh process, 3 steps; increase = over the loaded model "
                           "(CPU: resident high-water mark, reset after loading; CUDA: max allocated)."
                           if memory else "not measured (--quick)."),
        f"### Job throughput (ATWU, {preset} preset, {tp['steps_total']} steps, model `{args.model}`)\n\n"
        f"{tp['tokens_per_second']:.0f} forget+retain tokens/s over the training steps; {tp['mean_step_seconds']:.3f} s/step; "
        f"training {tp['total_seconds']:.1f} s, whole job with evaluation (up to {tp['eval_max_samples']} samples per split) {tp['wall_seconds']:.1f} s.",
        "### App responsiveness (`BackgroundJob.start` to the first step line in records.jsonl)\n\n" + markdown_table(
            ["method", "start() returns s", "first step recorded s"],
            [[m, f"{s:.2f}", f"{f:.2f}"] for m, (s, f) in latency.items()]),
        f"### Writing records\n\nA real step record of `{ref.method}` ({len(ref.last.weights)} samples, {cost['bytes']:.0f} bytes "
        f"a line): `to_json` {_ms(cost['to_json'])} ms, `RunWriter.append` {_ms(cost['append'])} ms, together "
        f"{100 * (cost['to_json'] + cost['append']) / step_time(ref, cfg.warmup):.1f}% of a `{ref.method}` step.",
    ]
    if args.profile:
        for method in ("atwu", BASELINE):
            sections.append(f"### torch.profiler, {method}, 5 steps\n\n```\n{profile_steps(method, args.model, dataset, 5, root)}\n```")
    return "\n\n".join(sections)


if __name__ == "__main__":
    sys.exit(main())
