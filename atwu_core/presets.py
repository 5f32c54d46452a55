"""Presets: named method settings plus job settings, each saying where it was tuned.

A preset's method settings override the parameter dataclasses' defaults (which are the paper's); its job
settings override JobConfig's. A user's own settings override both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from atwu_core.files import read_json


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
TINY_PARAMETERS = 20_000_000  # below this a model is demo-sized (the embedded one has ~1 M); above, a pretrained one


@dataclass(frozen=True)
class PresetChoice:
    """The preset a job gets when none is asked for, and why (the CLI prints it on the job's first line)."""

    name: str
    reason: str


def preset_for_size(parameters: int) -> str:
    """`demo` for a model the size of the embedded one, `smollm2` (the preset tuned on a real pretrained model, with
    its batch sizes, learning rate and top-layer LoRA) for anything pretrained-sized."""
    return "demo" if parameters < TINY_PARAMETERS else "smollm2"


def _config_parameters(config: dict) -> int | None:
    """A decoder's parameter count estimated from its config.json (embeddings + attention + MLP per layer), without
    loading its weights; None when the config lacks the sizes."""
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        vocab, inner = int(config["vocab_size"]), int(config.get("intermediate_size", 4 * hidden))
    except (KeyError, TypeError, ValueError):
        return None
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner)


def default_preset(model: str) -> PresetChoice:
    """The preset for a model spec, from what the model is: its size read off config.json (a GGUF file or a hub id
    is taken as a pretrained model). Presets follow what a model is, not its name: a SmolLM2 taught into a folder of
    its own by `atwu finetune` gets `smollm2`, as the alias does (with `demo` it ran 35 s a step instead of 2.2 s)."""
    if model == "demo":
        return PresetChoice("demo", "the embedded tiny demo model")
    if model in SMOLLM2_MODELS:
        return PresetChoice("smollm2", f"{model} is SmolLM2-135M")
    folder = Path(model).expanduser()
    if model.endswith(".gguf"):
        return PresetChoice("smollm2", "a GGUF file: a pretrained model")
    if not folder.is_dir():
        return PresetChoice("smollm2", "a hub model: a pretrained model")
    try:
        config = read_json(folder / "config.json", 2**20)
    except ValueError:  # unreadable: no size to go by, and the reason below says so
        config = None
    config = config if isinstance(config, dict) else {}
    parameters = _config_parameters(config)
    if parameters is None:
        return PresetChoice("demo", f"{folder / 'config.json'} gives no model size")
    kind = (config.get("architectures") or ["a decoder"])[0]
    return PresetChoice(preset_for_size(parameters), f"{kind} with ~{parameters / 1e6:.0f} M parameters")


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]
