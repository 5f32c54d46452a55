"""Batching and batched greedy answers.

`collate` is the one place token lists become tensors (the training loop and the metrics share it);
`greedy_answers` decodes from exactly the prompt a sample was encoded with, so a generated answer is
comparable token for token with the teacher-forced scores in `atwu_core.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from atwu_core.data import IGNORE_INDEX, EncodedSample, format_prompt


def collate(samples: Sequence[EncodedSample], pad_id: int, *, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad samples to one batch: `input_ids`, `attention_mask` (1 on real tokens) and `labels` (IGNORE_INDEX on pads).

    Right padding by default (training and teacher-forced scoring: positions start at 0 for every row);
    left padding for generation, so every row's next token comes right after its last real token.
    """
    if not samples:
        raise ValueError("collate needs at least one sample.")
    return {
        "input_ids": pad([s.input_ids for s in samples], pad_id, left_pad),
        "attention_mask": pad([[1] * len(s.input_ids) for s in samples], 0, left_pad),
        "labels": pad([s.labels for s in samples], IGNORE_INDEX, left_pad),
    }


def pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """Token lists -> one [len(rows), longest] long tensor, filled with `value` on the right (or the left)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for k, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        out[k, cols] = torch.tensor(list(row), dtype=torch.long)
    return out


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients, restoring the model's training flag afterwards, so metrics can run mid-training.

    `no_grad` rather than `inference_mode`: tensors a model caches lazily under inference mode cannot be
    used by a later backward pass.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (many causal LMs ship without a pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
    return pad


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS ids to stop at: the tokenizer's (what encoded answers end with) plus any the model's generation config adds
    (chat models often end a turn with their own token)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([configured] if isinstance(configured, int) else configured or [])
    return sorted(ids)


def _generate(
    model: torch.nn.Module, tokenizer, prompts: list[list[int]], limits: list[int], batch_size: int
) -> list[str]:
    """Greedy continuations of token-id prompts, each cut at its first EOS and at its own token limit."""
    pad_id, eos = pad_token_id(tokenizer), _eos_ids(model, tokenizer)
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))  # similar lengths together: less padding
    answers = [""] * len(prompts)
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids = pad([prompts[k] for k in rows], pad_id, left=True)
            attention_mask = pad([[1] * len(prompts[k]) for k in rows], 0, left=True)
            width = input_ids.shape[1]
            config = GenerationConfig(
                max_new_tokens=max(limits[k] for k in rows),
                do_sample=False,
                num_beams=1,
                use_cache=True,  # each new token attends to cached keys and values: one token's work a step
                eos_token_id=eos or None,
                pad_token_id=pad_id,
            )
            # keyword arguments only: a peft model's generate() does not take positional inputs
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
            for r, k in enumerate(rows):
                new = out[r, width : width + limits[k]].tolist()
                cut = next((j for j, t in enumerate(new) if t in eos), len(new))
                answers[k] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    return answers


def greedy_answers(
    model: torch.nn.Module,
    tokenizer,
    samples: Sequence[EncodedSample],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answer text for each sample's prompt (`input_ids[:prompt_length]`), in input order.

    Default limit per sample: its answer length + 8 tokens, enough to show an answer that runs on past
    where it should stop without paying for long rambles.
    """
    prompts = [list(s.input_ids[: s.prompt_length]) for s in samples]
    limits = [max_new_tokens if max_new_tokens is not None else len(s.answer_token_ids) + 8 for s in samples]
    return _generate(model, tokenizer, prompts, limits, batch_size)


def greedy_answer(
    model: torch.nn.Module, tokenizer, prompt_text: str, max_new_tokens: int = 64, *, chat_template: bool = False
) -> str:
    """Greedy answer to a free-form question, prompted exactly as the training data was (`format_prompt`)."""
    prompt = format_prompt(prompt_text, tokenizer, chat_template)
    ids = tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]
    return _generate(model, tokenizer, [list(ids)], [max_new_tokens], batch_size=1)[0]
