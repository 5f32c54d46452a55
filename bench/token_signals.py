"""What a token signal read before any unlearning says about the spans: what a scorer that follows it can reach.

ATWU's scorer learns from what the job does to the model, but on each world some per-token signals are already
there before step 1. This script ranks each world's forget answer tokens by three of them and reports the AUROC
against the spans, with the signal's level on and off the spans beside it:
- **taught NLL**: the NLL the headline reward reads at step 0 (a memorised model's NLL is ≈ 0 everywhere);
- **untaught NLL**: the NLL under the model before it was taught the world (SmolLM2 itself for the SmolLM2 worlds;
  a tiny model was trained from scratch, so it has none): high on what the question does not give away;
- **rare in retain**: minus how often the token (its id) occurs in the retain answers. ATWU's definition made
  static: the retain loss trains on the retain answers' tokens, so a token they never hold cannot conflict with it.

    python bench/token_signals.py                  # the SmolLM2 worlds (taught once, cached)
    python bench/token_signals.py --models tiny,smollm2
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from alignment import MODEL_WORLDS, SWEEPS, held_out
from common import REPO, WorldOptions, environment_line, load_world, markdown_table, quiet, write_results_section

from atwu_core import metrics
from atwu_core.config import make_config
from atwu_core.data import EncodedSample, encode_records
from atwu_core.forward import answer_nll
from atwu_core.models import LoadedModel, load_model

UNTAUGHT = {"smollm2": "smollm2"}  # model -> the model its worlds were taught into


def signal_cells(samples: list[EncodedSample], values: list[np.ndarray], levels: bool = True) -> list[str]:
    """AUROC against the spans of one per-token signal [one array per sample], and its mean on / off the spans."""
    weights = {s.record_id: v.tolist() for s, v in zip(samples, values)}
    a = metrics.alignment(weights, samples)
    if not levels:
        return [f"{a.auroc:.3f}"]
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
    cfg = make_config("atwu", world.preset)
    tok = world.loaded.tokenizer
    samples, retain = (
        encode_records(r, tok, cfg.max_length, cfg.chat_template) for r in (world.dataset.forget, world.dataset.retain)
    )
    taught = nll(world.loaded, samples)
    rare = rare_in_retain(samples, retain)
    cells = signal_cells(samples, taught)
    if untaught is not None:
        cells += signal_cells(samples, nll(untaught, samples))
    else:
        cells += ["n/a (trained from scratch)", "–"]
    absent = [(r == 0).astype(float) for r in rare]  # the share of tokens retain never holds, on / off the spans
    a = metrics.alignment({s.record_id: v.tolist() for s, v in zip(samples, absent)}, samples)
    cells += [*signal_cells(samples, rare, levels=False), f"{a.score_in_span:.2f} / {a.score_out_span:.2f}"]
    return [f"`{name}`" + ("" if held_out(name) else " (tuning world)"), f"{a.n_tokens} ({a.n_positive})", *cells]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2", help="comma-separated: tiny, smollm2 (default smollm2)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", default=str(REPO / "docs"), help="folder for results.md (default docs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    env = environment_line(args.threads)
    rows = []
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        untaught = load_model(UNTAUGHT[model]) if model in UNTAUGHT else None
        for name in dict.fromkeys((SWEEPS[model][0], *MODEL_WORLDS[model])):  # tuning world first, once
            if (row := world_row(name, untaught)) is not None:
                rows.append(row)
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
