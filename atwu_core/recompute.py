"""`atwu eval --recompute RUN`: re-derive a run's metrics.json from its folder and its model, so a run judged by
older forms (or before a block existed) gets today's numbers without being retrained.

What training recorded (the loaded model's token probabilities before, every step record, the final pass) is read
from the folder; what needs the model (quality before and after, facts, forget quality, model utility) is
recomputed with the run's saved adapter (or --full model). The old metrics' `timing` is kept.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from atwu_core import evaluation, models
from atwu_core.data import encode_records, load_data
from atwu_core.files import write_json_atomic
from atwu_core.metrics_record import Metrics
from atwu_core.runs import RunReader


def recompute(run_dir: str | Path, loaded: models.LoadedModel | None = None) -> Metrics:
    """Recompute and write `run_dir`'s metrics.json; returns the new metrics. Runs without a final pass (stopped
    before it) have nothing to judge and are refused."""
    run = RunReader(run_dir)
    snap = run.snapshot()
    if snap.before is None or snap.final is None:
        raise ValueError(
            f"{run_dir}: no before or final record (state {snap.status.state}); only a run that reached its final "
            "pass can be re-evaluated."
        )
    config = run.job_config
    dataset = load_data(config.data, config.retain_data)
    ids = {s.record_id for s in snap.samples}  # the forget records the run trained on, as its samples.json says
    forget = [r for r in dataset.forget if r.id in ids]
    loaded = loaded or models.load_model(config.model, device=config.device, dtype=config.dtype)
    tok = loaded.tokenizer
    forget_samples = encode_records(forget, tok, config.max_length, config.chat_template)
    retain_samples = encode_records(dataset.retain, tok, config.max_length, config.chat_template)
    splits = evaluation.splits(config, (forget, forget_samples), (dataset.retain, retain_samples))
    quiet = lambda done, total: None  # noqa: E731
    before, _ = evaluation.quality(loaded.model, loaded, splits, config, quiet, memo_key="before")
    with models.adapter_enabled(loaded, run_dir) as model:
        after, answers = (
            evaluation.quality(model, loaded, splits, config, quiet) if snap.status.state == "completed" else (None, {})
        )
        metrics = evaluation.judge(
            before, after, snap.before.probs, snap.final.scores, snap.final.probs, snap.step_records,
            forget_samples, config, score_ema=snap.final.score_ema,
        )  # fmt: skip
        if after:
            extras = evaluation.after_extras(config, model, tok, after, answers, splits[0], forget, snap.before.probs)
            metrics = replace(metrics, **extras)
    metrics.timing = snap.metrics.timing if snap.metrics is not None else None
    metrics.recomputed = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(Path(run_dir) / "metrics.json", metrics.to_json())
    return metrics
