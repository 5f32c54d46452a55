"""bench/first_step.py's directions are the scorer's first gradient step: at zero init, the gradient of each reward
(and of the budget penalty) with respect to a linear probe's weight points along the direction the script ranks by."""

from __future__ import annotations

import pytest
import torch

from atwu_core.weighting.atwu import regularisers, scorer_reward


@pytest.fixture(scope="module")
def first_step(bench):
    return bench("first_step")


def _first_gradient(x: torch.Tensor, mask: torch.Tensor, loss_of_g) -> torch.Tensor:
    """-d loss / d w at w = 0 for g = sigmoid(x . w): the direction one SGD step moves w."""
    w = torch.zeros(x.shape[-1], requires_grad=True)
    loss_of_g(torch.sigmoid(x @ w) * mask).backward()
    return -w.grad


@pytest.mark.parametrize("pair", ["headline", "matched"])
def test_reward_direction_is_the_first_step(first_step, pair):
    torch.manual_seed(0)
    x, nll = torch.randn(2, 5, 7), torch.rand(2, 5) * 3  # [B, T, d], [B, T]; every token an answer token
    mask = torch.ones(2, 5, dtype=torch.bool)
    step = _first_gradient(x, mask, lambda g: scorer_reward(pair, g, nll, mask, first_step.BETA))
    direction = first_step.directions(x[mask], nll[mask], x[0])[f"{pair} reward"]
    assert torch.nn.functional.cosine_similarity(step, direction, 0) > 0.999


def test_budget_direction_is_the_first_step(first_step):
    torch.manual_seed(1)
    x, mask = torch.randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool)  # equal lengths: sequence means = token mean
    step = _first_gradient(x, mask, lambda g: regularisers(g, mask, budget=0.2)[1])
    direction = first_step.directions(x[mask], torch.zeros(12), x[0])[first_step.BUDGET]
    assert torch.nn.functional.cosine_similarity(step, direction, 0) > 0.999


def test_contrast_direction_is_the_first_step_with_retain_negatives(first_step):
    """Headline reward on forget tokens plus mean(nll) * mean[g] on retain tokens: one probe, two batches."""
    torch.manual_seed(2)
    x, nll, retain = torch.randn(2, 5, 7), torch.rand(2, 5) * 3, torch.randn(3, 4, 7)  # forget [B, T, d], retain
    mask, retain_mask = torch.ones(2, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    w = torch.zeros(7, requires_grad=True)
    g, g_retain = torch.sigmoid(x @ w), torch.sigmoid(retain @ w)
    loss = scorer_reward("headline", g, nll, mask, first_step.BETA) + nll.mean() * g_retain[retain_mask].mean()
    loss.backward()
    direction = first_step.directions(x[mask], nll[mask], retain[retain_mask])[first_step.CONTRAST]
    assert torch.nn.functional.cosine_similarity(-w.grad, direction, 0) > 0.999
