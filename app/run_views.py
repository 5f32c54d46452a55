"""Streamlit views of one run folder, shared by the Run (live) and Runs (replay) pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.components.curves import loss_figure
from app.components.heatmap import aggregate_words, weight_heatmap
from app.components.token_chips import token_chips_html
from atwu_core.runs import RunReader


def run_label(run_dir: str | Path, config: dict | None = None) -> str:
    """Short readable name of a run: its folder name, plus method and model when known."""
    name = Path(run_dir).name
    return f"{name} ({config.get('method')}, {config.get('model')})" if config else name


def progress_panel(reader: RunReader, steps: list[dict]) -> None:
    """Progress bar with steps/s and ETA, the state, and the loss curves."""
    status = reader.status
    done, total = status.get("steps_done") or 0, status.get("steps_total") or 0
    elapsed = steps[-1]["elapsed"] if steps else 0.0
    rate = len(steps) / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) / rate:.0f} s" if rate > 0 and total > done else "–"
    st.progress(
        min(done / total, 1.0) if total else 0.0,
        text=f"{status['state']} · step {done}/{total} · {rate:.2f} steps/s · ETA {eta}",
    )
    if status.get("state") == "failed":
        st.error(f"The job failed: {status.get('error')}")
    elif status.get("state") == "cancelled":
        st.warning(f"Cancelled after {done} steps.")
    elif status.get("state") == "interrupted":
        st.warning(f"Interrupted after {done} steps: {status.get('error')}")
    if steps:
        losses = sorted({k for rec in steps for k in rec.get("losses", {})})
        fig = loss_figure(
            [rec["step"] for rec in steps], {k: [rec.get("losses", {}).get(k) for rec in steps] for k in losses}
        )
        st.plotly_chart(fig, key=f"losses_{reader.dir.name}")


def pick_sample(samples: list[dict], key: str, recorded: list[str] = ()) -> dict | None:
    """Sample picker (samples with ground truth first), starting on the first sample in `recorded`."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: not s["has_ground_truth"])
    by_id = {s["id"]: s for s in ordered}
    ids = list(by_id)
    start = next((ids.index(i) for i in ids if i in recorded), 0)
    sid = st.selectbox("Sample", ids, index=start, key=key, format_func=lambda i: f"{i}: {by_id[i]['question'][:70]}")
    return by_id[sid]


def sample_view(reader: RunReader, sample: dict, *, key: str, upto_step: int | None = None) -> None:
    """Steps × tokens heatmap and the token chips at the last shown step, for one forget sample."""
    steps, matrix = reader.weight_matrix(sample["id"])
    _, probs = reader.weight_matrix(sample["id"], key="probs")
    final = reader.final if upto_step is None else None
    if final is not None and sample["id"] in final["weights"]:
        steps, matrix, probs = (
            steps + ["final"],
            matrix + [final["weights"][sample["id"]]],
            probs + [final["probs"][sample["id"]]],
        )
    if upto_step is not None:
        keep = sum(s <= upto_step for s in steps)
        steps, matrix, probs = steps[:keep], matrix[:keep], probs[:keep]
    if not matrix:
        st.info("No weights recorded for this sample yet (it enters a batch soon).")
        return
    c1, c2 = st.columns(2)
    words = c1.toggle("Aggregate tokens to words", key=f"{key}_words")
    fixed = (
        c2.radio("Colour scale", ["fixed [0, 1]", "per sample"], key=f"{key}_scale", horizontal=True) == "fixed [0, 1]"
    )
    tokens, mask, shown = sample["tokens"], sample["span_mask"], matrix
    if words:
        tokens, shown, mask = aggregate_words(tokens, matrix, mask, sample["offsets"])
    fig = weight_heatmap(
        steps,
        shown,
        tokens,
        span_mask=mask,
        fixed_scale=fixed,
        title=f"Forget weight per {'word' if words else 'token'} and step: {sample['id']}",
    )
    st.plotly_chart(fig, key=f"{key}_heatmap")
    flat = [v for row in matrix for v in row if v is not None] or [0.0]
    vmin, vmax = (0.0, 1.0) if fixed else (min(flat), max(flat))
    st.markdown(f"**{'Final pass' if steps[-1] == 'final' else f'Step {steps[-1]}'}** — Q: {sample['question']}")
    st.html(
        token_chips_html(
            sample["tokens"],
            matrix[-1],
            span_mask=sample["span_mask"],
            token_ids=sample["token_ids"],
            previous=matrix[-2] if len(matrix) > 1 else None,
            probs_before=probs[0] if probs else None,
            probs_now=probs[-1] if probs else None,
            vmin=vmin,
            vmax=vmax if vmax > vmin else vmin + 1e-6,
        )
    )
