"""The method registry: one row per method, and everything that makes it that method.

A method is a token-weighting scheme plus a forget objective plus a retain loss; the job loop is shared:

    L = gamma * L_forget(nll, sg(weights)) + alpha * L_retain

A row names its parameter dataclass (declared with the schemes in `weighting/params.py`; fields carry `help` and
`choices`), builds its scheme, picks its forget objective and retain loss from those parameters, and gives the
labels the app and the report show for its per-token values. The CLI's `atwu methods` and `--set`, the app's
controls and `config.json` are all derived from these rows. Adding a scheme = one file in weighting/ plus one
`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atwu_core import weighting
from atwu_core.settings import Setting, settings
from atwu_core.weighting.params import (
    ATWUNPOParams,
    ATWUParams,
    MethodParams,
    NPOParams,
    RetainParams,
    SatImpParams,
    SimNPOParams,
    TokenUnlearnParams,
    WGAParams,
)

if TYPE_CHECKING:  # torch is imported when a method is built, not when the registry is read (`atwu --help`)
    import torch

    from atwu_core.forward import Forward
    from atwu_core.weighting import WeightingScheme

# ----------------------------------------------------------------------------------- forget objectives


def _losses():
    from atwu_core import losses

    return losses


def ga_loss(fw: Forward, w: torch.Tensor, p: MethodParams) -> torch.Tensor:
    return _losses().weighted_ga(fw.nll, fw.mask, w)


def npo_loss(fw: Forward, w: torch.Tensor, p: NPOParams) -> torch.Tensor:
    return _losses().npo(fw.nll, fw.mask, w, fw.ref_nll.sum(1), p.npo_beta)


def simnpo_loss(fw: Forward, w: torch.Tensor, p: SimNPOParams) -> torch.Tensor:
    return _losses().simnpo(fw.nll, fw.mask, w, p.simnpo_beta, p.simnpo_delta)


@dataclass(frozen=True)
class Objective:
    """A forget loss over the scheme's detached token weights. A scheme that adapts to it (ATWU inside NPO) is
    told its `name`; `fw.ref_nll` is the loaded model's NLL."""

    name: str
    loss: Callable[[Forward, torch.Tensor, Any], torch.Tensor]  # (forward, weights [B, T], params) -> 0-dim


GA = Objective("ga", ga_loss)
NPO = Objective("npo", npo_loss)
SIMNPO = Objective("simnpo", simnpo_loss)
OBJECTIVES = {o.name: o for o in (GA, NPO, SIMNPO)}


# ----------------------------------------------------------------------------------- retain losses


@dataclass(frozen=True)
class RetainLoss:
    """A retain objective on a retain batch's forward (and, when `reference`, the reference model's forward of the
    same batch, both with log-probabilities)."""

    name: str
    reference: bool
    loss: Callable[[Forward, Forward | None], torch.Tensor]  # (fw, reference fw or None) -> 0-dim


def nll_retain(fw: Forward, ref: Forward | None) -> torch.Tensor:
    return _losses().masked_mean(fw.nll, fw.mask)


def kl_retain(fw: Forward, ref: Forward | None) -> torch.Tensor:
    return _losses().retain_kl(fw.logprobs, ref.logprobs, fw.mask)


RETAIN_LOSSES = {r.name: r for r in (RetainLoss("nll", False, nll_retain), RetainLoss("kl", True, kl_retain))}


def chosen_retain(p: MethodParams) -> RetainLoss | None:
    """The retain loss a method's `retain_loss` parameter names; none for a method without one or with alpha 0."""
    return RETAIN_LOSSES.get(p.retain_loss) if isinstance(p, RetainParams) and p.alpha_used > 0 else None


# ----------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Labels:
    """What the app and the HTML report call a method's per-token values: formulas, so a name says what is drawn."""

    score: str = "uniform: 1"
    loss_weight: str = "uniform: 1"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    params: type[MethodParams]
    scheme: Callable[[Any, str], WeightingScheme]  # (params, forget objective's name) -> a fresh scheme
    objective: Callable[[Any], Objective]  # params -> the forget objective
    labels: Labels | Callable[[Any], Labels] = Labels()  # or params -> labels, where a setting changes the formula
    retain: Callable[[Any], RetainLoss | None] = chosen_retain  # params -> the retain loss, None for none


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a row; a name already taken is refused (a silent overwrite would change what that name runs)."""
    if spec.name in REGISTRY:
        raise ValueError(
            f"a method named {spec.name!r} is already registered ({REGISTRY[spec.name].description}); "
            "register yours under another name."
        )
    REGISTRY[spec.name] = spec
    return spec


ATWU_SCORE = "ATWU's scorer output g = σ(w·h + c)"


def atwu_labels(p: ATWUParams) -> Labels:
    weight = "g · p^(β·g)" if p.pair == "headline" else "p^(β·g)" if p.saturation == "scaled" else "g · p^β"
    return Labels(ATWU_SCORE, weight)


for _spec in (
    MethodSpec(
        "atwu",
        "ATWU: a probe on the hidden states learns per-token forget weights, alternating with the model",
        ATWUParams,
        lambda p, objective: weighting.ATWUScorer(p, objective),
        lambda p: GA,
        atwu_labels,
    ),
    MethodSpec(
        "atwu-npo",
        "ATWU weights inside the per-sequence NPO loss",
        ATWUNPOParams,
        lambda p, objective: weighting.ATWUScorer(p, objective),
        lambda p: NPO,
        Labels(ATWU_SCORE, "g · T / Σg"),
    ),
    MethodSpec(
        "ga",
        "Gradient ascent on the forget set (uniform token weights, no retain term)",
        MethodParams,
        lambda p, objective: weighting.Uniform(),
        lambda p: GA,
    ),
    MethodSpec(
        "graddiff",
        "Gradient difference: gradient ascent on forget + NLL (or KL) on retain",
        RetainParams,
        lambda p, objective: weighting.Uniform(),
        lambda p: GA,
    ),
    MethodSpec(
        "gt-mask",
        "Oracle: GradDiff on the ground-truth span tokens only (weight 1 inside, 0 outside)",
        RetainParams,
        lambda p, objective: weighting.SpanMask(),
        lambda p: GA,
        Labels("ground-truth span: 1 inside, 0 outside", "ground-truth span: 1 inside, 0 outside"),
    ),
    MethodSpec(
        "npo",
        "Negative preference optimisation against the adapter-disabled reference, + retain NLL",
        NPOParams,
        lambda p, objective: weighting.Uniform(),
        lambda p: NPO,
    ),
    MethodSpec(
        "simnpo",
        "SimNPO: reference-free, length-normalised NPO, + retain NLL",
        SimNPOParams,
        lambda p, objective: weighting.Uniform(),
        lambda p: SIMNPO,
    ),
    MethodSpec(
        "wga",
        "Weighted gradient ascent: token weight p^beta (probability-based heuristic)",
        WGAParams,
        lambda p, objective: weighting.ProbabilityWeighting(p.wga_beta),
        lambda p: GA,
        Labels("p^β", "p^β"),
    ),
    MethodSpec(
        "satimp",
        "SatImp: token weight p^beta1 * (1-p)^beta2 (probability-based heuristic)",
        SatImpParams,
        lambda p, objective: weighting.ProbabilityWeighting(p.satimp_beta1, p.satimp_beta2),
        lambda p: GA,
        Labels("p^β1 · (1 − p)^β2", "p^β1 · (1 − p)^β2"),
    ),
    MethodSpec(
        "tokenunlearn",
        "TokenUnlearn: masking + entropy importance, hard selection or soft weighting, KL on retain",
        TokenUnlearnParams,
        lambda p, objective: weighting.TokenUnlearnImportance(p),
        lambda p: OBJECTIVES[p.tu_base],
        Labels("importance φ", "selected / softmax weight"),
    ),
):
    register(_spec)


def written_params(method: str | None, values: dict) -> dict:
    """A config.json's parameters in today's terms (`config.migrate` calls it): ATWU written before `pair` existed
    ran the matched pair; `hidden_norm` was a switch before it named its norm."""
    if isinstance(values.get("hidden_norm"), bool):
        values = {**values, "hidden_norm": "rms" if values["hidden_norm"] else "none"}
    return {**values, "pair": "matched"} if method == "atwu" and "pair" not in values else values


def method_labels(method: str | None, values: dict) -> Labels | None:
    """The labels of a run's per-token values, from its method's row and parameters (a migrated `config.json`);
    None for a method no longer registered or parameters that no longer build."""
    spec = REGISTRY.get(method)
    if spec is None or isinstance(spec.labels, Labels):
        return spec.labels if spec else None
    try:
        return spec.labels(build_params(spec.name, values))
    except ValueError:
        return None


def method_spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


# ----------------------------------------------------------------------------------- parameter views


def method_params(method: str) -> tuple[Setting, ...]:
    """The method's parameters as settings (help, type, choices, bounds), for the CLI and the app."""
    return settings(method_spec(method).params)


def build_params(method: str, values: dict) -> MethodParams:
    """The method's typed parameters from a name -> value dict (unknown names refused, values checked)."""
    specs = {s.name: s for s in method_params(method)}
    unknown = set(values) - set(specs)
    if unknown:
        raise ValueError(f"{method} has no parameter {sorted(unknown)[0]!r}; its parameters are {', '.join(specs)}.")
    return method_spec(method).params(**{k: specs[k].coerce(v) for k, v in values.items()})


@dataclass
class Method:
    """A method ready to run: its row, its typed parameters, a fresh scheme, its forget objective and retain loss."""

    spec: MethodSpec
    params: MethodParams
    scheme: WeightingScheme
    objective: Objective
    retain: RetainLoss | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alpha(self) -> float:
        return self.params.alpha_used

    @property
    def gamma(self) -> float:
        return self.params.gamma

    def forget_loss(self, fw: Forward, weights: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(fw, weights.detach(), self.params)


def build_method(name: str, params: MethodParams) -> Method:
    """A method ready to run from its name and typed parameters (`JobConfig.params`), with a fresh scheme."""
    spec = method_spec(name)
    objective = spec.objective(params)
    return Method(spec, params, spec.scheme(params, objective.name), objective, spec.retain(params))
