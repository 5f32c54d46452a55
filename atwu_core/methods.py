"""A method is a token-weighting scheme plus a forget loss plus a retain loss; the job loop is shared.

    L = gamma * L_forget(nll, sg(weights)) + alpha * L_retain
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atwu_core import losses
from atwu_core.config import METHODS
from atwu_core.weighting import ATWUScorer, ForgetForward, ProbabilityWeighting, TokenUnlearnImportance, Uniform, WeightingScheme


@dataclass
class Method:
    name: str
    params: dict
    scheme: WeightingScheme
    forget_objective: str  # "ga" | "npo" | "simnpo"

    @property
    def alpha(self) -> float:
        return 0.0 if self.retain_loss == "none" else float(self.params.get("alpha", 0.0))

    @property
    def gamma(self) -> float:
        return float(self.params.get("gamma", 1.0))

    @property
    def retain_loss(self) -> str:
        return self.params.get("retain_loss", "none")

    @property
    def needs_reference_nll(self) -> bool:
        return self.forget_objective == "npo"

    def forget_loss(self, fw: ForgetForward, weights: torch.Tensor) -> torch.Tensor:
        w = weights.detach()
        if self.forget_objective == "npo":
            return losses.npo(fw.nll, fw.mask, w, fw.ref_seq_nll, self.params["npo_beta"])
        if self.forget_objective == "simnpo":
            return losses.simnpo(fw.nll, fw.mask, w, self.params["simnpo_beta"], self.params["simnpo_delta"])
        return losses.weighted_ga(fw.nll, fw.mask, w)


def build_method(name: str, params: dict) -> Method:
    """Instantiate a method by name with resolved params (see config.resolve_params)."""
    if name == "atwu":
        return Method(name, params, ATWUScorer(params, objective="ga"), "ga")
    if name == "atwu-npo":
        return Method(name, params, ATWUScorer(params, objective="npo"), "npo")
    if name in ("ga", "graddiff"):
        return Method(name, params, Uniform(), "ga")
    if name in ("npo", "simnpo"):
        return Method(name, params, Uniform(), name)
    if name == "wga":
        return Method(name, params, ProbabilityWeighting(params["wga_beta"]), "ga")
    if name == "satimp":
        return Method(name, params, ProbabilityWeighting(params["satimp_beta1"], params["satimp_beta2"]), "ga")
    if name == "tokenunlearn":
        return Method(name, params, TokenUnlearnImportance(params), params["tu_base"])
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.")
