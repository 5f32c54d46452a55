"""Compare page: several runs side by side: alignment and forgetting numbers, their settings' differences,
alignment over training, ROC/PR, per-sample numbers, one sample's scores, and where scores and spans disagree."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from app import links, session
from app.components.curves import alignment_figure, line_figure
from app.components.heatmap import MODEBAR, weight_heatmap
from app.components.results import METRIC_HELP
from app.run_views import run_label, trajectories, unique_names
from app.untrusted import md, snapshot
from atwu_core import headline, token_views
from atwu_core.headline import HEADLINE, NOT_RECORDED, RANKING
from atwu_core.metrics import alignment, alignment_curves, forgetting
from atwu_core.metrics_record import Metrics
from atwu_core.rerun import config_diff
from atwu_core.run_table import default_selection, run_colours, run_id
from atwu_core.runs import RunSnapshot, list_runs

NUMBERS = {"auroc": "AUROC", "auprc": "AUPRC", "precision_at_k": "precision@k"}


def scaled(row: list[float]) -> list[float]:
    lo, hi = min(row), max(row)
    return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in row]


def summary(snap: RunSnapshot) -> dict:
    """A run's headline numbers (the `HEADLINE` rows Compare shows): from metrics.json once finished, else
    recomputed from its latest records. What the run did not record is blank, and `meaningful` says so in words."""
    metrics = snap.metrics or Metrics(alignment=alignment(snap.latest("scores"), snap.samples))
    if metrics.forgetting is None and snap.before:
        metrics = replace(metrics, forgetting=forgetting(snap.before.probs, snap.latest("probs"), snap.samples))
    meaningful = headline.BY_LABEL["meaningful"].value(metrics)
    return {
        **{h.label: None if (v := h.value(metrics)) == NOT_RECORDED else v for h in HEADLINE if h.compare},
        "meaningful": {True: "yes", False: "no"}.get(meaningful, NOT_RECORDED),
        "forget exact after": metrics.exact_after("forget"),
        "retain exact after": metrics.exact_after("retain"),
    }


def greyed(row: pd.Series) -> list[str]:
    """Grey the ranking numbers of a run whose forgetting is not meaningful."""
    grey = row.get("meaningful") == "no"
    return ["color: #9aa0aa" if grey and col in RANKING else "" for col in row.index]


st.title("Compare")
runs = [r for r in list_runs() if r["state"] in ("completed", "cancelled", "interrupted", "running")]
if not runs:
    st.info("No runs yet: start one on the Run page.")
    st.stop()
state_names = {r["run_dir"]: "RUNNING (provisional)" if r["state"] == "running" else r["state"] for r in runs}
# widgets tell options apart by their labels: two runs named alike must not merge
labels = unique_names({r["run_dir"]: f"{run_label(r['run_dir'], r)} · {state_names[r['run_dir']]}" for r in runs})
default = links.runs_from_url(labels) or default_selection(runs)
focus = session.focus_run()
if focus in labels and focus not in default:
    default.insert(0, focus)
chosen = st.multiselect(
    "Runs to compare",
    list(labels),
    default=default or list(labels)[:1],
    format_func=labels.get,
    key="compare_runs",
    help="Starts on the runs the link names, else the latest completed run of each method.",
)
links.show(runs=",".join(run_id(d) for d in chosen) or None)
if not chosen:
    st.info("Pick at least one run.")
    st.stop()

snaps = {d: snap for d in chosen if (snap := snapshot(d)) is not None}  # a bad run is an error, not the page's end
chosen = [d for d in chosen if d in snaps]
if not chosen:
    st.stop()
names = unique_names({d: run_label(d, snaps[d].config) for d in chosen})
shown = run_colours(chosen)  # each run's one colour, unless two runs shown together would share it
colours = {names[d]: shown[run_id(d)] for d in chosen}
running = [names[d] for d in chosen if not snaps[d].status.finished]
if running:
    st.warning(
        f"Still running: {md(', '.join(running))}. Their numbers are provisional (latest recorded scores, "
        "no evaluation)."
    )

st.subheader("Alignment and forgetting")
table = pd.DataFrame([{"run": names[d], "state": snaps[d].status.state, **summary(snaps[d])} for d in chosen])
st.dataframe(
    table.style.apply(greyed, axis=1),
    hide_index=True,
    key="compare_table",
    column_config={  # pixel widths: every column fits a 1280 px window beside the sidebar
        "run": st.column_config.TextColumn(width=170),
        "state": st.column_config.TextColumn(width=80),
        "meaningful": st.column_config.TextColumn("meaningful", help=METRIC_HELP["meaningful"], width=76),
        **{
            col: st.column_config.NumberColumn(
                col, help=METRIC_HELP[col.split(" ")[1] if "exact" in col else col], format="%.3f", width=76
            )
            for col in table.columns
            if col not in ("run", "state", "meaningful")
        },
    },
)
st.caption(
    "Forgetting AUROC and span share rank where the probability drop landed; beside them its size (mean ΔNLL on "
    "span tokens) and the facts still said (leak rate). Greyed: not meaningful (span tokens barely moved)."
)
if len(chosen) > 1:
    diff = config_diff({names[d]: snaps[d].config for d in chosen})
    with st.expander(f"Settings that differ ({len(diff)})"):
        if diff:
            st.dataframe(pd.DataFrame(diff).T.astype(str).rename_axis("setting"), key="compare_config_diff")
            st.caption("A method's own parameters count only among the runs of methods that have them.")
        else:
            st.caption("The selected runs have the same settings.")

st.subheader("Alignment over training")
paths = {names[d]: trajectories(snaps[d]) for d in chosen}
paths = {n: t for n, t in paths.items() if t.step}
if paths:
    st.plotly_chart(alignment_figure(paths, colours), key="compare_alignment", config=MODEBAR)
else:
    st.info("No recorded step with ground-truth samples.")

scores = {d: snaps[d].latest("scores") for d in chosen}
results = {d: alignment(scores[d], snaps[d].samples) for d in chosen}
if not any(results[d].n_positive for d in chosen):
    st.warning("These runs' samples have no ground-truth spans, so alignment cannot be scored.")
curves = {d: alignment_curves(scores[d], snaps[d].samples) for d in chosen}
c1, c2 = st.columns(2)
c1.plotly_chart(
    line_figure(
        {names[d]: (curves[d]["fpr"], curves[d]["tpr"]) for d in chosen if curves[d]["fpr"]},
        title="ROC: final scores as span-token detectors",
        xlabel="false positive rate",
        ylabel="true positive rate",
        unit_square=True,
        diagonal=True,
        colours=colours,
    ),
    key="roc",
    config=MODEBAR,
)
c2.plotly_chart(
    line_figure(
        {names[d]: (curves[d]["recall"], curves[d]["precision"]) for d in chosen if curves[d]["recall"]},
        title="Precision-recall",
        xlabel="recall",
        ylabel="precision",
        unit_square=True,
        colours=colours,
    ),
    key="pr",
    config=MODEBAR,
)

st.subheader("Per sample")
number = (
    st.segmented_control(
        "Per-sample number", list(NUMBERS), default="auroc", format_func=NUMBERS.get, key="per_sample_number"
    )
    or "auroc"
)
per_sample = pd.DataFrame(
    {names[d]: {sid: getattr(v, number) for sid, v in results[d].per_sample.items()} for d in chosen}
)
st.dataframe(per_sample.rename_axis(f"sample ({NUMBERS[number]} of the final scores)"), key="per_sample_table")

index = {d: snaps[d].sample_index for d in chosen}
common = [sid for sid in index[chosen[0]] if all(sid in index[d] for d in chosen)]
if not common:
    st.info("The chosen runs share no sample.")
    st.stop()
sid = st.selectbox("Sample", common, index=links.wanted("sample", common) or 0, key="compare_sample")
links.show(sample=sid)
first = index[chosen[0]][sid]
same = [d for d in chosen if index[d][sid].tokens == first.tokens and sid in scores[d]]
if len(same) < len(chosen):
    st.warning(
        "Runs with a different tokenisation of this sample (another model) are left out of the side-by-side view."
    )
normalise = st.toggle(
    "Scale each run's scores to [0, 1]",
    key="compare_scale",
    help="Methods score on different scales; min-max scaling compares the rankings.",
)
rows = [[float(m) for m in first.span_mask]] + [scaled(scores[d][sid]) if normalise else scores[d][sid] for d in same]
st.plotly_chart(
    weight_heatmap(
        ["ground truth"] + [names[d] for d in same],
        rows,
        first.tokens,
        span_mask=first.span_mask,
        row_title="run",
        title=f"Final scores beside the ground truth: {sid}",
    ),
    key="compare_heatmap",
    config=MODEBAR,
)
st.markdown("**Where scores and spans disagree** (rank percentile: 1 = the sample's highest score, ties share a rank)")
for d in same:
    tables = token_views.disagreement_tables(scores[d][sid], index[d][sid])
    st.caption(md(names[d]))
    if tables is None:
        st.caption("Every token of this sample has the same score: nothing is ranked, so nothing disagrees.")
        continue
    c1, c2 = st.columns(2)
    c1.markdown("Highest scores **outside** the spans")
    c1.dataframe(pd.DataFrame(tables[0]), hide_index=True, key=f"dis_out_{d}")
    c2.markdown("Lowest scores **inside** the spans")
    c2.dataframe(pd.DataFrame(tables[1]), hide_index=True, key=f"dis_in_{d}")
