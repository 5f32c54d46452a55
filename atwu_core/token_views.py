"""The explorer's per-token views of one run (the app and its HTML report): steps × tokens tables per sample,
per-sample and per-span-label tables over the whole forget set, and the colour ranges the heatmaps draw with.
Plain numbers from a run snapshot, no model; the metrics themselves come from `atwu_core.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from atwu_core.metrics import alignment, by_span_label, forgetting, nll_increase, rank_percentile
from atwu_core.records import SampleRecord
from atwu_core.runs import RunSnapshot

FINAL = "final"


# ------------------------------------------------------------------------------------------ per sample


def rows(snap: RunSnapshot, sample_id: str, key: str = "scores") -> tuple[list[int | str], list[list[float]]]:
    """Steps × tokens of `key` for one sample (the steps whose batch held it), then the final pass if recorded."""
    steps, matrix = snap.matrix(sample_id, key)
    final = getattr(snap.final, key, {}) if snap.final is not None else {}
    if sample_id in final:
        return [*steps, FINAL], [*matrix, final[sample_id]]
    return list(steps), list(matrix)


def logprob_change(snap: RunSnapshot, sample_id: str) -> tuple[list[int | str], list[list[float | None]]] | None:
    """Steps × tokens of log p − log p_before (negative = forgotten), aligned with `rows(…, "probs")`;
    None when the run recorded no probabilities before training (runs older than the `before` record)."""
    before = snap.before.probs.get(sample_id) if snap.before is not None else None
    if before is None:
        return None
    steps, probs = rows(snap, sample_id, "probs")
    return steps, [finite_list(-nll_increase(before, floats(p))) for p in probs]


def latest_logprob_change(snap: RunSnapshot) -> dict[str, list[float | None]]:
    """Each sample's latest log p − log p_before (the final pass once the job got there)."""
    if snap.before is None:
        return {}
    latest = snap.latest("probs")
    return {
        sid: finite_list(-nll_increase(snap.before.probs[sid], floats(p)))
        for sid, p in latest.items()
        if sid in snap.before.probs
    }


def floats(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def finite_list(values: Iterable[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def percentile_range(values: Iterable[float | None], lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    """A colour range with contrast: the lo-th to hi-th percentile of the finite values (outliers saturate);
    never empty, so a constant run still draws."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(x) for x in np.percentile(finite, [lo, hi]))
    return (low, high) if high > low else (low - 0.5e-3, low + 0.5e-3)


CHANGE_FLOOR = 1.0  # nats: a Δ log p colour scale spans at least ± this, so ±0.001 is not drawn like −10


def symmetric_range(
    values: Iterable[float | None], q: float = 98.0, floor: float = CHANGE_FLOOR
) -> tuple[float, float]:
    """A range centred on zero for signed changes: ± the q-th percentile of |value|, at least ± `floor`."""
    finite = np.abs([v for v in values if v is not None and math.isfinite(v)])
    bound = max(float(np.percentile(finite, q)) if finite.size else 0.0, floor)
    return -(bound or 1.0), bound or 1.0


def run_values(snap: RunSnapshot, key: str) -> list[float]:
    """Every recorded value of `key` in the run (all steps, all samples, the final pass): a per-run colour range."""
    records = [*snap.step_records, *([snap.final] if snap.final is not None else [])]
    return [v for rec in records for values in getattr(rec, key).values() for v in values if v is not None]


def disagreement_tables(
    scores: Sequence[float], sample: SampleRecord, k: int = 5
) -> tuple[list[dict], list[dict]] | None:
    """The k highest-scored tokens outside the spans and the k lowest-scored tokens inside them, each with its
    tie-aware rank percentile in the sample (1 = highest score), ordered exactly as the two headings say;
    None when the sample's scores are all equal (nothing is ranked, so nothing disagrees)."""
    values = np.asarray(floats(scores))  # (tokens,)
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() == finite.max():
        return None
    percentile = rank_percentile(values)

    def row(i: int) -> dict:
        return {
            "token": sample.tokens[i],
            "index": i,
            "score": float(values[i]),
            "rank percentile": float(percentile[i]),
        }

    outside = [i for i, m in enumerate(sample.span_mask) if not m]
    inside = [i for i, m in enumerate(sample.span_mask) if m]
    high_out = sorted(outside, key=lambda i: -values[i])[:k]
    low_in = sorted(inside, key=lambda i: values[i])[:k]
    return [row(i) for i in high_out], [row(i) for i in low_in]


# ------------------------------------------------------------------------------------------ whole forget set


def corpus_table(snap: RunSnapshot) -> list[dict]:
    """One row per forget sample with latest scores: its per-sample score AUROC and forgetting AUROC, and the
    mean score and mean log-probability change inside and outside its spans."""
    scores = snap.latest("scores")
    change = latest_logprob_change(snap)
    score_auroc = alignment(scores, snap.samples).per_sample
    forgot = forgetting(snap.before.probs, snap.latest("probs"), snap.samples).per_sample if snap.before else {}
    out = []
    for s in snap.samples:
        if s.record_id not in scores:
            continue
        mask = np.asarray(s.span_mask, dtype=bool)
        values = np.asarray(floats(scores[s.record_id]))
        delta = np.asarray(floats(change[s.record_id])) if s.record_id in change else None
        out.append(
            {
                "sample": s.record_id,
                "question": s.question,
                "span labels": ", ".join(sorted({lab for lab in s.span_labels if lab})),
                "tokens": len(s.tokens),
                "span tokens": int(mask.sum()),
                "score AUROC": score_auroc[s.record_id].auroc if s.record_id in score_auroc else None,
                "forgetting AUROC": forgot[s.record_id].auroc if s.record_id in forgot else None,
                "mean score in spans": _mean(values[mask]),
                "mean score outside": _mean(values[~mask]),
                "mean Δ log p in spans": _mean(delta[mask]) if delta is not None else None,
                "mean Δ log p outside": _mean(delta[~mask]) if delta is not None else None,
            }
        )
    return out


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def span_label_table(snap: RunSnapshot) -> list[dict]:
    """Per span label (name, birthplace, …, "outside"): token count, mean latest score, mean loss weight and
    mean log-probability change since before training."""
    scores = by_span_label(snap.latest("scores"), snap.samples)
    weights = by_span_label(snap.latest("loss_weights"), snap.samples)
    change = by_span_label({sid: floats(v) for sid, v in latest_logprob_change(snap).items()}, snap.samples)
    return [
        {
            "span label": label,
            "tokens": cell["tokens"],
            "mean score": cell["mean"],
            "mean loss weight": (weights.get(label) or {}).get("mean"),
            "mean Δ log p": _nan_none((change.get(label) or {}).get("mean")),
        }
        for label, cell in scores.items()
    ]


def _nan_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
