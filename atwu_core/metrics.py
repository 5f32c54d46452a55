"""What a run is judged by: answer quality on forget/retain sets, and how well token weights match the spans.

The blocks returned here are those of a run's `metrics.json` (`atwu_core.metrics_record`), which the app, the
CLI and the benchmark scripts read by attribute.

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
from scipy.stats import hmean, ks_2samp, rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from atwu_core import losses
from atwu_core.data import IGNORE_INDEX, EncodedSample, Record, encode_records
from atwu_core.generation import collate, evaluating, greedy_answers, model_device, pad_token_id
from atwu_core.metrics_record import (
    Alignment,
    Forgetting,
    ForgettingSample,
    Magnitude,
    Quality,
    Separation,
    Trajectory,
    UtilityPart,
)

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
    """open-unlearning's ES (src/evals/metrics/memorization.py): 1 - k/|y|, k the first position from which every
    teacher-forced argmax is right; the caller leaves EOS out, and k stops at |y| - 1, so ES is at least 1/|y|."""
    n = len(correct)
    if n == 0:
        return 0.0  # open-unlearning's value for an answer without scored tokens
    tail = next((j for j, ok in enumerate(reversed(correct)) if not ok), n)  # length of the all-correct tail
    return 1.0 - min(n - tail, n - 1) / n


def exact_memorization(correct: Sequence[bool]) -> float | None:
    """open-unlearning's `exact_memorization` (memorization.py): the share of answer tokens (EOS left out by the
    caller) that are the teacher-forced argmax."""
    return float(np.mean(correct)) if len(correct) else None


def answer_stats(
    model: torch.nn.Module, samples: Sequence[EncodedSample], pad_id: int, batch_size: int = 16
) -> list[dict]:
    """Teacher-forced scores per sample, in input order: `prob` (exp of minus the mean answer-token NLL, EOS
    included as in the references), `extraction_strength` and `exact_memorization` (EOS left out, as
    open-unlearning does), `token_logprobs` (log p of each answer token) and `token_correct` (each answer token is
    the argmax), plus its `id`. Batches hold samples of similar length: less padding to pay for."""
    stats: list[dict | None] = [None] * len(samples)
    order = sorted(range(len(samples)), key=lambda k: len(samples[k].input_ids))
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate([samples[k] for k in rows], pad_id)
            logits = _logits(model, batch)  # [B, L, V]
            nll = losses.token_nll(logits, batch["labels"].to(logits.device))[0].cpu()  # [B, L-1]
            labels = batch["labels"][:, 1:]  # [B, L-1]
            correct = logits[:, :-1].argmax(-1).cpu() == labels  # [B, L-1]
            for row, k in enumerate(rows):
                answer = labels[row] != IGNORE_INDEX
                row_nll, row_correct = nll[row][answer], correct[row][answer].tolist()
                scored = row_correct if samples[k].content_mask[-1] else row_correct[:-1]  # EOS left out
                stats[k] = {
                    "id": samples[k].record_id,
                    "prob": float(torch.exp(-row_nll.mean())),
                    "extraction_strength": extraction_strength(scored),
                    "exact_memorization": exact_memorization(scored),
                    "token_logprobs": (-row_nll).tolist(),
                    "token_correct": row_correct,
                }
    return stats


# --------------------------------------------------------------------------------------------- answer quality

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # TOFU's setting
MAX_NEW_TOKENS = 200  # TOFU's and open-unlearning's generation limit


def _normalise(text: str) -> str:
    return " ".join(text.split())


def quality(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    samples: Sequence[EncodedSample],
    **options,
) -> Quality:
    """`quality_and_answers` without the per-sample details."""
    return quality_and_answers(model, tokenizer, records, samples, **options)[0]


def quality_and_answers(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    samples: Sequence[EncodedSample],
    *,
    max_samples: int | None = None,
    batch_size: int = 16,
    chat_template: bool = False,
    truth_ratio_form: str = "forget",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> tuple[Quality, list[dict], list[str]]:
    """(summary, `answer_stats` per sample, greedy answers) over the first `max_samples` records.

    The summary: mean `prob`, `rouge_l` (recall of the greedy answer against the answer), `exact`
    (whitespace-normalised greedy exact match), `extraction_strength` and `exact_memorization`; over the records
    with paraphrased and perturbed answers, the per-record `truth_ratios` (R, for `forget_quality`) and
    `truth_ratio` in the reference's reported form for the split (`truth_ratio_form`: "forget" or "retain").
    `records[i]` must be the record `samples[i]` was encoded from; `chat_template` must match that encoding.
    """
    if len(records) != len(samples) or any(r.id != s.record_id for r, s in zip(records, samples)):
        raise ValueError("quality: records and samples must be the same records in the same order.")
    records, samples = list(records)[:max_samples], list(samples)[:max_samples]
    if not samples:
        raise ValueError("quality: no samples to evaluate.")
    pad = pad_token_id(tokenizer)
    stats = answer_stats(model, samples, pad, batch_size)
    generated = greedy_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    memorized = [s["exact_memorization"] for s in stats if s["exact_memorization"] is not None]
    ratios = truth_ratios(model, tokenizer, records, batch_size=batch_size, chat_template=chat_template)
    result = Quality(
        n=len(samples),
        prob=float(np.mean([s["prob"] for s in stats])),
        rouge_l=float(np.mean([_ROUGE.score(r.answer, g)["rougeL"].recall for r, g in zip(records, generated)])),
        exact=float(np.mean([_normalise(g) == _normalise(r.answer) for r, g in zip(records, generated)])),
        extraction_strength=float(np.mean([s["extraction_strength"] for s in stats])),
        exact_memorization=float(np.mean(memorized)) if memorized else None,
        **(truth_ratio_fields(ratios, truth_ratio_form) if ratios else {}),
    )
    return result, stats, generated


def truth_ratio(base_loss: float, perturbed_losses: Sequence[float]) -> float:
    """TOFU's truth ratio of one record (evaluate_util.py, aggregate_eval_stat.py; open-unlearning's truth_ratio):
    the perturbed answers' mean token losses averaged, then R = exp(base loss - that average), i.e. the geometric
    mean over perturbed answers of P(perturbed)^(1/len) / P(paraphrased)^(1/len). R < 1: the true answer is
    preferred."""
    return float(np.exp(base_loss - np.mean(perturbed_losses)))


def truth_ratio_forget_form(ratios: Sequence[float]) -> float:
    """TOFU's reported truth ratio on a forget split (aggregate_eval_stat.py; open-unlearning's
    `closer_to_1_better`): mean of min(R, 1/R); 1 = the model no longer tells true from perturbed."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(r, 1 / r)))


def truth_ratio_retain_form(ratios: Sequence[float]) -> float:
    """TOFU's reported truth ratio on retain-like splits (aggregate_eval_stat.py; open-unlearning's `true_better`):
    mean of max(0, 1 - R); higher = the true answer still preferred."""
    return float(np.mean(np.maximum(0.0, 1 - np.asarray(ratios, dtype=float))))


TRUTH_RATIO_FORMS = {"forget": truth_ratio_forget_form, "retain": truth_ratio_retain_form}


def truth_ratio_fields(ratios: list[float], form: str) -> dict:
    """A `Quality`'s truth-ratio fields: the reported number in `form`, the form, the per-record ratios."""
    return {"truth_ratio": TRUTH_RATIO_FORMS[form](ratios), "truth_ratio_form": form, "truth_ratios": ratios}


def _option_losses(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    *,
    base: str,
    batch_size: int,
    chat_template: bool,
) -> list[tuple[float, list[float]]]:
    """(mean token loss of the base answer, those of the perturbed answers) per record that has both, all on the
    record's prompt. `base`: "paraphrased" (TOFU's forget and retain) or "answer" (real authors, world facts)."""
    usable = [r for r in records if r.perturbed_answer and (base == "answer" or r.paraphrased_answer)]
    if not usable:
        return []
    bases = [Record(r.id, r.question, r.answer if base == "answer" else r.paraphrased_answer) for r in usable]
    perturbed = [
        Record(f"{r.id}/perturbed{j}", r.question, p) for r in usable for j, p in enumerate(r.perturbed_answer)
    ]
    encoded = encode_records(bases + perturbed, tokenizer, chat_template=chat_template)
    # in log space: on a collapsed model the probabilities underflow to 0 and their ratio would be 0/0
    mean_losses = [
        -float(np.mean(s["token_logprobs"])) for s in answer_stats(model, encoded, pad_token_id(tokenizer), batch_size)
    ]
    base_losses, pert_losses = mean_losses[: len(usable)], iter(mean_losses[len(usable) :])
    return [(b, [next(pert_losses) for _ in r.perturbed_answer]) for r, b in zip(usable, base_losses)]


def truth_ratios(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    *,
    batch_size: int = 16,
    chat_template: bool = False,
    base: str = "paraphrased",
) -> list[float]:
    """`truth_ratio` per record with a base (paraphrased, or the answer) and at least one perturbed answer."""
    options = _option_losses(model, tokenizer, records, base=base, batch_size=batch_size, chat_template=chat_template)
    return [truth_ratio(b, p) for b, p in options]


def option_probability(answer_loss: float, perturbed_losses: Sequence[float]) -> float:
    """TOFU's probability on real authors and world facts (aggregate_eval_stat.py): P(answer) / (P(answer) +
    sum of P(perturbed)), each P = exp(-mean token loss)."""
    true = np.exp(-answer_loss)
    return float(true / (true + np.sum(np.exp(-np.asarray(perturbed_losses, dtype=float)))))


def utility_set_quality(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    *,
    batch_size: int = 16,
    chat_template: bool = False,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> UtilityPart:
    """TOFU's three values on a real-authors or world-facts set: `prob` (`option_probability`), `rouge_l` and
    `truth_ratio` (retain form, the answer as the base)."""
    records = [r for r in records if r.perturbed_answer]
    if not records:
        raise ValueError("a model-utility set needs records with perturbed answers.")
    options = _option_losses(
        model, tokenizer, records, base="answer", batch_size=batch_size, chat_template=chat_template
    )
    samples = encode_records(list(records), tokenizer, chat_template=chat_template)
    generated = greedy_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return UtilityPart(
        n=len(records),
        prob=float(np.mean([option_probability(b, p) for b, p in options])),
        rouge_l=float(np.mean([_ROUGE.score(r.answer, g)["rougeL"].recall for r, g in zip(records, generated)])),
        truth_ratio=truth_ratio_retain_form([truth_ratio(b, p) for b, p in options]),
    )


def model_utility(values: Mapping[str, float]) -> float:
    """TOFU's model utility (aggregate_eval_stat.py; open-unlearning's `hm_aggregate`): the harmonic mean of
    probability, ROUGE-L recall and truth ratio (retain form) on retain, real authors and world facts."""
    if len(values) != 9:
        raise ValueError(f"model utility needs its 9 values, got {len(values)}: {sorted(values)}.")
    return float(hmean(list(values.values())))


def forget_quality(truth_ratios: Sequence[float], reference_truth_ratios: Sequence[float]) -> float:
    """TOFU's forget quality (aggregate_eval_stat.py; open-unlearning's `ks_test`): the KS-test p-value of the
    per-record ratios P(paraphrased)/P(perturbed) = 1/R against a retain-only reference model's."""
    if not truth_ratios or not reference_truth_ratios:
        raise ValueError("forget_quality needs truth ratios from both models.")
    inverse = lambda r: 1 / np.asarray(r, dtype=float)  # noqa: E731
    return float(ks_2samp(inverse(truth_ratios), inverse(reference_truth_ratios)).pvalue)


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
    weights: Mapping[str, Sequence[float]], samples: Sequence, special_tokens: bool = False
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, scores, labels) for each sample with ground truth and weights; samples without weights are left out.
    EOS and other special tokens (no answer text) are left out of the pool unless `special_tokens`: they are never
    in a span, so they would count as always-negative tokens."""
    out = []
    for s in samples:
        if s.has_ground_truth and s.record_id in weights:
            scores, labels = _checked(weights[s.record_id], s), np.asarray(s.span_mask, dtype=bool)
            keep = np.ones(len(labels), dtype=bool) if special_tokens else np.asarray(s.content_mask, dtype=bool)
            out.append((s.record_id, scores[keep], labels[keep]))
    return out


def precision_at_k(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of span tokens among the k highest-weight tokens, k = number of span tokens; the tie at the
    cut-off counts at its average span rate (the expectation over random tie order)."""
    k = int(labels.sum())
    threshold = np.sort(scores)[::-1][k - 1]
    above, tied = scores > threshold, scores == threshold
    hits = labels[above].sum() + (k - above.sum()) * labels[tied].mean()
    return float(hits / k)


def _separation(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """`Separation`'s fields (the keyword arguments of it and of the blocks that extend it)."""
    if labels.all() or not labels.any():
        return {"auroc": None, "auprc": None, "precision_at_k": None}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "precision_at_k": precision_at_k(scores, labels),
    }


def alignment(
    weights: Mapping[str, Sequence[float]], samples: Sequence[EncodedSample], *, special_tokens: bool = False
) -> Alignment:
    """How well token weights single out the ground-truth span tokens: pooled `auroc`, `auprc`, `precision_at_k`
    (None when the pool has one class), `n_tokens`, `n_positive`, `n_samples`, the same three per sample, and the
    mean weight inside and outside the spans (`score_in_span`, `score_out_span`). The pool leaves out EOS and
    special tokens unless `special_tokens`."""
    scored = _scored(weights, samples, special_tokens)
    scores = np.concatenate([s for _, s, _ in scored]) if scored else np.zeros(0)
    labels = np.concatenate([y for _, _, y in scored]) if scored else np.zeros(0, dtype=bool)
    return Alignment(
        **_separation(scores, labels),
        n_tokens=int(labels.size),
        n_positive=int(labels.sum()),
        n_samples=len(scored),
        per_sample={sid: Separation(**_separation(s, y)) for sid, s, y in scored},
        **_score_levels(scores, labels),
    )


def _score_levels(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The mean score inside and outside the spans (None for an empty side): the magnitude beside the ranking."""
    return {
        "score_in_span": float(scores[labels].mean()) if labels.any() else None,
        "score_out_span": float(scores[~labels].mean()) if (~labels).any() else None,
    }


def alignment_curves(
    weights: Mapping[str, Sequence[float]], samples: Sequence[EncodedSample], *, special_tokens: bool = False
) -> dict[str, list[float]]:
    """Pooled ROC (`fpr`, `tpr`) and precision-recall (`precision`, `recall`) points for charts (the pool of
    `alignment`); empty lists when the pooled tokens have only one class."""
    scored = _scored(weights, samples, special_tokens)
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


DROP_NATS = 1.0  # a span token counts as strongly forgotten when its log-probability fell by more than this
MEANINGFUL_SHARE = 0.1  # forgetting is meaningful when at least this share of span tokens fell by more than that


def _magnitude(delta: np.ndarray, labels: np.ndarray, drop_nats: float) -> dict:
    """Mean NLL increase on span and other tokens, and the share of span tokens whose log p fell by > drop_nats."""
    span, other = delta[labels], delta[~labels]
    return {
        "mean_increase_span": float(span.mean()) if span.size else None,
        "mean_increase_other": float(other.mean()) if other.size else None,
        "strong_drop_share": float((span > drop_nats).mean()) if span.size else None,
    }


def forgetting(
    probs_before: Mapping[str, Sequence[float]],
    probs_after: Mapping[str, Sequence[float]],
    samples: Sequence,
    *,
    special_tokens: bool = False,
    drop_nats: float = DROP_NATS,
) -> Forgetting:
    """Which tokens the job actually forgot, judged against the spans: `auroc`/`auprc`/`precision_at_k` of each
    token's NLL increase and `span_share` = sum over span tokens of max(increase, 0) / the same over all tokens
    (ranking), beside the magnitude: `mean_increase_span`/`_other` (nats) and `strong_drop_share` (span tokens
    whose log p fell by more than `drop_nats`). `meaningful`: strong_drop_share >= MEANINGFUL_SHARE; when false
    the span tokens barely moved and the ranking numbers rank noise. Defined for every method."""
    deltas = {sid: nll_increase(probs_before[sid], probs_after[sid]) for sid in probs_after if sid in probs_before}
    scored = _scored(deltas, samples, special_tokens)
    rule = {"drop_nats": drop_nats, "meaningful_rule": f"strong_drop_share >= {MEANINGFUL_SHARE}"}
    delta = np.concatenate([d for _, d, _ in scored]) if scored else np.zeros(0)
    labels = np.concatenate([y for _, _, y in scored]) if scored else np.zeros(0, dtype=bool)
    gain = np.maximum(delta, 0.0)
    magnitude = _magnitude(delta, labels, drop_nats)
    share = magnitude["strong_drop_share"]
    return Forgetting(
        **_separation(delta, labels),
        span_share=float(gain[labels].sum() / gain.sum()) if gain.sum() > 0 else None,
        magnitude=Magnitude(**magnitude, meaningful=share is not None and share >= MEANINGFUL_SHARE),
        **rule,
        per_sample={sid: ForgettingSample(**_separation(d, y), mean_increase=float(d.mean())) for sid, d, y in scored},
    )


def trajectory(
    steps: Sequence,
    probs_before: Mapping[str, Sequence[float]] | None,
    samples: Sequence,
    *,
    special_tokens: bool = False,
    drop_nats: float = DROP_NATS,
) -> Trajectory:
    """Alignment against step: for each step record, over the samples in that step's batch, the AUROC of the
    recorded scores and of the NLL increase so far, the magnitude of that increase (`forgetting`'s), and the mean
    score inside and outside the spans."""
    keys = ("step", "score_auroc", "forgetting_auroc", "score_in_span", "score_out_span")
    out: dict[str, list] = {k: [] for k in keys + ("mean_increase_span", "mean_increase_other", "strong_drop_share")}
    for rec in steps:
        scored = _scored(rec.scores, samples, special_tokens)
        if not scored:
            continue
        scores = np.concatenate([s for _, s, _ in scored])
        labels = np.concatenate([y for _, _, y in scored])
        forgot = {"mean_increase_span": None, "mean_increase_other": None, "strong_drop_share": None}
        forgot_auroc = None
        if probs_before is not None:
            deltas = {sid: nll_increase(probs_before[sid], p) for sid, p in rec.probs.items() if sid in probs_before}
            pooled = _scored(deltas, samples, special_tokens)
            if pooled:
                delta = np.concatenate([d for _, d, _ in pooled])
                delta_labels = np.concatenate([y for _, _, y in pooled])
                forgot_auroc = _separation(delta, delta_labels)["auroc"]
                forgot = _magnitude(delta, delta_labels, drop_nats)
        out["step"].append(rec.step)
        out["score_auroc"].append(_separation(scores, labels)["auroc"])
        out["forgetting_auroc"].append(forgot_auroc)
        for key, value in (_score_levels(scores, labels) | forgot).items():
            out[key].append(value)
    return Trajectory(**out)


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
