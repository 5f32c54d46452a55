"""Each weighting scheme's typed parameters, beside the schemes and free of torch (the registry, `atwu methods`
and `--help` read them without loading torch).

Fields are declared with `settings.param` (`help`, `choices`, `minimum`, `maximum`, as peft's LoraConfig does);
`__post_init__` refuses values of the wrong type or out of range and settings the chosen variant would ignore.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from atwu_core.settings import check, param


@dataclass
class MethodParams:
    """Parameters every method has."""

    gamma: float = param(1.0, "Weight of the forget loss.", minimum=0.0)

    def __post_init__(self) -> None:
        check(self)

    def refuse_ignored(self, names: tuple[str, ...], when: str) -> None:
        """Refuse a setting changed from its default that `when` makes the method ignore (it would do nothing)."""
        defaults = {f.name: f.default for f in fields(self)}
        for name in names:
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} has no effect with {when}; "
                    f"leave {name} at {defaults[name]!r} or change {when.split('=')[0]}."
                )

    @property
    def alpha_used(self) -> float:
        """The retain loss's weight as the loop applies it (0 without a retain loss)."""
        return 0.0

    def check_job(self, steps: int) -> None:
        """Refuse settings that cannot work in a `steps`-step job (JobConfig.validate asks, before anything loads)."""

    def to_json(self) -> dict:
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


# ----------------------------------------------------------------------------------- probability.py


@dataclass
class WGAParams(RetainParams):
    wga_beta: float = param(1.0, "Token weight p^beta.", minimum=0.0)


@dataclass
class SatImpParams(RetainParams):
    satimp_beta1: float = param(5.0, "Token weight p^beta1 * (1-p)^beta2: exponent on p.", minimum=0.0)
    satimp_beta2: float = param(1.0, "Exponent on (1-p).", minimum=0.0)


# ----------------------------------------------------------------------------------- atwu.py


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
    scorer_start: int = param(
        0,
        "Warm start: the scorer's first update comes after this many model steps (0: the paper), so that its "
        "reward reads an NLL that has moved; until then every score is the initial 0.5, and the scorer's lr "
        "decays over the updates it makes after the start.",
        minimum=0,
    )
    score_ema: float = param(
        0.9,
        "Decay per model step of each forget token's score average over the job, recorded beside the final scores "
        "(score_ema in the final record, ema_auroc in metrics.json); 0: the final scores themselves.",
        minimum=0.0,
        maximum=0.999,
    )
    retain_contrast: float = param(
        0.0,
        "Weight of a term teaching the scorer that the retain batch's answer tokens are not forget-specific: "
        "lambda_R mean over retain tokens of -log(1 - g) (0: the paper, whose scorer never sees retain data). It "
        "reads the retain batch the retain loss draws, so it needs a retain loss.",
        minimum=0.0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scorer_layers == 1:
            self.refuse_ignored(("scorer_width",), "scorer_layers=1 (a linear probe has no hidden width)")
        if self.retain_contrast and self.retain_loss == "none":
            raise ValueError(
                f"retain_contrast={self.retain_contrast} reads the retain batch, which retain_loss=none never draws; "
                "set retain_loss to nll or kl, or retain_contrast=0."
            )
        if self.retain_contrast and self.hidden_centre:
            raise ValueError(
                "retain_contrast with hidden_centre=true would centre the retain batch on its own mean and so "
                "remove the forget-retain difference the contrast learns from; set one of them off."
            )

    def scorer_due(self, step: int) -> bool:
        """Whether model step `step` (from 1) has a scorer update: every `scorer_every` (joint: every) model step
        after `scorer_start`."""
        every = 1 if self.update == "joint" else self.scorer_every
        return step > self.scorer_start and (step - self.scorer_start) % every == 0

    def scorer_updates(self, steps: int) -> int:
        """How many scorer updates a `steps`-step job makes (what the scorer's lr decays over)."""
        return sum(self.scorer_due(step) for step in range(1, steps + 1))

    def check_job(self, steps: int) -> None:
        if self.scorer_start and not self.scorer_updates(steps):
            raise ValueError(
                f"scorer_start={self.scorer_start} leaves the scorer no update in a {steps}-step job; lower "
                f"scorer_start or raise steps (the first update comes scorer_every steps after the start)."
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
    reward: str = param(
        "nll",
        "What the scorer's reward reads. nll: each token's NLL now (the paper). delta_nll: its increase since "
        "before training, nll - nll_before, in place of nll: headline +mean[(1-g) delta], matched "
        "-mean[g p^beta delta] (p now); 0 at the start, so the scorer follows what the model has forgotten.",
        ("nll", "delta_nll"),
    )
    reward_cap: float = param(
        0.0,
        "Cap, in nats, on what the scorer's reward reads (0: none; the paper). Past log(vocabulary size), 10.8 on "
        "SmolLM2, a token is less likely than a uniform guess: capped there, every token forgotten that far reads "
        "alike, so GA's overshoot past it (which on TOFU runs higher off the spans than on them) stops steering the "
        "scorer. Ours, from TOFU.",
        minimum=0.0,
    )
    reward_standardise: bool = param(
        False,
        "headline pair only: standardise what the reward reads within each answer (minus the answer's mean, over "
        "its std, floored at 0.1 nats), so the reward only ranks an answer's tokens and the budget alone sets how "
        "many are selected; unstandardised, an NLL of tens of nats outweighs the budget and every score saturates "
        "at 1. Ours, from TOFU.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pair == "headline":
            self.refuse_ignored(("saturation", "reward_norm"), "pair=headline (they are the matched pair's)")
        else:
            self.refuse_ignored(
                ("reward_standardise",), "pair=matched (it is the headline pair's; the matched pair has reward_norm)"
            )
        if self.reward == "delta_nll" and self.reward_norm:
            raise ValueError(
                "reward_norm=True divides the reward by its batch mean, which with reward=delta_nll starts at 0 and "
                "can be negative; set reward_norm=false or reward=nll."
            )


@dataclass
class ATWUNPOParams(ScorerParams, NPOParams):
    pass


# ----------------------------------------------------------------------------------- token_unlearn.py


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tu_selection == "hard":
            self.refuse_ignored(("tu_temperature",), "tu_selection=hard (the temperature is soft weighting's)")
        else:
            self.refuse_ignored(("tu_top_fraction",), "tu_selection=soft (the fraction is hard selection's)")
        if self.tu_base == "ga":
            self.refuse_ignored(("npo_beta",), "tu_base=ga (npo_beta is NPO's temperature)")
