"""Golden tests: each of the field's forms against numbers computed by the reference code (TOFU's
aggregate_eval_stat.py / evaluate_util.py, open-unlearning's src/evals/metrics/), as issue 20 states them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp

from atwu_core.config import make_config
from atwu_core.data import EncodedSample, encode_records
from atwu_core.evaluation import forget_quality as forget_quality_of
from atwu_core.evaluation import model_utility as model_utility_of
from atwu_core.metrics import (
    alignment,
    exact_memorization,
    extraction_strength,
    forget_quality,
    forgetting,
    model_utility,
    option_probability,
    quality,
    truth_ratio,
    truth_ratio_forget_form,
    truth_ratio_retain_form,
)
from atwu_core.metrics_record import ForgetQuality


def test_truth_ratio_is_geometric_over_perturbed_answers() -> None:
    # a collapsed model: paraphrase mean log p -12, perturbed -11 / -14 / -20 (losses are minus those)
    assert truth_ratio(12.0, [11.0, 14.0, 20.0]) == pytest.approx(math.exp(-3))  # 0.050 (TOFU's active line)
    assert truth_ratio(12.0, [11.0, 14.0, 20.0]) == pytest.approx(0.0498, abs=1e-4)  # not the arithmetic 0.951


def test_reported_truth_ratio_forms() -> None:
    ratios = [0.2, 0.5, 0.9, 1.3, 3.0]
    assert truth_ratio_forget_form(ratios) == pytest.approx(0.5405, abs=1e-4)  # mean(min(R, 1/R))
    assert truth_ratio_retain_form(ratios) == pytest.approx(0.2800, abs=1e-4)  # mean(max(0, 1 - R))


def test_forget_quality_is_ks_on_the_reference_ratio() -> None:
    rng = np.random.default_rng(0)
    ours, reference = rng.lognormal(0.3, 0.5, 40), rng.lognormal(0.0, 0.5, 60)
    # TOFU: ks_2samp(exp(perturbed - paraphrased loss)) = ks_2samp(1 / R)
    expected = ks_2samp(1 / ours, 1 / reference).pvalue
    assert forget_quality(list(ours), list(reference)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="both models"):
        forget_quality([], list(reference))


def test_extraction_strength_drops_eos_and_floors_at_one_over_length() -> None:
    # open-unlearning: the whole answer reproduced but EOS missed scores 1.0 (the caller leaves EOS out)
    assert extraction_strength([True] * 9) == 1.0
    assert extraction_strength([False] * 4) == pytest.approx(1 / 4)  # k stops at |y| - 1
    assert extraction_strength([True, False, True, True]) == pytest.approx(1 - 2 / 4)
    assert exact_memorization([True, False, True, True]) == 0.75
    assert exact_memorization([]) is None


def test_model_utility_is_the_harmonic_mean_of_nine_values() -> None:
    values = {f"{s}.{m}": v for s, vs in (("retain", (0.9, 0.8, 0.5)), ("real_authors", (0.6, 0.7, 0.4)),
              ("world_facts", (0.5, 0.9, 0.45))) for m, v in zip(("prob", "rouge_l", "truth_ratio"), vs)}  # fmt: skip
    assert model_utility(values) == pytest.approx(hmean(list(values.values())))
    with pytest.raises(ValueError, match="9 values"):
        model_utility({"retain.prob": 0.9})
    # TOFU's real-authors probability: P(true) / (P(true) + sum P(perturbed)), P = exp(-mean loss)
    assert option_probability(1.0, [2.0, 3.0]) == pytest.approx(
        math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    )


def _sample(sid: str, span: list[bool]) -> EncodedSample:
    """Answer tokens with text, then EOS (zero-width offset, never in a span)."""
    n = len(span)
    return EncodedSample(
        record_id=sid,
        input_ids=[1] + list(range(3, 3 + n)) + [2],
        labels=[-100] + list(range(3, 3 + n)) + [2],
        prompt_length=1,
        answer_tokens=[f"t{k}" for k in range(n)] + ["<eos>"],
        answer_offsets=[(k, k + 1) for k in range(n)] + [(n, n)],
        span_mask=span + [False],
        has_ground_truth=any(span),
    )


def test_pools_leave_out_eos_unless_asked() -> None:
    samples = [_sample("a", [False, True, True, False]), _sample("b", [True, False, False])]
    # scores rank span tokens above text tokens, but EOS (always negative) gets the top score
    weights = {"a": [0.1, 0.6, 0.7, 0.2, 0.9], "b": [0.5, 0.3, 0.1, 0.95]}
    without, with_eos = alignment(weights, samples), alignment(weights, samples, special_tokens=True)
    assert without.auroc == 1.0 and without.n_tokens == 7
    assert with_eos.auroc == pytest.approx(12 / 18)  # each span token loses to the 2 EOS and with_eos.n_tokens == 9
    # realised forgetting: EOS's NLL rose most, the span tokens' by 2 nats, the rest not at all
    before = {"a": [0.9] * 5, "b": [0.9] * 4}
    after = {
        "a": [0.9, 0.9 * math.exp(-2), 0.9 * math.exp(-2), 0.9, 0.9 * math.exp(-5)],
        "b": [0.9 * math.exp(-2), 0.9, 0.9, 0.9 * math.exp(-5)],
    }
    f = forgetting(before, after, samples)
    assert f.auroc == 1.0 and f.span_share == pytest.approx(1.0)
    assert forgetting(before, after, samples, special_tokens=True).auroc < 1.0


def test_forgetting_reports_magnitude_and_meaningful() -> None:
    samples = [_sample("a", [False, True, True, False])]
    before = {"a": [0.9] * 5}
    tiny = {"a": [0.9, 0.9 * math.exp(-0.001), 0.9 * math.exp(-0.001), 0.9, 0.9]}  # ranked perfectly, 0.001 nats
    big = {"a": [0.9 * math.exp(-0.5), 0.9 * math.exp(-3), 0.9 * math.exp(-0.2), 0.9, 0.9]}
    small, large = forgetting(before, tiny, samples), forgetting(before, big, samples)
    assert small.auroc == 1.0 and not small.magnitude.meaningful
    small, large = small.magnitude, large.magnitude
    assert small.mean_increase_span == pytest.approx(0.001, rel=1e-3) and small.strong_drop_share == 0.0
    assert large.meaningful and large.strong_drop_share == 0.5
    assert large.mean_increase_span == pytest.approx(1.6) and large.mean_increase_other == pytest.approx(0.25)
    assert forgetting(before, big, samples, drop_nats=5.0).magnitude.meaningful is False


SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is not present (fresh clone)")
def test_model_utility_from_real_authors_world_facts_and_retain(demo_loaded, demo_world, tmp_path) -> None:
    folder = tmp_path / "utility"
    folder.mkdir()
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        rows = json.loads((SHARED_TOFU / f"{name}.json").read_text())[:6]
        (folder / f"{name}.json").write_text(json.dumps(rows))
    model, tok = demo_loaded.model, demo_loaded.tokenizer
    retain = demo_world.retain[:6]
    retain_after = quality(model, tok, retain, encode_records(retain, tok), truth_ratio_form="retain")
    config = make_config("ga", utility_data=str(folder))
    result = model_utility_of(config, model, tok, retain_after)
    parts = result.parts
    assert set(parts) == {"real_authors_perturbed", "world_facts_perturbed", "retain"}
    values = [getattr(parts[s], k) for s in parts for k in ("prob", "rouge_l", "truth_ratio")]
    assert all(0.0 <= v <= 1.0 for v in values) and result.value == pytest.approx(hmean(values))
    assert parts["retain"].truth_ratio == pytest.approx(truth_ratio_retain_form(retain_after.truth_ratios))
    # the demo model never saw real authors: its probability of the true answer among 4 options is no better
    # than about chance, while it still prefers the true retain answers
    assert parts["real_authors_perturbed"].prob < 0.6 and parts["retain"].truth_ratio > 0.2
    no_truth = replace(retain_after, truth_ratio=None)
    assert model_utility_of(config, model, tok, no_truth).value is None


def test_forget_quality_of_a_job_runs_over_the_whole_forget_split(demo_loaded, demo_world) -> None:
    model, tok = demo_loaded.model, demo_loaded.tokenizer
    config = make_config("ga", retain_model="demo")  # the same model as its own reference: identical ratios
    result = forget_quality_of(config, model, tok, demo_world.forget)
    assert result == ForgetQuality(value=1.0, n=len(demo_world.forget))
    capped = make_config("ga", retain_model="demo", forget_quality_max_samples=8)
    assert forget_quality_of(capped, model, tok, demo_world.forget).n == 8
