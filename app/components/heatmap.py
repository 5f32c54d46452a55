"""Token-weight heatmaps (rows × answer tokens) from plain lists."""

from __future__ import annotations

import plotly.graph_objects as go

COLORSCALE = "Viridis"  # perceptually uniform and colour-blind safe


def token_label(token: str) -> str:
    """A token as a readable axis label (whitespace made visible, never empty)."""
    text = token.replace("\n", "⏎").strip()
    return text or "␣"


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


def aggregate_words(
    tokens: list[str],
    matrix: list[list[float]],
    span_mask: list[bool] | None,
    offsets: list[list[int]] | None = None,
) -> tuple[list[str], list[list[float]], list[bool] | None]:
    """Merge token columns into word columns: label = joined text, value = mean weight, mask = any token in a span."""
    groups = word_groups(tokens, offsets)
    labels = ["".join(tokens[k] for k in g) for g in groups]
    merged = [[sum(row[k] for k in g) / len(g) for g in groups] for row in matrix]
    mask = [any(span_mask[k] for k in g) for g in groups] if span_mask is not None else None
    return labels, merged, mask


def weight_heatmap(
    rows: list,
    matrix: list[list[float]],
    tokens: list[str],
    *,
    title: str,
    span_mask: list[bool] | None = None,
    row_title: str = "training step",
    fixed_scale: bool = True,
    colorbar_title: str = "forget weight",
) -> go.Figure:
    """Rows (steps, or runs) × tokens heatmap; ground-truth tokens are drawn bold and underlined by a bar."""
    labels = [token_label(t) for t in tokens]
    ticktext = [f"<b>{lab}</b>" if span_mask and span_mask[k] else lab for k, lab in enumerate(labels)]
    xs = list(range(len(tokens)))
    flat = [v for row in matrix for v in row if v is not None]
    zmin, zmax = (
        (0.0, 1.0) if fixed_scale or not flat else (min(flat), max(flat) if max(flat) > min(flat) else min(flat) + 1e-6)
    )
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=xs,
            y=[str(r) for r in rows],
            zmin=zmin,
            zmax=zmax,
            colorscale=COLORSCALE,
            colorbar={"title": {"text": colorbar_title}},
            customdata=[labels for _ in rows],
            hovertemplate=f"{row_title}: %{{y}}<br>token: %{{customdata}}<br>weight: %{{z:.3f}}<extra></extra>",
        )
    )
    if span_mask and any(span_mask):
        fig.add_trace(
            go.Scatter(
                x=[x for x in xs if span_mask[x]],
                y=[0] * sum(bool(m) for m in span_mask),
                yaxis="y2",
                mode="markers",
                marker={"symbol": "square", "size": 8, "color": "#d62728"},
                name="ground-truth span",
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title={"text": title},
        xaxis={
            "title": {"text": "answer token (bold, red mark = ground-truth span)"},
            "tickvals": xs,
            "ticktext": ticktext,
            "tickangle": -60 if len(xs) > 12 else 0,
        },
        yaxis={"title": {"text": row_title}, "type": "category", "autorange": "reversed", "domain": [0, 0.93]},
        yaxis2={"domain": [0.95, 1.0], "visible": False, "range": [-1, 1]},
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 60, "b": 90},
        height=max(320, min(720, 160 + 22 * len(rows))),
    )
    return fig
