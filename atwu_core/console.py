"""The CLI's live view of a job: a line naming each phase as it starts, on stdout with the step lines and results
(a readable transcript), and a tqdm bar through the phase on stderr (so an error stays the only line there)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from atwu_core.records import Status

PHASE_LINES = {
    "reference": ("the loaded model's NLL on every forget token", "sample"),
    "before": ("evaluating the loaded model (answers, probabilities, truth ratios)", "sample"),
    "training": ("unlearning", "step"),
    "final": ("final pass: scores and probabilities of every forget token", "sample"),
    "after": ("evaluating the unlearned model", "sample"),
    "teaching": ("teaching the model the dataset (forget and retain answers)", "step"),
}


class PhaseBars:
    """Called with every status a job writes: starts a phase line and a bar when the phase changes, moves the bar
    otherwise. `write` prints a line above the bar."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, status: Status) -> None:
        self.show(status.phase, status.phase_done, status.phase_total)

    def show(self, phase: str, done: int, total: int) -> None:
        """`done` of `total` in `phase` (one of PHASE_LINES; others end the bar: loading, done)."""
        if phase != self.phase:
            self.close()
            self.phase = phase
            if phase in PHASE_LINES:
                text, unit = PHASE_LINES[phase]
                phase_line(f"[{phase}] {text}")
                self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=True, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        """A line on stdout, above the bar."""
        phase_line(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def phase_line(text: str) -> None:
    """A line on stdout, above any bar (a phase's first line, a step line)."""
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()
