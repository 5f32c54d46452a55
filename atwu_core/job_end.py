"""What a job's end adds to its run folder: the checks that refuse a destroyed model, the saved adapter (or
model), and metrics.json (the judged
scores and forgetting; with the quality after training, which the job evaluates so a cancel can stop it: facts,
forget quality, model utility; timing)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from atwu_core import evaluation, metrics
from atwu_core.config import JobConfig
from atwu_core.data import EncodedSample, Record
from atwu_core.files import replace_dir, set_file_modes
from atwu_core.generation import model_device
from atwu_core.job_error import JobError
from atwu_core.metrics_record import Metrics, Timing
from atwu_core.models import LoadedModel
from atwu_core.records import BeforeRecord, FinalRecord, StepRecord, TokenValues


def check_trained(model: torch.nn.Module, final: FinalRecord, vocab: int) -> None:
    """Fail rather than report a destroyed model as a result: non-finite weights, or a model that gives
    every token the same probability 1/V (what a blown-up update leaves)."""
    if any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
        raise JobError("the trained weights are not finite (the last updates diverged); lower the learning rate.")
    probs = [p for values in final.probs.values() for p in values]
    if probs and all(0.5 / vocab < p < 2.0 / vocab for p in probs):
        raise JobError(
            f"the model collapsed: every forget token has probability ~1/{vocab} after training "
            "(the updates diverged); lower the learning rate or gamma."
        )


def score_ema(steps: Sequence[StepRecord], final: FinalRecord, decay: float) -> TokenValues:
    """Each forget token's score averaged over the job: an average over the steps that scored its sample, then the
    final pass (at step S + 1), each new score weighted 1 - decay^(steps since the last one). Decaying per model
    step rather than per score keeps the window ~1 / (1 - decay) model steps on any forget set (a sample is scored
    only when its batch draws it); with a sample in every batch it is the plain EMA. The first score starts it;
    decay 0 gives the final scores."""
    ema: dict[str, np.ndarray] = {}
    last: dict[str, int] = {}
    for step, scores in [*((r.step, r.scores) for r in steps), (final.step + 1, final.scores)]:
        for sid, values in scores.items():
            now = np.asarray(values, dtype=float)  # [T_i]
            if sid in ema:
                ema[sid] += (1.0 - decay ** (step - last[sid])) * (now - ema[sid])
            else:
                ema[sid] = now
            last[sid] = step
    return {sid: ema[sid].tolist() for sid in final.scores}


def judged(
    config: JobConfig,
    loaded: LoadedModel,
    model: torch.nn.Module,
    splits: list[evaluation.Split],
    forget: tuple[list[Record], list[EncodedSample]],
    before: tuple[evaluation.Qualities, BeforeRecord],
    final: FinalRecord,
    records: list[StepRecord],
    evaluated: tuple[evaluation.Qualities, evaluation.Answers] | None,
) -> Metrics:
    """metrics.json without its timing: the final scores and forgetting judged against the spans; with `evaluated`
    (`evaluation.quality` after training, of a completed job) also quality after, facts, forget quality and model
    utility. `before` is (quality before, the before record)."""
    (before_quality, before_record), (forget_records, forget_samples) = before, forget
    after, answers = evaluated or (None, {})
    out = evaluation.judge(
        before_quality, after, before_record.probs, final.scores, final.probs, records, forget_samples, config,
        score_ema=final.score_ema,
    )  # fmt: skip
    if after:
        out = replace(
            out,
            **evaluation.after_extras(
                config, model, loaded.tokenizer, after, answers, splits[0], forget_records, before_record.probs
            ),
        )
    return out


def timing(
    phase_seconds: dict[str, float],
    train_seconds: float,
    step_seconds: list[float],
    records: list[StepRecord],
    model: torch.nn.Module,
) -> Timing:
    """metrics.json's `timing`: seconds per phase and in all, the training loop's step time and throughput, and
    the device's peak memory."""
    return Timing(
        total_seconds=round(sum(phase_seconds.values()), 3),
        training_seconds=round(train_seconds, 3),
        phase_seconds=phase_seconds,
        mean_step_seconds=round(sum(step_seconds) / max(1, len(step_seconds)), 5),
        tokens_per_second=round(sum(r.tokens for r in records) / max(1e-9, sum(step_seconds)), 1),
        peak_memory_mb=round(metrics.peak_memory_mb(model_device(model)), 1),
        steps=len(records),
    )


def save_model(model: torch.nn.Module, tokenizer, run_dir: Path, full: bool) -> None:
    """The adapter (peft format) or, with --full, the model and tokenizer; swapped into place whole."""
    target = run_dir / ("model" if full else "adapter")
    tmp = run_dir / f".{target.name}.tmp"
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if full:
            tokenizer.save_pretrained(str(tmp))
        set_file_modes(tmp)
        replace_dir(tmp, target)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise JobError(f"could not save the {target.name} to {target}: {err}") from err
