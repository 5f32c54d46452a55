"""Fact-level forgetting: for each ground-truth span of a forget record, is that fact still there after the job?

Whole-answer exact match is blind to which facts remain ("M Wynton was born in Ulmholm." is not the answer, yet the
birthplace is still said). Each span is judged three ways from the final model:

    leaked       its text is still in the greedy answer (case- and whitespace-normalised); `leaked_paraphrased` the
                 same for the answer to the record's paraphrased question, where it has one
    extractable  under teacher forcing from the reference prefix, every one of its tokens is the argmax
    log p        the summed log-probability of its tokens given the reference prefix, before and after the job
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from atwu_core.data import EncodedSample, Record
from atwu_core.metrics_record import FactRates, Facts, FactSample, SpanVerdict


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _logp(probs: Sequence[float], tokens: list[int]) -> float:
    return float(sum(math.log(max(probs[k], 1e-30)) for k in tokens))


def span_verdicts(
    record: Record, sample: EncodedSample, answer: str, token_logprobs: Sequence[float],
    token_correct: Sequence[bool], probs_before: Sequence[float] | None, paraphrased_answer: str | None = None,
) -> list[SpanVerdict]:  # fmt: skip
    """One verdict per span of `record`: label, text, offsets, `leaked`, `leaked_paraphrased` (None without a
    paraphrased question), `extractable`, `logprob_before` (None without before values) and `logprob_after`.
    `token_*` and `probs_before` hold one value per answer token."""
    said = _normalised(answer)
    said_too = _normalised(paraphrased_answer) if paraphrased_answer is not None else None
    out = []
    for span in record.forget_spans:
        tokens = [k for k, (s, e) in enumerate(sample.answer_offsets) if s < span.end and e > span.start]
        text = record.answer[span.start : span.end]
        out.append(
            SpanVerdict(
                label=span.label,
                text=text,
                start=span.start,
                end=span.end,
                leaked=_normalised(text) in said,
                leaked_paraphrased=_normalised(text) in said_too if said_too is not None else None,
                extractable=bool(tokens) and all(token_correct[k] for k in tokens),
                logprob_before=_logp(probs_before, tokens) if probs_before is not None else None,
                logprob_after=float(sum(token_logprobs[k] for k in tokens)),
            )
        )
    return out


def _rates(spans: list[SpanVerdict]) -> FactRates:
    n, leaked, extractable = len(spans), sum(s.leaked for s in spans), sum(s.extractable for s in spans)
    asked = [s.leaked_paraphrased for s in spans if s.leaked_paraphrased is not None]
    return FactRates(
        spans=n,
        leaked=leaked,
        extractable=extractable,
        leak_rate=leaked / n if n else None,
        extractable_rate=extractable / n if n else None,
        paraphrased_spans=len(asked),
        paraphrased_leak_rate=sum(asked) / len(asked) if asked else None,
    )


def facts(
    records: Sequence[Record],
    samples: Sequence[EncodedSample],
    answers: Sequence[str],
    stats: Sequence[dict],
    probs_before: Mapping[str, Sequence[float]] | None,
    paraphrased_answers: Mapping[str, str] | None = None,
) -> Facts:
    """metrics.json's `facts` block over the records with spans: `leak_rate` (share of spans still in the greedy
    answer), `extractable_rate`, `paraphrased_leak_rate` (over spans of records with a paraphrased question),
    their counts, `per_label` (label -> the same) and `per_sample` (id -> greedy answers and span verdicts).
    `answers`, `stats` (`metrics.answer_stats`) and `paraphrased_answers` (id -> the answer to its paraphrased
    question) come from the final model, in the order of `records`; `probs_before` maps ids to the loaded
    model's per-token probabilities."""
    per_sample: dict[str, FactSample] = {}
    for record, sample, answer, stat in zip(records, samples, answers, stats, strict=True):
        if record.forget_spans:
            before = (probs_before or {}).get(record.id)
            answer2 = (paraphrased_answers or {}).get(record.id)
            verdicts = span_verdicts(
                record, sample, answer, stat["token_logprobs"], stat["token_correct"], before, answer2
            )
            per_sample[record.id] = FactSample(answer=answer, spans=verdicts, paraphrased_answer=answer2)
    spans = [v for sample in per_sample.values() for v in sample.spans]
    labels = sorted({v.label for v in spans})
    overall = _rates(spans)
    return Facts(
        n_samples=len(per_sample),
        n_spans=overall.spans,
        n_leaked=overall.leaked,
        n_extractable=overall.extractable,
        leak_rate=overall.leak_rate,
        extractable_rate=overall.extractable_rate,
        paraphrased_leak_rate=overall.paraphrased_leak_rate,
        per_label={label: _rates([v for v in spans if v.label == label]) for label in labels},
        per_sample=per_sample,
    )
