"""What every token-weighting scheme sees and returns.

A scheme turns one forward pass over a forget batch into two [B, T] tensors: the weights the forget loss
uses, and the per-token forget scores that are shown live and judged against the ground-truth spans
(for ATWU the scorer's g; for WGA p^beta; for TokenUnlearn its importance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atwu_core.data import EncodedSample, Record


@dataclass
class ForgetForward:
    """One forward pass over a forget batch, in target space (position k scores input token k+1)."""

    nll: torch.Tensor  # [B, T], carries the model's graph during training
    mask: torch.Tensor  # [B, T] answer tokens
    hidden: torch.Tensor | None  # [B, T, d] detached scorer input, when the scheme asks for it
    sample_index: list[int]  # rows -> indices into the forget samples
    ref_seq_nll: torch.Tensor | None = None  # [B] the reference model's summed answer NLL (NPO family)


@dataclass
class TokenWeights:
    loss: torch.Tensor  # [B, T] detached weights inside the forget loss
    scores: torch.Tensor  # [B, T] the scheme's forget score per token


@dataclass
class PrepareContext:
    """What a scheme may look at once, before the first step (the model is still the original)."""

    model: torch.nn.Module
    tokenizer: object
    samples: list[EncodedSample]
    records: list[Record]
    steps: int
    max_length: int
    chat_template: bool


class WeightingScheme:
    """Uniform weights; subclasses override `weigh`, and `prepare`/`update` when they learn or precompute."""

    needs_hidden: bool = False

    def prepare(self, ctx: PrepareContext) -> None:
        """Precompute anything that depends on the original model (called once)."""

    def weigh(self, fw: ForgetForward) -> TokenWeights:
        ones = fw.mask.float()
        return TokenWeights(loss=ones, scores=ones)

    def update(self, fw: ForgetForward, step: int) -> dict[str, float]:
        """Learn from this step's forward pass after the model's update; returns values to log."""
        return {}
