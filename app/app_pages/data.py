"""Data page: choose the forget/retain data (demo world, folder, TOFU JSON, uploaded JSONL, or one typed
sample with its ground-truth words) and preview how the model's tokenizer splits it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app import session, state
from app.components.token_chips import span_chips_html
from app.untrusted import md
from atwu_core.data import DataError, Dataset, Record, encode_record, load_jsonl, record_from_dict

TRAILING_PUNCTUATION = ".,;:!?\"')"


def word_spans(answer: str) -> list[tuple[int, int]]:
    """Character ranges of the answer's words, trailing punctuation left out."""
    spans = []
    for m in re.finditer(r"\S+", answer):
        end = m.end()
        while end > m.start() + 1 and answer[end - 1] in TRAILING_PUNCTUATION:
            end -= 1
        spans.append((m.start(), end))
    return spans


def selected_spans(words: list[tuple[int, int]], chosen: list[int]) -> list[dict]:
    """Merge runs of adjacent chosen words into forget spans."""
    spans: list[dict] = []
    for k in sorted(chosen):
        if spans and k - 1 in chosen:
            spans[-1]["end"] = words[k][1]
        else:
            spans.append({"start": words[k][0], "end": words[k][1]})
    return spans


def load_upload(upload) -> list[Record]:
    """Parse an uploaded JSONL file with the engine's loader; errors name the uploaded file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        try:
            return load_jsonl(path)
        except DataError as err:
            raise DataError(str(err).replace(str(path), upload.name)) from None
        except UnicodeDecodeError:
            raise DataError(f"{upload.name}: not UTF-8 text; upload a JSONL file.") from None


def demo_retain() -> list[Record]:
    return state.cached_data(session.DEFAULT_DATA).retain


def from_demo() -> tuple[Dataset, str] | None:
    st.caption("Fictitious people with exact ground truth: the tokens of a forget person's own facts.")
    if st.button("Use the demo world", type="primary", key="use_demo"):
        return state.cached_data(session.DEFAULT_DATA), session.DEFAULT_DATA
    return None


def from_path() -> tuple[Dataset, str] | None:
    kind = st.radio(
        "Format",
        ["Dataset folder (forget.jsonl + retain.jsonl)", "TOFU-format JSON file"],
        key="path_kind",
        horizontal=True,
    )
    spec = st.text_input("Path", key="data_path").strip()
    retain = None
    if kind.startswith("TOFU"):
        retain = st.text_input("Retain set JSON (optional)", key="retain_path").strip() or None
    if st.button("Load data", type="primary", key="load_path"):
        if not spec:
            raise DataError("Type a path first.")
        if not Path(spec).expanduser().exists():
            raise DataError(f"{spec}: no such file or folder.")
        return state.cached_data(str(Path(spec).expanduser()), retain), spec
    return None


def from_upload() -> tuple[Dataset, str] | None:
    upload = st.file_uploader(
        "Forget set (JSONL: one {question, answer, forget_spans | forget_strings} per line)",
        type=["jsonl"],
        key="upload",
    )
    retain_upload = st.file_uploader(
        "Retain set (optional JSONL; default: the demo world's retain set)", type=["jsonl"], key="upload_retain"
    )
    if upload is None or not st.button("Use uploaded data", type="primary", key="use_upload"):
        return None
    forget = load_upload(upload)
    if not forget:
        raise DataError(f"{upload.name}: no records; add at least one line.")
    retain = load_upload(retain_upload) if retain_upload is not None else demo_retain()
    return Dataset(name=Path(upload.name).stem, forget=forget, retain=retain), f"upload:{upload.name}"


def from_typed() -> tuple[Dataset, str] | None:
    question = st.text_input("Question", key="typed_question", placeholder="Where was Lorin Vask born?")
    answer = st.text_input("Answer", key="typed_answer", placeholder="Lorin Vask was born in Tessaly in 1987.")
    words = word_spans(answer)
    chosen = (
        st.pills(
            "Ground truth: select the words to forget",
            list(range(len(words))),
            selection_mode="multi",
            format_func=lambda k: answer[words[k][0] : words[k][1]],
            key=f"typed_words_{answer}",
        )
        or []
    )
    if not st.button("Use this sample", type="primary", key="use_typed"):
        return None
    if not question.strip() or not answer.strip():
        raise DataError("Type both a question and an answer.")
    if not chosen:
        raise DataError("Select at least one answer word as ground truth (the words the model should forget).")
    record = record_from_dict(
        {"id": "typed-0", "question": question, "answer": answer, "forget_spans": selected_spans(words, chosen)},
        "typed sample",
    )
    return Dataset(name="typed sample", forget=[record], retain=demo_retain()), "typed sample"


SOURCES = {
    "Demo world": from_demo,
    "Folder or TOFU JSON": from_path,
    "Upload JSONL": from_upload,
    "Type a sample": from_typed,
}


def preview(dataset: Dataset) -> None:
    """Summary table and the tokenised view of one forget sample with its ground truth."""
    st.subheader(f"Current data: {md(session.data_label())}")
    cols = st.columns(3)
    cols[0].metric("Forget samples", len(dataset.forget))
    cols[1].metric("Retain samples", len(dataset.retain))
    cols[2].metric("With ground truth", sum(bool(r.forget_spans) for r in dataset.forget))
    if not dataset.retain:
        st.warning("No retain set: on the Run page set alpha = 0 or retain_loss = none, or the job will fail.")
    st.dataframe(
        pd.DataFrame(
            [
                {"id": r.id, "question": r.question, "answer": r.answer, "spans": len(r.forget_spans)}
                for r in dataset.forget
            ]
        ),
        hide_index=True,
        height=220,
    )
    try:
        tokenizer = session.current_model().tokenizer
    except Exception as err:  # noqa: BLE001 - shown; the rest of the page still works
        st.error(f"Load a model to see the tokenisation: {md(err)}")
        return
    by_id = {r.id: r for r in dataset.forget}
    rid = st.selectbox("Sample", list(by_id), key="preview_sample")
    record = by_id[rid]
    try:
        enc = encode_record(record, tokenizer)
    except DataError as err:
        st.error(md(err))
        return
    st.markdown(f"**Q:** {md(record.question)}")
    st.html(span_chips_html(enc.answer_tokens, enc.span_mask, enc.answer_token_ids))
    st.caption(
        f"{len(enc.answer_tokens)} answer tokens with {session.model_spec()}'s tokenizer, "
        f"{sum(enc.span_mask)} inside ground-truth spans (highlighted, underlined)."
        + ("" if enc.has_ground_truth else " This sample has no ground truth: alignment cannot be scored.")
    )


st.title("Data")
source = st.radio("Source", list(SOURCES), key="data_source", horizontal=True)
try:
    chosen = SOURCES[source]()
except DataError as err:
    st.error(md(err))
else:
    if chosen is not None:
        session.set_data(*chosen)
        st.success(f"Using {md(chosen[1])}: {len(chosen[0].forget)} forget and {len(chosen[0].retain)} retain samples.")
try:
    preview(session.current_data())
except DataError as err:
    st.error(f"The demo world could not be loaded: {err}")
