"""TokenUnlearn's importance: how much a token depends on the knowledge context, mixed with its entropy.

phi = a * norm(|log p(y_t | q) - log p(y_t | q masked)|) + (1 - a) * norm(H_t), computed once on the
original model (norm = min-max within the answer). Hard selection unlearns only each answer's top
tokens; soft weighting uses T * softmax(phi / temperature).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from atwu_core.data import encode_record
from atwu_core.forward import Forward, ForwardNeeds, batches, forward
from atwu_core.generation import evaluating, pad_token_id
from atwu_core.losses import per_sequence
from atwu_core.weighting.base import PrepareContext, TokenWeights, WeightingScheme
from atwu_core.weighting.params import TokenUnlearnParams

MASKED_QUESTION = "?"


def _minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def answer_logprobs_and_entropy(
    model, samples, pad_id: int, batch_size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: log p of each answer token and the predictive entropy at that position."""
    out = []
    with evaluating(model):
        for index in batches(len(samples), batch_size):
            fw = forward(model, samples, index, pad_id, ForwardNeeds(logprobs=True))
            entropy = -(fw.logprobs.exp() * fw.logprobs).sum(-1)  # [B, T]
            for lp, ent in zip(per_sequence(-fw.nll, fw.mask), per_sequence(entropy, fw.mask)):
                out.append((torch.tensor(lp), torch.tensor(ent)))
    return out


class TokenUnlearnImportance(WeightingScheme):
    def __init__(self, params: TokenUnlearnParams):
        self.p = params
        self.importance: list[torch.Tensor] = []

    def prepare(self, ctx: PrepareContext) -> None:
        pad = pad_token_id(ctx.tokenizer)
        masked = []
        for record, sample in zip(ctx.records, ctx.samples):
            m = encode_record(
                dataclasses.replace(record, question=MASKED_QUESTION), ctx.tokenizer, ctx.max_length, ctx.chat_template
            )
            if m.answer_token_ids != sample.answer_token_ids:
                warnings.warn(
                    f"record {record.id!r}: the answer tokenises differently without its question; "
                    "its knowledge signal is set to 0.",
                    stacklevel=2,
                )
                m = None
            masked.append(m)
        with_q = answer_logprobs_and_entropy(ctx.model, ctx.samples, pad)
        usable = [m for m in masked if m is not None]
        without_q = iter(answer_logprobs_and_entropy(ctx.model, usable, pad)) if usable else iter(())
        a = self.p.tu_a
        for (logp, entropy), m in zip(with_q, masked):
            delta = (logp - next(without_q)[0]).abs() if m is not None else torch.zeros_like(logp)
            self.importance.append(a * _minmax(delta) + (1 - a) * _minmax(entropy))

    def weigh(self, fw: Forward) -> TokenWeights:
        phis = [self.importance[i] for i in fw.sample_index]
        if self.p.tu_selection == "hard":
            weights = []
            for phi in phis:
                k = max(1, round(self.p.tu_top_fraction * len(phi)))
                w = torch.zeros_like(phi)
                w[torch.topk(phi, k).indices] = 1.0
                weights.append(w)
        else:
            weights = [len(phi) * torch.softmax(phi / self.p.tu_temperature, dim=0) for phi in phis]
        return TokenWeights(loss=fw.scatter_rows(weights), scores=fw.scatter_rows(phis))
