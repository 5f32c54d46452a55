"""Compare page: how well each run's token weights match the ground-truth spans, side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.components.curves import line_figure
from app.components.heatmap import weight_heatmap
from app.run_views import run_label
from atwu_core.metrics import alignment, alignment_curves, disagreements
from atwu_core.runs import RunReader, list_runs

NUMBERS = {"auroc": "AUROC", "auprc": "AUPRC", "precision_at_k": "precision@k"}


def scaled(row: list[float]) -> list[float]:
    lo, hi = min(row), max(row)
    return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in row]


st.title("Compare")
runs = [r for r in list_runs() if r["state"] in ("completed", "cancelled", "interrupted", "running")]
if not runs:
    st.info("No runs yet: start one on the Run page.")
    st.stop()
labels = {r["run_dir"]: f"{run_label(r['run_dir'])} · {r['state']}" for r in runs}
chosen = st.multiselect(
    "Runs to compare", list(labels), default=list(labels)[:3], format_func=labels.get, key="compare_runs"
)
if not chosen:
    st.info("Pick at least one run.")
    st.stop()

weights = {d: RunReader(d).final_weights() for d in chosen}
samples = {d: {s.record_id: s for s in RunReader(d).encoded_samples()} for d in chosen}
names = {d: run_label(d) for d in chosen}
results = {d: alignment(weights[d], list(samples[d].values())) for d in chosen}

st.subheader("Alignment with the ground truth (pooled over all answer tokens)")
st.dataframe(
    pd.DataFrame(
        [
            {
                "run": names[d],
                **{v: results[d][k] for k, v in NUMBERS.items()},
                "tokens": results[d]["n_tokens"],
                "span tokens": results[d]["n_positive"],
            }
            for d in chosen
        ]
    ),
    hide_index=True,
)
if not any(results[d]["n_positive"] for d in chosen):
    st.warning("These runs' samples have no ground-truth spans, so alignment cannot be scored.")

curves = {d: alignment_curves(weights[d], list(samples[d].values())) for d in chosen}
c1, c2 = st.columns(2)
c1.plotly_chart(
    line_figure(
        {names[d]: (curves[d]["fpr"], curves[d]["tpr"]) for d in chosen if curves[d]["fpr"]},
        title="ROC: weights as span-token detectors",
        xlabel="false positive rate",
        ylabel="true positive rate",
        unit_square=True,
        diagonal=True,
    ),
    key="roc",
)
c2.plotly_chart(
    line_figure(
        {names[d]: (curves[d]["recall"], curves[d]["precision"]) for d in chosen if curves[d]["recall"]},
        title="Precision-recall",
        xlabel="recall",
        ylabel="precision",
        unit_square=True,
    ),
    key="pr",
)

st.subheader("Per sample")
number = st.segmented_control(
    "Per-sample number", list(NUMBERS), default="auroc", format_func=NUMBERS.get, key="per_sample_number"
) or "auroc"
per_sample = pd.DataFrame({names[d]: {sid: v[number] for sid, v in results[d]["per_sample"].items()} for d in chosen})
st.dataframe(per_sample.rename_axis(f"sample ({NUMBERS[number]})"), key="per_sample_table")

common = [sid for sid in samples[chosen[0]] if all(sid in samples[d] for d in chosen)]
if not common:
    st.info("The chosen runs share no sample.")
    st.stop()
sid = st.selectbox("Sample", common, key="compare_sample")
first = samples[chosen[0]][sid]
same = [d for d in chosen if samples[d][sid].answer_tokens == first.answer_tokens and sid in weights[d]]
if len(same) < len(chosen):
    st.warning(
        "Runs with a different tokenisation of this sample (another model) are left out of the side-by-side view."
    )
normalise = st.toggle(
    "Scale each run's weights to [0, 1]",
    key="compare_scale",
    help="Methods weight on different scales; min-max scaling compares the rankings.",
)
rows = [[float(m) for m in first.span_mask]] + [scaled(weights[d][sid]) if normalise else weights[d][sid] for d in same]
st.plotly_chart(
    weight_heatmap(
        ["ground truth"] + [names[d] for d in same],
        rows,
        first.answer_tokens,
        span_mask=first.span_mask,
        row_title="run",
        title=f"Learned weights beside the ground truth: {sid}",
    ),
    key="compare_heatmap",
)
st.markdown("**Largest disagreements** (high weight outside the spans, or low weight inside)")
cols = st.columns(len(same) or 1)
for col, d in zip(cols, same):
    col.caption(names[d])
    col.dataframe(pd.DataFrame(disagreements(weights[d][sid], samples[d][sid])), hide_index=True, key=f"dis_{d}")
