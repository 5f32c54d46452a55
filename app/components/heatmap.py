"""Token heatmaps (rows × answer tokens) from plain lists: one or more stacked panels on a shared token axis."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORSCALE = "Viridis"  # perceptually uniform and colour-blind safe: scores and weights
CHANGE_COLORSCALE = "RdBu"  # diverging, centred on zero: log-probability change (red = forgotten)
INK = "#1f2430"  # dark text for axis labels
SPAN_INK = "#a4161a"
MODEBAR = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}  # PNG of any chart


def token_label(token: str) -> str:
    """A token as a readable axis label: leading/trailing spaces drawn as ␣, newlines as ⏎, never empty."""
    text = token.replace("\n", "⏎")
    core = text.strip(" ")
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    return ("␣" * lead + core + "␣" * trail if core else "␣" * len(text)) or "∅"


def word_groups(tokens: list[str], offsets: list[list[int]] | None = None) -> list[list[int]]:
    """Group token indices into words: a token starting with whitespace, or not touching the previous
    token's characters, starts a new word; zero-width tokens (EOS, ...) stand alone."""
    groups: list[list[int]] = []
    prev_end: int | None = None
    for k, token in enumerate(tokens):
        start, end = offsets[k] if offsets else (None, None)
        zero_width = start is not None and end is not None and end <= start
        joins = (
            groups
            and not zero_width
            and not token[:1].isspace()
            and token.strip() != ""
            and (start is None or start == prev_end)
        )
        if joins:
            groups[-1].append(k)
        else:
            groups.append([k])
        prev_end = end if not zero_width else None
    return groups


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def aggregate_words(
    tokens: list[str],
    matrix: list[list[float | None]],
    span_mask: list[bool] | None,
    offsets: list[list[int]] | None = None,
) -> tuple[list[str], list[list[float | None]], list[bool] | None]:
    """Merge token columns into word columns: label = joined text, value = mean, mask = any token in a span."""
    groups = word_groups(tokens, offsets)
    labels = ["".join(tokens[k] for k in g) for g in groups]
    merged = [[_mean([row[k] for k in g]) for g in groups] for row in matrix]
    mask = [any(span_mask[k] for k in g) for g in groups] if span_mask is not None else None
    return labels, merged, mask


@dataclass
class Panel:
    """One heatmap panel: the exact name of the quantity drawn, its values and its colour range."""

    name: str
    matrix: list[list[float | None]]
    zrange: tuple[float, float]
    colorscale: str = COLORSCALE
    short: str = ""  # the colour bar's title (default: the name up to its colon)


def token_heatmaps(
    rows: list,
    tokens: list[str],
    panels: list[Panel],
    *,
    title: str,
    span_mask: list[bool] | None = None,
    probs: list[list[float | None]] | None = None,
    probs_before: list[float | None] | None = None,
    row_title: str = "training step",
    leaked_mask: list[bool] | None = None,
) -> go.Figure:
    """Panels stacked on one token axis (labels horizontal and dark, above and below; span tokens bold red,
    tokens of spans the final model still says marked ●); every hover names the row, the token, each panel's
    value and, when given, the token's probability."""
    labels = [token_label(t) for t in tokens]
    ticktext = [
        f"<b><span style='color:{SPAN_INK}'>{lab}</span></b>" if span_mask and span_mask[k] else lab
        for k, lab in enumerate(labels)
    ]
    if leaked_mask:
        ticktext = [f"{t}<sup>●</sup>" if leaked_mask[k] else t for k, t in enumerate(ticktext)]
    xs = list(range(len(tokens)))
    ys = [str(r) for r in rows]
    per_panel = max(150, min(300, 60 + 9 * len(rows)))
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1 if len(panels) > 1 else 0.0,
        subplot_titles=[p.name for p in panels],
    )
    height = 130 + per_panel * len(panels)
    for i, panel in enumerate(panels):
        custom = [
            [[labels[k], _p(probs, r, k), _p([probs_before] if probs_before else None, 0, k)] for k in xs]
            for r in range(len(rows))
        ]
        top = 1 - i / len(panels)
        fig.add_trace(
            go.Heatmap(
                z=panel.matrix,
                x=xs,
                y=ys,
                zmin=panel.zrange[0],
                zmax=panel.zrange[1],
                colorscale=panel.colorscale,
                colorbar={
                    "title": {"text": panel.short or panel.name.split(":")[0]},
                    "len": 0.9 / len(panels),
                    "y": top - 0.5 / len(panels),
                    "yanchor": "middle",
                },
                customdata=custom,
                hovertemplate=(
                    f"{row_title}: %{{y}}<br>token: %{{customdata[0]}}<br>{panel.name}: %{{z:.3f}}"
                    + ("<br>probability: %{customdata[1]} (before: %{customdata[2]})" if probs else "")
                    + "<extra></extra>"
                ),
            ),
            row=i + 1,
            col=1,
        )
        fig.update_yaxes(
            title={"text": row_title},
            type="category",
            autorange="reversed",
            row=i + 1,
            col=1,
            tickfont={"color": INK},
            dtick=1 if per_panel / max(len(rows), 1) >= 16 else None,
        )
    fig.update_annotations(yshift=26, selector={"text": panels[0].name})  # above the top panel's token labels
    angle = 0 if len(xs) <= 40 else -90
    fig.update_xaxes(
        tickvals=xs, ticktext=ticktext, tickangle=angle, tickfont={"color": INK, "size": 13}, showticklabels=True
    )
    fig.update_xaxes(side="top", row=1, col=1)
    axis = "answer token (bold red = ground-truth span" + ("; ● = still said after unlearning)" if leaked_mask else ")")
    fig.update_xaxes(title={"text": axis}, row=len(panels), col=1)
    fig.update_layout(
        title={"text": title}, showlegend=False, height=height, margin={"l": 70, "r": 20, "t": 110, "b": 70}
    )
    return fig


def _p(probs: list[list[float | None]] | None, r: int, k: int) -> str:
    if probs is None or r >= len(probs) or probs[r] is None or k >= len(probs[r]) or probs[r][k] is None:
        return "–"
    return f"{probs[r][k]:.3g}"


def weight_heatmap(
    rows: list,
    matrix: list[list[float | None]],
    tokens: list[str],
    *,
    title: str,
    span_mask: list[bool] | None = None,
    row_title: str = "training step",
    zrange: tuple[float, float] = (0.0, 1.0),
    colorbar_title: str = "score",
) -> go.Figure:
    """One rows (steps, or runs) × tokens panel."""
    return token_heatmaps(
        rows, tokens, [Panel(colorbar_title, matrix, zrange)], title=title, span_mask=span_mask, row_title=row_title
    )


def span_runs(mask: list[bool]) -> list[tuple[int, int]]:
    """The (first, last) token index of each contiguous run of span tokens."""
    runs: list[tuple[int, int]] = []
    for k, inside in enumerate(mask):
        if inside and runs and runs[-1][1] == k - 1:
            runs[-1] = (runs[-1][0], k)
        elif inside:
            runs.append((k, k))
    return runs


def ragged_heatmap(
    rows: list[str],
    values: list[list[float | None]],
    tokens: list[list[str]],
    spans: list[list[bool]],
    *,
    name: str,
    zrange: tuple[float, float],
    colorscale: str = COLORSCALE,
    title: str,
    span_labels: list[list[str | None]] | None = None,
) -> go.Figure:
    """One row per sample, answers of different lengths left-aligned by token position, each ground-truth span
    outlined; the hover names the sample, the token's text, its span (label) or "–", and the value."""
    width = max((len(v) for v in values), default=0)
    z = [list(v) + [None] * (width - len(v)) for v in values]
    labels = span_labels or [[None] * len(s) for s in spans]

    def where(s: list[bool], lab: list[str | None], k: int) -> str:
        return ("span: " + (lab[k] if k < len(lab) and lab[k] else "forget")) if k < len(s) and s[k] else "–"

    custom = [
        [[token_label(t[k]) if k < len(t) else "", where(s, lab, k)] for k in range(width)]
        for t, s, lab in zip(tokens, spans, labels, strict=False)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=rows,
            x=list(range(width)),
            zmin=zrange[0],
            zmax=zrange[1],
            colorscale=colorscale,
            customdata=custom,
            colorbar={"title": {"text": name.split(":")[0]}},
            hovertemplate=f"sample: %{{y}}<br>token: %{{customdata[0]}} (%{{customdata[1]}})<br>{name}: %{{z:.3f}}"
            "<extra></extra>",
        )
    )
    for r, mask in enumerate(spans):  # category axis: row r spans r ± 0.5
        for first, last in span_runs(mask):
            fig.add_shape(
                type="rect",
                x0=first - 0.5,
                x1=last + 0.5,
                y0=r - 0.5,
                y1=r + 0.5,
                line={"color": SPAN_INK, "width": 2},
                fillcolor="rgba(0,0,0,0)",
            )
    fig.update_layout(
        title={"text": f"{title} (outlined: ground-truth spans)"},
        xaxis={"title": {"text": "answer token position"}, "tickfont": {"color": INK}},
        yaxis={
            "title": {"text": "forget sample"},
            "type": "category",
            "autorange": "reversed",
            "tickfont": {"color": INK},
        },
        height=max(300, min(900, 120 + 18 * len(rows))),
        margin={"l": 200, "r": 20, "t": 60, "b": 60},
    )
    return fig
