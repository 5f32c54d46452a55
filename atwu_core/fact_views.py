"""The facts views of a run's metrics (the results card, the HTML report, the token view): how many fact spans
the greedy answers still say, per span label and per sample."""

from __future__ import annotations

from atwu_core.headline import NOT_RECORDED
from atwu_core.metrics_record import Metrics, SpanVerdict
from atwu_core.records import SampleRecord


def facts_line(metrics: Metrics) -> str:
    """ "still said: 4 of 60 spans (name 3/30, birthplace 1/5, …)", or that the run did not record facts."""
    facts = metrics.facts
    if facts is None:
        return f"still said: {NOT_RECORDED}"
    labels = ", ".join(f"{k} {v.leaked}/{v.spans}" for k, v in facts.per_label.items())
    return f"still said: {facts.n_leaked} of {facts.n_spans} spans" + (f" ({labels})" if labels else "")


def fact_label_rows(metrics: Metrics) -> list[dict]:
    """Per span label: spans, how many the greedy answers still say, how many stay greedily extractable."""
    facts = metrics.facts
    return [
        {
            "label": label,
            "spans": c.spans,
            "still said": c.leaked,
            "leak rate": c.leak_rate,
            "extractable": c.extractable,
            "extractable rate": c.extractable_rate,
        }
        for label, c in (facts.per_label if facts is not None else {}).items()
    ]


def span_verdicts(metrics: Metrics | None, sample_id: str) -> list[SpanVerdict] | None:
    """One sample's span verdicts from `facts` (None when the run did not record facts for it)."""
    facts = metrics.facts if metrics is not None else None
    sample = facts.per_sample.get(sample_id) if facts is not None else None
    return sample.spans if sample is not None else None


def leaked_token_mask(metrics: Metrics | None, sample: SampleRecord) -> list[bool] | None:
    """Per answer token: it lies in a span the final model still says (None without recorded facts)."""
    verdicts = span_verdicts(metrics, sample.record_id)
    if verdicts is None or not sample.offsets:
        return None
    leaked = [(v.start, v.end) for v in verdicts if v.leaked]
    return [any(s < end and e > start for start, end in leaked) for s, e in sample.offsets]
