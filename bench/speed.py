"""Speed benchmark: what ATWU's per-token weighting costs next to its baselines, on a CPU and on a GPU.

CPU (default): every method runs as a real `UnlearningJob` on its own copy of the model, same seed, same config
but the method; the jobs advance round-robin one step at a time (one `next()` on `job.stream()`: the step plus
its record), so a busy shared CPU slows them all alike. A few more steps per method run under torch.profiler,
whose ranges the loop emits ("atwu.forward", "atwu.retain", "atwu.update", "atwu.before") give the breakdown.

GPU (`--device cuda`): a random-weight Llama in bf16 (Llama-3.2-1B and Llama-3.1-8B shapes), LoRA r 16 on every
linear layer, 8 forget + 8 retain samples of 256 tokens a step: ATWU, GradDiff and NPO through the engine, against
a plain peft + transformers GradDiff loop (the reference), with tokens/s, model-FLOPs utilisation and peak memory.
`--device cpu --gpu-config tiny` runs that code path on a tiny config in seconds (what the tests check).

    python bench/speed.py                        # CPU, demo model: writes the speed section of docs/results.md
    python bench/speed.py --quick                # CI smoke (about a minute), writes nothing unless --out is given
    python bench/speed.py --model smollm2        # the real 135M model (its own section)
    python bench/speed.py --device cuda --compile    # GPU: 1b and 8b, writes the "speed gpu" section
    python bench/speed.py --device cuda --gpu-config 8b --gradient-checkpointing   # its "checkpointing" section
    python bench/speed.py --device cpu --gpu-config tiny --quick
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from atwu_core import metrics
from atwu_core.config import default_preset, make_config
from atwu_core.data import Dataset, EncodedSample, load_data
from atwu_core.generation import collate, pad_token_id
from atwu_core.job import UnlearningJob, run_job
from atwu_core.models import DEMO_MODEL, LoadedModel, ModelInfo, load_model
from atwu_core.records import StepRecord
from atwu_core.runs import RunReader
from atwu_core.worker import JobQueue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment_line, given, markdown_table, quiet, write_results_section  # noqa: E402

SPEED_METHODS = ("graddiff", "atwu", "npo", "wga", "tokenunlearn")
BASELINE = "graddiff"
TARGET_RATIO = 1.05
RANGES = ("atwu.forward", "atwu.retain", "atwu.update")  # emitted by the job's loop (record_function)
QUICK_METHODS = ("graddiff", "atwu")


# --------------------------------------------------------------------------------------------- CPU: timing jobs


@dataclass
class TimedJob:
    """One method's job, advanced a step at a time by the benchmark."""

    method: str
    job: UnlearningJob
    stream: Iterator[StepRecord]
    step_seconds: list[float] = field(default_factory=list)
    step_cpu: list[float] = field(default_factory=list)  # process CPU seconds: the work, whatever else runs
    breakdown: dict[str, float] = field(default_factory=dict)  # range -> seconds per step (profiled steps)
    before_seconds: float = 0.0  # the before pass (reference NLL, quality), once per job
    measured: int = 0  # timed steps after the warm-up (the profiled ones follow)
    syncs: dict[str, float] = field(default_factory=dict)  # sync_counts over one more step

    def advance(self) -> float:
        start, cpu = time.perf_counter(), time.process_time()
        next(self.stream)
        _sync(self.job.loaded.model)
        self.step_seconds.append(time.perf_counter() - start)
        self.step_cpu.append(time.process_time() - cpu)
        return self.step_seconds[-1]


def _sync(model: torch.nn.Module) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def timed_job(method: str, model_spec: str, dataset: Dataset, steps: int, seed: int, run_dir: Path) -> TimedJob:
    """A job on a fresh copy of the model (jobs wrap their model in LoRA, so interleaved jobs cannot share one)."""
    config = make_config(method, default_preset(model_spec).name, steps=steps, seed=seed, eval_max_samples=1)
    job = UnlearningJob(config, loaded=load_model(model_spec), dataset=dataset, run_dir=run_dir)
    return TimedJob(method, job, job.stream())


def run_round_robin(jobs: list[TimedJob], warmup: int, measured: int, profiled: int) -> None:
    """Advance every job one step per round, rotating the order; then profile a few steps of each."""
    for k in range(warmup + measured):
        for job in jobs[k % len(jobs) :] + jobs[: k % len(jobs)]:
            job.advance()
    for job in jobs:
        job.measured = measured
        job.before_seconds = job.step_seconds[0] - statistics.median(job.step_seconds[warmup:])
        job.breakdown = profile_ranges(job, profiled)
        job.syncs = sync_counts(job.advance, 1)
        job.stream.close()  # a cancel without the final pass: the model copy is unwrapped again


def profile_ranges(job: TimedJob, steps: int) -> dict[str, float]:
    """Seconds per step in each of the loop's ranges, and the whole step, over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        total = sum(job.advance() for _ in range(steps))
    times = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in RANGES}
    return {"step": total / steps, **{r: times.get(r, 0.0) / steps for r in RANGES}}


def step_time(job: TimedJob, warmup: int) -> float:
    """Median step time after the warm-up (and without the profiler): robust to other users of a shared CPU."""
    return statistics.median(job.step_seconds[warmup : warmup + job.measured])


def step_cpu(job: TimedJob, warmup: int) -> float:
    return statistics.median(job.step_cpu[warmup : warmup + job.measured])


# --------------------------------------------------------------------------------------------- host syncs, any device

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")  # .item()/bool()/int(), boolean indexing: the host reads
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")  # the waits themselves
OPTIMIZER_RANGE = "Optimizer.step#"  # torch.optim's profiler range


class HostCopies(TorchFunctionMode):
    """Counts, on this thread, the tensor reads the profiler cannot see on a CPU: `.tolist()`, `.numpy()` and
    blocking `.cpu()` (on a GPU each copies device memory to the host and waits for it). `.to("cpu")` is left out:
    on a CPU it cannot be told from the no-op `.to(device)` library code does (on a GPU the CUDA count has it)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("tolist", "numpy") or (name == "cpu" and not kwargs.get("non_blocking", False)):
            self.count += 1
        return func(*args, **kwargs)


def sync_counts(step: Callable[[], object], steps: int) -> dict[str, float]:
    """Per step of `step()`, under torch.profiler: host syncs (ops whose result the host reads, plus blocking
    copies to the host), AdamW step-counter reads (host scalars of an unfused optimizer or of the CPU's fused
    kernel: reads of host memory, not syncs, so counted apart), the CUDA runtime's own waits (on a GPU), and aten
    operator calls (nested calls included)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    copies = HostCopies()
    with profile(activities=activities) as prof, copies:
        for _ in range(steps):
            step()
    events = prof.events()

    def in_optimizer(event) -> bool:
        while event is not None:
            if event.name.startswith(OPTIMIZER_RANGE):
                return True
            event = event.cpu_parent
        return False

    reads = [e for e in events if e.name in SYNC_OPS]
    counters = sum(in_optimizer(e) for e in reads)
    return {
        "host syncs": (len(reads) - counters + copies.count) / steps,
        "optimizer counter reads": counters / steps,
        "CUDA syncs": sum(e.name in CUDA_SYNCS for e in events) / steps,
        "aten ops": sum(e.name.startswith("aten::") for e in events) / steps,
    }


# --------------------------------------------------------------------------------------------- CPU: memory, in a child


def _peak_memory_child(method: str, model_spec: str, data_spec: str, steps: int, threads: int, run_dir: str) -> float:
    """Peak resident MiB over a few steps of one method, alone in a process (a process's peak never goes down)."""
    torch.set_num_threads(threads)
    quiet()
    loaded = load_model(model_spec)
    config = make_config(method, default_preset(model_spec).name, steps=steps)
    gen = UnlearningJob(config, loaded=loaded, dataset=load_data(data_spec), run_dir=run_dir).stream()
    for _ in range(steps):
        next(gen)
    gen.close()
    return metrics.peak_memory_mb(next(loaded.model.parameters()).device)


def peak_memory(methods: list[str], model_spec: str, data_spec: str, threads: int, root: Path) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return {
            m: pool.apply(_peak_memory_child, (m, model_spec, data_spec, 3, threads, str(root / f"mem-{m}")))
            for m in methods
        }


# --------------------------------------------------------------------------------------------- CPU: job-level measures


def throughput(
    loaded: LoadedModel, preset: str, dataset: Dataset, steps: int | None, eval_cap: int | None, run_dir: Path
) -> dict:
    """A default ATWU job end to end: training tokens/s as the engine reports it, plus the wall time with evaluation."""
    start = time.perf_counter()
    job = run_job(
        make_config("atwu", preset, **given(steps=steps, eval_max_samples=eval_cap)),
        loaded=loaded,
        dataset=dataset,
        run_dir=run_dir,
    )
    return {
        **job.metrics.timing.to_json(),
        "wall_seconds": time.perf_counter() - start,
        "steps_total": job.config.steps,
        "eval_max_samples": job.config.eval_max_samples,
    }


def first_step_latency(method: str, model: str, preset: str, dataset: Dataset, run_dir: Path) -> float:
    """Seconds from `JobQueue.submit` (the app's Run) to the first step line in records.jsonl: the app's first live
    update, including the worker process's start and its model load."""
    records = run_dir / "records.jsonl"
    queue = JobQueue()
    start = time.perf_counter()
    queue.submit(make_config(method, preset, model=model), dataset, run_dir)
    while queue.busy() and not (records.is_file() and '"step"' in records.read_text(encoding="utf-8")):
        time.sleep(0.005)
    first = time.perf_counter() - start
    queue.cancel(run_dir)
    queue.wait()
    status = RunReader(run_dir).status
    if status.state == "failed":
        raise RuntimeError(f"{method}: the worker job failed: {status.error}")
    return first


# --------------------------------------------------------------------------------------------- CPU: report


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def speed_lines(jobs: list[TimedJob], warmup: int) -> list[str]:
    """The headline: `<method> <step seconds> <ratio>x`, ratio over GradDiff's step time."""
    base = next((step_time(j, warmup) for j in jobs if j.method == BASELINE), None)
    return [
        f"{j.method} {step_time(j, warmup):.4f} " + (f"{step_time(j, warmup) / base:.2f}x" if base else "n/a")
        for j in jobs
    ]


def breakdown_table(jobs: list[TimedJob], warmup: int, memory: dict[str, float]) -> str:
    base = next((j for j in jobs if j.method == BASELINE), jobs[0])
    head = [
        "method",
        "step ms (median)",
        "step CPU ms",
        f"CPU ratio over {base.method}",
        "profiled step ms",
        *[f"{r.removeprefix('atwu.')} ms" for r in RANGES],
        "rest ms (weights, losses, record)",
        "before pass s",
        "peak MiB",
        "host syncs/step",
        "aten calls/step",
    ]
    rows = []
    for j in jobs:
        b = j.breakdown
        rest = b["step"] - sum(b[r] for r in RANGES)
        rows.append(
            [
                j.method,
                _ms(step_time(j, warmup)),
                _ms(step_cpu(j, warmup)),
                f"{step_cpu(j, warmup) / step_cpu(base, warmup):.2f}x",
                _ms(b["step"]),
                *[_ms(b[r]) for r in RANGES],
                _ms(rest),
                f"{j.before_seconds:.2f}",
                f"{memory[j.method]:.0f}" if j.method in memory else "n/a",
                f"{j.syncs['host syncs']:g}",
                f"{j.syncs['aten ops']:,.0f}",
            ]
        )
    return markdown_table(head, rows)


def verdict(jobs: list[TimedJob], warmup: int) -> str:
    by = {j.method: j for j in jobs}
    if "atwu" not in by or BASELINE not in by:
        return "ATWU or GradDiff not measured: no verdict."
    ratio = step_time(by["atwu"], warmup) / step_time(by[BASELINE], warmup)
    cpu_ratio = step_cpu(by["atwu"], warmup) / step_cpu(by[BASELINE], warmup)
    status = "meets" if ratio <= TARGET_RATIO else "MISSES"
    return (
        f"ATWU / GradDiff = {ratio:.2f}x in wall time ({cpu_ratio:.2f}x in CPU time): {status} the "
        f"<= {TARGET_RATIO:.2f}x target."
    )


# --------------------------------------------------------------------------------------------- GPU: random Llamas

GPU_CONFIGS = {  # LlamaConfig fields; 1b = Llama-3.2-1B's shape (untied head), 8b = Llama-3.1-8B's
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
}
GPU_METHODS = ("graddiff", "atwu", "npo")
SEQ, BATCH = 256, 8  # forget and retain: 8 samples of 256 tokens each a step
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, no sparsity


def random_llama(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """A random-weight Llama of a named shape, built on `device` in `dtype`, with the demo tokenizer (its ids are a
    subset of every config's vocabulary)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**GPU_CONFIGS[name], max_position_embeddings=4 * SEQ, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = ModelInfo(
        f"random-{name}",
        "LlamaForCausalLM",
        sum(p.numel() for p in model.parameters()),
        device,
        str(dtype).removeprefix("torch."),
        config.vocab_size,
    )
    return LoadedModel(model, AutoTokenizer.from_pretrained(DEMO_MODEL), info)


def long_dataset(tokenizer) -> Dataset:
    """The demo world with every answer extended by other answers until a sample fills SEQ tokens (truncated there),
    so a step's batches are 8 x 256 tokens; the ground-truth spans stay on each answer's own text."""
    world = load_data("demo")
    filler = " ".join(r.answer for r in world.forget + world.retain)
    while len(tokenizer(filler)["input_ids"]) < SEQ:
        filler = f"{filler} {filler}"

    def long(records):
        return [dataclasses.replace(r, answer=f"{r.answer} {filler}") for r in records[:BATCH]]

    return Dataset("demo-long", long(world.forget), long(world.retain), [])


@dataclass(frozen=True)
class Loop:
    """One row of the GPU table: an engine job (a method, with job settings) or the plain peft loop."""

    label: str
    method: str | None = None  # None: the plain loop
    settings: tuple[tuple[str, object], ...] = ()


GPU_LOOPS = (
    Loop("graddiff", "graddiff"),
    Loop("atwu", "atwu"),
    Loop("npo", "npo"),
    Loop("graddiff, bf16 LoRA", "graddiff", (("lora_dtype", "model"),)),
    Loop("plain peft GradDiff"),
)
COMPILED = Loop("graddiff, compiled", "graddiff", (("compile", True),))


@dataclass
class LoopResult:
    seconds: float  # median step
    tokens: int  # a step
    peak_mib: float
    first_seconds: float  # the first step (the compiled row: the compilation is in it)
    syncs: dict[str, float]


def gpu_job(
    loop: Loop, loaded: LoadedModel, dataset: Dataset, steps: int, run_dir: Path, checkpointing: bool
) -> UnlearningJob:
    config = make_config(
        loop.method,
        "demo",
        steps=steps,
        forget_batch_size=BATCH,
        retain_batch_size=BATCH,
        lora_rank=16,
        lora_alpha=32,
        lora_targets="all-linear",
        max_length=SEQ,
        eval_max_samples=1,
        gradient_checkpointing=checkpointing,
        **dict(loop.settings),
    )
    with warnings.catch_warnings():  # "truncated to max_length": on purpose
        warnings.simplefilter("ignore")
        return UnlearningJob(config, loaded=loaded, dataset=dataset, run_dir=run_dir)


def measure(
    step: Callable[[], object], loaded: LoadedModel, warmup: int, measured: int, counted: int
) -> tuple[list[float], float, dict[str, float]]:
    """(seconds of every timed step, peak MiB over the measured ones, sync counts over `counted` more)."""
    seconds = []
    for k in range(warmup + measured):
        if k == warmup:
            _reset_peak(loaded)
        start = time.perf_counter()
        step()
        _sync(loaded.model)
        seconds.append(time.perf_counter() - start)
    peak = _peak_mb(loaded)
    return seconds, peak, sync_counts(step, counted)


def engine_loop(job: UnlearningJob, warmup: int, measured: int, counted: int) -> LoopResult:
    """A job through its generator: the first `next()` also runs the before pass, so the first step is timed from
    the second `next()` on (after one untimed step)."""
    stream = job.stream()
    next(stream)
    seconds, peak, syncs = measure(lambda: next(stream), job.loaded, warmup, measured, counted)
    stream.close()
    return LoopResult(statistics.median(seconds[warmup:]), job.records[-1].tokens, peak, seconds[0], syncs)


@contextlib.contextmanager
def plain_loop(
    loaded: LoadedModel, forget: list[EncodedSample], retain: list[EncodedSample], checkpointing: bool
) -> Iterator[tuple[Callable[[], None], int]]:
    """The reference: GradDiff as a user would write it with peft and transformers (full logits, the model's own
    loss, default AdamW, gradient checkpointing when the engine's rows use it), on the same samples and LoRA
    settings. Yields (one step, tokens a step)."""
    from peft import LoraConfig, get_peft_model

    device = next(loaded.model.parameters()).device
    pad = pad_token_id(loaded.tokenizer)
    f, r = ({k: v.to(device) for k, v in collate(s, pad).items()} for s in (forget, retain))
    torch.manual_seed(0)
    model = get_peft_model(
        loaded.model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def step() -> None:
        loss = -model(**f).loss + model(**r).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss.item()

    try:
        yield step, int(f["attention_mask"].sum() + r["attention_mask"].sum())
    finally:
        if checkpointing:
            model.disable_input_require_grads()
            model.gradient_checkpointing_disable()
        loaded.model = model.unload().eval()


def _reset_peak(loaded: LoadedModel) -> None:
    if next(loaded.model.parameters()).is_cuda:
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(loaded: LoadedModel) -> float:
    return metrics.peak_memory_mb(next(loaded.model.parameters()).device)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def model_flops(loaded: LoadedModel, tokens: int) -> float:
    """Model FLOPs of a training step (PaLM's convention: 6 N + 12 L T d per token, N the non-embedding parameters;
    it counts the weight gradients a LoRA step skips, so a LoRA step's MFU reads lower than its hardware use)."""
    c = loaded.model.config
    n = loaded.info.n_params - loaded.model.get_input_embeddings().weight.numel()
    return tokens * (6 * n + 12 * c.num_hidden_layers * SEQ * c.hidden_size)


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((f for key, f in PEAK_BF16_FLOPS.items() if key in name), None)


GPU_HEAD = [
    "model", "params", "loop", "step s (median)", f"over {BASELINE}", "over plain", "tokens/s", "MFU", "peak GiB",
    "host syncs/step", "CUDA waits/step", "aten calls/step", "first step s",
]  # fmt: skip


def gpu_rows(name: str, args: argparse.Namespace, cfg: Settings, root: Path) -> list[list[str]]:
    """One table row per loop on a random model of shape `name`."""
    warmup, measured, counted = cfg.warmup, args.steps or cfg.gpu_measured, cfg.counted
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    loaded = random_llama(name, args.device, dtype)
    dataset = long_dataset(loaded.tokenizer)
    loops = [*GPU_LOOPS[:-1], *([COMPILED] if args.compile else []), GPU_LOOPS[-1]]
    results: dict[str, LoopResult] = {}
    encoded: UnlearningJob | None = None  # an engine job's encoded samples: the plain loop's batches
    for loop in loops:
        if loop.method is None:
            with plain_loop(loaded, encoded.forget, encoded.retain, args.gradient_checkpointing) as (step, tokens):
                seconds, peak, syncs = measure(step, loaded, warmup, measured, counted)
            results[loop.label] = LoopResult(statistics.median(seconds[warmup:]), tokens, peak, seconds[0], syncs)
            continue
        steps = 1 + warmup + measured + counted + 1  # the last step's `next()` would run the final pass
        encoded = gpu_job(loop, loaded, dataset, steps, root / f"{name}-{loop.label}", args.gradient_checkpointing)
        results[loop.label] = engine_loop(encoded, warmup, measured, counted)
    peak, base, plain = peak_flops(), results[BASELINE].seconds, results[GPU_LOOPS[-1].label].seconds
    rows = []
    for label, res in results.items():
        mfu = f"{100 * model_flops(loaded, res.tokens) / res.seconds / peak:.1f}%" if peak else "n/a"
        rows.append(
            [
                name,
                _count(loaded.info.n_params),
                label,
                f"{res.seconds:.3f}",
                f"{res.seconds / base:.2f}x",
                f"{res.seconds / plain:.2f}x",
                f"{res.tokens / res.seconds:,.0f}",
                mfu,
                f"{res.peak_mib / 1024:.1f}",
                f"{res.syncs['host syncs']:g}",
                f"{res.syncs['CUDA syncs']:g}" if args.device.startswith("cuda") else "n/a",
                f"{res.syncs['aten ops']:,.0f}",
                f"{res.first_seconds:.2f}",
            ]
        )
    del loaded
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------- GPU: a whole job


class PhaseClock:
    """Seconds in each phase of a job, read off `job.status.phase` by a thread polling every 5 ms (phases last
    seconds), and the time of the first step record."""

    def __init__(self, job: UnlearningJob):
        self.job, self.seconds, self._stop = job, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        phase, since = None, time.perf_counter()
        while not self._stop.is_set():
            now_phase = getattr(getattr(self.job, "status", None), "phase", None)
            if now_phase != phase:
                now = time.perf_counter()
                if phase is not None:
                    self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
                phase, since = now_phase, now
            time.sleep(0.005)

    def __enter__(self) -> PhaseClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def whole_job(name: str, device: str, steps: int | None, eval_cap: int, root: Path) -> list[str]:
    """A default-length ATWU job (the demo preset's 40 steps and batches, LoRA r 16 on every linear layer) on the
    demo world, evaluation on up to `eval_cap` samples per split, on a random model of shape `name`: seconds to the
    first step record, in each phase, and in all."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    loaded = random_llama(name, device, dtype)
    with torch.no_grad():  # a random head gives every token ~1/V, which the job's collapse check refuses
        loaded.model.get_output_embeddings().weight.mul_(100.0)
    config = make_config(
        "atwu",
        "demo",
        lora_rank=16,
        lora_alpha=32,
        lora_targets="all-linear",
        **given(steps=steps, eval_max_samples=eval_cap),
    )
    job = UnlearningJob(config, loaded=loaded, dataset=load_data("demo"), run_dir=root / f"job-{name}")
    start, first = time.perf_counter(), None
    with PhaseClock(job) as clock:
        for _ in job.stream():
            first = first or time.perf_counter() - start
            _sync(loaded.model)
        total = time.perf_counter() - start
    del loaded
    phases = [f"{clock.seconds.get(p, 0.0):.1f}" for p in ("before", "training", "final", "after")]
    return [name, str(config.steps), str(config.eval_max_samples), f"{first:.1f}", *phases, f"{total:.1f}"]


def gpu_report(args: argparse.Namespace, cfg: Settings) -> str:
    names = [args.gpu_config] if args.gpu_config else ["1b", "8b"]
    with tempfile.TemporaryDirectory(prefix="atwu-speed-gpu-") as tmp:
        rows = [row for name in names for row in gpu_rows(name, args, cfg, Path(tmp))]
        jobs = [whole_job(name, args.device, cfg.job_steps, cfg.job_eval, Path(tmp)) for name in names]
    table = markdown_table(GPU_HEAD, rows)
    job_table = markdown_table(
        ["model", "steps", "eval samples/split", "first step record s", "before s", "training s", "final pass s",
         "after s", "total s"],
        jobs,
    )  # fmt: skip
    return (
        f"{table}\n\nRandom-weight Llama, {'bf16' if args.device.startswith('cuda') else 'fp32'}, LoRA r 16 on "
        f"every linear layer, forget + retain {BATCH} x {SEQ} tokens a step, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'} (the plain loop's too); MFU = model FLOPs (6N + 12LTd a "
        "token) / step time / the chip's dense bf16 peak. The plain loop computes full logits and the model's own "
        "loss. Host syncs: profiler-counted ops whose result the host reads (`_local_scalar_dense`, `nonzero`) and "
        "blocking copies to the host, per step; AdamW's step-counter reads (host scalars) are not counted; CUDA "
        "waits: the runtime's synchronize calls. First step: the first timed step (the compiled row compiles in "
        f"it).\n\n### A whole job (ATWU, demo preset, demo world)\n\n{job_table}"
    )


# --------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Settings:
    warmup: int
    measured: int
    profiled: int
    gpu_measured: int
    counted: int  # GPU section: steps under the profiler, counting syncs
    throughput_steps: int | None  # None: the preset's
    eval_cap: int | None  # None: the preset's
    memory: bool  # CPU peak memory needs a process per method
    job_steps: int | None  # GPU section's whole job (None: the preset's 40)
    job_eval: int  # and its evaluation samples per split


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(
            warmup=1, measured=3, profiled=1, gpu_measured=2, counted=1, throughput_steps=3, eval_cap=4,
            memory=False, job_steps=2, job_eval=2,
        )  # fmt: skip
    return Settings(
        warmup=2, measured=20, profiled=3, gpu_measured=10, counted=2, throughput_steps=None, eval_cap=None,
        memory=True, job_steps=None, job_eval=32,
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="few steps, no memory processes, writes nothing unless --out")
    ap.add_argument("--model", default="demo", help="CPU section: model spec for load_model (default: demo)")
    ap.add_argument("--data", default="demo", help="CPU section: data spec for load_data (default: the demo world)")
    ap.add_argument(
        "--methods",
        help=f"CPU section: comma-separated methods (default {','.join(SPEED_METHODS)}; "
        f"--quick: {','.join(QUICK_METHODS)})",
    )
    ap.add_argument("--steps", type=int, help="measured steps per method, after the warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: best on a shared CPU)")
    ap.add_argument("--device", default="cpu", help="cpu: the CPU section; cuda: the GPU section")
    ap.add_argument(
        "--gpu-config",
        choices=sorted(GPU_CONFIGS),
        help="GPU section: one shape (default: 1b and 8b); with --device cpu, runs the GPU section's code on the CPU",
    )
    ap.add_argument(
        "--gradient-checkpointing", action="store_true", help="GPU section: jobs and the plain loop with checkpointing"
    )
    ap.add_argument("--compile", action="store_true", help="GPU section: add a GradDiff row with compile=true")
    ap.add_argument("--out", help="folder whose results.md gets the section (default: docs, nothing with --quick)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    cfg = settings(args.quick)
    gpu = args.device.startswith("cuda") or args.gpu_config is not None
    default_out = None if args.quick or (gpu and args.gpu_config == "tiny") else Path(__file__).parent.parent / "docs"
    out = Path(args.out) if args.out else default_out
    env, t_start = environment_line(args.threads), time.perf_counter()
    if gpu:
        name = "speed gpu checkpointing" if args.gradient_checkpointing else "speed gpu"  # one section each
        report = gpu_report(args, cfg)
    else:
        name = "speed" if args.model == "demo" else f"speed {args.model}"  # one section per model
        report = cpu_report(args, cfg)
    report = f"{report}\n\nBenchmark wall time: {time.perf_counter() - t_start:.0f} s."
    print(report)
    if out is not None:
        section = "\n\n".join([f"## Speed (`{command_line('speed.py', argv)}`)", env, report])
        print(f"wrote the {name} section of {write_results_section(out, name, section)}")
    return 0


def cpu_report(args: argparse.Namespace, cfg: Settings) -> str:
    """Headline step times, breakdown, verdict, memory, throughput and responsiveness, as markdown."""
    measured = args.steps or cfg.measured
    methods = args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else SPEED_METHODS)
    dataset = load_data(args.data)
    with tempfile.TemporaryDirectory(prefix="atwu-speed-") as tmp:
        root = Path(tmp)
        total = cfg.warmup + measured + cfg.profiled + 1  # + 1: the step whose syncs are counted
        jobs = [timed_job(m.strip(), args.model, dataset, total, args.seed, root / m) for m in methods]
        run_round_robin(jobs, cfg.warmup, measured, cfg.profiled)
        headline = [
            f"# step seconds: median of {measured} steps after {cfg.warmup} warm-up, round-robin; "
            f"ratio over {BASELINE}",
            *speed_lines(jobs, cfg.warmup),
        ]
        print("\n".join(headline), flush=True)
        memory = peak_memory(methods, args.model, args.data, args.threads, root) if cfg.memory else {}
        loaded, preset = load_model(args.model), default_preset(args.model).name
        tp = throughput(loaded, preset, dataset, cfg.throughput_steps, cfg.eval_cap, root / "throughput")
        latency = first_step_latency("atwu", args.model, preset, dataset, root / "latency")
    return "\n\n".join(
        [
            "```\n" + "\n".join(headline) + "\n```",
            f"### Per-step breakdown (ms a step; ranges from torch.profiler over {cfg.profiled} more steps)\n\n"
            + breakdown_table(jobs, cfg.warmup, memory),
            "`forward` = the forget batch's forward; `retain` = the retain forward and loss (KL: and the reference's); "
            "`update` = backward, gradient clipping and the optimiser step; `rest` = the scheme (ATWU's scorer "
            "step), the forget loss, and building and writing the step record. Before pass = the first step's extra "
            "time (its quality evaluation capped at 1 sample). Host syncs: profiler-counted ops whose result the "
            "host reads (`_local_scalar_dense`, `nonzero`) and `.tolist()`/`.numpy()`/`.cpu()` calls in one step "
            "(on a GPU each waits for the device); AdamW's step-counter reads (host scalars) are left out.",
            verdict(jobs, cfg.warmup),
            "Peak memory: "
            + (
                "each method alone in a fresh process, 3 steps (resident high-water mark)."
                if memory
                else "not measured (--quick)."
            ),
            f"### Job throughput (ATWU, {preset} preset, {tp['steps_total']} steps, model `{args.model}`)\n\n"
            f"{tp['tokens_per_second']:.0f} forget+retain tokens/s over the training steps; "
            f"{tp['mean_step_seconds']:.3f} s/step; training {tp['training_seconds']:.1f} s, whole job with evaluation "
            f"(up to {tp['eval_max_samples']} samples per split) {tp['wall_seconds']:.1f} s. App responsiveness: "
            f"{latency:.2f} s from `JobQueue.submit` to the first step in records.jsonl.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
