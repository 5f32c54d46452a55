"""ATWU's scorer: a probe on the model's hidden states that learns which tokens are forget-specific.

g = sigmoid(f(sg(h))), f linear (the paper) or a small MLP, last layer zero-initialised (every token starts at
0.5), fp32. The scorer learns on the model step's own forward pass (no extra forward) and never sees retain
data: the retain objective keeps the tokens retain needs at low loss, so the alternation alone moves weight off
them. Two objective pairs from the authors' code (model forget term / scorer reward term):

    headline  model: -mean[sg(g) sg(p^(beta g)) nll]   scorer: +mean[(1 - g) sg(nll)]      (scorer steps first)
    matched   model: -mean[sg(g) sg(p^beta) nll]       scorer: -mean[g sg(p^beta nll)]     (optionally / its mean)

plus, for both, lambda_E mean H(g) + lambda_P mean_i (s_i - b)^2 + lambda_2 ||theta||^2, s_i the straight-through
fraction of sequence i's tokens with g > 0.5. Inside NPO (`atwu-npo`) the weights are g T_i / sum_t g.

Our variants, not the paper's:
- `retain_contrast` lambda_R > 0: + lambda_R mean over the retain batch's answer tokens of -log(1 - g), so the scorer
  also sees retain tokens, as negatives; the tokens a forget answer shares in form with retain answers are then
  pushed off, and the budget goes to what only the forget answers hold.
- `reward_cap` / `reward_standardise`: the reward reads min(nll, cap), standardised within each answer (headline),
  so GA's overshoot far past chance cannot steer the scorer and the budget, not the NLL's scale, sets how many
  tokens are selected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from atwu_core import losses
from atwu_core.data import EncodedSample
from atwu_core.files import FILE_MODE, read_json, write_json_atomic
from atwu_core.forward import Forward, ForwardNeeds, batches, forward
from atwu_core.generation import evaluating, model_device
from atwu_core.weighting.base import PrepareContext, TokenWeights, WeightingScheme
from atwu_core.weighting.params import ATWUNPOParams, ATWUParams


@dataclass(frozen=True)
class ScorerInput:
    """Which hidden state the scorer reads and how it is normalised; saved beside the weights."""

    layer: int = -1  # index into hidden_states; -1 = last, after the final norm
    position: str = "token"  # token: the position that has read the token; predicting: the one predicting it
    norm: str = "none"  # none | rms | l2
    centre: bool = False  # subtract the batch's mean answer-token state

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, d] hidden states at input positions -> [B, T, d] fp32 scorer input in target space."""
        h = (hidden[:, 1:] if self.position == "token" else hidden[:, :-1]).float()
        if self.norm == "rms":
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        elif self.norm == "l2":
            h = F.normalize(h, dim=-1)
        if self.centre:
            # the budget term pushes every token alike; centred, that push moves only the bias, not w along the
            # mean hidden state (an arbitrary direction for ranking tokens)
            m = mask.unsqueeze(-1).float()
            h = h - (h * m).sum((0, 1)) / m.sum().clamp_min(1)
        return h


class Scorer(torch.nn.Module):
    """x [.., d] -> logit [..]: one linear layer (layers = 1) or an MLP with GELU between."""

    def __init__(self, dim: int, layers: int = 1, width: int = 256):
        super().__init__()
        sizes = [dim] + [width] * (layers - 1) + [1]
        mods: list[torch.nn.Module] = []
        for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
            mods += [torch.nn.Linear(a, b)] + ([torch.nn.GELU()] if k < layers - 1 else [])
        self.net = torch.nn.Sequential(*mods)
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        self.dim, self.layers, self.width = dim, layers, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# ----------------------------------------------------------------------------------- the objective pairs


def model_weights(
    pair: str, g: torch.Tensor, nll: torch.Tensor, mask: torch.Tensor, beta: float, saturation: str = "fixed"
) -> torch.Tensor:
    """The forget loss's token weights (to be used detached): headline g p^(beta g); matched g p^beta, or
    p^(beta g) with saturation=scaled."""
    if pair == "headline":
        return g * torch.exp(-beta * g * nll) * mask
    if saturation == "scaled":
        return torch.exp(-beta * g * nll) * mask
    return g * torch.exp(-beta * nll) * mask


def scorer_reward(
    pair: str,
    g: torch.Tensor,
    nll: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    reward_norm: bool = False,
    read: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scorer's reward term (minimised; `nll` detached): headline mean[(1 - g) nll]; matched
    -mean[g p^beta nll], its reward divided by the batch mean with `reward_norm`. `read` [B, T] replaces the
    reward's nll (not p's): the NLL increase with reward=delta_nll, capped or standardised (`reward_read`)."""
    read = nll if read is None else read
    if pair == "headline":
        return losses.masked_mean((1 - g) * read, mask)
    reward = torch.exp(-beta * nll) * read
    if reward_norm:
        reward = reward / losses.masked_mean(reward, mask).clamp_min(1e-12)
    return -losses.masked_mean(g * reward, mask)


def reward_read(read: torch.Tensor, mask: torch.Tensor, cap: float, standardise: bool) -> torch.Tensor:
    """What the scorer's reward reads [B, T], from the NLL (or its increase) [B, T]: capped at `cap` nats (0: not),
    then, with `standardise`, centred on each answer's mean and divided by its std (floored at 0.1 nats, so an
    answer whose tokens all read alike, say all past the cap, reads 0: no push either way)."""
    if cap:
        read = read.clamp(max=cap)
    if not standardise:
        return read
    m = mask.float()
    n = m.sum(1, keepdim=True).clamp_min(1)  # [B, 1]
    centred = (read - (read * m).sum(1, keepdim=True) / n) * m  # [B, T]
    std = (centred.pow(2).sum(1, keepdim=True) / n).sqrt()  # [B, 1]
    return centred / std.clamp_min(0.1)


def npo_weights(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ATWU inside NPO: weights g T_i / sum_t g, summing to each answer's length as NPO's summed NLL expects."""
    return g * mask.sum(1, keepdim=True) / g.sum(1, keepdim=True).clamp_min(1e-8)


def regularisers(g: torch.Tensor, mask: torch.Tensor, budget: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean binary entropy, budget penalty mean_i (s_i - b)^2, s_i per sequence), s_i straight-through."""
    gc = g.clamp(1e-6, 1 - 1e-6)
    entropy = losses.masked_mean(-(gc * gc.log() + (1 - gc) * (1 - gc).log()), mask)
    hard = (g > 0.5).float()
    selected = ((hard - g.detach() + g) * mask).sum(1) / mask.sum(1).clamp_min(1)
    return entropy, (selected - budget).pow(2).mean(), selected


def retain_contrast(g_retain: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Our retain-contrast term: mean over retain answer tokens of -log(1 - g), a retain token's binary
    cross-entropy against "not forget-specific" (0 when the scorer gives it 0)."""
    return losses.masked_mean(-torch.log1p(-g_retain.clamp(max=1 - 1e-6)), mask)


@dataclass(frozen=True)
class Pair:
    """One objective pair, chosen once per job: the model's forget-loss weights and the scorer's reward (minimised),
    each from g [B, T] and the forward pass."""

    name: str  # headline | matched | npo
    weights: Callable[[torch.Tensor, Forward], torch.Tensor]  # (g, fw) -> [B, T], used detached
    reward: Callable[[torch.Tensor, Forward], torch.Tensor]  # (g, fw) -> 0-dim, carries g's graph


def objective_pair(p: ATWUParams | ATWUNPOParams, objective: str) -> Pair:
    """The pair for the method's forget objective: inside NPO the NPO expression with live weights (no
    saturation); inside GA the pair `p.pair` names."""
    if objective == "npo":
        return Pair(
            "npo",
            lambda g, fw: npo_weights(g, fw.mask),
            lambda g, fw: losses.npo(fw.nll.detach(), fw.mask, npo_weights(g, fw.mask), fw.ref_nll.sum(1), p.npo_beta),
        )
    if objective != "ga":
        raise ValueError(f"ATWU's scorer runs inside the ga or npo forget objective, not {objective!r}.")

    def reward(g: torch.Tensor, fw: Forward) -> torch.Tensor:
        nll = fw.nll.detach()
        read = nll - fw.ref_nll if p.reward == "delta_nll" else nll  # [B, T] delta: the increase since before training
        read = reward_read(read, fw.mask, p.reward_cap, p.reward_standardise)
        return scorer_reward(p.pair, g, nll, fw.mask, p.beta, p.reward_norm, read)

    return Pair(p.pair, lambda g, fw: model_weights(p.pair, g, fw.nll.detach(), fw.mask, p.beta, p.saturation), reward)


# ----------------------------------------------------------------------------------- the scheme


class ATWUScorer(WeightingScheme):
    """ATWU's scheme inside the method's forget objective ("ga" or "npo", from its registry row)."""

    def __init__(self, params: ATWUParams | ATWUNPOParams, objective: str):
        self.p = params
        self.pair = objective_pair(params, objective)
        self.input = ScorerInput(params.hidden_layer, params.hidden_position, params.hidden_norm, params.hidden_centre)
        self.needs = ForwardNeeds(hidden_layer=params.hidden_layer)
        self.retain_needs = ForwardNeeds(hidden_layer=params.hidden_layer if params.retain_contrast else None)
        self.score_ema = params.score_ema
        self.scorer: Scorer | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None
        self.out_dir: Path | None = None

    def prepare(self, ctx: PrepareContext) -> None:
        dim = ctx.model.config.get_text_config().hidden_size
        self.scorer = Scorer(dim, self.p.scorer_layers, self.p.scorer_width).to(model_device(ctx.model), torch.float32)
        self.optimizer = torch.optim.SGD(self.scorer.parameters(), lr=self.p.scorer_lr, momentum=0.9, weight_decay=1e-4)
        updates = max(1, self.p.scorer_updates(ctx.steps))  # the schedule counts the updates after scorer_start
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: max(0.0, 1.0 - k / updates))
        self.out_dir = ctx.run_dir / "scorer" if ctx.run_dir is not None else None

    def scores(self, fw: Forward) -> torch.Tensor:
        """g [B, T], 0 off the answer; carries the scorer's graph."""
        return torch.sigmoid(self.scorer(self.input(fw.hidden, fw.mask))) * fw.mask

    def weigh(self, fw: Forward) -> TokenWeights:
        with torch.no_grad():
            g = self.scores(fw)
        return TokenWeights(loss=self.pair.weights(g, fw), scores=g)

    def step(
        self, fw: Forward, step: int, retain: Forward | None = None
    ) -> tuple[TokenWeights, dict[str, torch.Tensor]]:
        if not self.p.scorer_due(step):
            return self.weigh(fw), {}
        if self.pair.name == "headline":  # the scorer steps first; the model's forget term uses the updated scorer
            logs = self._learn(fw, retain)
            weights = self.weigh(fw)
        else:
            weights = self.weigh(fw)
            logs = self._learn(fw, retain)
        if self.p.snapshot_every and step % self.p.snapshot_every == 0:
            self.save(f"step-{step:06d}")
        return weights, logs

    def _learn(self, fw: Forward, retain: Forward | None) -> dict[str, torch.Tensor]:
        g = self.scores(fw)
        reward = self.pair.reward(g, fw)
        entropy, budget, selected = regularisers(g, fw.mask, self.p.budget)
        l2 = sum(w.pow(2).sum() for w in self.scorer.parameters())
        loss = reward + self.p.lambda_e * entropy + self.p.lambda_p * budget + self.p.lambda_2 * l2
        logs = {}
        if self.p.retain_contrast:
            if retain is None:
                raise ValueError("retain_contrast needs the step's retain batch; this method drew none.")
            g_retain = self.scores(retain)  # [B_r, T_r]
            loss = loss + self.p.retain_contrast * retain_contrast(g_retain, retain.mask)
            logs["scorer_retain_g"] = losses.masked_mean(g_retain, retain.mask).detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        # 0-dim tensors: the job reads them with the step's record, in its one host sync
        return {
            "scorer": loss.detach(), "scorer_reward": reward.detach(), "scorer_selected": selected.mean().detach(),
            **logs,
        }  # fmt: skip

    def learning_rates(self) -> dict[str, float]:
        return {"scorer": self.schedule.get_last_lr()[0]} if self.schedule is not None else {}

    def save(self, name: str = "scorer") -> None:
        if self.out_dir is None:
            return
        save_scorer(self.scorer, self.input, self.out_dir, name)

    def finish(self) -> None:
        self.save()


# ----------------------------------------------------------------------------------- saved scorers


def save_scorer(scorer: Scorer, inp: ScorerInput, folder: Path, name: str = "scorer") -> None:
    """`<name>.safetensors` (weights) and `scorer.json` (shape and what hidden state it reads)."""
    folder.mkdir(exist_ok=True)  # not parents: a vanished run folder is an error, never re-created
    tmp = folder / f".{name}.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in scorer.state_dict().items()}, str(tmp))
    os.chmod(tmp, FILE_MODE)  # safetensors writes 0600
    tmp.replace(folder / f"{name}.safetensors")
    meta = {"dim": scorer.dim, "layers": scorer.layers, "width": scorer.width, "input": asdict(inp)}
    write_json_atomic(folder / "scorer.json", meta)


def scorer_snapshots(run_dir: str | Path) -> list[str]:
    """The names of a run's saved scorers: `step-000010`, ..., then `scorer` (the final one)."""
    folder = Path(run_dir) / "scorer"
    names = sorted(p.name.removesuffix(".safetensors") for p in folder.glob("step-*.safetensors"))
    return names + (["scorer"] if (folder / "scorer.safetensors").is_file() else [])


MAX_SCORER_JSON = 64 << 10
SCORER_CAPS = {"dim": 1 << 16, "layers": 16, "width": 1 << 14}  # far above a trained scorer; bounds what a file costs
INPUT_CHOICES = {"position": ("token", "predicting"), "norm": ("none", "rms", "l2")}


class ScorerError(ValueError):
    """A saved scorer that cannot be used; the message names the file and the field."""


def load_scorer(
    run_dir: str | Path,
    name: str = "scorer",
    device: str | torch.device = "cpu",
    *,
    hidden_size: int | None = None,
    n_layers: int | None = None,
) -> tuple[Scorer, ScorerInput]:
    """A run's saved scorer (safetensors: no pickle) on `device` (the model's), ready to apply with `apply_scorer`.
    The run folder is untrusted: scorer.json is checked (types, caps, the model's `hidden_size` and `n_layers` when
    given) and the weights file's header must hold exactly the tensors that shape implies, before anything is built."""
    folder = Path(run_dir) / "scorer"
    meta_path, weights = folder / "scorer.json", folder / f"{name}.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{folder}: no saved scorer {name!r} (only ATWU runs save one; "
            f"saved: {', '.join(scorer_snapshots(run_dir)) or 'none'})."
        )
    try:
        meta = read_json(meta_path, MAX_SCORER_JSON)
    except ValueError as err:
        raise ScorerError(str(err)) from None
    shape, inp = _scorer_meta(meta, meta_path, hidden_size, n_layers)
    expected = _scorer_shapes(*shape)
    try:
        with safe_open(str(weights), framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise ScorerError(f"{weights}: not a readable safetensors file ({err}).") from None
    if found != expected:
        raise ScorerError(f"{weights}: its tensors {found} do not match {meta_path.name}'s shape {expected}.")
    state = load_file(str(weights))
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise ScorerError(f"{weights}: holds NaN or infinite weights.")
    scorer = Scorer(*shape)
    scorer.load_state_dict(state)
    return scorer.to(device).eval(), inp


def _scorer_meta(
    meta: object, path: Path, hidden_size: int | None, n_layers: int | None
) -> tuple[tuple[int, int, int], ScorerInput]:
    """(dim, layers, width) and the ScorerInput of a scorer.json, every field checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("input"), dict):
        raise ScorerError(f"{path}: must be an object with 'dim', 'layers', 'width' and an 'input' object.")
    shape = []
    for key, cap in SCORER_CAPS.items():
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
            raise ScorerError(f"{path}: field {key!r} must be an integer from 1 to {cap}, got {value!r}.")
        shape.append(value)
    if hidden_size is not None and shape[0] != hidden_size:
        raise ScorerError(f"{path}: field 'dim' is {shape[0]} but the model's hidden size is {hidden_size}.")
    raw = meta["input"]
    unknown = set(raw) - set(ScorerInput.__dataclass_fields__)
    if unknown:
        raise ScorerError(f"{path}: unknown field(s) {sorted(unknown)} in 'input'.")
    layer, centre = raw.get("layer", -1), raw.get("centre", False)
    bound = n_layers if n_layers is not None else 1 << 16
    if isinstance(layer, bool) or not isinstance(layer, int) or not -bound - 1 <= layer <= bound:
        raise ScorerError(
            f"{path}: field 'input.layer' must be an integer from {-bound - 1} to {bound}, got {layer!r}."
        )
    if not isinstance(centre, bool):
        raise ScorerError(f"{path}: field 'input.centre' must be true or false, got {centre!r}.")
    for key, choices in INPUT_CHOICES.items():
        if raw.get(key, choices[0]) not in choices:
            raise ScorerError(f"{path}: field 'input.{key}' must be one of {choices}, got {raw.get(key)!r}.")
    return (shape[0], shape[1], shape[2]), ScorerInput(**raw)


def _scorer_shapes(dim: int, layers: int, width: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of Scorer(dim, layers, width), without building it (Linear at every other index)."""
    sizes = [dim] + [width] * (layers - 1) + [1]
    out = {}
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        out[f"net.{2 * k}.weight"], out[f"net.{2 * k}.bias"] = (b, a), (b,)
    return out


def apply_scorer(
    scorer: Scorer,
    inp: ScorerInput,
    model: torch.nn.Module,
    samples: list[EncodedSample],
    pad_id: int,
    batch_size: int = 16,
) -> list[list[float]]:
    """The scorer's g for every answer token of `samples` under `model`: one forward per batch."""
    scorer = scorer.to(model_device(model))
    out: list[list[float]] = []
    with evaluating(model):
        for index in batches(len(samples), batch_size):
            fw = forward(model, samples, index, pad_id, ForwardNeeds(hidden_layer=inp.layer))
            g = torch.sigmoid(scorer(inp(fw.hidden, fw.mask))) * fw.mask
            out.extend(losses.per_sequence(g, fw.mask))
    return out
