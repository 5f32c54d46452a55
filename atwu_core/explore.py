"""A run's settings as the explorer shows them: the settings on which runs differ, and the `atwu unlearn` command
that reruns a run."""

from __future__ import annotations

import shlex

from atwu_core.config import METADATA_KEYS, make_config


def flat_settings(config: dict) -> dict[str, object]:
    """A config.json as flat settings (`params.beta`, …), without what does not decide the job."""
    out = {k: v for k, v in config.items() if k not in (*METADATA_KEYS, "params")}
    out.update({f"params.{k}": v for k, v in (config.get("params") or {}).items()})
    return out


def config_diff(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """The settings on which the named configs differ: {setting: {name: value}} (absent = "–"). A method
    parameter counts only among the runs that have it: one method's own parameters are not a difference."""
    flat = {name: flat_settings(c) for name, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    out = {}
    for k in keys:
        having = [f[k] for f in flat.values() if k in f]
        compared = having if k.startswith("params.") else [f.get(k, "–") for f in flat.values()]
        if len({repr(v) for v in compared}) > 1:
            out[k] = {name: f.get(k, "–") for name, f in flat.items()}
    return out


_FLAGS = {
    "model": "--model",
    "data": "--data",
    "method": "--method",
    "preset": "--preset",
    "steps": "--steps",
    "seed": "--seed",
    "retain_data": "--retain-data",
    "retain_model": "--retain-model",
}


def cli_command(config: dict) -> str:
    """The `atwu unlearn` command that reruns a run: its flags, then `--set` for every setting that differs from
    what its method and preset give (so the command stays short and exact)."""
    base = make_config(config.get("method", "atwu"), config.get("preset", "demo")).to_dict()
    parts = ["atwu", "unlearn"]
    for key, flag in _FLAGS.items():
        if config.get(key) is not None:
            parts += [flag, str(config[key])]
    if config.get("full"):
        parts.append("--full")
    settings, defaults = flat_settings(config), flat_settings(base)
    for key, value in settings.items():
        if key in _FLAGS or key == "full" or value == defaults.get(key, object()):
            continue
        name = key.removeprefix("params.")
        text = ",".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)
        parts += ["--set", f"{name}={text}"]
    return shlex.join(parts)
