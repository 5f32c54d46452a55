"""Run folders travel between people, so a run's LoRA adapter is untrusted input to the shared loaded model.

peft can change the base weights while it loads an adapter (`init_lora_weights` "olora"/"pissa" rewrite them,
`modules_to_save` and `bias` load whole base tensors, a non-LoRA key in the weights file is loaded over the
base model), and it falls back to unpickling `adapter_model.bin`. `lora_config` admits only plain LoRA and
builds the config with initialisation off; `check_weight_keys` admits only LoRA tensors; `weights_digest`
lets the caller prove afterwards that the base weights are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from atwu_core.files import read_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is ~1 KB
# The settings that only shape the LoRA layers themselves; every other setting must keep peft's default.
SHAPE_KEYS = (
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "lora_dropout",
    "fan_in_fan_out",
    "use_rslora",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
)
# Written by peft for information, or overridden here (inference_mode, init_lora_weights).
INFO_KEYS = (
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "auto_mapping",
    "inference_mode",
    "megatron_core",
    "init_lora_weights",
)
LORA_KEY_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")
DIGEST_SAMPLES = 4096  # elements hashed per tensor: every weight of a small matrix, a strided sample of a large one


class AdapterError(ValueError):
    """The adapter folder is not a plain LoRA adapter this app may load; the message names the file and setting."""


def lora_config(adapter: Path):
    """The adapter's LoraConfig, built only from the settings that shape LoRA layers, with initialisation off
    (the saved weights replace it anyway); refuses every setting that would load or change base weights."""
    from peft import LoraConfig

    path = adapter / CONFIG_FILE
    try:
        raw = read_json(path, MAX_CONFIG_BYTES)
    except ValueError as err:
        raise AdapterError(str(err)) from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: not a JSON object.")
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported; only LoRA adapters load.")
    init = raw.get("init_lora_weights", True)
    if not (init is True or init is False or init == "gaussian"):
        raise AdapterError(
            f"{path}: init_lora_weights {init!r} rewrites the base model's weights; "
            "only plain LoRA adapters (true/false) load."
        )
    defaults = {f.name: _default(f) for f in dataclasses.fields(LoraConfig)}
    for key, value in raw.items():
        if key in SHAPE_KEYS or key in INFO_KEYS:
            continue
        if key not in defaults:
            raise AdapterError(f"{path}: unknown setting {key!r} (an adapter from another peft version?).")
        if value != defaults[key] and not (value in (None, {}, [], False) and defaults[key] in (None, {}, [], False)):
            raise AdapterError(
                f"{path}: {key} = {value!r} is not allowed: it would load or change the base model's own weights "
                "or structure; only plain LoRA adapters load."
            )
    try:
        return LoraConfig(
            **{k: raw[k] for k in SHAPE_KEYS if k in raw},
            task_type=raw.get("task_type"),
            init_lora_weights=False,
            inference_mode=True,
        )
    except (TypeError, ValueError) as err:
        raise AdapterError(f"{path}: {err}") from None


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def check_weight_keys(adapter: Path) -> None:
    """The weights file exists as safetensors (never unpickled) and holds LoRA tensors only: peft loads any
    other key over the base model's tensor of that name."""
    from safetensors import SafetensorError, safe_open

    path = adapter / WEIGHTS_FILE
    if not path.is_file():
        bin_only = (adapter / "adapter_model.bin").exists()
        hint = " (adapter_model.bin is a pickle, which is never loaded)" if bin_only else ""
        raise AdapterError(f"{path}: missing{hint}; save the adapter as safetensors.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"{path}: not a readable safetensors file ({err}).") from None
    if not keys:
        raise AdapterError(f"{path}: holds no tensors.")
    other = [k for k in keys if not any(part in k for part in LORA_KEY_PARTS)]
    if other:
        raise AdapterError(
            f"{path}: holds {len(other)} tensor(s) that are not LoRA weights (e.g. {other[0]!r}); "
            "they would overwrite the base model."
        )


def check_finite(model: torch.nn.Module, adapter: Path) -> None:
    """A NaN or infinite LoRA weight makes every answer empty; say so instead."""
    for name, p in model.named_parameters():
        if "lora_" in name and not torch.isfinite(p).all():
            raise AdapterError(f"{adapter / WEIGHTS_FILE}: {name} holds NaN or infinite values.")


def weights_digest(model: torch.nn.Module) -> str:
    """A cheap fingerprint of the model's weights: names, shapes, dtypes and the bytes of up to DIGEST_SAMPLES
    evenly strided elements per tensor (one small device-to-host copy each)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)  # (numel,)
        sample = flat[:: max(flat.numel() // DIGEST_SAMPLES, 1)].contiguous().cpu()  # (≤ 2·DIGEST_SAMPLES,)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
