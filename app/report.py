"""One self-contained HTML report per run: metrics, curves, the whole forget set and the first samples'
heatmaps, drawn with the app's own figures (their colours and legends), opening offline; each chart's camera
button saves it as SVG.

Size: plotly.js (4.8 MB) and every figure's data travel gzip-compressed in two base-85 text blocks that the
page unpacks with the browser's own `DecompressionStream`, and only the first `SAMPLE_CAP` samples get
heatmaps (a note says so; the token CSV has them all), with floats cut to 4 significant digits: a default
40-step demo run's report is 1.94 MB (it was 6.9 MB with plotly.js inlined as text and every sample drawn)."""

from __future__ import annotations

import base64
import gzip
import html
import json
from functools import cache
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from app.components.curves import alignment_figure
from app.components.results import quality_rows
from app.run_views import SCALES, corpus_figure, losses_figure, run_label, sample_figure, trajectories
from atwu_core import fact_views, headline, token_views
from atwu_core.headline import HEADLINE
from atwu_core.rerun import cli_command
from atwu_core.run_table import run_colour
from atwu_core.runs import RunSnapshot

SAMPLE_CAP = 10  # samples drawn as heatmaps (ground-truth samples first)
TEMPLATE = "plotly_white"  # one template for every figure, sent once
SVG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}
STYLE = """body{font-family:sans-serif;color:#1f2430;max-width:1300px;margin:auto;padding:1em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccd;padding:2px 6px;text-align:left}
th{background:#f3f5f9}code{background:#f3f5f9;padding:2px 4px}.note{color:#5a6270}"""
# Unpacks the two blocks (base 85, RFC 1924 alphabet, as Python's base64.b85encode writes it; then gzip), runs
# plotly.js, and draws each <div class="fig" data-i=k> from figure k.
LOADER = """
const B85='0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~';
function b85(text){const v=new Uint8Array(128);for(let i=0;i<85;i++)v[B85.charCodeAt(i)]=i;
 const s=text.replace(/\\s/g,''),pad=(5-s.length%5)%5,n=s.length+pad,out=new Uint8Array(n/5*4);
 for(let i=0,o=0;i<n;i+=5,o+=4){let a=0;for(let j=0;j<5;j++)a=a*85+(i+j<s.length?v[s.charCodeAt(i+j)]:84);
  out[o]=a>>>24;out[o+1]=(a>>>16)&255;out[o+2]=(a>>>8)&255;out[o+3]=a&255;}
 return out.subarray(0,out.length-pad);}
async function unpack(id){const bytes=b85(document.getElementById(id).textContent);
 const stream=new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
 return await new Response(stream).text();}
(async()=>{const js=document.createElement('script');js.textContent=await unpack('plotlyjs');
 document.head.appendChild(js);const data=JSON.parse(await unpack('figures'));
 document.querySelectorAll('div.fig').forEach(div=>{const f=data.figures[+div.dataset.i];
  f.layout.template=data.template;Plotly.newPlot(div,f.data,f.layout,data.config);});})();
"""


def pack(text: str) -> str:
    """gzip, then base 85: the densest text a <script> block can hold safely (no '/' so no '</script')."""
    return base64.b85encode(gzip.compress(text.encode(), 9, mtime=0)).decode()


def unpack(block: str) -> str:
    """The inverse of `pack` (for tests and tools reading a report)."""
    return gzip.decompress(base64.b85decode(block)).decode()


class Figures:
    """The report's figures, collected as plain JSON and sent in one compressed block."""

    def __init__(self) -> None:
        self.figures: list[dict] = []

    def add(self, fig) -> str:
        spec = _rounded(json.loads(fig.to_json()))
        spec["layout"].pop("template", None)  # the app's theme is not plotly.js's: one shared template instead
        self.figures.append(spec)
        return f"<div class='fig' data-i='{len(self.figures) - 1}'></div>"

    def block(self) -> str:
        template = json.loads(go.Figure(layout={"template": TEMPLATE}).to_json())["layout"]["template"]
        return pack(json.dumps({"figures": self.figures, "template": template, "config": SVG}))


def _rounded(value: object) -> object:
    """Floats to 4 significant digits (what a chart or a hover can show): full-precision floats were most of
    the figure block."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


@cache
def packed_plotlyjs() -> str:
    """plotly.js packed once per process (compressing 4.8 MB takes about a second)."""
    return pack(get_plotlyjs())


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–") if rows else ""


def drawn_samples(snap: RunSnapshot) -> list:
    """The samples that get heatmaps: ground-truth samples first (as the app's picker lists them), at most
    SAMPLE_CAP."""
    return sorted(snap.samples, key=lambda s: not s.has_ground_truth)[:SAMPLE_CAP]


def run_report(snap: RunSnapshot) -> str:
    """The whole run as one HTML page (offline: no network request)."""
    title = html.escape(run_label(snap.dir, snap.config))
    metrics = snap.metrics
    figures = Figures()
    parts = [
        f"<h1>{title}</h1>",
        f"<p>State: <b>{html.escape(snap.status.state)}</b>, {snap.status.steps_done}/{snap.status.steps_total} steps"
        f" · folder <code>{html.escape(Path(snap.dir).name)}</code></p>",
        f"<p>Rerun: <code>{html.escape(cli_command(snap.job_config))}</code></p>",
        "<h2>Results</h2>",
    ]
    if metrics is None:
        parts.append("<p>No metrics: the run did not reach its evaluation.</p>")
    else:
        chance, greyed = headline.chances(metrics), headline.not_meaningful(metrics)
        numbers = [
            {
                "metric": h.label,
                "value": ("yes" if value else "no") if isinstance(value, bool) else value,
                "better": h.direction,
                "chance": chance.get(h.label),
                "meaning": ("NOT MEANINGFUL (span tokens barely moved): " if greyed and h.ranking else "") + h.help,
            }
            for h in HEADLINE
            for value in [h.value(metrics)]
        ]
        parts += [
            _table(numbers),
            f"<p><b>Facts</b>: {html.escape(fact_views.facts_line(metrics))}</p>",
            _table(fact_views.fact_label_rows(metrics)),
            _table(quality_rows(metrics)),
        ]
    if snap.step_records:
        parts += ["<h2>Training</h2>", figures.add(losses_figure(snap))]
        t = trajectories(snap)
        if t.step:
            parts.append(figures.add(alignment_figure({title: t}, {title: run_colour(snap.dir)})))
    table = token_views.corpus_table(snap)
    parts += ["<h2>Every forget sample</h2>"]
    if table:
        parts.append(figures.add(corpus_figure(snap, "scores", [row["sample"] for row in table])))
    parts += [
        _table(table),
        "<h3>Per span label</h3>",
        _table(token_views.span_label_table(snap)),
        "<h2>Each sample: score and log-probability change per step</h2>",
    ]
    shown = drawn_samples(snap)
    if len(shown) < len(snap.samples):
        parts.append(
            f"<p class='note'>The first {len(shown)} of {len(snap.samples)} samples are drawn (ground-truth ones "
            "first), to keep this file small; the Runs page shows every sample, and the token CSV export holds "
            "every value.</p>"
        )
    for sample in shown:
        drawn = sample_figure(snap, sample, "scores", SCALES[0])
        if drawn is not None:
            parts.append(figures.add(drawn[0]))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}"
        f"<script type='text/plain' id='plotlyjs'>{packed_plotlyjs()}</script>"
        f"<script type='text/plain' id='figures'>{figures.block()}</script>"
        f"<script>{LOADER}</script></body></html>"
    )
