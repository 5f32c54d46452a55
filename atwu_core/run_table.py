"""The explorer's tables across runs: one colour per run, the settings a run shares with its other seeds, and
groups of runs (by tag or by settings except the seed) with mean ± std, as the README's tables report them."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from atwu_core.config import JobConfig
from atwu_core.rerun import cli_command
from atwu_core.runs import RunReader, list_runs

# Tableau 10 in plotly's D3 order, less its grey (the charts' chance lines are grey).
RUN_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
METRICS = {  # list_runs key -> column name (the numbers grouped)
    "auroc": "score AUROC",
    "forgetting_auroc": "forgetting AUROC",
    "forget_exact": "forget exact",
    "retain_exact": "retain exact",
}
NO_TAG = "(no tag)"


def default_selection(runs: Sequence[dict]) -> list[str]:
    """The latest completed run of each method (`runs` newest first, as `list_runs` gives them)."""
    chosen: dict[str, str] = {}
    for run in runs:
        if run.get("state") == "completed" and run.get("method") not in chosen:
            chosen[run.get("method")] = run["run_dir"]
    return list(chosen.values())


def run_id(run_dir: str | Path) -> str:
    """A run's id: its folder name (the same whether given as a path or a name)."""
    return Path(run_dir).name


def run_colour(run_dir: str | Path) -> str:
    """The one colour of a run on every chart: a stable hash of its id, so every page and the report agree
    without sharing state (two runs can share a colour; their names tell them apart)."""
    digest = hashlib.sha1(run_id(run_dir).encode()).digest()
    return RUN_PALETTE[int.from_bytes(digest[:4], "big") % len(RUN_PALETTE)]


def run_colours(run_dirs: Sequence[str | Path]) -> dict[str, str]:
    """Colours for runs shown together (run id -> colour): each run's own `run_colour`, except that a run whose colour
    an earlier-listed run already took gets the next free one, so runs on one chart never share a colour (up to the
    palette's size). A run alone, or among runs it does not collide with, keeps its colour from every other page."""
    out: dict[str, str] = {}
    for run_dir in run_dirs:
        colour = run_colour(run_dir)
        if colour in out.values() and len(out) < len(RUN_PALETTE):
            start = RUN_PALETTE.index(colour)
            colour = next(
                c
                for k in range(len(RUN_PALETTE))
                if (c := RUN_PALETTE[(start + k) % len(RUN_PALETTE)]) not in out.values()
            )
        out[run_id(run_dir)] = colour
    return out


def settings_label(config: JobConfig) -> str:
    """What a run shares with its other seeds: its rerun command without `--seed` (flags, then only the
    settings that differ from its preset)."""
    return cli_command(config, leave_out=("seed",)).removeprefix("atwu unlearn ")


def mean_std(values: Iterable[float | None]) -> str:
    """`mean ± std` (sample std, as over seeds) of the values that exist; one value: just it; none: n/a."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def runs_table(root: str | Path | None = None) -> list[dict]:
    """`list_runs` rows, each with its `settings` label and `seed` (unreadable folders keep their reason)."""
    rows = list_runs(root)
    for row in rows:
        if row["state"] == "unreadable":
            continue
        try:
            config = RunReader(row["run_dir"]).job_config  # an unknown method or preset: that run's error only
            row["settings"] = settings_label(config)
        except (OSError, ValueError) as err:  # deleted or rewritten since it was listed
            row.update(state="unreadable", error=str(err))
            continue
        row["seed"] = config.seed
    return rows


def group_runs(rows: Sequence[dict], by: str) -> list[dict]:
    """One row per group (`by` = "tags": each tag, a run in every group it is tagged with; `by` = "settings":
    runs equal in everything but the seed): how many runs, their seeds, and mean ± std of each metric over
    the runs that have it. Groups come in order of their first (newest) run."""
    if by not in ("tags", "settings"):
        raise ValueError(f"cannot group runs by {by!r}; choose tags or settings.")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["state"] == "unreadable":
            continue
        keys = (row.get("tags") or [NO_TAG]) if by == "tags" else [row["settings"]]
        for key in keys:
            groups.setdefault(key, []).append(row)
    return [
        {
            "group": key,
            "runs": len(members),
            "seeds": ", ".join(str(r.get("seed")) for r in members),
            **{name: mean_std(r.get(k) for r in members) for k, name in METRICS.items()},
        }
        for key, members in groups.items()
    ]
