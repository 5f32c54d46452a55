"""What a run is judged by: answer quality on forget/retain sets, and how well token weights match the spans.

The names of the dicts returned here are the keys of a run's `metrics.json`, which the app, the CLI and
the benchmark scripts read; change them only together with those readers.

Alignment: pooled over every answer token of the samples that have ground truth, the token weights are
scores and the span mask is the label. AUROC and AUPRC come from scikit-learn (ties count half, so
uniform weights give AUROC 0.5 exactly). precision@k uses k = the number of span tokens and resolves a
tie at the cut-off by its expectation under random order: the tokens tied at the k-th weight fill the
remaining places with their average positive rate (uniform weights give the span-token rate).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp, rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from atwu_core import losses
from atwu_core.data import IGNORE_INDEX, EncodedSample, Record, encode_records
from atwu_core.generation import collate, evaluating, greedy_answers, model_device, pad_token_id

# --------------------------------------------------------------------------------------------- token scores


def _logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    device = model_device(model)
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


def per_token_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-token NLL [B, L-1] of a `collate` batch under `model` (the loop's own `losses.token_nll`, so what is
    reported is exactly what is optimised); runs under the caller's grad mode."""
    logits = _logits(model, batch)
    return losses.token_nll(logits, batch["labels"].to(logits.device))[0]


def extraction_strength(correct: Sequence[bool]) -> float:
    """ES = 1 - k/|y|, k the shortest answer prefix after which every teacher-forced argmax is right."""
    n = len(correct)
    suffix = next((j for j, ok in enumerate(reversed(correct)) if not ok), n)  # length of the all-correct tail
    return 1.0 - (n - suffix) / n


def answer_stats(
    model: torch.nn.Module, samples: Sequence[EncodedSample], pad_id: int, batch_size: int = 16
) -> list[dict]:
    """Teacher-forced scores per sample, in input order: `prob` (exp of minus the mean answer-token NLL),
    `extraction_strength`, and `token_logprobs` (log p of each answer token, for before/after views), plus its `id`.
    Batches hold samples of similar length: less padding to pay for."""
    stats: list[dict | None] = [None] * len(samples)
    order = sorted(range(len(samples)), key=lambda k: len(samples[k].input_ids))
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate([samples[k] for k in rows], pad_id)
            logits = _logits(model, batch)
            nll = losses.token_nll(logits, batch["labels"].to(logits.device))[0].cpu()
            labels = batch["labels"][:, 1:]
            correct = logits[:, :-1].argmax(-1).cpu() == labels
            for row, k in enumerate(rows):
                answer = labels[row] != IGNORE_INDEX
                row_nll = nll[row][answer]
                stats[k] = {
                    "id": samples[k].record_id,
                    "prob": float(torch.exp(-row_nll.mean())),
                    "extraction_strength": extraction_strength(correct[row][answer].tolist()),
                    "token_logprobs": (-row_nll).tolist(),
                }
    return stats


# --------------------------------------------------------------------------------------------- answer quality

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # TOFU's setting


def _normalise(text: str) -> str:
    return " ".join(text.split())


def quality(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    samples: Sequence[EncodedSample],
    *,
    max_samples: int | None = None,
    batch_size: int = 16,
    chat_template: bool = False,
) -> dict:
    """Mean `prob`, `rouge_l` (recall of the greedy answer against the answer), `exact` (whitespace-normalised
    greedy exact match) and `extraction_strength` over the first `max_samples` records; plus `truth_ratio`
    and the per-record `truth_ratios` (for `forget_quality`) over those with paraphrased and perturbed answers.

    `records[i]` must be the record `samples[i]` was encoded from; `chat_template` must match that encoding
    (the paraphrased and perturbed answers are encoded the same way, on the same prompt).
    """
    if len(records) != len(samples) or any(r.id != s.record_id for r, s in zip(records, samples)):
        raise ValueError("quality: records and samples must be the same records in the same order.")
    records, samples = list(records)[:max_samples], list(samples)[:max_samples]
    if not samples:
        raise ValueError("quality: no samples to evaluate.")
    pad = pad_token_id(tokenizer)
    stats = answer_stats(model, samples, pad, batch_size)
    generated = greedy_answers(model, tokenizer, samples, batch_size=batch_size)
    result = {
        "n": len(samples),
        "prob": float(np.mean([s["prob"] for s in stats])),
        "rouge_l": float(np.mean([_ROUGE.score(r.answer, g)["rougeL"].recall for r, g in zip(records, generated)])),
        "exact": float(np.mean([_normalise(g) == _normalise(r.answer) for r, g in zip(records, generated)])),
        "extraction_strength": float(np.mean([s["extraction_strength"] for s in stats])),
    }
    ratios = truth_ratios(model, tokenizer, records, batch_size=batch_size, chat_template=chat_template)
    if ratios:
        result["truth_ratio"] = float(np.mean(ratios))
        result["truth_ratios"] = ratios
    return result


def truth_ratios(
    model: torch.nn.Module, tokenizer, records: Sequence[Record], *, batch_size: int = 16, chat_template: bool = False
) -> list[float]:
    """TOFU's truth ratio per record with a paraphrased and at least one perturbed answer:
    R = mean over perturbed answers of P(perturbed)^(1/len) / P(paraphrased)^(1/len), all on the record's prompt.
    R < 1: the model prefers the true (paraphrased) answer."""
    usable = [r for r in records if r.paraphrased_answer and r.perturbed_answer]
    if not usable:
        return []
    paraphrased = [Record(r.id, r.question, r.paraphrased_answer) for r in usable]
    perturbed = [
        Record(f"{r.id}/perturbed{j}", r.question, p) for r in usable for j, p in enumerate(r.perturbed_answer)
    ]
    encoded = encode_records(paraphrased + perturbed, tokenizer, chat_template=chat_template)
    # in log space: on a collapsed model the probabilities underflow to 0 and their ratio would be 0/0
    logps = [
        float(np.mean(s["token_logprobs"])) for s in answer_stats(model, encoded, pad_token_id(tokenizer), batch_size)
    ]
    para_logps, pert_logps = logps[: len(usable)], iter(logps[len(usable) :])
    return [
        float(np.mean([np.exp(next(pert_logps) - para) for _ in r.perturbed_answer]))
        for r, para in zip(usable, para_logps)
    ]


def forget_quality(truth_ratios: Sequence[float], reference_truth_ratios: Sequence[float]) -> float:
    """TOFU's forget quality: the KS-test p-value of the truth ratios against a retain-only reference model's."""
    if not truth_ratios or not reference_truth_ratios:
        raise ValueError("forget_quality needs truth ratios from both models.")
    return float(ks_2samp(truth_ratios, reference_truth_ratios).pvalue)


# --------------------------------------------------------------------------------------------- alignment


def _checked(weights: Sequence[float], sample: EncodedSample) -> np.ndarray:
    scores = np.asarray(weights, dtype=float)
    if scores.shape != (len(sample.span_mask),):
        raise ValueError(
            f"sample {sample.record_id!r}: {len(scores)} weights for {len(sample.span_mask)} answer tokens; "
            "give one weight per answer token (EOS included), as in samples.json."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"sample {sample.record_id!r}: weights must be finite numbers.")
    return scores


def _scored(
    weights: Mapping[str, Sequence[float]], samples: Sequence[EncodedSample]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, scores, labels) for each sample with ground truth and weights; samples without weights are left out."""
    return [
        (s.record_id, _checked(weights[s.record_id], s), np.asarray(s.span_mask, dtype=bool))
        for s in samples
        if s.has_ground_truth and s.record_id in weights
    ]


def precision_at_k(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of span tokens among the k highest-weight tokens, k = number of span tokens; the tie at the
    cut-off counts at its average span rate (the expectation over random tie order)."""
    k = int(labels.sum())
    threshold = np.sort(scores)[::-1][k - 1]
    above, tied = scores > threshold, scores == threshold
    hits = labels[above].sum() + (k - above.sum()) * labels[tied].mean()
    return float(hits / k)


def _separation(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    if labels.all() or not labels.any():
        return {"auroc": None, "auprc": None, "precision_at_k": None}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "precision_at_k": precision_at_k(scores, labels),
    }


def alignment(weights: Mapping[str, Sequence[float]], samples: Sequence[EncodedSample]) -> dict:
    """How well token weights single out the ground-truth span tokens: pooled `auroc`, `auprc`, `precision_at_k`
    (None when the pool has one class), `n_tokens`, `n_positive`, `n_samples`, and the same three per sample."""
    scored = _scored(weights, samples)
    scores = np.concatenate([s for _, s, _ in scored]) if scored else np.zeros(0)
    labels = np.concatenate([y for _, _, y in scored]) if scored else np.zeros(0, dtype=bool)
    return {
        **_separation(scores, labels),
        "n_tokens": int(labels.size),
        "n_positive": int(labels.sum()),
        "n_samples": len(scored),
        "per_sample": {sid: _separation(s, y) for sid, s, y in scored},
    }


def alignment_curves(
    weights: Mapping[str, Sequence[float]], samples: Sequence[EncodedSample]
) -> dict[str, list[float]]:
    """Pooled ROC (`fpr`, `tpr`) and precision-recall (`precision`, `recall`) points for charts; empty lists
    when the pooled tokens have only one class."""
    scored = _scored(weights, samples)
    labels = np.concatenate([y for _, _, y in scored]) if scored else np.zeros(0, dtype=bool)
    if labels.all() or not labels.any():
        return {"fpr": [], "tpr": [], "precision": [], "recall": []}
    scores = np.concatenate([s for _, s, _ in scored])
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "precision": precision.tolist(), "recall": recall.tolist()}


def nll_increase(probs_before: Sequence[float], probs_after: Sequence[float]) -> np.ndarray:
    """Per answer token, how much its NLL rose: log p_before - log p_after (the realised forgetting)."""
    before = np.clip(np.asarray(probs_before, dtype=float), 1e-30, 1.0)
    after = np.clip(np.asarray(probs_after, dtype=float), 1e-30, 1.0)
    return np.log(before) - np.log(after)


def forgetting(
    probs_before: Mapping[str, Sequence[float]], probs_after: Mapping[str, Sequence[float]], samples: Sequence
) -> dict:
    """Which tokens the job actually forgot, judged against the spans: `auroc`/`auprc`/`precision_at_k` of each
    token's NLL increase, and `span_share` = sum over span tokens of max(increase, 0) / the same over all tokens.
    Defined for every method, including those whose scores are uniform."""
    deltas = {sid: nll_increase(probs_before[sid], probs_after[sid]) for sid in probs_after if sid in probs_before}
    scored = _scored(deltas, samples)
    if not scored:
        return {"auroc": None, "auprc": None, "precision_at_k": None, "span_share": None, "per_sample": {}}
    delta = np.concatenate([d for _, d, _ in scored])
    labels = np.concatenate([y for _, _, y in scored])
    gain = np.maximum(delta, 0.0)
    return {
        **_separation(delta, labels),
        "span_share": float(gain[labels].sum() / gain.sum()) if gain.sum() > 0 else None,
        "mean_increase_span": float(delta[labels].mean()) if labels.any() else None,
        "mean_increase_other": float(delta[~labels].mean()) if (~labels).any() else None,
        "per_sample": {sid: {**_separation(d, y), "mean_increase": float(d.mean())} for sid, d, y in scored},
    }


def trajectory(steps: Sequence, probs_before: Mapping[str, Sequence[float]] | None, samples: Sequence) -> dict:
    """Alignment against step: for each step record, over the samples in that step's batch, the AUROC of the
    recorded scores and of the NLL increase so far, and the mean score inside and outside the spans."""
    out: dict[str, list] = {
        k: [] for k in ("step", "score_auroc", "forgetting_auroc", "score_in_span", "score_out_span")
    }
    for rec in steps:
        scored = _scored(rec.scores, samples)
        if not scored:
            continue
        scores = np.concatenate([s for _, s, _ in scored])
        labels = np.concatenate([y for _, _, y in scored])
        forgot = None
        if probs_before is not None:
            deltas = {sid: nll_increase(probs_before[sid], p) for sid, p in rec.probs.items() if sid in probs_before}
            forgot = alignment(deltas, samples)["auroc"]
        out["step"].append(rec.step)
        out["score_auroc"].append(_separation(scores, labels)["auroc"])
        out["forgetting_auroc"].append(forgot)
        out["score_in_span"].append(float(scores[labels].mean()) if labels.any() else None)
        out["score_out_span"].append(float(scores[~labels].mean()) if (~labels).any() else None)
    return out


def by_span_label(values: Mapping[str, Sequence[float]], samples: Sequence) -> dict[str, dict[str, float]]:
    """Mean value and token count per span label (name, birthplace, ...; "outside" for non-span tokens)."""
    pooled: dict[str, list[float]] = {}
    for s in samples:
        if s.record_id not in values:
            continue
        for label, v in zip(s.span_labels, values[s.record_id]):
            pooled.setdefault(label or "outside", []).append(v)
    return {label: {"mean": float(np.mean(v)), "tokens": len(v)} for label, v in sorted(pooled.items())}


def rank_percentile(values: Sequence[float]) -> np.ndarray:
    """Each value's rank percentile within `values` (0 = lowest, 1 = highest), ties sharing their average
    rank, so equal scores never look ranked."""
    values = np.asarray(values, dtype=float)  # (tokens,)
    return (rankdata(values) - 1) / max(len(values) - 1, 1)


def disagreements(weights: Sequence[float], sample: EncodedSample, k: int = 5) -> list[dict]:
    """The k tokens of one sample (its weight list) where weights and ground truth disagree most: high weight
    outside the spans or low weight inside. `disagreement` is the weight's rank percentile (ties averaged) for
    tokens outside the spans and one minus it inside, so it does not depend on the weights' scale."""
    scores = _checked(weights, sample)
    if not sample.has_ground_truth:
        return []
    percentile = rank_percentile(scores)
    mask = np.asarray(sample.span_mask, dtype=bool)
    disagreement = np.where(mask, 1 - percentile, percentile)
    top = np.argsort(-disagreement, kind="stable")[:k]
    return [
        {
            "index": int(i),
            "token": sample.answer_tokens[i],
            "weight": float(scores[i]),
            "in_span": bool(mask[i]),
            "disagreement": float(disagreement[i]),
        }
        for i in top
    ]


# --------------------------------------------------------------------------------------------- resources


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory in MiB: CUDA max allocated on a CUDA device, else this process's peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
