"""Runs page: every run folder, reopened with a step slider, and exports (CSV, HTML, JSON)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import pandas as pd
import streamlit as st

from app.components.heatmap import weight_heatmap
from app.run_views import pick_sample, progress_panel, run_label, sample_view
from atwu_core.metrics import alignment
from atwu_core.runs import RunReader, list_runs, runs_root


def weights_csv(reader: RunReader) -> str:
    """Every recorded weight: one row per (step, sample, token), carried-forward rows left out."""
    samples = {s["id"]: s for s in reader.samples}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", "sample_id", "token_index", "token", "token_id", "in_span", "weight", "prob"])
    records = reader.steps() + ([{**reader.final, "step": "final"}] if reader.final else [])
    for rec in records:
        for sid, weights in rec["weights"].items():
            sample, probs = samples[sid], rec.get("probs", {}).get(sid) or [None] * len(weights)
            for k, (w, p) in enumerate(zip(weights, probs)):
                writer.writerow(
                    [rec["step"], sid, k, sample["tokens"][k], sample["token_ids"][k], sample["span_mask"][k], w, p]
                )
    return out.getvalue()


def metrics_json(reader: RunReader) -> str:
    """metrics.json, or for an unfinished run the alignment of its latest weights."""
    metrics = reader.metrics or {
        "alignment": alignment(reader.final_weights(), reader.encoded_samples()),
        "note": "run not finished: alignment of the latest recorded weights",
    }
    return json.dumps(metrics, indent=1)


def exports(reader: RunReader, sample: dict) -> None:
    name = reader.dir.name
    steps, matrix = reader.weight_matrix(sample["id"])
    fig = weight_heatmap(
        steps,
        matrix,
        sample["tokens"],
        span_mask=sample["span_mask"],
        title=f"Forget weight per token and step: {sample['id']} ({name})",
    )
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button(
        "Token weights (CSV)",
        lambda: weights_csv(reader),
        f"{name}-weights.csv",
        "text/csv",
        key="dl_csv",
        disabled=not steps,
    )
    c2.download_button(
        "Heatmap (HTML)",
        lambda: fig.to_html(include_plotlyjs=True),
        f"{name}-{sample['id']}.html",
        "text/html",
        key="dl_html",
        disabled=not steps,
    )
    c3.download_button(
        "Metrics (JSON)", lambda: metrics_json(reader), f"{name}-metrics.json", "application/json", key="dl_json"
    )
    if importlib.util.find_spec("kaleido") is not None:
        c4.download_button(
            "Heatmap (PNG)",
            lambda: fig.to_image(format="png"),
            f"{name}-{sample['id']}.png",
            "image/png",
            key="dl_png",
            disabled=not steps,
        )
    else:
        c4.caption("PNG export needs `pip install kaleido`.")


st.title("Runs")
runs = list_runs()
if not runs:
    st.info(f"No runs in {runs_root()} yet: start one on the Run page.")
    st.stop()
table = pd.DataFrame(runs).rename(columns={"forget_exact": "forget exact", "retain_exact": "retain exact"})
table.insert(0, "run", [run_label(r["run_dir"]) for r in runs])
st.dataframe(table.drop(columns=["run_dir"]), hide_index=True, key="runs_table")
run_dir = st.selectbox(
    "Reopen",
    [r["run_dir"] for r in runs],
    key="runs_pick",
    format_func=lambda d: run_label(d, next(r for r in runs if r["run_dir"] == d)),
)
reader = RunReader(run_dir)
steps = reader.steps()
progress_panel(reader, steps)
if not steps or not reader.samples:
    st.info("This run recorded no steps.")
    st.stop()
sample = pick_sample(reader.samples, key=f"runs_sample_{reader.dir.name}", recorded=list(steps[0]["weights"]))
numbers = [rec["step"] for rec in steps]
upto = (
    st.slider("Replay up to step", numbers[0], numbers[-1], numbers[-1], key=f"runs_step_{run_dir}")
    if len(numbers) > 1
    else numbers[0]
)
sample_view(reader, sample, key="runs_view", upto_step=upto)
exports(reader, sample)
