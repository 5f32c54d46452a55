"""Downloads of a run (CSV, HTML report, metrics JSON) and the CLI command that reruns it.

The files are built when the page is drawn, not on click: a download given a callable is a deferred file that a
rerun (moving the replay slider) can drop before the browser fetches it, which failed silently
(`MediaFileStorageError: Deferred file … not found`). Built eagerly, a file's id is its content's hash, so the same
file survives reruns; building is cached per run folder state, and a failure is shown, never swallowed.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app.report import run_report
from app.untrusted import md
from atwu_core import token_csv
from atwu_core.config import JobConfig
from atwu_core.metrics import alignment
from atwu_core.rerun import cli_command
from atwu_core.runs import RunReader


def fingerprint(run_dir: str) -> tuple:
    """Changes whenever the run folder's files do: the cache key of its exports."""
    return tuple(
        (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(run_dir).iterdir()) if p.is_file()
    )


@st.cache_data(show_spinner=False, max_entries=16)
def build(run_dir: str, what: str, stamp: tuple) -> bytes:
    """One export of a run folder as bytes (`stamp`, its fingerprint, keys the cache)."""
    snap = RunReader(run_dir).snapshot()
    if what == "csv":
        return token_csv.tokens_csv(snap).encode()
    if what == "html":
        return run_report(snap).encode()
    metrics = (
        snap.metrics.to_json()
        if snap.metrics is not None
        else {
            "alignment": alignment(snap.latest("scores"), snap.samples).to_json(),
            "note": "run not finished: alignment of the latest recorded scores",
        }
    )
    return json.dumps(metrics, indent=1).encode()


FILES = {
    "csv": ("Token values (CSV)", "tokens.csv", "text/csv"),
    "html": ("Report (HTML)", "report.html", "text/html"),
    "json": ("Metrics (JSON)", "metrics.json", "application/json"),
}


def export_panel(run_dir: str, config: dict, *, key: str) -> None:
    """Download buttons for the run's CSV (before, every step, final pass; all samples), its offline HTML report
    and its metrics, and the equivalent `atwu unlearn` command (copy button on the code block)."""
    name = Path(run_dir).name
    stamp = fingerprint(run_dir)
    cols = st.columns(len(FILES))
    for col, (what, (label, suffix, mime)) in zip(cols, FILES.items(), strict=False):
        try:
            data = build(run_dir, what, stamp)
        except Exception as err:  # noqa: BLE001 - a broken run folder: say so instead of a dead button
            col.error(f"{label} could not be built: {md(err)}")
            continue
        col.download_button(
            label, data, f"{name}-{suffix}", mime, key=f"{key}_dl_{what}", on_click="ignore", icon=":material/download:"
        )
    st.caption(
        "Charts: the camera button on any chart saves a PNG (in the HTML report: an SVG). "
        "The CSV holds one row per step, sample and token: score, loss weight, probability and log-probability "
        "change, from the `before` record through every step to the final pass."
    )
    try:
        st.markdown("**Rerun from the command line**")
        st.code(cli_command(JobConfig.from_json(config)), language="bash")
    except Exception as err:  # noqa: BLE001 - a config from another version: the rest of the page stays usable
        st.error(f"Could not build the command: {md(err)}")
