"""The progress clock of a job (the app's progress bar): how far through its phases it is and the time left,
each phase timed from the job's own `phase_seconds`."""

from __future__ import annotations

from dataclasses import dataclass

from atwu_core.records import Status


@dataclass
class ProgressBar:
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


def progress(status: Status, mean_step_s: float | None) -> ProgressBar:
    """The phase-aware progress of a job: what it is doing, how far, and (while it runs) the time left through
    every phase still to come, each timed from the job's own `phase_seconds` (a finished job gets no ETA)."""
    done, total = status.steps_done, status.steps_total
    if status.finished:
        fraction = 1.0 if status.state == "completed" else min(done / total, 1.0) if total else 0.0
        return ProgressBar(fraction, f"{status.state} · step {done}/{total}", None)
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
    return ProgressBar(min(fraction, 1.0), f"running · {texts.get(phase, phase)}{rate}{eta}", left)


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
