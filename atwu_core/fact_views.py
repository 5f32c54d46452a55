"""The facts views of a run's metrics (the results card, the HTML report, the token view): how many fact spans
the greedy answers still say, per span label and per sample."""

from __future__ import annotations

from atwu_core.headline import NOT_RECORDED
from atwu_core.records import SampleRecord


def facts_line(metrics: dict) -> str:
    """ "still said: 4 of 60 spans (name 3/30, birthplace 1/5, …)", or that the run did not record facts."""
    facts = metrics.get("facts")
    if facts is None:
        return f"still said: {NOT_RECORDED}"
    labels = ", ".join(f"{k} {v['leaked']}/{v['spans']}" for k, v in facts["per_label"].items())
    return f"still said: {facts['n_leaked']} of {facts['n_spans']} spans" + (f" ({labels})" if labels else "")


def fact_label_rows(metrics: dict) -> list[dict]:
    """Per span label: spans, how many the greedy answers still say, how many stay greedily extractable."""
    per_label = (metrics.get("facts") or {}).get("per_label") or {}
    return [
        {
            "label": label,
            "spans": c["spans"],
            "still said": c["leaked"],
            "leak rate": c["leak_rate"],
            "extractable": c["extractable"],
            "extractable rate": c["extractable_rate"],
        }
        for label, c in per_label.items()
    ]


def span_verdicts(metrics: dict, sample_id: str) -> list[dict] | None:
    """One sample's span verdicts from `facts` (None when the run did not record facts for it)."""
    return (((metrics.get("facts") or {}).get("per_sample") or {}).get(sample_id) or {}).get("spans")


def leaked_token_mask(metrics: dict, sample: SampleRecord) -> list[bool] | None:
    """Per answer token: it lies in a span the final model still says (None without recorded facts)."""
    verdicts = span_verdicts(metrics, sample.record_id)
    if verdicts is None or not sample.offsets:
        return None
    leaked = [(v["start"], v["end"]) for v in verdicts if v["leaked"]]
    return [any(s < end and e > start for start, end in leaked) for s, e in sample.offsets]
