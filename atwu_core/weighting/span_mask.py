"""The oracle: weight 1 on the ground-truth span tokens, 0 elsewhere (GradDiff on the spans only).

It is the upper bound a token-level method is read against: what forgetting exactly the annotated tokens
does to forget and retain quality.
"""

from __future__ import annotations

import torch

from atwu_core.data import DataError
from atwu_core.forward import Forward
from atwu_core.weighting.base import PrepareContext, TokenWeights, WeightingScheme


class SpanMask(WeightingScheme):
    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []

    def prepare(self, ctx: PrepareContext) -> None:
        missing = [s.record_id for s in ctx.samples if not s.has_ground_truth]
        if missing:
            raise DataError(
                f"gt-mask needs ground-truth spans on every forget sample; {len(missing)} of {len(ctx.samples)} have "
                f"none (e.g. {missing[0]!r}). Add forget_spans / forget_strings, or pick samples with forget_ids."
            )
        self.masks = [torch.tensor(s.span_mask, dtype=torch.float32) for s in ctx.samples]

    def weigh(self, fw: Forward) -> TokenWeights:
        w = fw.scatter_rows([self.masks[i] for i in fw.sample_index])
        return TokenWeights(loss=w, scores=w)
