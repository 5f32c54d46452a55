"""ATWU's scorer: a linear probe on the last hidden state that learns which tokens are forget-specific.

g = sigmoid(w · sg(h) + c), zero-initialised (every token starts at 0.5), fp32. The scorer is trained on
the model step's own forward pass (no extra forward) to put weight where the saturated forget reward
p^beta * nll is large; it never sees retain data: tokens the retain objective needs stay at high p, where
the reward is small, so they lose weight through the alternation alone.
"""

from __future__ import annotations

import torch

from atwu_core import losses
from atwu_core.weighting.base import ForgetForward, PrepareContext, TokenWeights, WeightingScheme


class ATWUScorer(WeightingScheme):
    needs_hidden = True

    def __init__(self, params: dict, objective: str = "ga"):
        if objective not in ("ga", "npo"):
            raise ValueError(f"ATWU's objective is ga or npo, not {objective!r}.")
        self.p = params
        self.objective = objective
        self.linear: torch.nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def hidden_position(self) -> str:
        return self.p["hidden_position"]

    def prepare(self, ctx: PrepareContext) -> None:
        dim = ctx.model.config.get_text_config().hidden_size
        device = next(ctx.model.parameters()).device
        self.linear = torch.nn.Linear(dim, 1).to(device=device, dtype=torch.float32)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=self.p["scorer_lr"], momentum=0.9, weight_decay=1e-4)
        updates = max(1, ctx.steps // self.p["scorer_every"])
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: max(0.0, 1.0 - k / updates))

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        if self.p["hidden_norm"]:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        if self.p["hidden_centre"]:
            # without this, the budget term's push on every token moves w along the mean hidden state, which
            # ranks tokens by an arbitrary direction; centred, that push can only move the bias
            m = mask.unsqueeze(-1).float()
            h = h - (h * m).sum((0, 1)) / m.sum().clamp_min(1)
        return torch.sigmoid(self.linear(h).squeeze(-1))

    def weigh(self, fw: ForgetForward) -> TokenWeights:
        with torch.no_grad():
            g = self.scores(fw.hidden, fw.mask) * fw.mask
        return TokenWeights(loss=self._loss_weights(g, fw.nll.detach(), fw.mask), scores=g)

    def _loss_weights(self, g: torch.Tensor, nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.objective == "npo":  # weights sum to the answer length, as NPO's summed NLL expects
            return g * mask.sum(1, keepdim=True) / g.sum(1, keepdim=True).clamp_min(1e-8)
        beta = self.p["beta"]
        if self.p["saturation"] == "scaled":
            return torch.exp(-beta * g * nll) * mask
        return g * torch.exp(-beta * nll) * mask

    def update(self, fw: ForgetForward, step: int) -> dict[str, float]:
        if step % self.p["scorer_every"] != 0:
            return {}
        nll, mask = fw.nll.detach(), fw.mask
        g = self.scores(fw.hidden, mask) * mask
        if self.objective == "npo":
            objective = losses.npo(nll, mask, self._loss_weights(g, nll, mask), fw.ref_seq_nll, self.p["npo_beta"])
        else:
            reward = torch.exp(-self.p["beta"] * nll) * nll
            if self.p["reward_norm"]:
                reward = reward / losses.masked_mean(reward, mask).clamp_min(1e-12)
            objective = -losses.masked_mean(g * reward, mask)
        entropy = losses.masked_mean(binary_entropy(g), mask)
        hard = (g > 0.5).float()
        selected = ((hard - g.detach() + g) * mask).sum(1) / mask.sum(1).clamp_min(1)  # straight-through
        budget = (selected - self.p["budget"]).pow(2).mean()
        l2 = self.linear.weight.pow(2).sum() + self.linear.bias.pow(2).sum()
        loss = objective + self.p["lambda_e"] * entropy + self.p["lambda_p"] * budget + self.p["lambda_2"] * l2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.linear.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        return {"scorer": loss.item(), "scorer_selected": selected.mean().item(), "scorer_lr": self.schedule.get_last_lr()[0]}


def scorer_hidden(hidden_states: torch.Tensor, position: str) -> torch.Tensor:
    """Align the last hidden layer [B, L, d] with target space [B, L-1, d]."""
    return hidden_states[:, 1:] if position == "token" else hidden_states[:, :-1]


def binary_entropy(g: torch.Tensor) -> torch.Tensor:
    gc = g.clamp(1e-6, 1 - 1e-6)
    return -(gc * gc.log() + (1 - gc) * (1 - gc).log())

