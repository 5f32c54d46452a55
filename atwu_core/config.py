"""Job configuration: one dataclass for everything that decides a job, checked before anything is loaded.

A method's parameters live in `JobConfig.params` as the method's typed parameter dataclass (built once, from a
name -> value dict, in `__post_init__`); config.json holds them as that flat dict, so the CLI's `--set key=value`,
the app's controls and a saved `config.json` all speak the same names. Defaults < preset < the user's settings.
"""

from __future__ import annotations

import json
import math
import types
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

from atwu_core import presets
from atwu_core.methods import (
    REGISTRY,
    MethodParams,
    ParamSpec,
    build_params,
    method_params,
    method_spec,
    written_params,
)
from atwu_core.presets import PRESETS, default_preset

METHODS = REGISTRY  # the method registry, by name (`atwu methods` lists it)
METADATA_KEYS = {"versions", "created", "model_info", "name", "tags"}  # written beside the config in config.json
# Upper bounds far above any sensible job, so a typo (or a crafted config) fails before a model loads
MAX_SETTING = {
    "steps": 1_000_000,
    "forget_batch_size": 65_536,
    "retain_batch_size": 65_536,
    "lora_rank": 4096,
    "lora_alpha": 1_000_000,
    "max_length": 1_048_576,
    "max_new_tokens": 65_536,
}
MAX_LR = 1.0

__all__ = [
    "METHODS",
    "PRESETS",
    "JobConfig",
    "ParamSpec",
    "default_preset",
    "make_config",
    "method_params",
    "resolve_params",
    "split_overrides",
]


@dataclass
class JobConfig:
    """Everything that decides a job; saved as the run folder's config.json so that the run can be redone."""

    model: str = "demo"
    data: str = "demo"
    retain_data: str | None = None
    method: str = "atwu"
    preset: str = "demo"
    steps: int = 40
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    forget_batch_size: int = 32
    retain_batch_size: int = 32
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str = "all-linear"
    lora_layers: int | None = None  # LoRA on the top N decoder blocks only (None: all)
    full: bool = False
    max_length: int = 256
    chat_template: bool = False
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    lora_dtype: str = "float32"  # float32: LoRA weights and AdamW state in fp32; model: in the model's dtype (no casts)
    compile: bool = False  # torch.compile each decoder block while training (compiled once, on the first step)
    forget_ids: list[str] | None = None
    eval_max_samples: int | None = 64
    retain_model: str | None = None  # a model trained on the retain set only: TOFU's forget quality compares to it
    forget_quality_max_samples: int | None = None  # forget records in forget quality's KS test (None: all, TOFU's)
    max_new_tokens: int = 200  # greedy answers stop at EOS or after this many tokens (TOFU's and open-unlearning's)
    pool_special_tokens: bool = False  # count EOS and special tokens in the alignment and forgetting pools
    drop_nats: float = 1.0  # a span token is strongly forgotten when its log p fell by more than this
    utility_data: str | None = None  # TOFU model utility sets: 'tofu' (hub) or a folder of TOFU *_perturbed.json
    params: MethodParams | dict | None = None  # the method's typed parameters; a dict (or None: defaults) is built

    def __post_init__(self) -> None:
        if not isinstance(self.params, MethodParams):
            self.params = build_params(self.method, self.params or {})
        elif type(self.params) is not method_spec(self.method).params:
            raise ValueError(
                f"{self.method} takes {method_spec(self.method).params.__name__}, not {type(self.params).__name__}."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobConfig:
        known = {f.name for f in fields(cls)}
        if "reference" in data:  # the field's name before `ref` came to mean the adapter-disabled model only
            data = {**{k: v for k, v in data.items() if k != "reference"}, "retain_model": data["reference"]}
        if isinstance(data.get("params"), dict):
            data = {**data, "params": written_params(data.get("method"), data["params"])}
        unknown = set(data) - known - METADATA_KEYS
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def validate(self) -> None:
        """Refuse settings that cannot work, with what to do, before any model or data is loaded."""
        presets.preset(self.preset)  # the method and its parameters were checked when they were built
        positive = {
            "steps": self.steps,
            "forget_batch_size": self.forget_batch_size,
            "retain_batch_size": self.retain_batch_size,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
            if value > MAX_SETTING[name]:
                raise ValueError(f"{name} must be at most {MAX_SETTING[name]}, got {value!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed!r}.")
        for name, value in (
            ("lora_layers", self.lora_layers),
            ("eval_max_samples", self.eval_max_samples),
            ("forget_quality_max_samples", self.forget_quality_max_samples),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number or none, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}.")
        if self.lr > MAX_LR:
            raise ValueError(f"lr must be at most {MAX_LR} (LoRA learning rates are ~1e-4 to 1e-2), got {self.lr!r}.")
        if not (isinstance(self.drop_nats, (int, float)) and math.isfinite(self.drop_nats) and self.drop_nats > 0):
            raise ValueError(f"drop_nats must be a positive number of nats, got {self.drop_nats!r}.")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be between 0 and 1, got {self.warmup_ratio!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}.")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}.")
        if self.full and self.dtype in ("float16", "fp16"):
            raise ValueError(
                "full fine-tuning in float16 would need float32 master weights, which this engine does "
                "not keep; use dtype=bfloat16 or float32, or LoRA (its weights stay float32)."
            )
        if self.lora_dtype not in ("float32", "model"):
            raise ValueError(f"lora_dtype must be float32 or model, got {self.lora_dtype!r}.")
        if self.lora_dtype == "model" and self.dtype in ("float16", "fp16") and not self.full:
            raise ValueError(
                "lora_dtype=model with a float16 model would need float16 gradients unscaled in place, which the "
                "loss scaler refuses; use dtype=bfloat16, or lora_dtype=float32."
            )
        _check_device(self.device)
        if self.forget_ids is not None and not (isinstance(self.forget_ids, list) and self.forget_ids):
            raise ValueError(f"forget_ids must be a non-empty list of record ids, got {self.forget_ids!r}.")


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but this machine has no CUDA GPU; use device=auto or cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device} but MPS is not available here; use device=auto or cpu.")


def _preset_params(method: str, preset_name: str, overrides: dict | None) -> MethodParams:
    """Defaults < preset < overrides, every value type-checked against the method's parameter dataclass."""
    return build_params(method, {**presets.preset(preset_name).params.get(method, {}), **(overrides or {})})


def resolve_params(method: str, preset_name: str = "demo", overrides: dict | None = None) -> dict:
    """The method's parameters under a preset, as a name -> value dict (where the app's controls start)."""
    return _preset_params(method, preset_name, overrides).to_dict()


def make_config(method: str = "atwu", preset: str = "demo", params: dict | None = None, **job_overrides) -> JobConfig:
    """A checked JobConfig for `method` under `preset`; job fields (steps, lr, ...) and method params may be
    overridden (None means "the preset's")."""
    job_fields = {f.name for f in fields(JobConfig)} - {"method", "preset", "params"}
    bad = set(job_overrides) - job_fields
    if bad:
        raise ValueError(f"unknown job settings {sorted(bad)}; known: {sorted(job_fields)}.")
    job = {**presets.preset(preset).job, **{k: v for k, v in job_overrides.items() if v is not None}}
    config = JobConfig(method=method, preset=preset, params=_preset_params(method, preset, params), **job)
    config.validate()
    return config


def split_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """Split CLI `key=value` pairs into job settings (parsed by JobConfig's field types) and method params."""
    job_fields = {f.name: f for f in fields(JobConfig)}
    job, params = {}, {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        key, value = pair.split("=", 1)
        if key in ("method", "preset", "params"):
            raise ValueError(f"set {key} with --{key}, not --set.")
        if key in job_fields:
            job[key] = parse_job_value(key, value)
        else:
            params[key] = value
    return job, params


def parse_job_value(key: str, value: str) -> object:
    """A JobConfig field's value from text, by the field's type (`int | None`, `list[str] | None`, ...)."""
    kind = get_type_hints(JobConfig)[key]
    optional = get_origin(kind) in (Union, types.UnionType) and type(None) in get_args(kind)
    if optional:
        kind = next(k for k in get_args(kind) if k is not type(None))
    if optional and value.strip().lower() in ("none", ""):
        return None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if kind in (int, float):
            return kind(value)
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"{key} must be {name}{' or none' if optional else ''}, got {value!r}.") from None
    if get_origin(kind) is list:
        return [v.strip() for v in value.split(",") if v.strip()]
    return value
