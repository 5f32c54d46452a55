"""Derived views of run folders for the explorer (the app and its HTML report): plain numbers from run
snapshots and `list_runs` rows, no model. The metrics themselves come from `atwu_core.metrics`; this module
arranges them per sample, per span label, per run, and holds the few edits the app makes to a run folder
(rename, tag, delete).
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atwu_core.config import METADATA_KEYS, make_config
from atwu_core.files import write_json_atomic
from atwu_core.headline import NOT_RECORDED
from atwu_core.metrics import alignment, by_span_label, forgetting, nll_increase, rank_percentile
from atwu_core.records import SampleRecord, Status
from atwu_core.runs import RunReader, RunSnapshot

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
    return steps, [_finite_list(-nll_increase(before, _floats(p))) for p in probs]


def latest_logprob_change(snap: RunSnapshot) -> dict[str, list[float | None]]:
    """Each sample's latest log p − log p_before (the final pass once the job got there)."""
    if snap.before is None:
        return {}
    latest = snap.latest("probs")
    return {
        sid: _finite_list(-nll_increase(snap.before.probs[sid], _floats(p)))
        for sid, p in latest.items()
        if sid in snap.before.probs
    }


def _floats(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _finite_list(values: Iterable[float]) -> list[float | None]:
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
    values = np.asarray(_floats(scores))  # (tokens,)
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
    score_auroc = alignment(scores, snap.samples)["per_sample"]
    forgot = forgetting(snap.before.probs, snap.latest("probs"), snap.samples)["per_sample"] if snap.before else {}
    out = []
    for s in snap.samples:
        if s.record_id not in scores:
            continue
        mask = np.asarray(s.span_mask, dtype=bool)
        values = np.asarray(_floats(scores[s.record_id]))
        delta = np.asarray(_floats(change[s.record_id])) if s.record_id in change else None
        out.append(
            {
                "sample": s.record_id,
                "question": s.question,
                "span labels": ", ".join(sorted({lab for lab in s.span_labels if lab})),
                "tokens": len(s.tokens),
                "span tokens": int(mask.sum()),
                "score AUROC": (score_auroc.get(s.record_id) or {}).get("auroc"),
                "forgetting AUROC": (forgot.get(s.record_id) or {}).get("auroc"),
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
    change = by_span_label({sid: _floats(v) for sid, v in latest_logprob_change(snap).items()}, snap.samples)
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


def _nan_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


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
            change = _finite_list(-nll_increase(before[sid], _floats(probs))) if sid in before else [None] * len(scores)
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


# ------------------------------------------------------------------------------------------ across runs


def default_selection(runs: Sequence[dict]) -> list[str]:
    """The latest completed run of each method (`runs` newest first, as `list_runs` gives them)."""
    chosen: dict[str, str] = {}
    for run in runs:
        if run.get("state") == "completed" and run.get("method") not in chosen:
            chosen[run.get("method")] = run["run_dir"]
    return list(chosen.values())


def flat_settings(config: dict) -> dict[str, object]:
    """A config.json as flat settings (`params.beta`, …), without what does not decide the job."""
    out = {k: v for k, v in config.items() if k not in (*METADATA_KEYS, "params")}
    out.update({f"params.{k}": v for k, v in (config.get("params") or {}).items()})
    return out


def config_diff(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """The settings on which the named configs differ: {setting: {name: value}} (absent = "–"). A method
    parameter counts only among the runs that have it: one method's own parameters are not a difference."""
    flat = {name: flat_settings(c) for name, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    out = {}
    for k in keys:
        having = [f[k] for f in flat.values() if k in f]
        compared = having if k.startswith("params.") else [f.get(k, "–") for f in flat.values()]
        if len({repr(v) for v in compared}) > 1:
            out[k] = {name: f.get(k, "–") for name, f in flat.items()}
    return out


_FLAGS = {
    "model": "--model",
    "data": "--data",
    "method": "--method",
    "preset": "--preset",
    "steps": "--steps",
    "seed": "--seed",
    "retain_data": "--retain-data",
    "retain_model": "--retain-model",
}


def cli_command(config: dict) -> str:
    """The `atwu unlearn` command that reruns a run: its flags, then `--set` for every setting that differs from
    what its method and preset give (so the command stays short and exact)."""
    base = make_config(config.get("method", "atwu"), config.get("preset", "demo")).to_dict()
    parts = ["atwu", "unlearn"]
    for key, flag in _FLAGS.items():
        if config.get(key) is not None:
            parts += [flag, str(config[key])]
    if config.get("full"):
        parts.append("--full")
    settings, defaults = flat_settings(config), flat_settings(base)
    for key, value in settings.items():
        if key in _FLAGS or key == "full" or value == defaults.get(key, object()):
            continue
        name = key.removeprefix("params.")
        text = ",".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)
        parts += ["--set", f"{name}={text}"]
    return shlex.join(parts)


# ------------------------------------------------------------------------------------------ progress


@dataclass
class Progress:
    """What a progress bar shows: `fraction` of the whole job, a `text` line, and the ETA (None: unknown / over)."""

    fraction: float
    text: str
    eta_s: float | None


# Share of the bar per phase (evaluation takes about as long as a short training run).
_SEGMENTS = {
    "loading": (0.0, 0.03),
    "reference": (0.03, 0.08),
    "before": (0.08, 0.2),
    "training": (0.2, 0.8),
    "final": (0.8, 0.85),
    "after": (0.85, 1.0),
    "done": (1.0, 1.0),
}
_TIMED = ("reference", "before", "training", "final", "after")  # the phases an ETA adds up
# A phase not yet run, timed as one already seen that does the same work: the final pass is the reference pass's
# forward over the forget set under the trained model; the evaluation after scores the samples the one before did.
_LIKE = {"final": "reference", "after": "before"}
_UNKNOWN = {"before": "evaluation", "training": "training", "final": "final pass", "after": "evaluation"}


def progress(status: Status, mean_step_s: float | None) -> Progress:
    """The phase-aware progress of a job: what it is doing, how far, and (while it runs) the time left through
    every phase still to come, each timed from the job's own `phase_seconds` (a finished job gets no ETA)."""
    done, total = status.steps_done, status.steps_total
    if status.finished:
        fraction = 1.0 if status.state == "completed" else min(done / total, 1.0) if total else 0.0
        return Progress(fraction, f"{status.state} · step {done}/{total}", None)
    phase, n, of = status.phase, status.phase_done, status.phase_total
    texts = {
        "loading": "loading the model and data",
        "reference": f"reference pass over the forget set {n}/{of}",
        "before": f"evaluating before unlearning {n}/{of}",
        "training": f"step {done}/{total}",
        "final": f"final pass over the forget set {n}/{of}",
        "after": f"evaluating after unlearning {n}/{of}",
        "done": "writing the results",
    }
    lo, hi = _SEGMENTS.get(phase, (0.0, 0.0))
    count, whole = (done, total) if phase == "training" else (n, of)
    fraction = lo + (hi - lo) * (count / whole if whole else 0.0)
    left, unknown = seconds_left(status, mean_step_s)
    rate = f" · {1 / mean_step_s:.2f} steps/s" if phase == "training" and mean_step_s else ""
    eta = "" if left is None else f" · ETA {_duration(left)}" + "".join(f" + {u}" for u in unknown)
    return Progress(min(fraction, 1.0), f"running · {texts.get(phase, phase)}{rate}{eta}", left)


def seconds_left(status: Status, step_s: float | None) -> tuple[float | None, list[str]]:
    """Seconds left in this phase and the ones after it (None until this phase has a rate), and what that leaves
    out: the later phases that no phase seen so far times (training, before its first step)."""
    if status.phase not in _TIMED:
        return None, []
    seconds = status.phase_seconds
    if status.phase == "training":
        rate = step_s or (seconds.get("training", 0.0) / status.steps_done if status.steps_done else None)
        todo = status.steps_total - status.steps_done
    else:
        rate = seconds.get(status.phase, 0.0) / status.phase_done if status.phase_done else None
        todo = status.phase_total - status.phase_done
    if rate is None:
        return None, []
    projected = {
        **seconds,
        status.phase: rate * (status.steps_total if status.phase == "training" else status.phase_total),
    }
    left, unknown = rate * todo, []
    for later in _TIMED[_TIMED.index(status.phase) + 1 :]:
        like = projected.get(_LIKE.get(later, ""))
        if like is not None:
            left += like
        elif _UNKNOWN[later] not in unknown:
            unknown.append(_UNKNOWN[later])
    return left, unknown


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------------ editing runs


def _edit_config(run_dir: str | Path, **changes: object) -> dict:
    path = RunReader(run_dir).dir / "config.json"
    config = {**RunReader(run_dir).config, **changes}
    write_json_atomic(path, config)
    return config


def rename_run(run_dir: str | Path, name: str) -> dict:
    """Give a run a display name (kept in its config.json; the folder keeps its name)."""
    name = name.strip()
    if not name:
        raise ValueError("a run name cannot be empty.")
    return _edit_config(run_dir, name=name)


def tag_run(run_dir: str | Path, tags: Iterable[str]) -> dict:
    """Set a run's tags (kept in its config.json), trimmed, without empties or repeats, in the given order."""
    return _edit_config(run_dir, tags=list(dict.fromkeys(t.strip() for t in tags if t.strip())))


def delete_run(run_dir: str | Path) -> None:
    """Delete a run folder; refuses a folder that is not a run and a run whose job is still running."""
    reader = RunReader(run_dir)  # raises on a folder without config.json: never delete anything else
    if reader.status.state == "running":
        raise ValueError(f"{reader.dir.name} is still running; cancel it before deleting it.")
    shutil.rmtree(reader.dir)
