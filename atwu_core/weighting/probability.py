"""Probability-based token weighting: heuristics that read the weight off the model's own token probability."""

from __future__ import annotations

import torch

from atwu_core.forward import Forward
from atwu_core.weighting.base import TokenWeights, WeightingScheme


class ProbabilityWeighting(WeightingScheme):
    """w = p^beta1 * (1 - p)^beta2: WGA is beta2 = 0, SatImp uses both exponents."""

    def __init__(self, beta1: float, beta2: float = 0.0):
        self.beta1, self.beta2 = beta1, beta2

    def weigh(self, fw: Forward) -> TokenWeights:
        p = torch.exp(-fw.nll.detach())
        w = p.pow(self.beta1) * (1 - p).pow(self.beta2) * fw.mask
        return TokenWeights(loss=w, scores=w)
