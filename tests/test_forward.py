"""The lean forward (LM head and cross-entropy at answer positions only) against the full-logits computation it
replaced: same NLL, hidden states, log-probabilities and gradients, with LoRA and without, and the full path for a
head that is not a plain projection."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma2Config, Gemma2ForCausalLM

from atwu_core import losses, models
from atwu_core.config import make_config
from atwu_core.data import IGNORE_INDEX, EncodedSample, encode_records
from atwu_core.forward import ForwardNeeds, forward, lean_head
from atwu_core.generation import collate, pad_token_id
from atwu_core.job import run_job

TOL = {"rtol": 1e-4, "atol": 2e-5}  # fp32: the same matmuls in other shapes (measured max 7e-6)


def _full(model, samples, index, pad_id):
    """The reference: full [B, L, V] logits, then losses.token_nll (what the engine computed before)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate([samples[i] for i in index], pad_id).items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    nll, mask = losses.token_nll(out.logits, batch["labels"])
    real = batch["attention_mask"].bool()  # [B, L] the tokens that are not padding
    return nll, mask, out.hidden_states[-1], torch.log_softmax(out.logits[:, :-1].float(), -1), real


@pytest.fixture(scope="module")
def samples(demo_loaded, demo_world):
    return encode_records(demo_world.forget[:6], demo_loaded.tokenizer, 256, False)


def _compare(model, samples, pad_id):
    index = list(range(len(samples)))
    fw = forward(model, samples, index, pad_id, ForwardNeeds(hidden_layer=-1, logprobs=True))
    nll, mask, hidden, logprobs, real = _full(model, samples, index, pad_id)
    assert torch.equal(fw.mask, mask)
    torch.testing.assert_close(fw.nll, nll, **TOL)
    # the lean forward leaves its right padding unmasked (causal attention: no real token sees it), so only the
    # hidden states at padding differ
    torch.testing.assert_close(fw.hidden[real], hidden.detach()[real], **TOL)
    torch.testing.assert_close(fw.logprobs[mask], logprobs[mask], **TOL)
    assert not fw.logprobs[~mask].any(), "log-probabilities are computed at answer positions only"
    return fw, nll


def test_lean_forward_equals_full_logits_on_the_plain_model(demo_loaded, samples):
    assert lean_head(demo_loaded.model) is demo_loaded.model.get_output_embeddings()
    with torch.no_grad():
        _compare(demo_loaded.model, samples, pad_token_id(demo_loaded.tokenizer))


def test_lean_forward_equals_full_logits_with_lora_values_and_gradients(demo_loaded, samples):
    pad_id = pad_token_id(demo_loaded.tokenizer)
    with models.trainable(demo_loaded, full=False, rank=4, alpha=8, targets="all-linear", top_layers=None) as trained:
        model = trained.model
        params = [p for p in model.parameters() if p.requires_grad]
        torch.manual_seed(0)
        for p in params:  # LoRA's B starts at 0; move it so the adapter changes the logits
            p.data.add_(0.05 * torch.randn_like(p))
        assert lean_head(model) is not None
        fw, nll = _compare(model, samples, pad_id)
        grads = []
        for loss in (losses.masked_mean(fw.nll, fw.mask), losses.masked_mean(nll, fw.mask)):
            grads.append(torch.autograd.grad(loss, params))
        for lean, full in zip(*grads, strict=True):
            torch.testing.assert_close(lean, full, rtol=1e-4, atol=1e-7)


def test_a_head_with_a_soft_cap_takes_the_full_path():
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=0.5,
    )
    model = Gemma2ForCausalLM(config).eval()
    assert lean_head(model) is None
    ids = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15]]
    samples = [_sample(i) for i in ids]
    with torch.no_grad():
        _compare(model, samples, 0)


def _sample(ids: list[int]) -> EncodedSample:
    """Two prompt tokens, the rest answer."""
    n = len(ids) - 2
    return EncodedSample("x", ids, [IGNORE_INDEX] * 2 + ids[2:], 2, ["t"] * n, [(0, 1)] * n, [False] * n, False)


# ------------------------------------------------------------------------------------------ memory and device settings


def test_gradient_checkpointing_gives_lora_the_same_gradients_and_a_job_trains(
    demo_loaded, demo_world, samples, tmp_path
):
    pad_id = pad_token_id(demo_loaded.tokenizer)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        with models.trainable(
            demo_loaded,
            full=False,
            rank=4,
            alpha=8,
            targets="all-linear",
            top_layers=None,
            gradient_checkpointing=checkpointing,
        ) as trained:
            trained.model.train()
            fw = forward(trained.model, samples, list(range(len(samples))), pad_id)
            params = [p for p in trained.model.parameters() if p.requires_grad]
            grads.append(torch.autograd.grad(losses.masked_mean(fw.nll, fw.mask), params))
    assert any(g.abs().sum() > 0 for g in grads[1])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)
    assert not demo_loaded.model.is_gradient_checkpointing, "the shared model is given back without checkpointing"

    job = run_job(
        make_config("graddiff", steps=2, eval_max_samples=2, gradient_checkpointing=True),
        loaded=demo_loaded,
        dataset=demo_world,
        run_dir=tmp_path / "run",
    )
    assert all(math.isfinite(v) for r in job.records for v in r.losses.values())
    adapter = load_file(str(job.run_dir / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B moved from 0"


@pytest.mark.gpu
def test_a_job_on_cuda_runs_the_model_in_bf16_and_the_scorer_and_losses_in_fp32(demo_world, tmp_path):
    loaded = models.load_model("demo", device="auto")
    assert loaded.info.device.startswith("cuda") and loaded.info.dtype == "bfloat16"
    job = run_job(
        make_config("atwu", steps=3, eval_max_samples=2, gradient_checkpointing=True),
        loaded=loaded,
        dataset=demo_world,
        run_dir=tmp_path / "run",
    )
    assert job.method.scheme.scorer.net[-1].weight.dtype == torch.float32
    assert all(math.isfinite(v) for r in job.records for v in r.losses.values())
    fw = forward(loaded.model, job.forget, [0, 1], pad_token_id(loaded.tokenizer), ForwardNeeds(logprobs=True))
    assert fw.nll.dtype == fw.logprobs.dtype == torch.float32
    assert job.metrics.timing.peak_memory_mb > 0
