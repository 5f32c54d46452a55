"""A saved config as settings a person reads: the flat settings of a run, where runs differ, and the `atwu unlearn`
command that reruns one. The command is generated from JobConfig's field metadata, as the CLI's flags are, so the
CLI always accepts it (tests/test_cli.py parses it back)."""

from __future__ import annotations

import shlex
from collections.abc import Collection

from atwu_core.config import METADATA_KEYS, JobConfig, job_settings, make_config, method_params


def flat_settings(config: dict) -> dict[str, object]:
    """A config (`JobConfig.to_json()` or a migrated config.json) as flat settings (`params.beta`, …), without
    what does not decide the job."""
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


def cli_command(config: JobConfig, leave_out: Collection[str] = ()) -> str:
    """The `atwu unlearn` command that reruns `config`: a flag for every job setting that has one, then `--set` for
    every other setting that differs from what its method and preset give (so the command stays short and exact).
    `leave_out`: job settings not to say (a run's seed, to name what its seeds share)."""
    base = make_config(config.method, config.preset)
    parts, sets = ["atwu", "unlearn"], []
    for s in job_settings().values():
        value = getattr(config, s.name)
        if s.name == "params" or s.name in leave_out:
            continue
        if s.flag and s.kind is bool and value is True:
            parts.append(s.option)
        elif s.flag and s.kind is not bool and value is not None:
            parts += [s.option, s.text(value)]
        elif value != getattr(base, s.name):
            sets.append(f"{s.name}={s.text(value)}")
    for s in method_params(config.method):
        value = getattr(config.params, s.name)
        if value != getattr(base.params, s.name):
            sets.append(f"{s.name}={s.text(value)}")
    return shlex.join(parts + [arg for pair in sets for arg in ("--set", pair)])
