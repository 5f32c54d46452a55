"""Job configuration: one dataclass for everything that decides a job, checked before anything is loaded.

A method's parameters live in `JobConfig.params` as the method's typed parameter dataclass (built once, from a
name -> value dict, in `__post_init__`); config.json holds them as that flat dict, so the CLI's `--set key=value`,
the app's controls and a saved `config.json` all speak the same names. Defaults < preset < the user's settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from atwu_core import presets
from atwu_core.methods import REGISTRY, MethodParams, build_params, method_params, method_spec, written_params
from atwu_core.presets import PRESETS, default_preset
from atwu_core.settings import Setting, check, param, settings

METHODS = REGISTRY  # the method registry, by name (`atwu methods` lists it)
METADATA_KEYS = {"versions", "created", "model_info", "name", "tags"}  # written beside the config in config.json
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
LORA_SETTINGS = ("lora_rank", "lora_alpha", "lora_targets", "lora_layers", "lora_dtype")  # what --full ignores

__all__ = [
    "METHODS",
    "PRESETS",
    "JobConfig",
    "Setting",
    "default_preset",
    "job_settings",
    "make_config",
    "method_params",
    "migrate",
    "split_overrides",
]


# Upper bounds sit far above any sensible job, so a typo (or a crafted config) fails before a model loads.
@dataclass
class JobConfig:
    """Everything that decides a job; saved as the run folder's config.json so that the run can be redone. Each
    field's help, allowed values and bounds are its metadata (`settings.param`): `validate` checks them, and the
    CLI's flags and `--set`, the app's controls and the rerun command are generated from them."""

    model: str = param("demo", "'demo', 'demo-smollm2', 'smollm2', a folder, a .gguf file or a hub id.", flag=True)
    data: str = param(
        "demo",
        "'demo', a dataset folder, a `datasets` folder with target_words spans, a TOFU .json, or tofu:<split>.",
        flag=True,
    )
    retain_data: str | None = param(
        None, "Retain set for a single-file or span-folder data (.json or .jsonl).", flag=True
    )
    method: str = param("atwu", "Unlearning method (see `atwu methods`).", flag=True)
    preset: str = param(
        "demo",
        "Hyperparameter preset (default: by the model's size: demo if tiny, smollm2 if pretrained-sized).",
        tuple(PRESETS),
        flag=True,
    )
    steps: int = param(40, "Optimiser steps.", minimum=1, maximum=1_000_000, flag=True)
    lr: float = param(
        1e-3,
        "Learning rate (linear warm-up, then decay; LoRA rates are ~1e-4 to 1e-2).",
        above=0.0,
        maximum=1.0,
        flag=True,
    )
    warmup_ratio: float = param(0.1, "Share of the steps the learning rate warms up over.", minimum=0.0, maximum=1.0)
    weight_decay: float = param(0.01, "AdamW weight decay.", minimum=0.0)
    seed: int = param(0, "Seeds batching and initialisation.", minimum=0, maximum=2**63 - 1, flag=True)
    forget_batch_size: int = param(32, "Forget samples per step.", minimum=1, maximum=65_536)
    retain_batch_size: int = param(32, "Retain samples per step.", minimum=1, maximum=65_536)
    lora_rank: int = param(8, "LoRA rank.", minimum=1, maximum=4096, flag=True)
    lora_alpha: int = param(16, "LoRA alpha (scale = alpha / rank).", minimum=1, maximum=1_000_000)
    lora_targets: str = param("all-linear", "Linear layers that get LoRA: all-linear or comma-separated names.")
    lora_layers: int | None = param(
        None, "LoRA on the top N decoder blocks only (none: all); backpropagation stops below them.", minimum=1
    )
    full: bool = param(False, "Fine-tune the full model instead of a LoRA adapter.", flag=True)
    max_length: int = param(
        256, "Longest prompt + answer in tokens; longer samples are truncated.", minimum=1, maximum=1_048_576
    )
    chat_template: bool = param(False, "Wrap each question in the tokenizer's chat template.")
    device: str = param("auto", "Where the job runs: auto, cpu, cuda, cuda:N or mps.")
    dtype: str = param("auto", "The model's dtype (auto: bfloat16 on a GPU that has it, else float32).", DTYPES)
    gradient_checkpointing: bool = param(
        False, "Recompute activations in the backward pass: less memory, about 1/3 more compute."
    )
    lora_dtype: str = param(
        "float32",
        "float32: LoRA weights and AdamW state in float32; model: in the model's dtype (no casts).",
        ("float32", "model"),
    )
    compile: bool = param(False, "torch.compile each decoder block while training (compiled once, on the first step).")
    forget_ids: list[str] | None = param(None, "Unlearn only these forget record ids (comma-separated; none: all).")
    eval_max_samples: int | None = param(
        64, "Forget and retain samples scored before/after at the end (fewer: a faster finish; none: all).", minimum=1
    )
    retain_model: str | None = param(
        None,
        "A model trained on the retain set only, for TOFU's forget quality (KS test on truth ratios).",
        flag=True,
    )
    forget_quality_max_samples: int | None = param(
        None, "Forget records in forget quality's KS test (none: all, TOFU's).", minimum=1
    )
    max_new_tokens: int = param(
        200,
        "Greedy answers stop at EOS or after this many new tokens (200: TOFU's and open-unlearning's).",
        minimum=1,
        maximum=65_536,
    )
    pool_special_tokens: bool = param(False, "Count EOS and special tokens in the alignment and forgetting pools.")
    drop_nats: float = param(
        1.0, "A span token is strongly forgotten when its log p fell by more than this many nats.", above=0.0
    )
    utility_data: str | None = param(
        None, "TOFU model utility sets: 'tofu' (the hub) or a folder of TOFU *_perturbed.json files."
    )
    params: MethodParams | dict | None = param(
        None, "The method's typed parameters (see `atwu methods`; each set with --set name=value)."
    )

    def __post_init__(self) -> None:
        if not isinstance(self.params, MethodParams):
            self.params = build_params(self.method, self.params or {})
        elif type(self.params) is not method_spec(self.method).params:
            raise ValueError(
                f"{self.method} takes {method_spec(self.method).params.__name__}, not {type(self.params).__name__}."
            )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> JobConfig:
        """A saved config (config.json, a worker's spec), migrated to today's keys; metadata beside it is dropped."""
        data = migrate(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - METADATA_KEYS
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def validate(self) -> None:
        """Refuse settings that cannot work, with what to do, before any model or data is loaded: each field against
        its type, choices and bounds (the method's parameters were checked when they were built), then the rules
        that join fields."""
        check(self)
        self.params.check_job(self.steps)  # a method's settings that depend on the job's length
        if self.full:
            job, preset = job_settings(), presets.preset(self.preset).job
            changed = [n for n in LORA_SETTINGS if getattr(self, n) != preset.get(n, job[n].default)]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} {'has' if len(changed) == 1 else 'have'} no effect with full=True (the "
                    "whole model is trained, no LoRA adapter); leave it at the preset's value or drop full."
                )
        if self.full and self.dtype in ("float16", "fp16"):
            raise ValueError(
                "full fine-tuning in float16 would need float32 master weights, which this engine does "
                "not keep; use dtype=bfloat16 or float32, or LoRA (its weights stay float32)."
            )
        if self.lora_dtype == "model" and self.dtype in ("float16", "fp16") and not self.full:
            raise ValueError(
                "lora_dtype=model with a float16 model would need float16 gradients unscaled in place, which the "
                "loss scaler refuses; use dtype=bfloat16, or lora_dtype=float32."
            )
        _check_device(self.device)
        if self.forget_ids is not None and not self.forget_ids:
            raise ValueError("forget_ids must be a non-empty list of record ids (or none: all); got an empty list.")


def job_settings() -> dict[str, Setting]:
    """JobConfig's fields as settings, by name: what the CLI's flags, `--set`, the app and the rerun command read."""
    return {s.name: s for s in settings(JobConfig)}


def migrate(data: dict) -> dict:
    """A saved config (config.json) in today's keys, whichever version wrote it: the one place legacy names are
    renamed, for every reader (`JobConfig.from_json`, `RunReader.config`). Returns a new dict."""
    data = dict(data)
    if "reference" in data:  # the field's name before `ref` came to mean the adapter-disabled model only
        data["retain_model"] = data.pop("reference")
    if isinstance(data.get("params"), dict):
        data["params"] = written_params(data.get("method"), data["params"])
    return data


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but this machine has no CUDA GPU; use device=auto or cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device} but MPS is not available here; use device=auto or cpu.")


def preset_params(method: str, preset_name: str, overrides: dict | None) -> MethodParams:
    """Defaults < preset < overrides, every value type-checked against the method's parameter dataclass."""
    return build_params(method, {**presets.preset(preset_name).params.get(method, {}), **(overrides or {})})


def make_config(method: str = "atwu", preset: str = "demo", params: dict | None = None, **job: object) -> JobConfig:
    """A checked JobConfig for `method` under `preset`: defaults < the preset's < `params` and the job settings
    given (each taken as it is: None means none, as `lora_layers=None` is LoRA on every block)."""
    job_fields = set(job_settings()) - {"method", "preset", "params"}
    bad = set(job) - job_fields
    if bad:
        raise ValueError(f"unknown job settings {sorted(bad)}; known: {sorted(job_fields)}.")
    job = {**presets.preset(preset).job, **job}
    config = JobConfig(method=method, preset=preset, params=preset_params(method, preset, params), **job)
    config.validate()
    return config


def split_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """Split CLI `key=value` pairs into job settings (parsed by JobConfig's field types) and method params (parsed
    by theirs when the method is known, in `build_params`)."""
    job_fields = job_settings()
    job, params = {}, {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        key, value = pair.split("=", 1)
        if key in ("method", "preset", "params"):
            raise ValueError(f"set {key} with --{key}, not --set.")
        if key in job_fields:
            job[key] = job_fields[key].parse(value)
        else:
            params[key] = value
    return job, params
