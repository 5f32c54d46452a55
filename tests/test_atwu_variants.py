"""ATWU's study knobs on the real demo model: the warm start, the Δ NLL reward, the scores averaged over the job
(EMA) and the scorer reading a middle layer."""

from __future__ import annotations

import pytest
import torch

from atwu_core.config import make_config
from atwu_core.forward import Forward, ForwardNeeds, forward
from atwu_core.job import UnlearningJob, run_job
from atwu_core.job_end import score_ema
from atwu_core.models import adapter_enabled
from atwu_core.records import FinalRecord, StepRecord
from atwu_core.runs import RunReader
from atwu_core.weighting.atwu import (
    ATWUScorer,
    ScorerInput,
    apply_scorer,
    load_scorer,
    objective_pair,
    retain_contrast,
    reward_read,
)
from atwu_core.weighting.base import PrepareContext
from atwu_core.weighting.params import ATWUParams


def _config(method: str = "atwu", preset: str = "paper", steps: int = 3, **params):
    return make_config(method, preset, {"scorer_every": 1, **params}, steps=steps, eval_max_samples=2)


def _stream(config, loaded, dataset, run_dir) -> list[StepRecord]:
    return list(UnlearningJob(config, loaded=loaded, dataset=dataset, run_dir=run_dir).stream())


def test_warm_start_holds_the_initial_scorer_then_decays_over_the_updates_it_makes(demo_loaded, demo_world, tmp_path):
    records = _stream(_config(steps=5, scorer_start=3), demo_loaded, demo_world, tmp_path / "r")
    for r in records[:3]:  # before the start: no scorer step, every score the zero-initialised scorer's 0.5
        assert "scorer" not in r.losses and r.lrs["scorer"] == 0.05
        assert {g for gs in r.scores.values() for g in gs} == {0.5}
    assert all("scorer" in r.losses for r in records[3:])
    assert records[3].lrs["scorer"] == pytest.approx(0.025)  # one of the 2 updates made: half the lr left
    assert max(abs(g - 0.5) for gs in records[3].scores.values() for g in gs) > 1e-4
    with pytest.raises(ValueError, match="scorer_start=3 leaves the scorer no update in a 3-step job"):
        _config(steps=3, scorer_start=3).validate()


def test_the_delta_nll_reward_starts_at_zero_and_changes_what_the_scorer_learns(demo_loaded, demo_world, tmp_path):
    plain = _stream(_config(), demo_loaded, demo_world, tmp_path / "nll")
    delta = _stream(_config(reward="delta_nll"), demo_loaded, demo_world, tmp_path / "delta")
    # step 1: nothing has moved yet, so the NLL increase since before training is ~0 on every token
    assert abs(delta[0].losses["scorer_reward"]) < 1e-5
    assert plain[0].losses["scorer_reward"] > 100 * abs(delta[0].losses["scorer_reward"])
    # the memorised model's NLL before is ~0.003, so the two rewards differ little here, but the runs are otherwise
    # bit-identical: any difference is the reward's
    assert delta[1].losses["scorer_reward"] != plain[1].losses["scorer_reward"]
    assert delta[-1].scores != plain[-1].scores
    with pytest.raises(ValueError, match="reward_norm=True divides the reward by its batch mean"):
        _config(pair="matched", reward_norm=True, reward="delta_nll")


def test_the_delta_nll_reward_reads_the_nll_increase_in_both_pairs():
    nll, ref = torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([[0.5, 0.5, 2.0]])
    fw = Forward(nll=nll, mask=torch.ones(1, 3, dtype=torch.bool), sample_index=[0], tokens=3, ref_nll=ref)
    for pair, expected in (("headline", -(nll - ref)), ("matched", -torch.exp(-5.0 * nll) * (nll - ref))):
        g = torch.full((1, 3), 0.5, requires_grad=True)
        objective_pair(ATWUParams(pair=pair, reward="delta_nll"), "ga").reward(g, fw).backward()
        assert torch.allclose(g.grad * 3, expected), pair  # d/dg of the flat mean over the 3 tokens


def test_score_ema_decays_per_model_step_between_a_samples_scores():
    steps = [
        StepRecord(1, 0.0, {}, {}, 0, scores={"a": [0.2, 1.0]}, loss_weights={}, probs={}),
        StepRecord(3, 0.0, {}, {}, 0, scores={"a": [0.6, 0.0]}, loss_weights={}, probs={}),
    ]
    final = FinalRecord(4, scores={"a": [1.0, 0.0], "b": [0.3]}, loss_weights={}, probs={})
    # a: 0.2 -> (2 steps later, weight 1 - 0.5^2) 0.5 -> (final pass at step 5, weight 0.75) 0.875
    assert score_ema(steps, final, 0.5) == {"a": pytest.approx([0.875, 0.0625]), "b": [0.3]}
    assert score_ema(steps, final, 0.0) == final.scores  # no memory: the final scores


def test_the_score_ema_is_recorded_beside_the_final_scores_and_judged(demo_loaded, demo_world, tmp_path):
    job = run_job(_config(score_ema=0.8), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    final = RunReader(tmp_path / "r").final
    assert set(final.score_ema) == set(final.scores)
    assert any(
        e != pytest.approx(s, abs=1e-4) for sid in final.scores for e, s in zip(final.score_ema[sid], final.scores[sid])
    )
    alignment = job.metrics.alignment
    assert 0 <= alignment.ema_auroc <= 1 and 0 <= alignment.ema_auprc <= 1
    assert alignment.ema_auroc != pytest.approx(alignment.auroc, abs=1e-6)
    assert RunReader(tmp_path / "r").metrics.alignment == alignment  # written and read back
    wga = make_config("wga", "demo", steps=1, eval_max_samples=2)
    wga = run_job(wga, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "wga")
    assert "ema_auroc" not in wga.metrics.to_json()["alignment"] and not RunReader(tmp_path / "wga").final.score_ema


def test_the_scorer_reads_a_middle_layer_at_the_predicting_position(demo_loaded, demo_world, tmp_path):
    job = run_job(
        _config(hidden_layer=2, hidden_position="predicting"),
        loaded=demo_loaded,
        dataset=demo_world,
        run_dir=tmp_path / "r",
    )
    model, samples = demo_loaded.model, job.forget[:2]
    with torch.no_grad():
        fw = forward(model, samples, [0, 1], job.pad_id, ForwardNeeds(hidden_layer=2))
        states = model(input_ids=torch.tensor([samples[0].input_ids]), output_hidden_states=True).hidden_states
    assert torch.allclose(fw.hidden[0, : len(samples[0].input_ids)], states[2][0], atol=1e-5)
    inp = ScorerInput(layer=2, position="predicting")
    assert torch.equal(inp(fw.hidden, fw.mask), fw.hidden[:, :-1].float())  # position k predicts token k + 1
    scorer, saved = load_scorer(job.run_dir)
    assert saved == inp
    with adapter_enabled(demo_loaded, job.run_dir) as unlearned:
        again = apply_scorer(scorer, saved, unlearned, job.forget, job.pad_id)
    final = RunReader(job.run_dir).final.scores
    assert max(abs(g - 0.5) for s in job.forget for g in final[s.record_id]) > 1e-4
    for sample, scores in zip(job.forget, again):
        assert scores == pytest.approx(final[sample.record_id], abs=1e-4)


def test_the_retain_contrast_teaches_the_scorer_that_retain_tokens_are_not_forget_specific(
    demo_loaded, demo_world, tmp_path
):
    g = torch.tensor([[0.0, 0.5, 0.9]])
    assert retain_contrast(g, torch.tensor([[True, True, False]])).item() == pytest.approx(
        0.5 * torch.log(torch.tensor(2.0)).item()
    )
    jobs, retain_g = {}, {}
    for weight in (0.0, 2.0):
        jobs[weight] = job = run_job(
            _config(steps=6, retain_contrast=weight),
            loaded=demo_loaded,
            dataset=demo_world,
            run_dir=tmp_path / f"{weight}",
        )
        scorer, inp = load_scorer(job.run_dir)
        with torch.no_grad():
            scores = apply_scorer(scorer, inp, demo_loaded.model, job.retain, job.pad_id)
        retain_g[weight] = sum(map(sum, scores)) / sum(map(len, scores))
    logged = [r.losses["scorer_retain_g"] for r in jobs[2.0].records]
    assert len(logged) == 6 and logged[-1] < logged[0] - 0.05  # the retain batch's mean score falls as it learns
    assert all("scorer_retain_g" not in r.losses for r in jobs[0.0].records)
    assert retain_g[2.0] < retain_g[0.0] - 0.05, retain_g
    with pytest.raises(ValueError, match="retain_contrast=1.0 reads the retain batch, which retain_loss=none"):
        _config(retain_contrast=1.0, retain_loss="none")
    with pytest.raises(ValueError, match="retain_contrast with hidden_centre=true"):
        _config(retain_contrast=1.0, hidden_centre=True)


def test_the_reward_read_caps_then_standardises_within_each_answer():
    nll = torch.tensor([[1.0, 3.0, 20.0, 0.0], [12.0, 15.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert torch.equal(reward_read(nll, mask, 0.0, False), nll)  # the paper: the NLL itself
    capped = reward_read(nll, mask, 10.0, False)
    assert capped.tolist() == [[1.0, 3.0, 10.0, 0.0], [10.0, 10.0, 0.0, 0.0]]
    z = reward_read(nll, mask, 10.0, True)
    first = torch.tensor([1.0, 3.0, 10.0])
    assert torch.allclose(z[0, :3], (first - first.mean()) / first.std(unbiased=False))
    assert z[0, 3] == 0 and torch.equal(z[1], torch.zeros(4))  # every token past the cap reads alike: no push


def test_the_headline_reward_pushes_each_score_by_its_capped_standardised_read():
    nll = torch.tensor([[2.0, 0.5, 12.0]])
    fw = Forward(nll=nll, mask=torch.ones(1, 3, dtype=torch.bool), sample_index=[0], tokens=3, ref_nll=nll * 0)
    read = torch.tensor([2.0, 0.5, 10.0])
    for standardise, expected in ((False, read), (True, (read - read.mean()) / read.std(unbiased=False))):
        g = torch.full((1, 3), 0.5, requires_grad=True)
        params = ATWUParams(reward_cap=10.0, reward_standardise=standardise)
        objective_pair(params, "ga").reward(g, fw).backward()
        assert torch.allclose(g.grad[0] * 3, -expected), standardise  # +mean[(1 - g) read]: d/dg = -read / 3


def test_a_standardised_reward_leaves_the_level_to_the_budget_where_a_raw_nll_saturates(demo_loaded):
    """TOFU's failure in miniature: every answer token at ~20 nats. The raw headline reward pushes every score up
    (their selected share goes to 1 against a budget of 0.3); standardised, it only ranks tokens, so the share stays
    near the budget and the scores keep their order."""
    gen = torch.Generator().manual_seed(0)
    dim = demo_loaded.model.config.hidden_size
    hidden = torch.randn(8, 13, dim, generator=gen)  # [B, L, d]: 12 answer tokens after a 1-token prompt
    mask = torch.ones(8, 12, dtype=torch.bool)
    nll = 20 + torch.randn(8, 12, generator=gen)  # [B, T]
    fw = Forward(nll=nll, mask=mask, sample_index=list(range(8)), tokens=8 * 13, hidden=hidden, ref_nll=nll * 0)
    shares, order = {}, {}
    for standardise in (False, True):
        params = ATWUParams(scorer_every=1, budget=0.3, reward_standardise=standardise)
        scheme = ATWUScorer(params, "ga")
        scheme.prepare(PrepareContext(demo_loaded.model, None, [], [], steps=40, max_length=16, chat_template=False))
        torch.manual_seed(0)
        logs = [scheme.step(fw, step)[1] for step in range(1, 41)]
        shares[standardise] = logs[-1]["scorer_selected"].item()
        g = scheme.weigh(fw).scores  # [B, T]
        order[standardise] = torch.corrcoef(torch.stack([g.flatten(), nll.flatten()]))[0, 1].item()
    assert shares[False] >= 0.95
    assert 0.15 <= shares[True] <= 0.45
    # both follow the NLL, the standardised scorer more closely: its scores are not squashed against 1
    assert order[True] > 0.3 and order[True] > order[False] + 0.2
    with pytest.raises(ValueError, match="reward_standardise=True has no effect with pair=matched"):
        ATWUParams(pair="matched", reward_standardise=True)
