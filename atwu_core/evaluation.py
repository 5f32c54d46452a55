"""What a finished job is judged by: answer quality before and after, and how its scores and its realised
forgetting line up with the ground-truth spans (metrics.json)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch

from atwu_core import metrics, models
from atwu_core.config import JobConfig
from atwu_core.data import EncodedSample, Record
from atwu_core.records import StepRecord, TokenValues

Progress = Callable[[int, int], None]  # (samples done, samples in all)
CHUNK = 16  # samples per progress report: metrics.quality's own batch size, so reporting costs no speed
MEANS = ("prob", "rouge_l", "exact", "extraction_strength")  # metrics.quality's per-sample means


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
) -> dict[str, dict]:
    """`metrics.quality` per split under `model`. With `memo_key` the result is kept on the loaded model: its
    weights never change (jobs train an adapter or a copy), so every later job skips it."""
    total, done, out = sum(len(s.samples) for s in splits), 0, {}
    for split in splits:
        key = (
            (
                memo_key,
                split.name,
                json.dumps([asdict(r) for r in split.records], sort_keys=True),
                config.max_length,
                config.chat_template,
            )
            if memo_key
            else None
        )
        if key is None or key not in loaded.memo:
            result = split_quality(
                model, loaded.tokenizer, split, config.chat_template, lambda n, done=done: progress(done + n, total)
            )
            if key is not None:
                loaded.memo[key] = result
        out[split.name] = copy.deepcopy(loaded.memo[key]) if key is not None else result
        done += len(split.samples)
        progress(done, total)
    return out


def split_quality(
    model: torch.nn.Module,
    tokenizer,
    split: Split,
    chat_template: bool,
    progress: Callable[[int], None],
    chunk: int = CHUNK,
) -> dict:
    """`metrics.quality` of a split, computed `chunk` samples at a time with `progress(samples done)` after each (an
    evaluation of many samples is minutes on a CPU), merged into the whole split's result: the per-sample means
    weighted by sample count, the truth ratios concatenated and their mean taken."""
    parts = []
    for start in range(0, len(split.samples), chunk):
        end = start + chunk
        parts.append(
            metrics.quality(
                model, tokenizer, split.records[start:end], split.samples[start:end], chat_template=chat_template
            )
        )
        progress(min(end, len(split.samples)))
    n = sum(part["n"] for part in parts)
    out = {"n": n} | {key: sum(part[key] * part["n"] for part in parts) / n for key in MEANS}
    ratios = [r for part in parts for r in part.get("truth_ratios", [])]
    if ratios:
        out["truth_ratio"] = float(np.mean(ratios))
        out["truth_ratios"] = ratios
    return out


def judge(
    before: dict[str, dict],
    after: dict[str, dict] | None,
    probs_before: TokenValues,
    final_scores: TokenValues,
    final_probs: TokenValues,
    steps: Sequence[StepRecord],
    samples: Sequence[EncodedSample],
) -> dict:
    """metrics.json: alignment of the final scores, realised forgetting, their trajectories, and quality."""
    out: dict = {
        "alignment": metrics.alignment(final_scores, samples),
        "forgetting": metrics.forgetting(probs_before, final_probs, samples),
        "trajectory": metrics.trajectory(steps, probs_before, samples),
    }
    for name in after or {}:
        out[name] = {"before": before[name], "after": after[name]}
    return out


def forget_quality(config: JobConfig, truth_ratios: list[float], forget: list[Record]) -> float:
    """TOFU's forget quality: KS test of our truth ratios against a retain-only model's on the same forget set."""
    retain_model = models.load_model(config.retain_model, device=config.device, dtype=config.dtype)
    ratios = metrics.truth_ratios(
        retain_model.model,
        retain_model.tokenizer,
        forget[: config.eval_max_samples],
        chat_template=config.chat_template,
    )
    return metrics.forget_quality(truth_ratios, ratios)
