"""Streamlit views of one run folder, shared by the Run (live) and Runs (replay) pages: progress, losses,
one sample's score and forgetting heatmaps, alignment over training, and the whole forget set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import links
from app.components.curves import alignment_figure, loss_figure
from app.components.heatmap import (
    CHANGE_COLORSCALE,
    MODEBAR,
    Panel,
    aggregate_words,
    ragged_heatmap,
    token_heatmaps,
)
from app.components.token_chips import token_chips_html
from app.untrusted import md
from atwu_core import fact_views, progress, token_views
from atwu_core.methods import method_labels
from atwu_core.metrics import DROP_NATS, MEANINGFUL_SHARE, trajectory
from atwu_core.metrics_record import Trajectory
from atwu_core.records import SampleRecord
from atwu_core.run_table import run_colour
from atwu_core.runs import RunSnapshot

CHANGE = "log-probability change since before training: log p − log p_before"
QUANTITIES = {"score": "scores", "loss weight": "loss_weights"}
SCALES = ("per run (2nd–98th percentile)", "per sample", "fixed [0, 1]")


def run_label(run_dir: str | Path, config: dict | None = None) -> str:
    """Readable name of a run: its given name (or folder name), plus method and model when known."""
    config = config or {}
    name = config.get("name") or Path(run_dir).name
    return f"{name} ({config.get('method')}, {config.get('model')})" if config.get("method") else name


def unique_names(names: dict[str, str]) -> dict[str, str]:
    """Display names that tell runs apart (widgets and tables key on them): a name several runs share gets each
    one's folder name."""
    counts = {n: list(names.values()).count(n) for n in names.values()}
    return {d: f"{n} [{Path(d).name}]" if counts[n] > 1 else n for d, n in names.items()}


def quantity_name(config: dict, key: str) -> str:
    """The exact name of a per-token quantity for this run's method, from its registry row (the plain name when
    the row cannot say)."""
    labels = method_labels(config.get("method"), config.get("params") or {})
    if labels is None:
        return "score" if key == "scores" else "loss weight"
    return f"score: {labels.score}" if key == "scores" else f"loss weight: {labels.loss_weight}"


def mean_step_seconds(snap: RunSnapshot) -> float | None:
    """Seconds per step from the step records' elapsed times (the first step includes warm-up)."""
    steps = snap.step_records
    if len(steps) >= 2:
        return (steps[-1].elapsed - steps[0].elapsed) / (steps[-1].step - steps[0].step)
    return steps[0].elapsed / max(steps[0].step, 1) if steps else None


def progress_panel(snap: RunSnapshot) -> None:
    """Phase-aware progress (loading, evaluating, step k/N, final pass, evaluating after) with an ETA that
    includes evaluation while the job runs, then the state's message and the loss curves."""
    shown = progress.progress(snap.status, mean_step_seconds(snap))
    st.progress(shown.fraction, text=shown.text)
    status = snap.status
    if status.state == "failed":
        st.error(f"The job failed: {md(status.error)}")
    elif status.state == "cancelled":
        st.warning(f"Cancelled after {_steps(status.steps_done)}.")
    elif status.state == "interrupted":
        st.warning(f"Interrupted after {_steps(status.steps_done)}: {md(status.error)}")
    if snap.skipped_lines:
        st.warning(f"{snap.skipped_lines} unreadable line(s) in records.jsonl were skipped.")
    if snap.step_records:
        st.plotly_chart(losses_figure(snap), key=f"losses_{snap.dir.name}", config=MODEBAR)


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def losses_figure(snap: RunSnapshot):
    """The run's loss panels, the fraction panel with the budget its method pushes towards (ATWU's `budget`)."""
    names = sorted({k for rec in snap.step_records for k in rec.losses})
    return loss_figure(
        [rec.step for rec in snap.step_records],
        {k: [rec.losses.get(k) for rec in snap.step_records] for k in names},
        budget=(snap.config.get("params") or {}).get("budget"),
    )


def pick_sample(samples: list[SampleRecord], key: str, recorded: list[str] = ()) -> SampleRecord | None:
    """Sample picker (samples with ground truth first), starting on the first sample in `recorded`."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: not s.has_ground_truth)
    by_id = {s.record_id: s for s in ordered}
    ids = list(by_id)
    start = links.wanted("sample", ids)
    start = next((ids.index(i) for i in ids if i in recorded), 0) if start is None else start
    sid = st.selectbox("Sample", ids, index=start, key=key, format_func=lambda i: f"{i}: {by_id[i].question[:70]}")
    links.show(sample=sid)
    return by_id[sid]


def _cut(steps: list, matrix: list, upto: int | None) -> tuple[list, list]:
    if upto is None:
        return steps, matrix
    keep = [k for k, s in enumerate(steps) if s != token_views.FINAL and s <= upto]
    return [steps[k] for k in keep], [matrix[k] for k in keep]


def _zrange(scale: str, snap: RunSnapshot, key: str, matrix: list[list[float | None]]) -> tuple[float, float]:
    if scale == SCALES[2]:
        return 0.0, 1.0
    values = token_views.run_values(snap, key) if scale == SCALES[0] else [v for row in matrix for v in row]
    return token_views.percentile_range(values, *((2.0, 98.0) if scale == SCALES[0] else (0.0, 100.0)))


def sample_figure(
    snap: RunSnapshot,
    sample: SampleRecord,
    key: str,
    scale: str,
    *,
    words: bool = False,
    upto: int | None = None,
    change_floor: float = token_views.CHANGE_FLOOR,
):
    """The steps × tokens figure of one sample: `key`'s values above the log-probability change since before
    training (its colour range at least ± `change_floor` nats), on one token axis; returns (figure, rows, values,
    probs, colour range), or None if nothing recorded."""
    steps, values = _cut(*token_views.rows(snap, sample.record_id, key), upto)
    _, probs = _cut(*token_views.rows(snap, sample.record_id, "probs"), upto)
    if not values:
        return None
    zrange = _zrange(scale, snap, key, values)
    panels = [Panel(quantity_name(snap.config, key), values, zrange)]
    change = token_views.logprob_change(snap, sample.record_id)
    if change is not None:
        changes = _cut(*change, upto)[1]
        panels.append(
            Panel(
                CHANGE,
                changes,
                token_views.symmetric_range((v for row in changes for v in row), floor=change_floor),
                CHANGE_COLORSCALE,
                "Δ log p",
            )
        )
    tokens, mask, hover_probs = sample.tokens, sample.span_mask, probs
    if words:
        merged = [aggregate_words(sample.tokens, p.matrix, sample.span_mask, sample.offsets) for p in panels]
        tokens, mask = merged[0][0], merged[0][2]
        panels = [Panel(p.name, m[1], p.zrange, p.colorscale, p.short) for p, m in zip(panels, merged, strict=False)]
        hover_probs = None  # a word has no single token probability
    before = snap.before.probs.get(sample.record_id) if snap.before is not None and not words else None
    leaked = fact_views.leaked_token_mask(snap.metrics, sample) if not words else None
    fig = token_heatmaps(
        steps,
        tokens,
        panels,
        span_mask=mask,
        probs=hover_probs,
        probs_before=before,
        leaked_mask=leaked,
        title=f"{sample.record_id}: what was scored (top) and what was forgotten (bottom), "
        f"per {'word' if words else 'token'}",
    )
    return fig, steps, values, probs, zrange


def sample_view(snap: RunSnapshot, sample: SampleRecord | None, *, key: str, upto_step: int | None = None) -> None:
    """One forget sample: the heatmap of its score (or loss weight) beside the heatmap of its log-probability
    change, then its tokens as chips at the last row shown, coloured on the heatmap's range."""
    if sample is None:
        return
    c1, c2, c3 = st.columns([1.2, 1, 1.6])
    quantity = c1.radio(
        "Draw",
        list(QUANTITIES),
        horizontal=True,
        key=f"{key}_quantity",
        help="score: the method's per-token forget score; loss weight: the weight the forget loss actually used.",
    )
    words = c2.toggle("Aggregate tokens to words", key=f"{key}_words")
    scale = c3.radio("Colour range", SCALES, horizontal=True, key=f"{key}_scale")
    floor = change_floor_control(key)
    drawn = sample_figure(snap, sample, QUANTITIES[quantity], scale, words=words, upto=upto_step, change_floor=floor)
    if drawn is None:
        until = "yet" if upto_step is None else f"up to step {upto_step}"
        st.info(f"No {quantity} recorded for this sample {until}: it was not in a training batch.")
        return
    fig, steps, values, probs, (vmin, vmax) = drawn
    st.plotly_chart(fig, key=f"{key}_heatmap", config=MODEBAR)
    where = "Final pass" if steps[-1] == token_views.FINAL else f"Step {steps[-1]}"
    st.markdown(f"**{where}** — Q: {md(sample.question)}")
    st.html(
        token_chips_html(
            sample.tokens,
            values[-1],
            span_mask=sample.span_mask,
            token_ids=sample.token_ids,
            previous=values[-2] if len(values) > 1 else None,
            probs_before=snap.before.probs.get(sample.record_id) if snap.before is not None else None,
            probs_now=probs[-1] if probs else None,
            vmin=vmin,
            vmax=vmax,
            label=quantity,
        )
    )


def change_floor_control(key: str) -> float:
    """The Δ log p colour range's own control: the scale spans at least ± this many nats (wider when the data are)."""
    return st.number_input(
        "Δ log p colour range: at least ± nats",
        min_value=0.01,
        value=token_views.CHANGE_FLOOR,
        step=0.5,
        key=f"{key}_change_floor",
        help="Changes smaller than this are drawn pale: ±0.001 nats is not drawn like −10 nats.",
    )


def trajectories(snap: RunSnapshot) -> Trajectory:
    """Alignment against step for one run (scores and realised forgetting vs the spans)."""
    return trajectory(snap.step_records, snap.before.probs if snap.before is not None else None, snap.samples)


def alignment_view(snap: RunSnapshot, *, key: str) -> None:
    """AUROC of the scores and of the forgetting so far against step, and the mean score in vs out of spans."""
    t = trajectories(snap)
    if not t.step:
        st.info("No step with ground-truth samples recorded yet.")
        return
    label = run_label(snap.dir, snap.config)
    st.plotly_chart(alignment_figure({label: t}, {label: run_colour(snap.dir)}), key=f"{key}_alignment", config=MODEBAR)
    st.caption(
        "Each point uses the samples in that step's batch: score AUROC judges the scores recorded at that step, "
        "forgetting AUROC the log-probability drop since before training."
    )
    size, share = t.mean_increase_span[-1], t.strong_drop_share[-1]
    if size is not None:
        st.caption(
            f"Beside that ranking, its size at step {t.step[-1]}: mean ΔNLL on span tokens {size:.3f} nats, "
            f"{share:.0%} of span tokens fell by more than {DROP_NATS:g} nat (so the ranking "
            f"{'is' if share >= MEANINGFUL_SHARE else 'is not'} meaningful)."
        )


CORPUS_VALUES = {"score": "scores", "loss weight": "loss_weights", "log-probability change": "change"}
SORTS = ("score AUROC", "forgetting AUROC", "mean score in spans", "mean Δ log p in spans", "sample")


def corpus_figure(snap: RunSnapshot, which: str, ids: list[str], change_floor: float = token_views.CHANGE_FLOOR):
    """The latest `which` ("scores", "loss_weights" or "change", its colour range at least ± `change_floor`
    nats) of the samples `ids`, one row each, spans outlined."""
    latest = token_views.latest_logprob_change(snap) if which == "change" else snap.latest(which)
    index = snap.sample_index
    values = [latest.get(sid, []) for sid in ids]
    flat = [v for row in values for v in row]
    if which == "change":
        name, zrange, scale = CHANGE, token_views.symmetric_range(flat, floor=change_floor), CHANGE_COLORSCALE
    else:
        name, zrange, scale = quantity_name(snap.config, which), token_views.percentile_range(flat), "Viridis"
    return ragged_heatmap(
        ids,
        values,
        [index[s].tokens for s in ids],
        [index[s].span_mask for s in ids],
        span_labels=[index[s].span_labels for s in ids],
        name=name,
        zrange=zrange,
        colorscale=scale,
        title=f"Every forget sample, {'final pass' if snap.final else 'latest step'}: {name}",
    )


def corpus_view(snap: RunSnapshot, *, key: str) -> None:
    """Every forget sample at once: its latest values as one heatmap row, a table sortable by per-sample AUROC
    or forgetting, and the mean score and forgetting per span label."""
    table = token_views.corpus_table(snap)
    if not table:
        st.info("No sample has recorded scores yet.")
        return
    c1, c2 = st.columns(2)
    shown = c1.radio("Values", list(CORPUS_VALUES), horizontal=True, key=f"{key}_corpus_values")
    floor = change_floor_control(f"{key}_corpus") if CORPUS_VALUES[shown] == "change" else token_views.CHANGE_FLOOR
    order = c2.selectbox("Sort samples by", SORTS, key=f"{key}_corpus_sort")
    frame = pd.DataFrame(table).sort_values(order, ascending=order == "sample", na_position="last")
    st.plotly_chart(
        corpus_figure(snap, CORPUS_VALUES[shown], list(frame["sample"]), floor),
        key=f"{key}_corpus_heatmap",
        config=MODEBAR,
    )
    st.dataframe(frame, hide_index=True, key=f"{key}_corpus_table")
    st.markdown("**Per span label** (the spans' `label`; *outside* = tokens in no span)")
    st.dataframe(pd.DataFrame(token_views.span_label_table(snap)), hide_index=True, key=f"{key}_span_labels")


VIEWS = ("One sample", "Alignment over training", "Whole forget set")
VIEW_PARAMS = dict(zip(("sample", "alignment", "forget-set"), VIEWS, strict=True))  # ?view=… -> view


def run_detail(snap: RunSnapshot, *, key: str, upto_step: int | None = None) -> None:
    """One sample's heatmaps, alignment over training, or the whole forget set: only the chosen view is built
    (a live page redraws it every second)."""
    start = links.wanted("view", VIEWS, VIEW_PARAMS.get) or 0
    view = st.radio("View", VIEWS, index=start, horizontal=True, key=f"{key}_tab", label_visibility="collapsed")
    links.show(view=next(p for p, v in VIEW_PARAMS.items() if v == view))
    if view == VIEWS[0]:
        recorded = next(
            (list(r.scores) for r in reversed(snap.step_records) if upto_step is None or r.step <= upto_step), []
        )
        sample = pick_sample(snap.samples, key=f"{key}_sample_{snap.dir.name}", recorded=recorded)
        sample_view(snap, sample, key=key, upto_step=upto_step)
    elif view == VIEWS[1]:
        alignment_view(snap, key=key)
    else:
        corpus_view(snap, key=key)
