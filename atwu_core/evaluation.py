"""What a finished job is judged by: answer quality before and after, which facts remain, and how its scores and its
realised forgetting line up with the ground-truth spans (metrics.json)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace

import numpy as np
import torch

from atwu_core import distributed, facts, metrics, models
from atwu_core.cancel import CancelToken
from atwu_core.config import JobConfig
from atwu_core.data import EncodedSample, Record, encode_records, load_utility_sets
from atwu_core.generation import greedy_answers
from atwu_core.metrics_record import BeforeAfter, ForgetQuality, Metrics, ModelUtility, Quality, UtilityPart
from atwu_core.records import StepRecord, TokenValues

Progress = Callable[[int, int], None]  # (samples done, samples in all); may raise Cancelled to stop
CHUNK = 16  # samples per progress report: metrics.quality's own batch size, so reporting costs no speed
MEANS = ("prob", "rouge_l", "exact", "extraction_strength")  # metrics.quality's per-sample means
MERGED_APART = ("exact_memorization", "truth_ratio", "truth_ratio_form", "truth_ratios")  # merged below, by hand
Qualities = dict[str, Quality]  # split name -> its quality
Answers = dict[str, tuple[list[dict], list[str]]]  # split -> (metrics.answer_stats per sample, greedy answers)
TRUTH_RATIO_FORM = {"forget": "forget"}  # every other split is judged like TOFU's retain-like splits


class Cancelled(Exception):
    """Raised by a progress callback to stop an evaluation between chunks (the job was cancelled)."""


def cancellable(progress: Progress, cancel: CancelToken) -> Progress:
    """An evaluation's progress that stops it (Cancelled) once any process was cancelled."""

    def report(done: int, total: int) -> None:
        if distributed.any_rank(cancel.cancelled):
            raise Cancelled
        progress(done, total)

    return report


class Split:
    """A split's records and their encodings, with the evaluation cap applied."""

    def __init__(self, name: str, records: list[Record], samples: list[EncodedSample], cap: int | None):
        self.name, self.records, self.samples = name, records[:cap], samples[:cap]


def quality(
    model: torch.nn.Module,
    loaded: models.LoadedModel,
    splits: Sequence[Split],
    config: JobConfig,
    progress: Progress,
    memo_key: str | None = None,
) -> tuple[Qualities, Answers]:
    """`metrics.quality_and_answers` per split under `model`: the summaries, and the per-sample details of the
    splits computed now. With `memo_key` a summary is kept on the loaded model: its weights never change (jobs
    train an adapter or a copy), so every later job skips it (and gets no details for it)."""
    total, done, out, answers = sum(len(s.samples) for s in splits), 0, {}, {}
    for split in splits:
        key = (
            (
                memo_key,
                split.name,
                json.dumps([asdict(r) for r in split.records], sort_keys=True),
                config.max_length,
                config.chat_template,
                config.max_new_tokens,
            )
            if memo_key
            else None
        )
        if key is None or key not in loaded.memo:
            result, stats, generated = split_quality(
                model, loaded.tokenizer, split, config, lambda n, done=done: progress(done + n, total)
            )
            answers[split.name] = (stats, generated)
            if key is not None:
                loaded.memo[key] = result
        out[split.name] = copy.deepcopy(loaded.memo[key]) if key is not None else result
        done += len(split.samples)
        progress(done, total)
    return out, answers


def split_quality(
    model: torch.nn.Module,
    tokenizer,
    split: Split,
    config: JobConfig,
    progress: Callable[[int], None],
    chunk: int = CHUNK,
) -> tuple[Quality, list[dict], list[str]]:
    """`metrics.quality_and_answers` of a split, computed `chunk` samples at a time with `progress(samples done)`
    after each (an evaluation of many samples is minutes on a CPU), merged into the whole split's result: the
    per-sample means weighted by sample count, the truth ratios concatenated and reported in the split's form
    (`TRUTH_RATIO_FORM`), the per-sample stats and greedy answers concatenated."""
    form = TRUTH_RATIO_FORM.get(split.name, "retain")
    parts, stats, generated = [], [], []
    for start in range(0, len(split.samples), chunk):
        end = start + chunk
        part, part_stats, part_answers = metrics.quality_and_answers(
            model, tokenizer, split.records[start:end], split.samples[start:end], chat_template=config.chat_template,
            truth_ratio_form=form, max_new_tokens=config.max_new_tokens,
        )  # fmt: skip
        parts.append(part)
        stats += part_stats
        generated += part_answers
        progress(min(end, len(split.samples)))
    unknown = {f.name for f in fields(Quality)} - {"n", *MEANS, *MERGED_APART}
    if unknown:  # a new quality number must say how chunks combine, not be dropped
        raise ValueError(f"evaluation: no rule to merge {sorted(unknown)} over chunks; add it to MEANS or merge it.")
    n = sum(part.n for part in parts)
    memorized = [s["exact_memorization"] for s in stats if s["exact_memorization"] is not None]
    ratios = [r for part in parts for r in part.truth_ratios or []]
    out = Quality(
        n=n,
        **{key: sum(getattr(part, key) * part.n for part in parts) / n for key in MEANS},
        exact_memorization=float(np.mean(memorized)) if memorized else None,
        **(metrics.truth_ratio_fields(ratios, form) if ratios else {}),
    )
    return out, stats, generated


def judge(
    before: Qualities,
    after: Qualities | None,
    probs_before: TokenValues,
    final_scores: TokenValues,
    final_probs: TokenValues,
    steps: Sequence[StepRecord],
    samples: Sequence[EncodedSample],
    config: JobConfig,
    score_ema: TokenValues | None = None,
) -> Metrics:
    """metrics.json: alignment of the final scores (and of their average over the job, `ema_auroc`/`ema_auprc`,
    where `score_ema` was recorded), realised forgetting (ranking and magnitude), their trajectories, and quality;
    pools and the strong-drop threshold follow `config`."""
    pools = {"special_tokens": config.pool_special_tokens}
    alignment = metrics.alignment(final_scores, samples, **pools)
    if score_ema:
        averaged = metrics.alignment(score_ema, samples, **pools)
        alignment = replace(alignment, ema_auroc=averaged.auroc, ema_auprc=averaged.auprc)
    return Metrics(
        alignment=alignment,
        forgetting=metrics.forgetting(probs_before, final_probs, samples, drop_nats=config.drop_nats, **pools),
        trajectory=metrics.trajectory(steps, probs_before, samples, drop_nats=config.drop_nats, **pools),
        **{name: BeforeAfter(before=before[name], after=after[name]) for name in after or {}},
    )


def splits(
    config: JobConfig,
    forget: tuple[list[Record], list[EncodedSample]],
    retain: tuple[list[Record], list[EncodedSample]],
) -> list[Split]:
    """The forget and retain splits judged before and after (records with their encodings), capped at
    `eval_max_samples`; a split without samples is left out."""
    return [
        Split(name, records, samples, config.eval_max_samples)
        for name, (records, samples) in (("forget", forget), ("retain", retain))
        if samples
    ]


def after_extras(
    config: JobConfig,
    model: torch.nn.Module,
    tokenizer,
    after: Qualities,
    answers: Answers,
    forget_split: Split,
    forget: list[Record],
    probs_before: TokenValues,
) -> dict:
    """`Metrics`' fields for the final model: `facts` (over the judged forget split), and TOFU's `forget_quality`
    and `model_utility` where their inputs (a retain model, utility sets) are given."""
    stats, generated = answers[forget_split.name]
    asked = [r for r in forget_split.records if r.forget_spans and r.paraphrased_question]
    paraphrased = _answers_to(model, tokenizer, [Record(r.id, r.paraphrased_question, r.answer) for r in asked], config)
    out = {
        "facts": facts.facts(forget_split.records, forget_split.samples, generated, stats, probs_before, paraphrased)
    }
    if config.retain_model and after["forget"].truth_ratios:
        out["forget_quality"] = forget_quality(config, model, tokenizer, forget)
    if config.utility_data:
        out["model_utility"] = model_utility(config, model, tokenizer, after.get("retain"))
    return out


def _answers_to(model: torch.nn.Module, tokenizer, records: list[Record], config: JobConfig) -> dict[str, str]:
    """Greedy answers (id -> text) to the records' questions, prompted as the job's data was."""
    if not records:
        return {}
    samples = encode_records(records, tokenizer, config.max_length, config.chat_template)
    texts = greedy_answers(model, tokenizer, samples, max_new_tokens=config.max_new_tokens)
    return {r.id: t for r, t in zip(records, texts, strict=True)}


def forget_quality(config: JobConfig, model: torch.nn.Module, tokenizer, forget: list[Record]) -> ForgetQuality:
    """TOFU's forget quality: KS test of the unlearned model's truth ratios against a retain-only model's, on the
    whole forget split (TOFU's) or its first `forget_quality_max_samples` records; `n` says how many."""
    records = forget[: config.forget_quality_max_samples]
    ratios = metrics.truth_ratios(model, tokenizer, records, chat_template=config.chat_template)
    retain_model = models.load_model(config.retain_model, device=config.device, dtype=config.dtype)
    reference = metrics.truth_ratios(
        retain_model.model, retain_model.tokenizer, records, chat_template=config.chat_template
    )
    return ForgetQuality(value=metrics.forget_quality(ratios, reference), n=len(ratios))


def model_utility(config: JobConfig, model: torch.nn.Module, tokenizer, retain_after: Quality | None) -> ModelUtility:
    """TOFU's model utility from `config.utility_data`: the 9 values and their harmonic mean (`value`, None with a
    `why` when the retain set has no paraphrased and perturbed answers to give its truth ratio)."""
    sets = load_utility_sets(config.utility_data)
    options = {"chat_template": config.chat_template, "max_new_tokens": config.max_new_tokens}
    if "retain_perturbed" in sets:
        records = sets.pop("retain_perturbed")
        samples = encode_records(records, tokenizer, config.max_length, config.chat_template)
        retain_after = metrics.quality(model, tokenizer, records, samples, truth_ratio_form="retain", **options)
    parts = {name: metrics.utility_set_quality(model, tokenizer, records, **options) for name, records in sets.items()}
    if retain_after is None or retain_after.truth_ratio is None:
        why = "the retain set has no paraphrased and perturbed answers; give retain_perturbed.json beside the sets"
        return ModelUtility(value=None, why=why, parts=parts)
    keys = ("prob", "rouge_l", "truth_ratio")
    parts["retain"] = UtilityPart(n=retain_after.n, **{k: getattr(retain_after, k) for k in keys})
    values = {f"{name}.{key}": getattr(part, key) for name, part in parts.items() for key in keys}
    return ModelUtility(value=metrics.model_utility(values), parts=parts)
