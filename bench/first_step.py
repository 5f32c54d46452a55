"""Where ATWU's first scorer step points, on each world's untouched model.

The scorer starts at zero (g = 0.5 on every token), so its first gradient step moves the probe's weight along a
mix of two directions over the answer tokens' scorer inputs x_t:
- the reward's: the NLL-weighted mean of x_t (headline reward mean[(1 - g) sg(nll)]), or the p^beta nll-weighted
  mean (matched reward; reward_norm only rescales it);
- the budget penalty's: with no token above 0.5 yet it pushes every g alike, i.e. along the plain mean of x_t.

A third, hypothetical direction asks whether retain tokens as negatives would help (ATWU's own definition: a token
that the retain objective also needs is not forget-specific): the headline reward plus a term mean_n(nll) * mean[g]
over the retain answers' tokens, i.e. the NLL-weighted forget mean minus the retain mean at equal mass. It is
invariant to a shared centring, so it has one column.

Each direction d ranks the tokens by x_t . d; this script reports that ranking's AUROC against the spans, with the
raw input and with `hidden_centre` (which removes the plain mean). Below 0.5, the first step pushes the scorer
towards the non-span tokens, and the job has to undo it. Writes the `first-step` section of `<out>/results.md`.

    python bench/first_step.py                   # tiny and SmolLM2 worlds (the SmolLM2 ones teach once, cached)
    python bench/first_step.py --models tiny
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from alignment import study_worlds, tuning_mark
from common import WorldOptions, environment_line, load_world, markdown_table, world_script_args, write_results_section

from atwu_core import losses, metrics
from atwu_core.config import make_config
from atwu_core.data import EncodedSample
from atwu_core.forward import Forward, ForwardNeeds, forward
from atwu_core.generation import evaluating
from atwu_core.weighting.atwu import ScorerInput

BETA = make_config("atwu", "paper").params.beta  # the matched reward's saturation, at the paper's value
BUDGET = "budget (mean x)"
CONTRAST = "headline reward - retain mean"
INPUTS = {"raw": ScorerInput(), "centred": ScorerInput(centre=True)}


def directions(x: torch.Tensor, nll: torch.Tensor, retain: torch.Tensor) -> dict[str, torch.Tensor]:
    """x [N, d] forget answer-token scorer inputs, nll [N], retain [M, d] retain answer-token inputs -> the first
    step's candidate directions, each [d]."""
    headline = (nll[:, None] * x).mean(0)
    return {
        "headline reward": headline,
        "matched reward": ((torch.exp(-BETA * nll) * nll)[:, None] * x).mean(0),
        BUDGET: x.mean(0),
        CONTRAST: headline - nll.mean() * retain.mean(0),
    }


def forward_all(model: torch.nn.Module, samples: list[EncodedSample], pad_id: int) -> Forward:
    """One forward over every sample, with the last layer's hidden states."""
    with evaluating(model):
        return forward(model, samples, list(range(len(samples))), pad_id, ForwardNeeds(hidden_layer=-1))


def skipped(inp: ScorerInput, direction: str) -> bool:
    """Centred, the plain mean is 0 (the budget moves only the bias) and the contrast is the raw one."""
    return inp.centre and direction in (BUDGET, CONTRAST)


def world_row(name: str, options: WorldOptions) -> list[str] | None:
    """One table row: per scorer input, the AUROC of each direction's ranking."""
    world = load_world(name, options)
    if world is None:
        return None
    samples, retain = world.encoded()
    model, pad_id = world.loaded.model, world.loaded.tokenizer.pad_token_id or 0
    fw, fw_retain = forward_all(model, samples, pad_id), forward_all(model, retain, pad_id)
    x_retain = ScorerInput()(fw_retain.hidden, fw_retain.mask)[fw_retain.mask]  # [M, d], raw: CONTRAST is centring-free
    nll = fw.nll[fw.mask].float()  # [N]
    cells = []
    for inp in INPUTS.values():
        x = inp(fw.hidden, fw.mask)[fw.mask]  # [N, d]
        for key, d in directions(x, nll, x_retain).items():
            if skipped(inp, key):
                continue
            ranking = torch.zeros_like(fw.nll, dtype=torch.float32)  # [B, T]
            ranking[fw.mask] = x @ d
            weights = dict(zip((s.record_id for s in samples), losses.per_sequence(ranking, fw.mask)))
            cells.append(f"{metrics.alignment(weights, samples).auroc:.3f}")
    return [f"`{name}`{tuning_mark(name)}", *cells]


def main(argv: list[str] | None = None) -> int:
    args = world_script_args(__doc__, "tiny,smollm2", argv)
    env = environment_line(args.threads)
    names = study_worlds(args.models)
    rows = [row for name in names if (row := world_row(name, WorldOptions())) is not None]
    kinds = directions(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1))
    head = ["world", *(f"{i}: {d}" for i, inp in INPUTS.items() for d in kinds if not skipped(inp, d))]
    table = markdown_table(head, rows)
    print(table)
    section = "\n\n".join([
        "## Where the scorer's first step points (`python bench/first_step.py`)",
        env,
        "AUROC against the spans of each answer token's projection x·d on the directions the first scorer step "
        "mixes (module docstring), on each world's untouched model, over its forget records. Below 0.5: the first "
        "step ranks non-span tokens first. The `retain mean` column is hypothetical: the first step of a scorer that "
        "also pushes g down on retain tokens (module docstring); ATWU has no such term.",
        table,
    ])  # fmt: skip
    print(f"wrote the first-step section of {write_results_section(Path(args.out), 'first-step', section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
