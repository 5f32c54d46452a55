"""What a token signal read before any unlearning says about the spans: what a scorer that follows it can reach.

ATWU's scorer learns from what the job does to the model, but on each world some per-token signals are already
there before step 1. This script ranks each world's forget answer tokens by three of them and reports the AUROC
against the spans, with the signal's level on and off the spans beside it:
- **taught NLL**: the NLL the headline reward reads at step 0 (a memorised model's NLL is ≈ 0 everywhere);
- **untaught NLL**: the NLL under the model before it was taught the world (SmolLM2 itself for the SmolLM2 worlds;
  a tiny model was trained from scratch, so it has none): high on what the question does not give away;
- **rare in retain**: minus how often the token (its id) occurs in the retain answers. ATWU's definition made
  static: the retain loss trains on the retain answers' tokens, so a token they never hold cannot conflict with it.

With `--runs`, it judges run folders kept by `bench/alignment.py --keep` the same way: their final scores against
the spans and against that definition (the tokens the retain answers never hold), and against the spans within each
side of it. A scorer that follows the definition where the spans disagree with it ranks the definition high and the
spans low.

    python bench/token_signals.py                  # the SmolLM2 worlds (taught once, cached)
    python bench/token_signals.py --models tiny,smollm2
    python bench/token_signals.py --runs runs/smollm2-tofu-tune-smollm2-layer15-rms-s0-n40 ...
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from alignment import study_worlds, tuning_mark
from common import (
    KEPT_TASK,
    WorldOptions,
    environment_line,
    load_world,
    markdown_table,
    world_script_args,
    write_results_section,
)
from sklearn.metrics import roc_auc_score

from atwu_core import metrics
from atwu_core.data import EncodedSample
from atwu_core.forward import answer_nll
from atwu_core.metrics_record import Alignment
from atwu_core.models import LoadedModel, load_model
from atwu_core.runs import RunReader

UNTAUGHT = {"smollm2": "smollm2"}  # model -> the model its worlds were taught into


def judged(samples: list[EncodedSample], values: list[np.ndarray]) -> Alignment:
    """One per-token signal [one array per sample] against the spans: its AUROC and its mean on / off them."""
    return metrics.alignment({s.record_id: v.tolist() for s, v in zip(samples, values)}, samples)


def signal_cells(a: Alignment) -> list[str]:
    return [f"{a.auroc:.3f}", f"{a.score_in_span:.2f} / {a.score_out_span:.2f}"]


def rare_in_retain(samples: list[EncodedSample], retain: list[EncodedSample]) -> list[np.ndarray]:
    """Minus each forget answer token's count among the retain answers' tokens (by id; 0: retain never holds it)."""
    counts = Counter(t for s in retain for t in s.answer_token_ids)
    return [-np.array([counts[t] for t in s.answer_token_ids], dtype=float) for s in samples]


def nll(loaded: LoadedModel, samples: list[EncodedSample]) -> list[np.ndarray]:
    """Each sample's answer-token NLL [T] under `loaded`'s model."""
    pad_id = loaded.tokenizer.pad_token_id or 0
    return [v.numpy().astype(float) for v in answer_nll(loaded.model, samples, pad_id, 8)]


def world_row(name: str, untaught: LoadedModel | None) -> list[str] | None:
    world = load_world(name, WorldOptions())
    if world is None:
        return None
    samples, retain = world.encoded()
    rare = rare_in_retain(samples, retain)
    absent = judged(samples, [(r == 0).astype(float) for r in rare])  # the share of tokens retain never holds
    untaught_cells = (
        signal_cells(judged(samples, nll(untaught, samples))) if untaught else ["n/a (trained from scratch)", "–"]
    )
    return [
        f"`{name}`{tuning_mark(name)}",
        f"{absent.n_tokens} ({absent.n_positive})",
        *signal_cells(judged(samples, nll(world.loaded, samples))),
        *untaught_cells,
        f"{judged(samples, rare).auroc:.3f}",
        f"{absent.score_in_span:.2f} / {absent.score_out_span:.2f}",
    ]


def _auroc(labels: np.ndarray, scores: np.ndarray) -> str:
    return f"{roc_auc_score(labels, scores):.3f}" if 0 < labels.sum() < labels.size else "n/a"


def pooled(samples: list[EncodedSample], values: list) -> np.ndarray:
    """Per-token values [one sequence per sample] pooled over the samples' answer tokens, EOS left out."""
    return np.concatenate([np.asarray(v, dtype=float)[np.asarray(s.content_mask)] for s, v in zip(samples, values)])


@functools.cache
def encoded_world(name: str) -> tuple[list[EncodedSample], list[EncodedSample]]:
    """A world's (forget, retain) encodings, loaded once however many kept runs of it are judged."""
    world = load_world(name, WorldOptions())
    if world is None:
        raise SystemExit(f"world {name!r} is not available here (its data is absent), so its runs cannot be judged.")
    return world.encoded()


def run_row(folder: Path) -> list[str]:
    """A kept run's final scores (pooled over its forget answers' tokens, EOS left out, as the alignment study's
    pool) against the spans, against the tokens the retain answers never hold, and against the spans within the
    tokens retain holds and within those it never holds."""
    task = json.loads((folder / KEPT_TASK).read_text(encoding="utf-8"))
    samples, retain = encoded_world(task["world"])
    final = RunReader(folder).final
    if final is None:
        raise SystemExit(f"{folder}: the run has no final scores (it did not finish).")
    scores = pooled(samples, [final.scores[s.record_id] for s in samples])
    spans = pooled(samples, [s.span_mask for s in samples]) == 1
    absent = pooled(samples, rare_in_retain(samples, retain)) == 0  # tokens the retain answers never hold
    return [
        f"`{task['world']}`, {task['method']}, seed {task['seed']}, {task['steps']} steps",
        _auroc(spans, scores),
        _auroc(absent, scores),
        f"{scores[absent].mean():.2f} / {scores[~absent].mean():.2f}",
        _auroc(spans[~absent], scores[~absent]),
        _auroc(spans[absent], scores[absent]),
    ]


RUN_HEAD = [
    "run",
    "scores vs spans: AUROC",
    "vs absent from retain: AUROC",
    "mean score, absent / present",
    "vs spans, within present",
    "vs spans, within absent",
]


def main(argv: list[str] | None = None) -> int:
    args = world_script_args(__doc__, "smollm2", argv, runs=True)
    if args.runs:
        print(markdown_table(RUN_HEAD, [run_row(Path(f)) for f in args.runs]))
        return 0
    env = environment_line(args.threads)
    worlds = study_worlds(args.models)
    untaught = {m: load_model(UNTAUGHT[m]) for m in set(worlds.values()) if m in UNTAUGHT}
    rows = [row for name, m in worlds.items() if (row := world_row(name, untaught.get(m))) is not None]
    head = [
        "world",
        "tokens (span)",
        "taught NLL: AUROC",
        "mean on / off spans (nats)",
        "untaught NLL: AUROC",
        "mean on / off spans (nats)",
        "rare in retain: AUROC",
        "share absent from retain, on / off spans",
    ]
    table = markdown_table(head, rows)
    print(table)
    section = "\n\n".join([
        "## What the tokens say before unlearning (`python bench/token_signals.py`)",
        env,
        "AUROC against the spans of three per-token signals read off each world before any unlearning step, over its "
        "forget answers' tokens (EOS left out, as the alignment study's pool), with the signal's level beside it "
        "(module docstring): the NLL under the taught model, under the model before it was taught, and minus the "
        "token's count in the retain answers (and the share of tokens the retain answers never hold).",
        table,
    ])  # fmt: skip
    print(f"wrote the token-signals section of {write_results_section(Path(args.out), 'token-signals', section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
