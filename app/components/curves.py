"""Line charts (loss curves, ROC, PR) and per-token bar charts from plain lists."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from app.components.heatmap import INK, token_label
from atwu_core.metrics_record import Trajectory

PALETTE = qualitative.D3


def line_figure(
    series: dict[str, tuple[list[float], list[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    unit_square: bool = False,
    diagonal: bool = False,
    colours: dict[str, str] | None = None,
) -> go.Figure:
    """One line per named (xs, ys) series, in `colours[name]` when given (a run's own colour); `unit_square`
    fixes both axes to [0, 1] (ROC / PR)."""
    fig = go.Figure()
    for k, (name, (xs, ys)) in enumerate(series.items()):
        colour = (colours or {}).get(name, PALETTE[k % len(PALETTE)])
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", name=name, line={"color": colour}))
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


PANELS = {  # loss panel -> what its y axis measures
    "model loss": "the model's objective and its terms",
    "scorer loss": "the scorer's objective and its terms",
    "fraction": "share of tokens selected",
}


def _panel(name: str) -> str:
    if name.startswith("scorer"):
        return "fraction" if _is_fraction(name) else "scorer loss"
    return "fraction" if _is_fraction(name) else "model loss"


def loss_figure(steps: list[int], losses: dict[str, list[float | None]], budget: float | None = None) -> go.Figure:
    """Model losses, the scorer's losses and fractions on separate titled panels, each on its own scale with its
    own legend beside it; the fraction panel draws the `budget` the scorer is pushed towards. Series logged only
    every few steps are drawn as markers joined across the gaps. Colours are set, not left to a theme, so the
    HTML report draws what the app draws."""
    groups: dict[str, dict[str, list[float | None]]] = {}
    for name, values in losses.items():
        groups.setdefault(_panel(name), {})[name] = values
    groups = {p: groups[p] for p in PANELS if p in groups}
    fig = make_subplots(rows=len(groups), cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=[*groups])
    for row, (panel, series) in enumerate(groups.items(), start=1):
        legend = "legend" if row == 1 else f"legend{row}"
        for k, (name, values) in enumerate(series.items()):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    name=name,
                    legend=legend,
                    mode="lines+markers" if _sparse(values) or len(steps) < 3 else "lines",
                    connectgaps=True,
                    line={"color": PALETTE[k % len(PALETTE)]},
                    marker={"size": 7},
                ),
                row=row,
                col=1,
            )
        if panel == "fraction" and budget is not None:
            fig.add_trace(
                go.Scatter(
                    x=[steps[0], steps[-1]] if steps else [],
                    y=[budget, budget],
                    name=f"budget b = {budget:g}",
                    legend=legend,
                    mode="lines",
                    line={"color": "grey", "dash": "dot"},
                    hoverinfo="skip",
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title={"text": panel}, row=row, col=1, **({"range": [0, 1]} if panel == "fraction" else {}))
    fig.update_xaxes(title={"text": "training step"}, row=len(groups), col=1)
    fig.update_xaxes(tick0=0, dtick=max(1, round(len(steps) / 10)))
    for row in range(1, len(groups) + 1):
        top = fig.layout[f"yaxis{'' if row == 1 else row}"].domain[1]
        fig.update_layout(
            {("legend" if row == 1 else f"legend{row}"): {"x": 1.02, "xanchor": "left", "y": top, "yanchor": "top"}}
        )
    fig.update_layout(
        title={"text": "Losses"},
        height=200 + 190 * len(groups),
        margin={"l": 70, "r": 20, "t": 80, "b": 60},
    )
    return fig


SERIES = (  # alignment series: (panel column, trajectory key, name, line style)
    (1, "score_auroc", "score AUROC", "solid"),
    (1, "forgetting_auroc", "forgetting AUROC", "dash"),
    (2, "score_in_span", "score in spans", "solid"),
    (2, "score_out_span", "score outside", "dot"),
)


def alignment_figure(trajectories: dict[str, Trajectory], colours: dict[str, str]) -> go.Figure:
    """Alignment over training, one colour (the run's own) and one legend entry per run; the line style says
    the series, explained once in a second legend: AUROC of the scores (solid) and of the realised forgetting
    (dashed) against the span tokens, and the mean score inside (solid) vs outside (dotted) the spans."""
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["AUROC against the spans", "mean score inside vs outside the spans"],
    )
    for run, t in trajectories.items():
        for k, (col, key, what, dash) in enumerate(SERIES):
            fig.add_trace(
                go.Scatter(
                    x=t.step,
                    y=getattr(t, key),
                    name=run,
                    legendgroup=run,
                    showlegend=k == 0,
                    meta=what,
                    mode="lines+markers",
                    connectgaps=True,
                    line={"color": colours[run], "dash": dash},
                    marker={"size": 5},
                    hovertemplate=f"{what}<br>step %{{x}}: %{{y:.3f}}<extra>{run}</extra>",
                ),
                row=1,
                col=col,
            )
    for col, _, what, dash in SERIES:  # the key to the line styles
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                name=what,
                legend="legend2",
                mode="lines",
                line={"color": INK, "dash": dash},
            ),
            row=1,
            col=col,
        )
    fig.add_hline(y=0.5, line={"dash": "dot", "color": "grey"}, row=1, col=1)
    fig.update_yaxes(title={"text": "AUROC"}, range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title={"text": "mean score"}, row=1, col=2)
    longest = max((len(t.step) for t in trajectories.values()), default=1)
    fig.update_xaxes(title={"text": "training step"}, dtick=max(1, round(longest / 10)))  # whole steps only
    fig.update_layout(
        title={"text": "Alignment over training"},
        height=460,
        legend={"title": {"text": "run"}, "orientation": "h", "y": -0.22, "yanchor": "top"},
        legend2={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "bottom"},
        margin={"l": 60, "r": 20, "t": 100, "b": 60},
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
