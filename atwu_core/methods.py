"""The method registry: one row per method, and the typed parameters each one takes.

A method is a token-weighting scheme plus a forget loss plus a retain loss; the job loop is shared:

    L = gamma * L_forget(nll, sg(weights)) + alpha * L_retain

A row names its parameter dataclass (fields carry `help` and `choices` metadata, as peft's LoraConfig does),
builds its scheme, and picks its forget objective. The CLI's `atwu methods` and `--set`, the app's controls and
`config.json` are all derived from these rows. Adding a scheme = one file in weighting/ plus one `register` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a method is built, not when the registry is read (`atwu --help`)
    import torch

    from atwu_core.forward import Forward
    from atwu_core.weighting import WeightingScheme


def param(
    default: Any, help: str, choices: tuple[str, ...] = (), minimum: float | None = None, maximum: float | None = None
) -> Any:
    """A method parameter: its default, one line of help, its allowed values or bounds."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum, "maximum": maximum})


# ----------------------------------------------------------------------------------- parameters


@dataclass
class MethodParams:
    """Parameters every method has."""

    gamma: float = param(1.0, "Weight of the forget loss.", minimum=0.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}.")
            if meta.get("choices") and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}.")
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise ValueError(f"{f.name} must be at least {meta['minimum']}, got {value}.")
            if meta.get("maximum") is not None and value > meta["maximum"]:
                raise ValueError(f"{f.name} must be at most {meta['maximum']}, got {value}.")

    @property
    def alpha_used(self) -> float:
        """The retain loss's weight as the loop applies it (0 without a retain loss)."""
        return 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RetainParams(MethodParams):
    alpha: float = param(1.0, "Weight of the retain loss.", minimum=0.0)
    retain_loss: str = param(
        "nll", "Retain objective: NLL on retain answers, KL to the reference model, or none.", ("nll", "kl", "none")
    )

    @property
    def alpha_used(self) -> float:
        return 0.0 if self.retain_loss == "none" else self.alpha


@dataclass
class NPOParams(RetainParams):
    npo_beta: float = param(0.1, "NPO temperature beta.", minimum=1e-6)


@dataclass
class SimNPOParams(RetainParams):
    simnpo_beta: float = param(2.5, "SimNPO temperature beta.", minimum=1e-6)
    simnpo_delta: float = param(0.0, "SimNPO reward margin delta.")


@dataclass
class WGAParams(RetainParams):
    wga_beta: float = param(1.0, "Token weight p^beta.", minimum=0.0)


@dataclass
class SatImpParams(RetainParams):
    satimp_beta1: float = param(5.0, "Token weight p^beta1 * (1-p)^beta2: exponent on p.", minimum=0.0)
    satimp_beta2: float = param(1.0, "Exponent on (1-p).", minimum=0.0)


@dataclass
class ScorerParams(RetainParams):
    """The scorer's shape, input, regularisers and schedule (both ATWU objectives); defaults = the paper's."""

    scorer_every: int = param(5, "Train the scorer every n model steps (on the same forward pass).", minimum=1)
    lambda_e: float = param(1.0, "Binary-entropy penalty: pushes scores to 0 or 1.", minimum=0.0)
    lambda_p: float = param(
        10.0, "Budget penalty: (fraction of a sequence's tokens with g > 0.5 - budget)^2.", minimum=0.0
    )
    budget: float = param(
        0.2, "Target fraction of each answer's tokens selected as forget-specific.", minimum=0.0, maximum=1.0
    )
    lambda_2: float = param(1.0, "L2 penalty on the scorer's parameters.", minimum=0.0)
    scorer_lr: float = param(
        0.05, "Scorer SGD learning rate (momentum 0.9, linear decay to 0).", minimum=1e-12, maximum=10.0
    )
    scorer_layers: int = param(
        1, "1: a linear probe (the paper); more: an MLP with GELU between.", minimum=1, maximum=16
    )
    scorer_width: int = param(256, "Hidden width of the MLP scorer (scorer_layers > 1).", minimum=1, maximum=16384)
    hidden_layer: int = param(
        -1, "Which hidden state the scorer reads: -1 = last (after the final norm), 0 = embeddings."
    )
    hidden_position: str = param(
        "token",
        "Scorer input: the state at the token itself or at the position predicting it.",
        ("token", "predicting"),
    )
    hidden_norm: str = param(
        "none", "Normalise the scorer's input: none, RMS, or to unit L2 length.", ("none", "rms", "l2")
    )
    hidden_centre: bool = param(False, "Subtract the batch's mean answer-token hidden state from the scorer's input.")
    update: str = param(
        "alternating",
        "alternating: a scorer step every scorer_every model steps; joint: every step.",
        ("alternating", "joint"),
    )
    snapshot_every: int = param(
        0, "Save the scorer every n steps into the run folder (0: only the final one).", minimum=0
    )


@dataclass
class ATWUParams(ScorerParams):
    pair: str = param(
        "headline",
        "Objective pair. headline: model -mean[g p^(beta g) nll], scorer +mean[(1-g) nll]; "
        "matched: model -mean[g p^beta nll], scorer -mean[g p^beta nll].",
        ("headline", "matched"),
    )
    beta: float = param(5.0, "Saturation: forgotten tokens (low p) stop being pushed.", minimum=0.0)
    saturation: str = param(
        "fixed", "matched pair only. fixed: weight g p^beta; scaled: weight p^(beta g).", ("fixed", "scaled")
    )
    reward_norm: bool = param(
        False,
        "matched pair only: divide the scorer's reward by its batch mean (scale-free "
        "against the regularisers; needed on a memorised model, where p^beta nll starts near 0).",
    )


@dataclass
class ATWUNPOParams(ScorerParams, NPOParams):
    pass


@dataclass
class TokenUnlearnParams(RetainParams):
    retain_loss: str = param("kl", "Retain objective (TokenUnlearn uses KL to the reference).", ("nll", "kl", "none"))
    tu_a: float = param(
        0.5, "Importance mix: a * norm(knowledge signal) + (1-a) * norm(entropy).", minimum=0.0, maximum=1.0
    )
    tu_selection: str = param(
        "hard", "hard: unlearn only the top tokens; soft: weights from a softmax of the importance.", ("hard", "soft")
    )
    tu_top_fraction: float = param(
        0.3, "Hard selection: fraction of each answer's tokens unlearned.", minimum=0.0, maximum=1.0
    )
    tu_temperature: float = param(0.2, "Soft weighting: softmax temperature over normalised importance.", minimum=1e-6)
    tu_base: str = param("ga", "Forget loss the weights are applied in.", ("ga", "npo"))
    npo_beta: float = param(0.1, "NPO temperature when tu_base = npo.", minimum=1e-6)


# ----------------------------------------------------------------------------------- forget objectives

ForgetLoss = Callable[["Forward", "torch.Tensor", Any], "torch.Tensor"]


def _losses():
    from atwu_core import losses

    return losses


def _scheme(name: str, *args: Any, **kwargs: Any) -> WeightingScheme:
    """A weighting scheme by class name, imported on first use (the registry itself needs no torch)."""
    from atwu_core import weighting

    return getattr(weighting, name)(*args, **kwargs)


def ga_loss(fw: Forward, w: torch.Tensor, p: MethodParams) -> torch.Tensor:
    return _losses().weighted_ga(fw.nll, fw.mask, w)


def npo_loss(fw: Forward, w: torch.Tensor, p: NPOParams) -> torch.Tensor:
    return _losses().npo(fw.nll, fw.mask, w, fw.ref_nll.sum(1), p.npo_beta)


def simnpo_loss(fw: Forward, w: torch.Tensor, p: SimNPOParams) -> torch.Tensor:
    return _losses().simnpo(fw.nll, fw.mask, w, p.simnpo_beta, p.simnpo_delta)


def tokenunlearn_loss(fw: Forward, w: torch.Tensor, p: TokenUnlearnParams) -> torch.Tensor:
    return npo_loss(fw, w, p) if p.tu_base == "npo" else ga_loss(fw, w, p)


# ----------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    params: type[MethodParams]
    scheme: Callable[[Any], WeightingScheme]
    forget_loss: ForgetLoss  # (forward, detached weights, params) -> loss; `fw.ref_nll` is the loaded model's NLL


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


for _spec in (
    MethodSpec(
        "atwu",
        "ATWU: a probe on the hidden states learns per-token forget weights, alternating with the model",
        ATWUParams,
        lambda p: _scheme("ATWUScorer", p, objective="ga"),
        ga_loss,
    ),
    MethodSpec(
        "atwu-npo",
        "ATWU weights inside the per-sequence NPO loss",
        ATWUNPOParams,
        lambda p: _scheme("ATWUScorer", p, objective="npo"),
        npo_loss,
    ),
    MethodSpec(
        "ga",
        "Gradient ascent on the forget set (uniform token weights, no retain term)",
        MethodParams,
        lambda p: _scheme("Uniform"),
        ga_loss,
    ),
    MethodSpec(
        "graddiff",
        "Gradient difference: gradient ascent on forget + NLL (or KL) on retain",
        RetainParams,
        lambda p: _scheme("Uniform"),
        ga_loss,
    ),
    MethodSpec(
        "gt-mask",
        "Oracle: GradDiff on the ground-truth span tokens only (weight 1 inside, 0 outside)",
        RetainParams,
        lambda p: _scheme("SpanMask"),
        ga_loss,
    ),
    MethodSpec(
        "npo",
        "Negative preference optimisation against the adapter-disabled reference, + retain NLL",
        NPOParams,
        lambda p: _scheme("Uniform"),
        npo_loss,
    ),
    MethodSpec(
        "simnpo",
        "SimNPO: reference-free, length-normalised NPO, + retain NLL",
        SimNPOParams,
        lambda p: _scheme("Uniform"),
        simnpo_loss,
    ),
    MethodSpec(
        "wga",
        "Weighted gradient ascent: token weight p^beta (probability-based heuristic)",
        WGAParams,
        lambda p: _scheme("ProbabilityWeighting", p.wga_beta),
        ga_loss,
    ),
    MethodSpec(
        "satimp",
        "SatImp: token weight p^beta1 * (1-p)^beta2 (probability-based heuristic)",
        SatImpParams,
        lambda p: _scheme("ProbabilityWeighting", p.satimp_beta1, p.satimp_beta2),
        ga_loss,
    ),
    MethodSpec(
        "tokenunlearn",
        "TokenUnlearn: masking + entropy importance, hard selection or soft weighting, KL on retain",
        TokenUnlearnParams,
        lambda p: _scheme("TokenUnlearnImportance", p),
        tokenunlearn_loss,
    ),
):
    register(_spec)


def method_spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


# ----------------------------------------------------------------------------------- parameter views


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as a UI or the CLI shows it (derived from the dataclass field)."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)


def method_params(method: str) -> tuple[ParamSpec, ...]:
    cls = method_spec(method).params
    return tuple(
        ParamSpec(
            f.name,
            f.default if f.default is not MISSING else None,
            f.metadata.get("help", ""),
            tuple(f.metadata.get("choices", ())),
        )
        for f in fields(cls)
    )


def parse_value(spec: ParamSpec, value: object) -> object:
    """Coerce a value (often a CLI string) to the parameter's type, with a clear error."""
    kind = spec.kind
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{spec.name} must be true or false, got {value!r}.")
            return value.lower() in ("true", "1", "yes")
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{spec.name} must be a {kind.__name__}, got {value!r}.") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.name == "hidden_norm" and isinstance(value, bool):  # config.json written when it was a switch
        return "rms" if value else "none"
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{spec.name} must be a {kind.__name__}, got {value!r}.")
    return value


def build_params(method: str, values: dict) -> MethodParams:
    """The method's typed parameters from a name -> value dict (unknown names refused, values checked)."""
    specs = {s.name: s for s in method_params(method)}
    unknown = set(values) - set(specs)
    if unknown:
        raise ValueError(f"{method} has no parameter {sorted(unknown)[0]!r}; its parameters are {', '.join(specs)}.")
    return method_spec(method).params(**{k: parse_value(specs[k], v) for k, v in values.items()})


@dataclass
class Method:
    """A method ready to run: its row, its typed parameters and a fresh scheme."""

    spec: MethodSpec
    params: MethodParams
    scheme: WeightingScheme

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alpha(self) -> float:
        return self.params.alpha_used

    @property
    def gamma(self) -> float:
        return self.params.gamma

    @property
    def retain_loss(self) -> str:
        return getattr(self.params, "retain_loss", "none")

    def forget_loss(self, fw: Forward, weights: torch.Tensor) -> torch.Tensor:
        return self.spec.forget_loss(fw, weights.detach(), self.params)


def build_method(name: str, values: dict) -> Method:
    """Instantiate a method by name from resolved parameter values (see config.make_config)."""
    spec = method_spec(name)
    params = build_params(name, values)
    return Method(spec, params, spec.scheme(params))
