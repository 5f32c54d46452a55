"""Teach a causal LM a dataset until it reproduces the answers: the model that unlearning starts from.

One loop serves the tiny demo model (trained from scratch with its own byte-level BPE tokenizer) and
existing models (full fine-tuning or LoRA merged into the weights). Memorisation is exact match under
greedy decoding, computed exactly and cheaply by teacher forcing: a sample is reproduced iff the argmax
of the logits is the right token at every answer position, EOS included.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from atwu_core.data import Dataset, EncodedSample, encode_records, format_prompt, load_dataset_dir, save_dataset_dir
from atwu_core.demo_world import generate_world
from atwu_core.files import ASSETS
from atwu_core.generation import collate, model_device, pad_token_id
from atwu_core.metrics import answer_stats
from atwu_core.models import attach_lora

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
TINY_MAX_LENGTH = 512  # positions of the tiny model and its tokenizer's model_max_length


@dataclass
class FinetuneReport:
    forget_exact: float  # fraction of forget samples reproduced exactly under greedy decoding
    retain_exact: float
    steps: int
    seconds: float
    loss: float  # mean answer-token loss over all samples at the end


# --------------------------------------------------------------------------------------------- tokenizer and model


def dataset_texts(dataset: Dataset) -> list[str]:
    """Every text the model may see (prompt + answer, paraphrases, perturbations), for tokenizer training."""
    texts = []
    for rec in dataset.forget + dataset.retain + dataset.holdout:
        prompt = format_prompt(rec.question)
        for answer in [rec.answer, rec.paraphrased_answer, *(rec.perturbed_answer or [])]:
            if answer:
                texts.append(f"{prompt} {answer}")
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE that prepends BOS (so `encode_record` sees the same ids as generation does).

    A small vocabulary keeps names and values multi-token, as they are in real LLM tokenizers.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=TINY_MAX_LENGTH
    )


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4
) -> LlamaConfig:
    """A ~1M-parameter Llama: large enough to memorise the demo world, small enough to ship (a few MB)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=TINY_MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama; the seed fixes the initial weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer))


# --------------------------------------------------------------------------------------------- batches and scoring


def score_samples(
    model: PreTrainedModel, samples: list[EncodedSample], pad_id: int, batch_size: int = 64
) -> tuple[list[bool], float]:
    """Per-sample exact match (teacher-forced argmax equals every answer token) and the mean answer-token loss."""
    stats = answer_stats(model, samples, pad_id, batch_size)
    nll = [-lp for s in stats for lp in s["token_logprobs"]]
    return [all(s["token_correct"]) for s in stats], sum(nll) / max(1, len(nll))


# --------------------------------------------------------------------------------------------- the training loop


def finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    dataset: Dataset,
    *,
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    lora: bool = False,
    lora_rank: int = 16,
    warmup_steps: int = 20,
    eval_every: int = 25,
    target_exact: float = 1.0,
    max_length: int = 256,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FinetuneReport:
    """Train on forget + retain answers (labels on answer tokens only) until both are reproduced exactly.

    The model is updated in place: every weight is trained (even if it came frozen from `load_model`), or with
    `lora=True` a LoRA adapter is trained and merged into its weights. A model that already carries an adapter
    (a peft model, as `build_demo_smollm2` passes) trains that adapter only: its base weights are not saved with it.
    Stops early once forget and retain exact match both reach `target_exact` (checked every `eval_every` steps).
    `log` gets a line at each check, `progress(step, steps)` is called after every step.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    torch.manual_seed(seed)
    forget = encode_records(dataset.forget, tokenizer, max_length)
    retain = encode_records(dataset.retain, tokenizer, max_length)
    samples, pad_id = forget + retain, pad_token_id(tokenizer)
    if lora:
        trained = attach_lora(model, lora_rank, 2 * lora_rank, "all-linear")
    else:
        trained = model if isinstance(model, PeftModel) else model.requires_grad_(True)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, steps // 10), steps)
    order, rng, start = [], random.Random(seed), time.perf_counter()
    trained.train()
    step = 0
    while step < steps:
        if len(order) < batch_size:  # deterministic reshuffle per epoch
            epoch = list(range(len(samples)))
            rng.shuffle(epoch)
            order += epoch
        batch_idx, order = order[:batch_size], order[batch_size:]
        loss = trained(
            **{k: v.to(model_device(trained)) for k, v in collate([samples[i] for i in batch_idx], pad_id).items()}
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if progress:
            progress(step, steps)
        if step % eval_every == 0 or step == steps:
            report = _report(trained, forget, retain, pad_id, step, time.perf_counter() - start, batch_size)
            if log:
                log(
                    f"step {step}: loss {report.loss:.4f}, forget exact {report.forget_exact:.3f}, "
                    f"retain exact {report.retain_exact:.3f}"
                )
            if min(report.forget_exact, report.retain_exact) >= target_exact:
                break
    if lora:
        trained.merge_and_unload()  # writes the merged weights back into `model`
    report.seconds = time.perf_counter() - start
    return report


def _report(
    model,
    forget: list[EncodedSample],
    retain: list[EncodedSample],
    pad_id: int,
    step: int,
    seconds: float,
    batch_size: int,
) -> FinetuneReport:
    hits, loss = score_samples(model, forget + retain, pad_id, batch_size)
    return FinetuneReport(
        forget_exact=_fraction(hits[: len(forget)]),
        retain_exact=_fraction(hits[len(forget) :]),
        steps=step,
        seconds=seconds,
        loss=loss,
    )


def _fraction(hits: list[bool]) -> float:
    """Share of exact samples; an empty split (no retain set) has nothing left to learn."""
    return sum(hits) / len(hits) if hits else 1.0


# --------------------------------------------------------------------------------------------- folders


def finetune_dataset_dir(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    tiny: bool = False,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    vocab_size: int = 512,
    meta: dict | None = None,
    **train_kwargs,
) -> FinetuneReport:
    """Fine-tune on a dataset folder and save a `from_pretrained`-loadable model + tokenizer to `out_dir`.

    `tiny=True` trains a tokenizer on the data and a tiny Llama from scratch; otherwise pass a loaded
    `model` and its `tokenizer` (full fine-tuning, or `lora=True` for LoRA merged before saving).
    `train_kwargs` go to `finetune` (steps, lr, batch_size, seed, lora, log, ...; for an existing model lr and
    batch_size default to 1e-3 with LoRA / 2e-5 without, and 8); `meta` is added to `training_report.json`.
    """
    if tiny == (model is not None):
        raise ValueError("give exactly one of tiny=True or model=<loaded model> (with its tokenizer).")
    if model is not None and tokenizer is None:
        raise ValueError("fine-tuning an existing model needs its tokenizer too.")
    dataset = load_dataset_dir(data_dir)
    if tiny:
        tokenizer = train_tokenizer(dataset_texts(dataset), vocab_size)
        model = tiny_model(tokenizer, train_kwargs.get("seed", 0))
    else:  # a pretrained model wants gentler steps than one learning from scratch
        train_kwargs = {"lr": 1e-3 if train_kwargs.get("lora") else 2e-5, "batch_size": 8, **train_kwargs}
    report = finetune(model, tokenizer, dataset, **train_kwargs)
    _save(
        model,
        tokenizer,
        out_dir,
        {**asdict(report), "data": Path(data_dir).name, "seed": train_kwargs.get("seed", 0), **(meta or {})},
    )
    return report


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path, report: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def build_demo(out_dir: str | Path = ASSETS, seed: int = 0, world_seed: int = 0, **train_kwargs) -> FinetuneReport:
    """Generate the demo world into `out_dir/demo_world` and memorise it into a tiny model in `out_dir/demo_model`."""
    out_dir = Path(out_dir)
    world_dir, model_dir = out_dir / "demo_world", out_dir / "demo_model"
    save_dataset_dir(generate_world(world_seed), world_dir)
    return finetune_dataset_dir(
        world_dir, model_dir, tiny=True, seed=seed, meta={"world_seed": world_seed}, **train_kwargs
    )
