"""Per-token NLL and the forget/retain losses every method is built from.

Token tensors are [batch, positions] in *target* space: position k scores input token k+1, and `mask`
marks answer tokens. The losses take weights and NLL as given: the job passes detached weights (the model never
moves its own weights), and ATWU's scorer passes live weights with detached NLL (the same expression, other
variable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atwu_core.data import IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every next token: ([B, L-1] nll, 0 off the answer; [B, L-1] answer mask)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.masked_fill(~mask, 0), reduction="none")
    return nll * mask, mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flat mean over all valid tokens of the batch (not a mean of per-sequence means)."""
    return (x * mask).sum() / mask.sum().clamp_min(1)


def weighted_ga(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gradient ascent with token weights: minimise -mean(w * nll)."""
    return -masked_mean(weights * nll, mask)


def npo(
    nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, ref_seq_nll: torch.Tensor, beta: float
) -> torch.Tensor:
    """NPO on weighted summed NLL: -(2/beta) mean_i logsigmoid(beta * (sum_t w nll - ref_i))."""
    scored = (weights * nll * mask).sum(dim=1)
    return -(2.0 / beta) * F.logsigmoid(beta * (scored - ref_seq_nll)).mean()


def simnpo(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: reference-free, length-normalised NPO: -(2/beta) mean_i logsigmoid(beta * mean_t(w nll) - delta)."""
    lengths = mask.sum(dim=1).clamp_min(1)
    scored = (weights * nll * mask).sum(dim=1) / lengths
    return -(2.0 / beta) * F.logsigmoid(beta * scored - delta).mean()


def retain_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions at answer positions ([B, T, V] fp32 log-probabilities,
    as `Forward.logprobs` holds them)."""
    kl = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum(-1)  # [B, T]
    return masked_mean(kl, mask)


def per_sequence(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """Split a [B, T] tensor into each sequence's answer-token values (the order of the answer tokens)."""
    values = values.detach().float().cpu()
    mask = mask.cpu()
    return [values[i][mask[i]].tolist() for i in range(values.shape[0])]
