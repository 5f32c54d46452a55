"""Line charts (loss curves, ROC, PR) and per-token bar charts from plain lists."""

from __future__ import annotations

import plotly.graph_objects as go

from app.components.heatmap import token_label


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


def loss_figure(steps: list[int], losses: dict[str, list[float]]) -> go.Figure:
    """Every logged loss against the training step."""
    fig = line_figure(
        {name: (steps, values) for name, values in losses.items()},
        title="Losses",
        xlabel="training step",
        ylabel="loss",
    )
    return fig.update_xaxes(tick0=0, dtick=max(1, round(len(steps) / 10)))


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
