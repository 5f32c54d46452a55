"""Runs page: every run folder (CLI-made ones too); name, tag or delete one; reopen it with its results, a
replay slider over its steps, and its exports."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.components.results import METRIC_HELP, results_card
from app.exports import export_panel
from app.run_views import progress_panel, run_detail, run_label
from atwu_core.explore import delete_run, rename_run, tag_run
from atwu_core.runs import RunReader, list_runs, runs_root

COLUMNS = {  # list_runs key -> column shown
    "name": "run",
    "tags": "tags",
    "method": "method",
    "model": "model",
    "state": "state",
    "steps": "steps",
    "auroc": "score AUROC",
    "forgetting_auroc": "forgetting AUROC",
    "forget_exact": "forget exact",
    "retain_exact": "retain exact",
    "created": "created",
    "error": "error",
}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3f}"
    return "–" if value is None else str(value)


def runs_table(runs: list[dict]) -> None:
    """One row per run; empty cells read "–" (a cancelled run has no metrics), unreadable folders say why."""
    frame = pd.DataFrame(runs).reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    frame["tags"] = frame["tags"].map(lambda t: ", ".join(t) if isinstance(t, list) else "")
    st.dataframe(
        frame.map(_cell),
        hide_index=True,
        key="runs_table",
        column_config={
            name: st.column_config.Column(help=METRIC_HELP[help_key])
            for name, help_key in (("score AUROC", "score AUROC"), ("forgetting AUROC", "forgetting AUROC"))
        },
    )


def manage(run: dict) -> None:
    """Rename, tag or delete the chosen run (name and tags are kept in its config.json)."""
    with st.expander("Name, tags, delete"):
        c1, c2 = st.columns(2)
        name = c1.text_input("Name", value=run.get("name") or "", key=f"name_{run['run_dir']}")
        tags = c2.text_input(
            "Tags (comma-separated)", value=", ".join(run.get("tags") or []), key=f"tags_{run['run_dir']}"
        )
        c1, c2, c3 = st.columns([1, 1, 2])
        if c1.button("Save name and tags", key="runs_save"):
            try:
                rename_run(run["run_dir"], name)
                tag_run(run["run_dir"], tags.split(","))
            except (OSError, ValueError) as err:
                st.error(f"Could not save: {err}")
            else:
                st.rerun()
        sure = c3.checkbox("Yes, delete this run folder", key="runs_delete_sure")
        if c2.button("Delete run", key="runs_delete", disabled=not sure, type="secondary"):
            try:
                delete_run(run["run_dir"])
            except (OSError, ValueError) as err:
                st.error(f"Could not delete: {err}")
            else:
                st.session_state.pop("runs_pick", None)
                st.rerun()


st.title("Runs")
runs = list_runs()
if not runs:
    st.info(f"No runs in {runs_root()} yet: start one on the Run page.")
    st.stop()
runs_table(runs)
readable = [r for r in runs if r["state"] != "unreadable"]
if not readable:
    st.stop()
by_dir = {r["run_dir"]: r for r in readable}
focus = st.session_state.get("focus_run")
run_dir = st.selectbox(
    "Reopen",
    list(by_dir),
    index=list(by_dir).index(focus) if focus in by_dir else 0,
    key="runs_pick",
    format_func=lambda d: f"{run_label(d, by_dir[d])} · {by_dir[d]['state']}",
)
manage(by_dir[run_dir])
try:
    snap = RunReader(run_dir).snapshot()
except (FileNotFoundError, ValueError) as err:
    st.error(f"Cannot read {run_dir}: {err}")
    st.stop()
progress_panel(snap)
if snap.status.finished:
    results_card(snap.metrics, run_dir, key="runs")
if snap.step_records and snap.samples:
    numbers = [rec.step for rec in snap.step_records]
    upto = (
        st.slider(
            "Replay up to step",
            numbers[0],
            numbers[-1],
            numbers[-1],
            key=f"runs_step_{run_dir}",
            help="Draw the heatmaps and chips as they were at this step (the final pass shows at the last step).",
        )
        if len(numbers) > 1
        else numbers[0]
    )
    run_detail(snap, key="runs_view", upto_step=None if upto == numbers[-1] else upto)
else:
    st.info("This run recorded no steps.")
st.subheader("Export")
export_panel(run_dir, snap.config, key="runs")
