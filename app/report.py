"""One self-contained HTML report per run: metrics, curves, the corpus view and every sample's heatmaps, with
plotly.js inlined once so that it opens offline; each chart's camera button saves it as SVG."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from app.components.curves import alignment_figure, loss_figure
from app.components.results import METRIC_HELP, quality_rows
from app.run_views import SCALES, run_label, sample_figure, trajectories
from atwu_core import explore
from atwu_core.runs import RunSnapshot

SVG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}
STYLE = """body{font-family:sans-serif;color:#1f2430;max-width:1300px;margin:auto;padding:1em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccd;padding:2px 6px;text-align:right}
th{background:#f3f5f9}code{background:#f3f5f9;padding:2px 4px}"""


def _figure(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=SVG)


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–") if rows else ""


def run_report(snap: RunSnapshot) -> str:
    """The whole run as one HTML page (offline: no network request)."""
    title = html.escape(run_label(snap.dir, snap.config))
    metrics = snap.metrics or {}
    align, forgot = metrics.get("alignment") or {}, metrics.get("forgetting") or {}
    headline = [
        {"metric": name, "value": value, "meaning": METRIC_HELP[name]}
        for name, value in (
            ("score AUROC", align.get("auroc")),
            ("score AUPRC", align.get("auprc")),
            ("score P@k", align.get("precision_at_k")),
            ("forgetting AUROC", forgot.get("auroc")),
            ("span share", forgot.get("span_share")),
        )
    ]
    parts = [
        f"<h1>{title}</h1>",
        f"<p>State: <b>{html.escape(snap.status.state)}</b>, {snap.status.steps_done}/{snap.status.steps_total} steps"
        f" · folder <code>{html.escape(Path(snap.dir).name)}</code></p>",
        f"<p>Rerun: <code>{html.escape(explore.cli_command(snap.config))}</code></p>",
        "<h2>Results</h2>",
        _table(headline) if metrics else "<p>No metrics: the run did not reach its evaluation.</p>",
        _table(quality_rows(metrics)),
    ]
    if snap.step_records:
        names = sorted({k for rec in snap.step_records for k in rec.losses})
        steps = [rec.step for rec in snap.step_records]
        parts += [
            "<h2>Training</h2>",
            _figure(loss_figure(steps, {k: [r.losses.get(k) for r in snap.step_records] for k in names})),
        ]
        t = trajectories(snap)
        if t["step"]:
            parts.append(_figure(alignment_figure({title: t})))
    parts += [
        "<h2>Every forget sample</h2>",
        _table(explore.corpus_table(snap)),
        "<h3>Per span label</h3>",
        _table(explore.span_label_table(snap)),
        "<h2>Each sample: score and log-probability change per step</h2>",
    ]
    for sample in snap.samples:
        drawn = sample_figure(snap, sample, "scores", SCALES[0])
        if drawn is not None:
            parts.append(_figure(drawn[0]))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>"
    )
