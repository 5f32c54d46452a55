"""Query page: the model before and after a run, on a typed prompt or a forget/retain question; and a run's
saved ATWU scorer applied to any text, through the model before or after unlearning."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import session, state
from app.components.curves import token_bars
from app.components.token_chips import token_chips_html
from app.untrusted import isolated, md
from atwu_core import asking
from atwu_core.data import EncodedSample
from atwu_core.fact_views import span_verdicts
from atwu_core.headline import NOT_RECORDED
from atwu_core.runs import RunReader, list_runs
from atwu_core.token_views import percentile_range
from atwu_core.weighting.atwu import scorer_snapshots


def questions(reader: RunReader) -> dict[str, list[tuple[str, str]]]:
    """(question, reference answer) pairs: the run's forget samples, and the session data's retain set."""
    forget = [(s.question, s.answer) for s in reader.samples]
    retain = [(r.question, r.answer) for r in session.current_data().retain[:200]]
    return {"Forget question": forget, "Retain question": retain}


def run_model(run_dir: str) -> str:
    """The model spec a run was made with (its config.json is untrusted: the field may be missing)."""
    model = RunReader(run_dir).config.get("model")
    if not model:
        raise ValueError(f"{run_dir}/config.json names no model (field 'model'), so the run cannot be queried.")
    return model


def show_logprobs(sample: EncodedSample, before: dict, after: dict) -> None:
    """Per-token log-probability of the reference answer before and after unlearning."""
    delta = [a - b for a, b in zip(after["token_logprobs"], before["token_logprobs"], strict=False)]
    st.plotly_chart(
        token_bars(
            sample.answer_tokens,
            delta,
            title="Change in log-probability of each reference token",
            ylabel="log p after − log p before",
            colorbar="Δ log p",
        ),
        key="delta_bars",
    )
    st.dataframe(
        pd.DataFrame(
            {
                "token": sample.answer_tokens,
                "log p before": before["token_logprobs"],
                "log p after": after["token_logprobs"],
                "change": delta,
            }
        ),
        hide_index=True,
    )
    st.caption(
        "Reference answer probability (per-token geometric mean): "
        f"before {before['prob']:.3f}, after {after['prob']:.3f}."
    )


def answer(run_dir: str, prompt: str, reference: str, max_new: int) -> dict | None:
    """Answers before (plain model) and after (the run's adapter); None after showing why there are none."""
    spec = run_model(run_dir)
    try:
        with st.spinner(f"Loading {md(spec)} …"):
            loaded = state.models().get(spec)
        return asking.answers(loaded, run_dir, prompt, reference, max_new)
    except Exception as err:  # noqa: BLE001 - missing adapter, model or bad input: shown, the app stays usable
        st.error(f"Could not answer: {md(err)}")
        return None


def show_answer(result: dict) -> None:
    """The two answers side by side, and the reference's per-token change when there is one."""
    c1, c2 = st.columns(2)
    c1.markdown("**Before** (plain model)")
    c1.info(md(result["before"][0]) or "(empty answer)")
    c2.markdown("**After** (with the run's adapter)")
    c2.info(md(result["after"][0]) or "(empty answer)")
    if result["sample"] is not None:
        show_logprobs(result["sample"], result["before"][1], result["after"][1])


def span_verdict_table(reader: RunReader, sample_id: str) -> None:
    """The run's recorded verdict on each span of a forget question (its final model's greedy answer, at the
    answer limit the job used), or that the run did not record one."""
    verdicts = span_verdicts(reader.metrics, sample_id)
    st.markdown("**Facts of this answer** (the job's final model, recorded at its end)")
    if verdicts is None:
        st.caption(f"Span verdicts: {NOT_RECORDED} (the run predates them or did not finish its evaluation).")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "span": [v.text for v in verdicts],
                "label": [v.label for v in verdicts],
                "verdict": ["still said" if v.leaked else "not said" for v in verdicts],
                "extractable": [v.extractable for v in verdicts],
                "log p before": [v.logprob_before for v in verdicts],
                "log p after": [v.logprob_after for v in verdicts],
            }
        ),
        hide_index=True,
        key="query_span_verdicts",
    )


def scorer_scores(run_dir: str, snapshot: str, question: str, text: str, through: str) -> tuple[EncodedSample, list]:
    """The run's saved scorer on `text`, through the model the user picked."""
    loaded = state.models().get(run_model(run_dir))
    chat_template = RunReader(run_dir).job_config.chat_template
    return asking.scorer_scores(
        loaded, run_dir, snapshot, question, text, after=through != THROUGH[0], chat_template=chat_template
    )


def score(run_dir: str, snapshot: str, question: str, text: str, through: str) -> dict | None:
    """The scorer's output on `text`; None after showing why there is none."""
    if not text.strip():
        st.error("Type a text to score first.")
        return None
    try:
        with st.spinner("Scoring …"):
            sample, g = scorer_scores(run_dir, snapshot, question, text, through)
    except Exception as err:  # noqa: BLE001 - missing scorer, model or bad text: shown, the app stays usable
        st.error(f"Could not score: {md(err)}")
        return None
    return {"sample": sample, "g": g}


THROUGH = ("model before unlearning", "model after unlearning (the run's adapter)")


def scorer_view(run_dir: str) -> None:
    """Type any text, or pick a retain or held-out sample, and see the run's learned scorer on it."""
    st.subheader("The scorer on any text")
    st.caption(
        "ATWU learns a direction in the model's hidden states that marks forget-specific tokens. Apply it where it "
        "was not trained: a retain answer, a held-out one, or anything you type (one forward pass)."
    )
    snapshots = scorer_snapshots(run_dir)
    if not snapshots:
        st.info("This run saved no scorer (only ATWU runs do).")
        return
    c1, c2 = st.columns(2)
    snapshot = c1.selectbox("Scorer", snapshots[::-1], key="scorer_snapshot", help="`scorer` = the final one.")
    through = c2.radio("Hidden states from", THROUGH, key="scorer_through")
    data = session.current_data()
    sources = {"Type a text": [], "Retain sample": data.retain[:200], "Held-out sample": data.holdout[:200]}
    source = st.radio("Text", list(sources), horizontal=True, key="scorer_source")
    if source == "Type a text":
        question = st.text_input("Question (context, optional)", key="scorer_question")
        text = st.text_area("Text to score", key="scorer_text", placeholder="Ada Vask was born in Tessaly.")
    elif not sources[source]:
        st.info(f"The session's data has no {source.lower()}s.")
        return
    else:
        records = sources[source]
        pick = st.selectbox(
            "Sample", range(len(records)), format_func=lambda k: records[k].question, key=f"scorer_pick_{source}"
        )
        question, text = records[pick].question, records[pick].answer
        st.caption(f"Text: {md(text)}")
    inputs = (run_dir, snapshot, through, question, text)
    scored = None
    if st.button("Score", key="scorer_go", type="primary"):
        scored = score(run_dir, snapshot, question, text, through)
    scored = session.kept(session.SCORED, inputs, scored)
    if scored is None:
        return
    sample, g = scored["sample"], scored["g"]
    low, high = percentile_range(
        g, 0.0, 100.0
    )  # this text's own range: a barely trained scorer still shows its ranking
    st.html(
        token_chips_html(
            sample.answer_tokens, g, token_ids=sample.answer_token_ids, label="scorer output g", vmin=low, vmax=high
        )
    )
    st.caption(
        f"Colours span this text's scores, {low:.3f} … {high:.3f} (hover for each value); "
        "g > 0.5 means the scorer would single the token out for forgetting."
    )


st.title("Query")
finished = [r for r in list_runs() if r["state"] in ("completed", "cancelled")]
if not finished:
    st.info("No finished run yet: run one on the Run page first.")
    st.stop()
run_dir = session.run_picker("Run", finished, key="query_run")["run_dir"]


def query(run_dir: str) -> None:
    """Ask the run's model before and after, then its scorer."""
    reader = RunReader(run_dir)
    kinds = ["Type a prompt", "Forget question", "Retain question"]
    kind = st.radio("Prompt", kinds, horizontal=True, key="query_kind")
    if kind == "Type a prompt":
        prompt = st.text_input("Prompt", key="query_prompt")
        reference = st.text_input(
            "Reference answer (optional: shows per-token log-probability changes)", key="query_reference"
        )
    else:
        pairs = questions(reader)[kind]
        if not pairs:
            st.info(f"No {kind.lower()}s available.")
            st.stop()
        pick = st.selectbox("Question", range(len(pairs)), format_func=lambda k: pairs[k][0], key=f"query_pick_{kind}")
        prompt, reference = pairs[pick]
        st.caption(f"Reference answer: {md(reference)}")
    max_new = st.slider("Max new tokens", 8, 128, 48, key="query_max_new")
    answered = None
    if st.button("Answer", type="primary", key="query_go"):
        if not prompt.strip():
            st.error("Type a prompt first.")
        else:
            answered = answer(run_dir, prompt, reference, max_new)
    answered = session.kept(session.ANSWERS, (run_dir, prompt, reference, max_new), answered)
    if answered is not None:
        show_answer(answered)
    if kind == "Forget question":
        span_verdict_table(reader, reader.samples[pick].record_id)
    st.divider()
    scorer_view(run_dir)


with isolated(run_dir):
    query(run_dir)
