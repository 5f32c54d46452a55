"""Runs page: every run folder (CLI-made ones too); name, tag or delete one; reopen it with its results, a
replay slider over its steps, and its exports."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import session
from app.components.results import METRIC_HELP, results_card
from app.exports import export_panel
from app.run_views import progress_panel, run_detail, run_label
from app.untrusted import isolated, md, snapshot
from atwu_core.run_table import group_runs, runs_table
from atwu_core.runs import RunSnapshot, delete_run, rename_run, runs_root, tag_run

PICK = "runs_pick"  # the Reopen picker's widget key (dropped when its run is deleted)
COLUMNS = {  # runs_table key -> column shown
    "name": "run",
    "tags": "tags",
    "method": "method",
    "model": "model",
    "state": "state",
    "steps": "steps",
    "seed": "seed",
    "auroc": "score AUROC",
    "forgetting_auroc": "forgetting AUROC",
    "forget_exact": "forget exact",
    "retain_exact": "retain exact",
    "error": "error",
}  # newest first; the folder name says when
WIDTHS = {"run": 120, "tags": 60, "method": 60, "model": 55, "state": 78, "steps": 45, "seed": 40, "error": 200}
NUMBER_WIDTHS = {"score AUROC": 82, "forgetting AUROC": 104, "forget exact": 75, "retain exact": 75}
GROUPS = {"no grouping": None, "tag": "tags", "settings except seed": "settings"}
HELP = {
    "score AUROC": METRIC_HELP["score AUROC"],
    "forgetting AUROC": METRIC_HELP["forgetting AUROC"],
    "forget exact": METRIC_HELP["exact"],
    "retain exact": METRIC_HELP["exact"],
}
REFRESH_S = (2.0, 10.0)  # while a job runs / otherwise (a CLI job started later shows up within 10 s)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """One row per run, numbers kept numeric (so a click on a header sorts them), no column a run lacks."""
    frame = pd.DataFrame(rows).reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    frame["tags"] = frame["tags"].map(lambda t: ", ".join(t) if isinstance(t, list) else "")
    frame[list(NUMBER_WIDTHS)] = frame[list(NUMBER_WIDTHS)].apply(pd.to_numeric, errors="coerce")
    return frame.drop(columns=["error"]) if frame["error"].isna().all() else frame


def _matches(row: dict, text: str, states: list[str]) -> bool:
    haystack = " ".join(str(row.get(k) or "") for k in ("name", "method", "model", "data", "settings"))
    haystack += " " + " ".join(row.get("tags") or [])
    return (not states or row["state"] in states) and text.lower() in haystack.lower()


def show_table(rows: list[dict]) -> None:
    """Filter by text and state; one row per run (click a header to sort), or one row per tag or per
    settings-except-seed with mean ± std over its runs."""
    c1, c2, c3 = st.columns([1.6, 1.4, 2.6])
    text = c1.text_input("Filter", key="runs_filter", placeholder="name, tag, method, model, setting …")
    states = c2.multiselect("State", sorted({r["state"] for r in rows}), key="runs_states")
    group = c3.segmented_control("Group by", list(GROUPS), default="no grouping", key="runs_group") or "no grouping"
    shown = [r for r in rows if _matches(r, text, states)]
    if not shown:
        st.info("No run matches the filter.")
        return
    if GROUPS[group] is None:
        st.dataframe(
            _frame(shown),
            hide_index=True,
            key="runs_table",
            column_config={  # pixel widths: every column fits a 1280 px window beside the sidebar
                **{name: st.column_config.Column(width=px) for name, px in WIDTHS.items()},
                **{
                    name: st.column_config.NumberColumn(help=HELP[name], format="%.3f", width=px)
                    for name, px in NUMBER_WIDTHS.items()
                },
            },
        )
        st.caption("Click a column header to sort; empty cells: the run has no such number (not evaluated).")
        return
    st.dataframe(
        pd.DataFrame(group_runs(shown, GROUPS[group])).rename(columns={"group": group}),
        hide_index=True,
        key="runs_groups",
        column_config={
            group: st.column_config.TextColumn(width="large"),
            **{name: st.column_config.TextColumn(help=HELP[name], width="small") for name in NUMBER_WIDTHS},
        },
    )
    st.caption(
        "mean ± std (sample std) over the group's runs that have the number"
        + ("; a run with several tags counts in each." if GROUPS[group] == "tags" else ".")
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
                st.error(f"Could not save: {md(err)}")
            else:
                st.rerun()
        sure = c3.checkbox("Yes, delete this run folder", key="runs_delete_sure")
        if c2.button("Delete run", key="runs_delete", disabled=not sure, type="secondary"):
            try:
                delete_run(run["run_dir"])
            except (OSError, ValueError) as err:
                st.error(f"Could not delete: {md(err)}")
            else:
                session.forget_widget(PICK)
                st.rerun()


def reopen(snap: RunSnapshot) -> None:
    """A run's progress, results, replay and exports."""
    run_dir = str(snap.dir)
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


st.title("Runs")
st.caption(
    "Every run folder, the command line's too: filter, sort and group them, then reopen one with its results, a "
    "replay over its steps and its exports."
)
runs = runs_table()
if not runs:
    st.info(f"No runs in {md(runs_root())} yet: start one on the Run page.")
    st.stop()
live = any(r["state"] == "running" for r in runs)


@st.fragment(run_every=REFRESH_S[0] if live else REFRESH_S[1])
def table() -> None:
    """The table re-reads the run folders on its own, so running jobs (the CLI's too) move without a click."""
    show_table(runs_table())


table()
readable = [r for r in runs if r["state"] != "unreadable"]
if not readable:
    st.stop()
run = session.run_picker("Reopen", readable, key=PICK, describe=lambda d, r: f"{run_label(d, r)} · {r['state']}")
run_dir = run["run_dir"]
manage(run)
snap = snapshot(run_dir)
if snap is None:
    st.stop()
with isolated(run_dir):
    reopen(snap)
