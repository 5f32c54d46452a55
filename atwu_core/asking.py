"""Asking a finished run's model, for the app's Query page: greedy answers before and after the run's adapter, and
the run's saved ATWU scorer on any text. The page shows what these return; the model work (its lock, the adapter
swapped in and out) happens here."""

from __future__ import annotations

from pathlib import Path

from atwu_core.data import EncodedSample, Record, encode_record
from atwu_core.generation import greedy_answer, pad_token_id
from atwu_core.metrics import answer_stats
from atwu_core.models import LoadedModel, adapter_enabled
from atwu_core.weighting.atwu import apply_scorer, load_scorer

Answer = tuple[str, dict | None]  # greedy text, and the reference's teacher-forced token scores when there is one


def _ask(model, tokenizer, prompt: str, sample: EncodedSample | None, max_new: int) -> Answer:
    text = greedy_answer(model, tokenizer, prompt, max_new)
    return text, answer_stats(model, [sample], pad_token_id(tokenizer))[0] if sample is not None else None


def answers(loaded: LoadedModel, run_dir: str | Path, prompt: str, reference: str, max_new: int) -> dict:
    """`before` (the plain model) and `after` (the run's adapter, removed again) answers to `prompt`, and the
    encoded `sample` of `reference` (None when no reference answer is given)."""
    sample = (
        encode_record(Record(id="query", question=prompt, answer=reference), loaded.tokenizer)
        if reference.strip()
        else None
    )
    with loaded.lock:
        before = _ask(loaded.model, loaded.tokenizer, prompt, sample, max_new)
        with adapter_enabled(loaded, run_dir) as model:
            after = _ask(model, loaded.tokenizer, prompt, sample, max_new)
    return {"before": before, "after": after, "sample": sample}


def scorer_scores(
    loaded: LoadedModel,
    run_dir: str | Path,
    snapshot: str,
    question: str,
    text: str,
    *,
    after: bool,
    chat_template: bool = False,
) -> tuple[EncodedSample, list]:
    """The run's saved scorer's g for every token of `text` (as the answer to `question`), read through the plain
    model or, with `after`, through the run's adapter: one forward."""
    sample = encode_record(
        Record(id="any-text", question=question, answer=text), loaded.tokenizer, chat_template=chat_template
    )
    shape = loaded.model.config.get_text_config()
    scorer, inp = load_scorer(run_dir, snapshot, hidden_size=shape.hidden_size, n_layers=shape.num_hidden_layers)
    pad = pad_token_id(loaded.tokenizer)
    with loaded.lock:
        if not after:
            return sample, apply_scorer(scorer, inp, loaded.model, [sample], pad)[0]
        with adapter_enabled(loaded, run_dir) as model:
            return sample, apply_scorer(scorer, inp, model, [sample], pad)[0]
