"""The results card of a finished run: what its scores and its forgetting achieved, each number with a help line."""

from __future__ import annotations

import streamlit as st

from atwu_core.explore import chance_levels

# Shown as help wherever these numbers appear (results card, Compare, Runs).
METRIC_HELP = {
    "score AUROC": "Chance that a random span token gets a higher final score than a random other token "
    "(0.5 = chance, 1 = the score singles out exactly the spans).",
    "score AUPRC": "Average precision of the final scores as detectors of span tokens (chance = share of span tokens).",
    "score P@k": "Share of span tokens among the k highest-scored tokens, k = the number of span tokens.",
    "forgetting AUROC": "The same AUROC for each token's realised forgetting, log p before − log p after: "
    "did the probability drop land on the spans?",
    "span share": "Share of the total probability drop (summed positive log-probability decrease) that fell on span "
    "tokens.",
    "exact": "Share of greedy answers equal to the reference answer (forget: lower = forgotten; retain: keep it high).",
    "rouge_l": "ROUGE-L recall of the greedy answer against the reference answer.",
    "prob": "Probability of the reference answer under teacher forcing (geometric mean per token).",
    "truth_ratio": "TOFU truth ratio: P(perturbed) / P(paraphrased) answer; near 1 = the model no longer prefers "
    "the true answer.",
    "extraction_strength": "1 − (shortest prefix after which the model completes the answer itself) / length: "
    "1 = fully extractable.",
}
QUALITY = ("exact", "rouge_l", "prob", "truth_ratio", "extraction_strength")
LINKS = (("Compare this run", "compare", ":material/insights:"), ("Query this run", "query", ":material/chat:"))


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


# Which way each number should move: forgotten on the forget set, kept on the retain set (the truth ratio,
# P(perturbed) / P(paraphrased), rises towards 1 as the true answer stops being preferred).
BETTER = {
    "forget": {"exact": "↓", "rouge_l": "↓", "prob": "↓", "truth_ratio": "↑", "extraction_strength": "↓"},
    "retain": {"exact": "↑", "rouge_l": "↑", "prob": "↑", "truth_ratio": "↓", "extraction_strength": "↑"},
}


def quality_rows(metrics: dict) -> list[dict]:
    """Forget and retain before → after, one row per quality number, with the direction that is better."""
    rows = []
    for split in ("forget", "retain"):
        block = metrics.get(split) or {}
        before, after = block.get("before") or {}, block.get("after") or {}
        for key in QUALITY:
            if key in before or key in after:
                rows.append(
                    {
                        "set": split,
                        "metric": key,
                        "better": BETTER[split][key],
                        "before": before.get(key),
                        "after": after.get(key),
                    }
                )
    return rows


def results_card(metrics: dict | None, run_dir: str, *, key: str) -> None:
    """Score alignment, realised forgetting and forget/retain quality before → after, with links to Compare and
    Query for this run; says so when the run has no metrics (failed before the end, or still running)."""
    with st.container(border=True, key=f"results_{key}"):
        st.markdown("#### Results")
        if not metrics:
            st.info("No results: the run did not reach its evaluation.")
            return
        align, forgot = metrics.get("alignment") or {}, metrics.get("forgetting") or {}
        chance = chance_levels(metrics)
        cols = st.columns(5)
        numbers = [
            ("score AUROC", align.get("auroc"), chance["auroc"]),
            ("score AUPRC", align.get("auprc"), chance["auprc"]),
            ("score P@k", align.get("precision_at_k"), chance["precision_at_k"]),
            ("forgetting AUROC", forgot.get("auroc"), chance["auroc"]),
            ("span share", forgot.get("span_share"), chance["span_share"]),
        ]
        for col, (name, value, level) in zip(cols, numbers, strict=False):
            col.metric(
                name,
                _fmt(value),
                delta=f"↑ better · chance {_fmt(level)}",
                delta_color="off",
                delta_arrow="off",
                help=METRIC_HELP[name],
            )
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
                    st.session_state["focus_run"] = run_dir  # the page starts on this run
                    st.switch_page(f"app_pages/{page}.py")


def _quality_help() -> str:
    return "; ".join(f"{k}: {METRIC_HELP[k]}" for k in QUALITY)
