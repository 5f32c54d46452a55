"""The current step's scores drawn over the answer text as coloured token chips (HTML)."""

from __future__ import annotations

import html

from plotly.colors import get_colorscale, sample_colorscale

from app.components.heatmap import COLORSCALE


def weight_colour(value: float, vmin: float = 0.0, vmax: float = 1.0) -> str:
    """The colour-scale colour of `value` on [vmin, vmax] as an `rgb(...)` string."""
    span = vmax - vmin or 1.0
    return sample_colorscale(COLORSCALE, [min(max((value - vmin) / span, 0.0), 1.0)])[0]


def _text_colour(rgb: str) -> str:
    r, g, b = (float(c) for c in rgb[rgb.index("(") + 1 : -1].split(","))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _fmt(values: list[float] | None, k: int, spec: str = ".3f") -> str:
    return "–" if values is None or k >= len(values) or values[k] is None else format(values[k], spec)


def colour_bar_html(vmin: float = 0.0, vmax: float = 1.0, label: str = "score") -> str:
    """A horizontal colour bar matching the chips."""
    stops = ", ".join(f"{c} {p * 100:.0f}%" for p, c in get_colorscale(COLORSCALE))
    return (
        '<div style="display:flex;align-items:center;gap:8px;font-size:0.8rem;margin-top:6px">'
        f"<span>{label}</span><span>{vmin:.3g}</span>"
        f'<div style="width:220px;height:12px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
        f"<span>{vmax:.3g}</span>"
        '<span style="margin-left:12px;border-bottom:3px solid #d62728">underlined</span>'
        "<span>= ground-truth span</span>"
        "</div>"
    )


def token_chips_html(
    tokens: list[str],
    weights: list[float],
    *,
    span_mask: list[bool] | None = None,
    token_ids: list[int] | None = None,
    previous: list[float] | None = None,
    probs_before: list[float] | None = None,
    probs_now: list[float] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "score",
) -> str:
    """One chip per token, coloured by `label`'s value on the heatmap's own range; the hover title shows token,
    id, value, change since the previous row, and the probability before training and now."""
    chips = []
    for k, token in enumerate(tokens):
        w = weights[k] if k < len(weights) and weights[k] is not None else 0.0
        change = "–" if previous is None or k >= len(previous) or previous[k] is None else f"{w - previous[k]:+.3f}"
        title = (
            f"token {token!r} | id {_fmt(token_ids, k, 'd')} | {label} {w:.3f} | change {change} | "
            f"p before {_fmt(probs_before, k)} | p now {_fmt(probs_now, k)}"
        )
        chips.append(_chip(token, title, weight_colour(w, vmin, vmax), _in_span(span_mask, k)))
    return f'<div style="word-wrap:break-word">{"".join(chips)}</div>{colour_bar_html(vmin, vmax, label)}'


def span_chips_html(tokens: list[str], span_mask: list[bool], token_ids: list[int] | None = None) -> str:
    """Tokens as chips with the ground-truth span tokens highlighted (no weights yet)."""
    chips = []
    for k, token in enumerate(tokens):
        inside = _in_span(span_mask, k)
        title = f"token {token!r} | id {_fmt(token_ids, k, 'd')} | ground truth: {'forget' if inside else 'keep'}"
        chips.append(_chip(token, title, "rgb(253, 231, 37)" if inside else "rgb(232, 235, 240)", inside))
    return f'<div style="word-wrap:break-word">{"".join(chips)}</div>'


def _in_span(span_mask: list[bool] | None, k: int) -> bool:
    return bool(span_mask and k < len(span_mask) and span_mask[k])


def _chip(token: str, title: str, bg: str, underline: bool) -> str:
    text = html.escape(token.replace("\n", "⏎")).replace(" ", "&nbsp;") or "∅"
    border = "border-bottom:3px solid #d62728;" if underline else ""
    return (
        f'<span class="atwu-chip" title="{html.escape(title, quote=True)}" style="background:{bg};'
        f"color:{_text_colour(bg)};{border}padding:2px 1px;margin:1px 2px 1px 0;border-radius:3px;"
        f'font-family:monospace;line-height:2">{text}</span>'
    )
