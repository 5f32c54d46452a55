"""The training step's speed path: one host sync a step (counted with bench/speed.py's profiler counter), a
non-finite loss still stopping the job with the step and what to do, the LoRA dtype option and regional
compilation giving the same losses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from atwu_core import models
from atwu_core.config import make_config
from atwu_core.job import JobError, UnlearningJob, run_job
from atwu_core.methods import GA, REGISTRY, MethodSpec, RetainParams, register
from atwu_core.models import decoder_blocks, load_model
from atwu_core.runs import RunReader, RunWriter
from atwu_core.weighting import TokenWeights, WeightingScheme
from atwu_core.writer_thread import WriterThread


def _config(method: str, steps: int = 3, **settings):
    return make_config(method, "demo", steps=steps, eval_max_samples=1, **settings)


def _syncs(bench, job: UnlearningJob, steps: int = 2) -> dict[str, float]:
    stream = job.stream()
    next(stream)  # the before pass and the first step: setup, not the steady step
    counts = bench("speed").sync_counts(lambda: next(stream), steps)
    stream.close()
    return counts


@pytest.mark.parametrize("method", ["graddiff", "atwu", "tokenunlearn"])
def test_a_training_step_syncs_the_host_once(bench, demo_loaded, demo_world, tmp_path, method):
    params = {"scorer_every": 1} if method == "atwu" else None  # the scorer learns (and logs) in every step
    config = make_config(method, "demo", params=params, steps=4, eval_max_samples=1)
    counts = _syncs(bench, UnlearningJob(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r"))
    assert counts["host syncs"] == 1, counts  # the step record's one read-out
    assert counts["aten ops"] > 1000  # the counter saw the step


def test_the_plain_loop_syncs_more_than_once(bench, demo_loaded, demo_world, tmp_path):
    """The counter can tell: the reference loop (the model's own loss, boolean masks in transformers) reads more."""
    speed = bench("speed")
    job = UnlearningJob(_config("graddiff"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    with speed.plain_loop(demo_loaded, job.forget[:4], job.retain[:4], checkpointing=False) as (step, _):
        step()
        counts = speed.sync_counts(step, 1)
    assert counts["host syncs"] > 1, counts


class NaNAt(WeightingScheme):
    """Uniform weights, NaN from step `at` on."""

    def __init__(self, at: int):
        self.at = at

    def step(self, fw, step: int, retain=None) -> tuple[TokenWeights, dict]:
        weights = self.weigh(fw)
        if step >= self.at:
            weights.loss = weights.loss * float("nan")
        return weights, {}


@pytest.fixture
def nan_at_2():
    register(MethodSpec("nan-at-2", "NaN loss from step 2", RetainParams, lambda p, objective: NaNAt(2), lambda p: GA))
    yield "nan-at-2"
    REGISTRY.pop("nan-at-2", None)


def test_a_non_finite_loss_stops_the_job_at_its_step(nan_at_2, demo_loaded, demo_world, tmp_path):
    with pytest.raises(JobError, match="step 2: the loss is nan; lower the learning rate or gamma"):
        run_job(_config(nan_at_2), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    run = RunReader(tmp_path / "r")
    assert run.status.state == "failed" and "step 2: the loss is nan" in run.status.error
    assert [r.step for r in run.step_records()] == [1]  # the failed step leaves no record
    assert not (tmp_path / "r" / "adapter").exists()  # the diverged adapter is never saved
    assert all(p.isfinite().all() for p in demo_loaded.model.parameters())  # the shared model is untouched


def test_lora_dtype_model_keeps_the_adapter_in_bf16(demo_world, tmp_path):
    loaded = load_model("demo", device="cpu", dtype="bfloat16")
    dtypes = {}
    for lora_dtype in ("float32", "model"):
        config = _config("graddiff", steps=2, dtype="bfloat16", lora_dtype=lora_dtype)
        job = UnlearningJob(config, loaded=loaded, dataset=demo_world, run_dir=tmp_path / lora_dtype)
        stream = job.stream()
        next(stream)
        dtypes[lora_dtype] = {p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n}
        for _ in stream:
            pass
        assert all(math.isfinite(v) for r in job.records for v in r.losses.values())
    assert dtypes == {"float32": {torch.float32}, "model": {torch.bfloat16}}
    assert not any("lora_" in n for n, _ in loaded.model.named_parameters())  # unwrapped again


def test_lora_dtype_is_checked(demo_world):
    with pytest.raises(ValueError, match="lora_dtype must be one of float32, model"):
        _config("graddiff", lora_dtype="bf16")
    with pytest.raises(ValueError, match="use dtype=bfloat16, or lora_dtype=float32"):
        _config("graddiff", lora_dtype="model", dtype="float16")


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here")
def test_compile_gives_the_same_losses_and_is_undone(demo_loaded, demo_world, tmp_path, monkeypatch):
    # aot_eager: dynamo's capture and AOT autograd's joint graph, as inductor gets them, without minutes of C++
    # code generation on a CPU (the GPU benchmark's compiled row uses inductor)
    monkeypatch.setattr(models, "COMPILE_BACKEND", "aot_eager")
    losses = {}
    for compiled in (False, True):
        config = _config("ga", steps=2, compile=compiled)
        job = run_job(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / str(compiled))
        losses[compiled] = [r.losses["total"] for r in job.records]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-6)
    assert all(block._compiled_call_impl is None for block in decoder_blocks(demo_loaded.model))


@pytest.mark.gpu
def test_a_cuda_step_waits_for_the_device_once(bench, demo_world, tmp_path):
    loaded = load_model("demo", device="cuda")
    for method in ("graddiff", "atwu"):
        job = UnlearningJob(_config(method, steps=4), loaded=loaded, dataset=demo_world, run_dir=tmp_path / method)
        counts = _syncs(bench, job)
        assert counts["host syncs"] <= 1 and counts["CUDA syncs"] <= 1, (method, counts)


def test_the_writer_thread_writes_in_order_and_raises_a_failed_write(tmp_path):
    writer = WriterThread(RunWriter(tmp_path / "r"))
    for k in range(3):
        writer.write_json("n.json", {"k": k})
    writer.flush()
    assert json.loads((tmp_path / "r" / "n.json").read_text()) == {"k": 2}  # the last one handed over
    writer.write_json("bad.json", {"x": object()})  # not JSON: fails on the thread
    with pytest.raises(TypeError, match="not JSON serializable"):
        writer.flush()
    writer.write_json("n.json", {"k": 3})  # the error was handed over once; writing goes on
    writer.close()  # drains, never raises
    assert json.loads((tmp_path / "r" / "n.json").read_text()) == {"k": 3}
