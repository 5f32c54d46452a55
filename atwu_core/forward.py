"""The batched forward pass every job, scheme and metric shares: samples in, per-token NLL (and what a weighting
scheme declared it needs) out, in *target space*: position k scores input token k+1."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from atwu_core import losses
from atwu_core.data import EncodedSample
from atwu_core.generation import collate, evaluating, model_device


@dataclass(frozen=True)
class ForwardNeeds:
    """What a weighting scheme reads from the forward pass beyond per-token NLL (TransformerLens-style hook points).

    `hidden_layer`: index into Hugging Face's `hidden_states` (-1 = last, after the final norm), or None.
    `logprobs`: the full next-token log-distribution at answer positions ([B, T, V], fp32).
    """

    hidden_layer: int | None = None
    logprobs: bool = False


@dataclass
class Forward:
    """One forward pass over a batch of samples. Tensors that carry the model's graph during training: `nll`."""

    nll: torch.Tensor  # [B, T] answer-token NLL, 0 elsewhere
    mask: torch.Tensor  # [B, T] answer tokens
    sample_index: list[int]  # rows -> indices into the samples
    tokens: int  # real (non-pad) tokens in the batch
    hidden: torch.Tensor | None = None  # [B, L, d] the requested layer at *input* positions, detached
    logprobs: torch.Tensor | None = None  # [B, T, V] when asked for
    ref_nll: torch.Tensor | None = None  # [B, T] the loaded model's NLL of the same tokens (the reference)


def batches(n: int, size: int) -> Iterator[list[int]]:
    """Consecutive index chunks of at most `size`: how every evaluation walks a sample list."""
    for start in range(0, n, size):
        yield list(range(start, min(start + size, n)))


def forward(model: torch.nn.Module, samples: Sequence[EncodedSample], index: list[int], pad_id: int,
            needs: ForwardNeeds = ForwardNeeds()) -> Forward:
    """Run `model` on samples[index] (right-padded) under the caller's grad mode."""
    batch = {k: v.to(model_device(model)) for k, v in collate([samples[i] for i in index], pad_id).items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=needs.hidden_layer is not None)
    nll, mask = losses.token_nll(out.logits, batch["labels"])  # [B, L-1]
    return Forward(
        nll=nll, mask=mask, sample_index=index, tokens=int(batch["attention_mask"].sum()),
        hidden=out.hidden_states[needs.hidden_layer].detach() if needs.hidden_layer is not None else None,
        logprobs=torch.log_softmax(out.logits[:, :-1].float(), dim=-1) if needs.logprobs else None,
    )


def answer_nll(model: torch.nn.Module, samples: Sequence[EncodedSample], pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """Each sample's answer-token NLL under `model` (no gradients), in input order, on the CPU."""
    out: list[torch.Tensor] = []
    with evaluating(model):
        for index in batches(len(samples), batch_size):
            fw = forward(model, samples, index, pad_id)
            out.extend(fw.nll[row][fw.mask[row]].float().cpu() for row in range(len(index)))
    return out


def scatter_rows(mask: torch.Tensor, rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample answer-token values -> [B, T] fp32 in target space (0 off the answer)."""
    out = torch.zeros_like(mask, dtype=torch.float32)
    for r, values in enumerate(rows):
        out[r][mask[r]] = values.to(out.device, torch.float32)
    return out
