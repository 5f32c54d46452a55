"""The batched forward pass every job, scheme and metric shares: samples in, per-token NLL (and what a weighting
scheme declared it needs) out, in *target space*: position k scores input token k+1."""

from __future__ import annotations

import inspect
import itertools
import random
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atwu_core import distributed
from atwu_core.data import IGNORE_INDEX, EncodedSample
from atwu_core.generation import collate, evaluating, model_device


@dataclass(frozen=True)
class ForwardNeeds:
    """What a weighting scheme reads from the forward pass beyond per-token NLL (TransformerLens-style hook points).

    `hidden_layer`: index into Hugging Face's `hidden_states` (-1 = last, after the final norm), or None.
    `logprobs`: the full next-token log-distribution, computed at answer positions only ([B, T, V] fp32, 0 elsewhere).
    """

    hidden_layer: int | None = None
    logprobs: bool = False


@dataclass
class Positions:
    """Where a batch's answer tokens are, worked out on the host from the token lists: indexing with these instead
    of the [B, T] mask needs no `nonzero`, which on a GPU makes the host wait for the device."""

    rows: torch.Tensor  # [N] long, on the model's device
    cols: torch.Tensor  # [N] long, target-space column of each answer token
    lengths: list[int]  # answer tokens per row (host), to split [N] values back into samples

    @classmethod
    def of(cls, samples: Sequence[EncodedSample], index: list[int], device: torch.device) -> Positions:
        cols = [[j for j, t in enumerate(samples[i].labels[1:]) if t != IGNORE_INDEX] for i in index]
        rows = [r for r, c in enumerate(cols) for _ in c]
        flat = torch.tensor([rows, [j for c in cols for j in c]], dtype=torch.long)  # [2, N]
        rows_d, cols_d = to_device(flat, device)
        return cls(rows_d, cols_d, [len(c) for c in cols])

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Positions:
        """For a hand-built Forward (tests): the same, read off the mask (a host sync on a GPU)."""
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(rows, cols, mask.sum(1).tolist())

    def scatter(self, shape: torch.Size, values: torch.Tensor) -> torch.Tensor:
        """[N, ...] values at the answer positions -> [B, T, ...], 0 elsewhere; keeps the graph."""
        out = values.new_zeros((*shape, *values.shape[1:]))
        out[self.rows, self.cols] = values
        return out

    def split(self, flat: list[float]) -> list[list[float]]:
        """N host values (answer tokens in row-major order) -> one list per row."""
        ends = list(itertools.accumulate(self.lengths))
        return [flat[end - n : end] for n, end in zip(self.lengths, ends)]


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: pinned and copied asynchronously on CUDA (the
    caching host allocator keeps the pinned block until the copy is done)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass
class Forward:
    """One forward pass over a batch of samples. Tensors that carry the model's graph during training: `nll`."""

    nll: torch.Tensor  # [B, T] answer-token NLL, 0 elsewhere
    mask: torch.Tensor  # [B, T] answer tokens
    sample_index: list[int]  # rows -> indices into the samples
    tokens: int  # real (non-pad) tokens in the batch
    hidden: torch.Tensor | None = None  # [B, L, d] the requested layer at *input* positions, detached
    logprobs: torch.Tensor | None = None  # [B, T, V] when asked for, 0 off the answer
    ref_nll: torch.Tensor | None = None  # [B, T] the loaded model's NLL of the same tokens (the reference)
    positions: Positions | None = None  # the answer tokens' coordinates (derived from `mask` when not given)

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = Positions.from_mask(self.mask)

    def scatter_rows(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-sample answer-token host values (one tensor per row) -> [B, T] fp32 on the batch's device."""
        flat = to_device(torch.cat([values.float() for values in rows]), self.mask.device)  # [N]
        return self.positions.scatter(self.mask.shape, flat)


def batches(n: int, size: int) -> Iterator[list[int]]:
    """Consecutive index chunks of at most `size`: how every evaluation walks a sample list."""
    for start in range(0, n, size):
        yield list(range(start, min(start + size, n)))


def random_batch(rng: random.Random, n: int, size: int) -> list[int]:
    """A training batch: `size` of `n` samples drawn without replacement, in order (all of them when few)."""
    return list(range(n)) if n <= size else sorted(rng.sample(range(n), size))


def forward(
    model: torch.nn.Module,
    samples: Sequence[EncodedSample],
    index: list[int],
    pad_id: int,
    needs: ForwardNeeds = ForwardNeeds(),
) -> Forward:
    """Run `model` on samples[index] (right-padded) under the caller's grad mode. In a data-parallel job this
    rank runs its shard and the result holds the whole batch, this rank's rows carrying its graph."""
    local = distributed.shard(index)
    fw = _forward(model, samples, local, pad_id, needs)
    if local is index:
        return fw
    gather = distributed.gather_rows
    return Forward(
        nll=gather(fw.nll),
        mask=gather(fw.mask),
        sample_index=index,
        tokens=int(distributed.all_sum(fw.tokens)),
        hidden=gather(fw.hidden) if fw.hidden is not None else None,
        logprobs=gather(fw.logprobs) if fw.logprobs is not None else None,
        positions=Positions.of(samples, index, fw.mask.device),  # shards are contiguous: rows keep index order
    )


def _forward(
    model: torch.nn.Module, samples: Sequence[EncodedSample], index: list[int], pad_id: int, needs: ForwardNeeds
) -> Forward:
    """The lean forward: the decoder's last hidden states, then the LM head and cross-entropy at the N answer
    positions only ([N, V] logits instead of [B, L, V]); the full logits for a head that is not a plain
    projection of the last hidden state (see `lean_head`)."""
    device = model_device(model)
    host = collate([samples[i] for i in index], pad_id)
    # one host -> device copy for the whole batch: input ids and labels stacked  [2, B, L]
    input_ids, labels = to_device(torch.stack([host["input_ids"], host["labels"]]), device)
    at = Positions.of(samples, index, device)
    head = lean_head(model)
    # No attention mask: the batch is right-padded and attention causal, so no real token ever sees a pad and every
    # value read here is the same as with the mask; without it the model skips building a mask, the checks on it
    # that make the host wait for the device (`padding_mask.all()`), and takes the causal attention kernel.
    out = model(
        input_ids=input_ids,
        output_hidden_states=head is not None or needs.hidden_layer is not None,
        **({"logits_to_keep": _NO_POSITIONS[device]} if head is not None else {}),
    )
    targets = labels[:, 1:]  # [B, T]
    mask = targets != IGNORE_INDEX
    if head is not None:
        logits = head(out.hidden_states[-1][at.rows, at.cols]).float()  # [N, V] (position k predicts token k+1)
    else:
        logits = out.logits[at.rows, at.cols].float()  # [N, V]
    nll = at.scatter(mask.shape, F.cross_entropy(logits, targets[at.rows, at.cols], reduction="none"))  # [B, T]
    return Forward(
        nll=nll,
        mask=mask,
        sample_index=index,
        tokens=sum(len(samples[i].input_ids) for i in index),
        hidden=out.hidden_states[needs.hidden_layer].detach() if needs.hidden_layer is not None else None,
        logprobs=at.scatter(mask.shape, torch.log_softmax(logits, dim=-1)) if needs.logprobs else None,
        positions=at,
    )


class _NoPositions(dict):
    """`logits_to_keep`: project no position (the head runs here); one empty index tensor per device, made once."""

    def __missing__(self, device: torch.device) -> torch.Tensor:
        self[device] = torch.empty(0, dtype=torch.long, device=device)
        return self[device]


_NO_POSITIONS = _NoPositions()
_LEAN: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def lean_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head when `model`'s logits are exactly head(last hidden state) and its forward takes
    `logits_to_keep` (Llama, Mistral, Qwen, SmolLM2, ...; LoRA layers are injected in place, so a peft model
    qualifies by its base model); None for heads that add a scale or a soft cap (Gemma 2, Cohere, ...). Decided
    once per model by one 2 x 4-token pass both ways."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base not in _LEAN:
        _LEAN[base] = "logits_to_keep" in inspect.signature(base.forward).parameters and _head_matches(base)
    return base.get_output_embeddings() if _LEAN[base] else None


def _head_matches(model: torch.nn.Module) -> bool:
    ids = (torch.arange(8).view(2, 4) % model.get_input_embeddings().num_embeddings).to(model_device(model))
    with evaluating(model):
        out = model(input_ids=ids, output_hidden_states=True)
        lean = model.get_output_embeddings()(out.hidden_states[-1])
    return lean.shape == out.logits.shape and torch.allclose(lean.float(), out.logits.float(), rtol=1e-3, atol=1e-3)


def answer_nll(
    model: torch.nn.Module,
    samples: Sequence[EncodedSample],
    pad_id: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Each sample's answer-token NLL under `model` (no gradients), in input order, on the CPU; `progress(done,
    total)` after each batch."""
    out: list[torch.Tensor] = []
    with evaluating(model):
        for index in batches(len(samples), batch_size):
            fw = forward(model, samples, index, pad_id)
            out.extend(fw.nll[row][fw.mask[row]].float().cpu() for row in range(len(index)))
            if progress is not None:
                progress(len(out), len(samples))
    return out
