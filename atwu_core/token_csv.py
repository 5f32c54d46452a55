"""Every recorded per-token value of a run as one CSV (the app's download): before, each step, the final pass."""

from __future__ import annotations

import csv
import io

from atwu_core.metrics import nll_increase
from atwu_core.records import SampleRecord
from atwu_core.runs import RunSnapshot
from atwu_core.token_views import FINAL, finite_list, floats


def tokens_csv(snap: RunSnapshot) -> str:
    """Every recorded per-token value: the `before` probabilities, every step, and the final pass, for all
    samples; one row per (step, sample, token)."""
    samples = snap.sample_index
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "step",
            "sample_id",
            "token_index",
            "token",
            "token_id",
            "in_span",
            "span_label",
            "score",
            "loss_weight",
            "prob",
            "logprob_change",
        ]
    )
    before = snap.before.probs if snap.before is not None else {}
    if before:
        for sid, probs in before.items():
            for k, p in enumerate(probs):
                writer.writerow(["before", _text_cell(sid), *_token_cells(samples.get(sid), k), "", "", p, 0.0])
    records = [
        *((rec.step, rec) for rec in snap.step_records),
        *([(FINAL, snap.final)] if snap.final is not None else []),
    ]
    for step, rec in records:
        for sid, scores in rec.scores.items():
            weights = rec.loss_weights.get(sid) or [None] * len(scores)
            probs = rec.probs.get(sid) or [None] * len(scores)
            change = finite_list(-nll_increase(before[sid], floats(probs))) if sid in before else [None] * len(scores)
            for k, score in enumerate(scores):
                cells = _token_cells(samples.get(sid), k)
                writer.writerow([step, _text_cell(sid), *cells, score, weights[k], probs[k], change[k]])
    return out.getvalue()


def _token_cells(sample: SampleRecord | None, k: int) -> list:
    if sample is None or k >= len(sample.tokens):
        return [k, "", "", "", ""]
    ids = sample.token_ids
    token, label = _text_cell(sample.tokens[k]), _text_cell(sample.span_labels[k] or "")
    return [k, token, ids[k] if k < len(ids) else "", int(sample.span_mask[k]), label]


def _text_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (=, +, -, @, tab, CR) gets a leading
    apostrophe (OWASP's CSV-injection rule), so an id `=HYPERLINK(…)` is not run when the file is opened."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
