"""Presets: named method settings plus job settings, each saying where it was tuned.

A preset's method settings override the parameter dataclasses' defaults (which are the paper's); its job
settings override JobConfig's. A user's own settings override both.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    tuned_on: str  # the world its values were chosen on: never report it there as held-out
    job: dict = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)  # method -> parameter overrides


# a fast scorer schedule (a scorer step every 2 model steps, budget 0.4, gamma 2), tuned on generate_world(7) with the
# tiny model. `demo` runs the matched pair on it with reward_norm and beta 2 (chosen there: p^2 nll peaks at nll 0.5
# and fades more slowly once a token is forgotten). `smollm2` runs the headline pair on it: of the ATWU rows run on
# demo-smollm2 (bench/alignment.py --tuning --models smollm2) it ranked the spans best (0.82 against the matched
# pair + reward_norm's 0.70, which `smollm2` ran before)
_FAST = {"scorer_every": 2, "budget": 0.4, "gamma": 2.0}
_ATWU_NPO = {"scorer_every": 2, "budget": 0.4}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "demo",
            "tens of LoRA steps on the tiny demo model; ATWU = the matched pair with reward_norm, beta 2",
            tuned_on="generate_world(7) on the tiny model",
            job={"steps": 40, "lr": 1e-3},
            params={"atwu": {**_FAST, "pair": "matched", "reward_norm": True, "beta": 2.0}, "atwu-npo": _ATWU_NPO},
        ),
        Preset(
            "smollm2",
            "ATWU = the headline pair on the fast scorer schedule, job settings for a 135M model on a CPU",
            tuned_on="demo-smollm2 (lr and the objective pair)",
            job={
                "steps": 40,
                "lr": 3e-3,
                "forget_batch_size": 8,
                "retain_batch_size": 8,
                "lora_layers": 12,
                "eval_max_samples": 32,
            },
            params={"atwu": {**_FAST, "pair": "headline"}, "atwu-npo": _ATWU_NPO},
        ),
        Preset(
            "paper",
            "the ATWU authors' headline TOFU settings: headline pair, n 5, b 0.2, gamma 1, beta 5",
            tuned_on="none here (the authors' Bayesian search on TOFU)",
            job={"steps": 100, "lr": 1e-3},
        ),
    )
}

SMOLLM2_MODELS = ("smollm2", "demo-smollm2")


def default_preset(model: str) -> str:
    """The preset tuned for `model`: `smollm2` for the SmolLM2 models, `demo` for everything else."""
    return "smollm2" if model in SMOLLM2_MODELS else "demo"


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]
