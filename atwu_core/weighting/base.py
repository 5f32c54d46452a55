"""What every token-weighting scheme sees and returns.

A scheme turns one forward pass over a forget batch into two [B, T] tensors: the weights the forget loss
uses, and the per-token forget scores that are shown live and judged against the ground-truth spans
(for ATWU the scorer's g; for WGA p^beta; for TokenUnlearn its importance). It declares what it reads from
the forward pass (`needs`); the job provides exactly that and never has to know which scheme runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from atwu_core.data import EncodedSample, Record
from atwu_core.forward import Forward, ForwardNeeds


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
    run_dir: Path | None = None  # where a scheme may save what it learned (ATWU's scorer)


class WeightingScheme:
    """Uniform weights. Subclasses override `weigh`; `prepare` to precompute, `step` to learn during the job,
    `finish` to save what they learned."""

    needs: ForwardNeeds = ForwardNeeds()
    retain_needs: ForwardNeeds = ForwardNeeds()  # what it reads from the retain batch's forward (to learn from)
    score_ema: float | None = None  # decay per step of the scores' average over the job, recorded beside the final

    def prepare(self, ctx: PrepareContext) -> None:
        """Precompute anything that depends on the original model (called once)."""

    def weigh(self, fw: Forward) -> TokenWeights:
        ones = fw.mask.float()
        return TokenWeights(loss=ones, scores=ones)

    def step(
        self, fw: Forward, step: int, retain: Forward | None = None
    ) -> tuple[TokenWeights, dict[str, torch.Tensor | float]]:
        """The weights for this training step, and values to log; a learning scheme also learns here, from the
        forget batch `fw` and the step's retain batch (`retain`, None for a method without one). Log 0-dim
        tensors, not `.item()`s: the job reads them with the step's record, without another host sync."""
        return self.weigh(fw), {}

    def learning_rates(self) -> dict[str, float]:
        """The current learning rates of what the scheme trains (recorded beside the model's)."""
        return {}

    def finish(self) -> None:
        """Called once after the final pass of a job that got there."""
