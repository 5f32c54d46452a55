"""Line charts (loss curves, ROC, PR) and per-token bar charts from plain lists."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from app.components.heatmap import token_label

PALETTE = qualitative.D3


def line_figure(
    series: dict[str, tuple[list[float], list[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    unit_square: bool = False,
    diagonal: bool = False,
) -> go.Figure:
    """One line per named (xs, ys) series; `unit_square` fixes both axes to [0, 1] (ROC / PR)."""
    fig = go.Figure()
    for name, (xs, ys) in series.items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", name=name))
    if diagonal:
        fig.add_trace(
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"})
        )
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": xlabel}},
        yaxis={"title": {"text": ylabel}},
        legend={"orientation": "h", "yanchor": "top", "y": -0.3},
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        height=380,
    )
    if unit_square:
        fig.update_xaxes(range=[0, 1])
        fig.update_yaxes(range=[0, 1.02])
    return fig


def _sparse(values: list[float | None]) -> bool:
    return any(v is None for v in values)


def _is_fraction(name: str) -> bool:
    return name.endswith(("_selected", "_fraction"))


def loss_figure(steps: list[int], losses: dict[str, list[float | None]]) -> go.Figure:
    """Model losses, the scorer's losses and fractions on separate panels (each on its own scale); series
    logged only every few steps are drawn as markers joined across the gaps."""
    groups = {
        "model loss": {k: v for k, v in losses.items() if not k.startswith("scorer")},
        "scorer loss": {k: v for k, v in losses.items() if k.startswith("scorer") and not _is_fraction(k)},
        "fraction": {k: v for k, v in losses.items() if _is_fraction(k)},
    }
    groups = {name: series for name, series in groups.items() if series}
    fig = make_subplots(rows=len(groups), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for row, (axis, series) in enumerate(groups.items(), start=1):
        for name, values in series.items():
            sparse = _sparse(values)
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    name=name,
                    mode="lines+markers" if sparse or len(steps) < 3 else "lines",
                    connectgaps=True,
                    marker={"size": 7},
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title={"text": axis}, row=row, col=1, **({"range": [0, 1]} if axis == "fraction" else {}))
    fig.update_xaxes(title={"text": "training step"}, row=len(groups), col=1)
    fig.update_xaxes(tick0=0, dtick=max(1, round(len(steps) / 10)))
    fig.update_layout(
        title={"text": "Losses"},
        height=200 + 170 * len(groups),
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig


def alignment_figure(trajectories: dict[str, dict[str, list]]) -> go.Figure:
    """Alignment over training, one colour per run: AUROC of the scores (solid) and of the realised forgetting
    (dashed) against the span tokens, and the mean score inside (solid) vs outside (dotted) the spans."""
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["AUROC against the spans", "mean score inside vs outside the spans"],
    )
    for i, (run, t) in enumerate(trajectories.items()):
        colour = PALETTE[i % len(PALETTE)]
        lines = [
            (1, "score_auroc", "score AUROC", "solid"),
            (1, "forgetting_auroc", "forgetting AUROC", "dash"),
            (2, "score_in_span", "score in spans", "solid"),
            (2, "score_out_span", "score outside", "dot"),
        ]
        for col, key, what, dash in lines:
            fig.add_trace(
                go.Scatter(
                    x=t["step"],
                    y=t[key],
                    name=f"{what} · {run}",
                    mode="lines+markers",
                    connectgaps=True,
                    line={"color": colour, "dash": dash},
                    marker={"size": 5},
                ),
                row=1,
                col=col,
            )
    fig.add_hline(y=0.5, line={"dash": "dot", "color": "grey"}, row=1, col=1)
    fig.update_yaxes(title={"text": "AUROC"}, range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title={"text": "mean score"}, row=1, col=2)
    fig.update_xaxes(title={"text": "training step"})
    fig.update_layout(
        title={"text": "Alignment over training"},
        height=430,
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 80, "b": 60},
    )
    return fig


def token_bars(tokens: list[str], values: list[float], *, title: str, ylabel: str, colorbar: str) -> go.Figure:
    """One bar per answer token, coloured on a diverging scale centred on zero."""
    bound = max((abs(v) for v in values), default=1.0) or 1.0
    xs = list(range(len(tokens)))
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=values,
            marker={
                "color": values,
                "colorscale": "RdBu",
                "cmin": -bound,
                "cmax": bound,
                "colorbar": {"title": {"text": colorbar}},
            },
            customdata=[token_label(t) for t in tokens],
            hovertemplate="token: %{customdata}<br>%{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": title},
        xaxis={
            "title": {"text": "answer token"},
            "tickvals": xs,
            "ticktext": [token_label(t) for t in tokens],
            "tickangle": -60 if len(xs) > 12 else 0,
        },
        yaxis={"title": {"text": ylabel}},
        margin={"l": 60, "r": 20, "t": 60, "b": 90},
        height=340,
    )
    return fig
