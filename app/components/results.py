"""The results card of a finished run: what its scores and its forgetting achieved, each number with a help line."""

from __future__ import annotations

import streamlit as st

from app import session
from atwu_core import headline
from atwu_core.fact_views import fact_label_rows, facts_line
from atwu_core.headline import HEADLINE, NOT_RECORDED
from atwu_core.metrics_record import Metrics

# Shown as help wherever these numbers appear (results card, Compare, Runs): the headline rows' own, then quality.
METRIC_HELP = {
    **{h.label: h.help for h in HEADLINE},
    "exact": "Share of greedy answers equal to the reference answer (forget: lower = forgotten; retain: keep it high).",
    "rouge_l": "ROUGE-L recall of the greedy answer against the reference answer.",
    "prob": "Probability of the reference answer under teacher forcing (geometric mean per token).",
    "truth_ratio": "TOFU truth ratio, R = geometric mean of P(perturbed)/P(paraphrased) per token; reported as "
    "TOFU does: forget = mean(min(R, 1/R)) (1 = no longer told apart), retain = mean(max(0, 1 − R)) (higher = kept).",
    "extraction_strength": "open-unlearning's extraction strength: 1 − (shortest prefix after which the model "
    "completes the answer itself) / length, EOS left out, at least 1/length.",
    "exact_memorization": "open-unlearning's exact memorization: share of answer tokens (EOS left out) that are the "
    "teacher-forced top-1.",
}
QUALITY = ("exact", "rouge_l", "prob", "truth_ratio", "extraction_strength", "exact_memorization")
LINKS = (("Compare this run", "compare", ":material/insights:"), ("Query this run", "query", ":material/chat:"))


def _fmt(value: object) -> str:
    if value == NOT_RECORDED:
        return NOT_RECORDED
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _numbers(metrics: Metrics, row: int, greyed: bool, chance: dict[str, float | None]) -> None:
    """One st.metric per headline number on this card row, with the direction that is better (and chance, for
    ranking numbers); ranking numbers are greyed (with why) when the forgetting is not meaningful."""
    shown = [h for h in HEADLINE if h.card == row]
    for col, h in zip(st.columns(len(shown)), shown, strict=True):
        value = _fmt(h.value(metrics))
        if greyed and h.ranking:
            col.markdown(f":gray[{h.label}]  \n:gray[**{value}**]  \n:gray[not meaningful]", help=h.help)
            continue
        delta = f"{h.direction} better" + (f" · chance {_fmt(chance[h.label])}" if h.label in chance else "")
        col.metric(h.label, value, delta=delta, delta_color="off", delta_arrow="off", help=h.help)


# Which way each number should move: forgotten on the forget set, kept on the retain set (the truth ratio in
# TOFU's reported forms: forget mean(min(R, 1/R)) rises towards 1 as the true answer stops being preferred,
# retain mean(max(0, 1 - R)) stays high while it is still preferred).
BETTER = {
    "forget": {
        "exact": "↓", "rouge_l": "↓", "prob": "↓", "truth_ratio": "↑", "extraction_strength": "↓",
        "exact_memorization": "↓",
    },
    "retain": {
        "exact": "↑", "rouge_l": "↑", "prob": "↑", "truth_ratio": "↑", "extraction_strength": "↑",
        "exact_memorization": "↑",
    },
}  # fmt: skip


def quality_rows(metrics: Metrics | None) -> list[dict]:
    """Forget and retain before → after, one row per quality number the run recorded, with the direction that
    is better."""
    rows = []
    for split in ("forget", "retain"):
        block = metrics.quality(split) if metrics is not None else None
        if block is None:
            continue
        for key in QUALITY:
            before, after = (getattr(q, key) if q is not None else None for q in (block.before, block.after))
            if before is not None or after is not None:
                better = BETTER[split][key]
                rows.append({"set": split, "metric": key, "better": better, "before": before, "after": after})
    return rows


def results_card(metrics: Metrics | None, run_dir: str, *, key: str) -> None:
    """Score alignment, realised forgetting and forget/retain quality before → after, with links to Compare and
    Query for this run; says so when the run has no metrics (failed before the end, or still running)."""
    with st.container(border=True, key=f"results_{key}"):
        st.markdown("#### Results")
        if metrics is None:
            st.info("No results: the run did not reach its evaluation.")
            return
        chance, greyed = headline.chances(metrics), headline.not_meaningful(metrics)
        _numbers(metrics, 0, greyed, chance)
        st.markdown("**Realised forgetting**: ranking beside magnitude")
        _numbers(metrics, 1, greyed, chance)
        _numbers(metrics, 2, greyed, chance)
        if greyed:
            st.caption(
                ":gray[Not meaningful: fewer than 10% of span tokens lost more than drop_nats of log-probability, "
                "so forgetting AUROC and span share rank changes too small to matter.]"
            )
        st.markdown(f"**Facts** — {facts_line(metrics)}")
        label_rows = fact_label_rows(metrics)
        if label_rows:
            st.dataframe(label_rows, hide_index=True, key=f"facts_{key}")
        rows = quality_rows(metrics)
        if rows:
            st.dataframe(
                [{**r, "before": _fmt(r["before"]), "after": _fmt(r["after"])} for r in rows],
                hide_index=True,
                key=f"quality_{key}",
                column_config={
                    "metric": st.column_config.TextColumn("metric", help=_quality_help()),
                    "better": st.column_config.TextColumn("better", help="Which way the number should move."),
                },
            )
            st.caption(" · ".join(f"**{k}**: {METRIC_HELP[k]}" for k in QUALITY))
        with st.container(horizontal=True):  # buttons sized to their labels: never cut at 1280 px
            for label, page, icon in LINKS:
                if st.button(label, key=f"{key}_to_{page}", icon=icon):
                    session.set_focus_run(run_dir)  # the page starts on this run
                    st.switch_page(f"app_pages/{page}.py")


def _quality_help() -> str:
    return "; ".join(f"{k}: {METRIC_HELP[k]}" for k in QUALITY)
