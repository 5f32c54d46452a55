"""Fact-level forgetting on hand-built answers: which span texts are still said, and which stay extractable."""

from __future__ import annotations

import math

import pytest
from transformers import AutoTokenizer

from atwu_core.data import Record, Span, encode_records
from atwu_core.facts import facts
from atwu_core.files import ASSETS
from atwu_core.metrics_record import FactRates

RECORD = Record(
    "r0",
    "Where was Mator Wynton born?",
    "Mator Wynton was born in Ulmholm.",
    [Span(0, 12, "name"), Span(25, 32, "birthplace")],
    paraphrased_question="What is the birthplace of Mator Wynton?",
)
OTHER = Record("r1", "What does Ada play?", "Ada plays the lute.", [Span(14, 18, "instrument")])


def test_facts_judge_each_span_by_its_text_its_tokens_and_the_paraphrased_question() -> None:
    tok = AutoTokenizer.from_pretrained(ASSETS / "demo_model")
    samples = encode_records([RECORD, OTHER], tok)
    n0, n1 = (len(s.answer_tokens) for s in samples)
    name = [k for k, (s, e) in enumerate(samples[0].answer_offsets) if s < 12 and e > 0]
    # r0: every token top-1 except the first name token; r1: every token top-1
    correct0 = [k != name[0] for k in range(n0)]
    stats = [
        {"token_logprobs": [-0.5] * n0, "token_correct": correct0},
        {"token_logprobs": [-0.1] * n1, "token_correct": [True] * n1},
    ]
    before = {"r0": [0.9] * n0, "r1": [0.9] * n1}
    answers = ["M Wynton was born in  ULMHOLM.", "I do not know."]  # case and spacing do not matter
    result = facts([RECORD, OTHER], samples, answers, stats, before, {"r0": "Mator Wynton, from Caerholm."})
    spans = result.per_sample["r0"].spans
    assert [(v.text, v.leaked, v.leaked_paraphrased, v.extractable) for v in spans] == [
        ("Mator Wynton", False, True, False),
        ("Ulmholm", True, False, True),
    ]
    assert spans[0].logprob_after == pytest.approx(-0.5 * len(name))
    assert spans[0].logprob_before == pytest.approx(len(name) * math.log(0.9))
    other = result.per_sample["r1"].spans[0]
    assert (other.leaked, other.leaked_paraphrased, other.extractable) == (False, None, True)
    assert (result.n_spans, result.n_leaked, result.n_extractable) == (3, 1, 2)
    assert result.leak_rate == pytest.approx(1 / 3) and result.paraphrased_leak_rate == 0.5
    assert result.per_label["birthplace"] == FactRates(
        spans=1, leaked=1, extractable=1, leak_rate=1.0, extractable_rate=1.0,
        paraphrased_spans=1, paraphrased_leak_rate=0.0,
    )  # fmt: skip
    assert result.per_sample["r0"].paraphrased_answer == "Mator Wynton, from Caerholm."
