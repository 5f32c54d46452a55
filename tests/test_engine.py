"""The engine's pieces against closed forms on hand-made tensors, and its extension points on the real demo model:
the losses, each scheme, both ATWU objective pairs, the forgetting metrics, saved scorers, a toy scheme
registered from outside, and run folders written before the typed records."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from atwu_core import losses, metrics
from atwu_core.cli import main
from atwu_core.config import JobConfig, job_settings, make_config, split_overrides
from atwu_core.data import DataError, Dataset, Record
from atwu_core.forward import Forward
from atwu_core.job import UnlearningJob, run_job
from atwu_core.methods import GA, REGISTRY, ATWUParams, Labels, MethodSpec, RetainParams, register
from atwu_core.records import SampleRecord
from atwu_core.runs import RunReader, list_runs
from atwu_core.weighting import ProbabilityWeighting, SpanMask, TokenWeights, WeightingScheme
from atwu_core.weighting.atwu import (
    Scorer,
    apply_scorer,
    load_scorer,
    model_weights,
    npo_weights,
    regularisers,
    scorer_reward,
)

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


def _fw(nll: list[list[float]], mask: list[list[int]], index: list[int] | None = None) -> Forward:
    m = torch.tensor(mask, dtype=torch.bool)
    n = torch.tensor(nll) * m
    return Forward(nll=n, mask=m, sample_index=index or list(range(len(nll))), tokens=int(m.sum()))


# ------------------------------------------------------------------------------------------ losses, closed forms

NLL = [[0.1, 2.0, 0.5], [1.0, 0.3, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]


def test_masked_mean_is_a_flat_mean_over_valid_tokens():
    fw = _fw(NLL, MASK)
    assert losses.masked_mean(fw.nll, fw.mask).item() == pytest.approx((0.1 + 2.0 + 0.5 + 1.0 + 0.3) / 5)


def test_weighted_ga_npo_and_simnpo_match_their_formulas():
    fw = _fw(NLL, MASK)
    w = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1.0, 0.0]])
    assert losses.weighted_ga(fw.nll, fw.mask, w).item() == pytest.approx(-(0.1 + 1.0 + 0 + 2.0 + 0.3) / 5)
    ref = torch.tensor([1.0, 2.0])
    scored = [0.1 + 1.0, 2.0 + 0.3]
    expected = -(2 / 0.1) * sum(math.log(1 / (1 + math.exp(-0.1 * (s - r)))) for s, r in zip(scored, [1.0, 2.0])) / 2
    assert losses.npo(fw.nll, fw.mask, w, ref, 0.1).item() == pytest.approx(expected, rel=1e-5)
    means = [(0.1 + 1.0) / 3, (2.0 + 0.3) / 2]
    expected = -(2 / 2.5) * sum(math.log(1 / (1 + math.exp(-(2.5 * m - 0.5)))) for m in means) / 2
    assert losses.simnpo(fw.nll, fw.mask, w, 2.5, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_retain_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    logp = torch.log_softmax(torch.randn(2, 3, 7), -1)
    mask = torch.tensor(MASK, dtype=torch.bool)
    assert losses.retain_kl(logp, logp, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.retain_kl(logp, torch.log_softmax(torch.randn(2, 3, 7), -1), mask).item() > 0


# ------------------------------------------------------------------------------------------ schemes


def test_probability_weighting_is_p_beta1_times_one_minus_p_beta2():
    fw = _fw(NLL, MASK)
    w = ProbabilityWeighting(5.0, 1.0).weigh(fw).loss
    p = math.exp(-0.5)
    assert w[0, 2].item() == pytest.approx(p**5 * (1 - p))
    assert w[1, 2].item() == 0.0  # off the answer


def test_gt_mask_weights_exactly_the_span_tokens():
    class Ctx:
        samples = [
            SampleRecord("a", "", "", [], [], [], [True, False, True], [], True),
            SampleRecord("b", "", "", [], [], [], [False, True], [], True),
        ]

    scheme = SpanMask()
    scheme.prepare(Ctx())
    w = scheme.weigh(_fw(NLL, MASK, [0, 1]))
    assert w.loss.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]] and torch.equal(w.loss, w.scores)
    Ctx.samples[1].has_ground_truth = False
    with pytest.raises(DataError, match="gt-mask needs ground-truth spans on every forget sample; 1 of 2"):
        scheme.prepare(Ctx())


# ------------------------------------------------------------------------------------------ the two ATWU pairs

BETA = 5.0


def _pair_inputs():
    g = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3]], requires_grad=True)
    nll = torch.tensor(NLL, requires_grad=True)
    return g, nll, torch.tensor(MASK, dtype=torch.bool)


def test_headline_model_weight_is_g_times_p_to_the_beta_g():
    g, nll, mask = _pair_inputs()
    w = model_weights("headline", g, nll, mask, BETA)
    assert w[0, 1].item() == pytest.approx(0.9 * math.exp(-BETA * 0.9 * 2.0))
    assert w[1, 2].item() == 0.0


def test_matched_model_weight_is_g_times_p_to_the_beta_and_scaled_drops_g():
    g, nll, mask = _pair_inputs()
    assert model_weights("matched", g, nll, mask, BETA)[0, 1].item() == pytest.approx(0.9 * math.exp(-BETA * 2.0))
    assert model_weights("matched", g, nll, mask, BETA, "scaled")[0, 1].item() == pytest.approx(
        math.exp(-BETA * 0.9 * 2.0)
    )


def test_headline_scorer_reward_is_the_plain_nll_and_moves_only_the_scorer():
    g, nll, mask = _pair_inputs()
    reward = scorer_reward("headline", g, nll.detach(), mask, BETA)
    valid = [(0.2, 0.1), (0.9, 2.0), (0.5, 0.5), (0.7, 1.0), (0.1, 0.3)]
    assert reward.item() == pytest.approx(sum((1 - gi) * n for gi, n in valid) / 5)
    reward.backward()
    assert g.grad[0, 1].item() == pytest.approx(-2.0 / 5)  # d/dg (1 - g) nll / N: more weight where nll is high
    assert nll.grad is None  # the reward is computed on sg(nll)


def test_matched_scorer_reward_is_saturated_and_reward_norm_divides_by_its_mean():
    g, nll, mask = _pair_inputs()
    valid = [(0.2, 0.1), (0.9, 2.0), (0.5, 0.5), (0.7, 1.0), (0.1, 0.3)]
    r = [n * math.exp(-BETA * n) for _, n in valid]
    plain = scorer_reward("matched", g, nll.detach(), mask, BETA)
    assert plain.item() == pytest.approx(-sum(gi * ri for (gi, _), ri in zip(valid, r)) / 5)
    normed = scorer_reward("matched", g, nll.detach(), mask, BETA, reward_norm=True)
    assert normed.item() == pytest.approx(plain.item() / (sum(r) / 5), rel=1e-5)


def test_regularisers_budget_is_straight_through_and_npo_weights_sum_to_length():
    g, _, mask = _pair_inputs()
    entropy, budget, selected = regularisers(g, mask, 0.2)
    assert selected.tolist() == pytest.approx([1 / 3, 1 / 2])  # strict g > 0.5
    assert budget.item() == pytest.approx(((1 / 3 - 0.2) ** 2 + (0.5 - 0.2) ** 2) / 2)
    budget.backward()
    assert g.grad is not None and g.grad[1, 2] == 0  # gradient flows to valid tokens only
    w = npo_weights(g.detach(), mask)
    assert w.sum(1).tolist() == pytest.approx([3.0, 2.0])


def test_mlp_scorer_starts_at_one_half():
    scorer = Scorer(16, layers=3, width=8)
    assert torch.sigmoid(scorer(torch.randn(4, 16))).tolist() == pytest.approx([0.5] * 4)


# ------------------------------------------------------------------------------------------ forgetting metrics


def test_forgetting_metrics_on_a_hand_made_case():
    samples = [SampleRecord("a", "", "", list("wxyz"), [], [], [True, True, False, False], [], True)]
    before = {"a": [0.9, 0.8, 0.9, 0.5]}
    after = {"a": [0.09, 0.4, 0.9, 0.6]}  # span tokens' NLL rises by log 10 and log 2; the others by 0 and -log 1.2
    out = metrics.forgetting(before, after, samples)
    assert out.auroc == 1.0
    assert out.span_share == pytest.approx(1.0)  # no other token's NLL rose
    after["a"][2] = 0.45  # now a frame token is forgotten too, by log 2
    out = metrics.forgetting(before, after, samples)
    assert out.span_share == pytest.approx((math.log(10) + math.log(2)) / (math.log(10) + 2 * math.log(2)))
    assert out.auroc == pytest.approx(0.75)  # (1 + 0.5 tie) / 2 for the span token of log 2; 1 for log 10


# ------------------------------------------------------------------------------------------ jobs on the demo model


def _short(method: str, preset: str = "demo", **kw):
    return make_config(method, preset, steps=kw.pop("steps", 3), eval_max_samples=kw.pop("eval_max_samples", 2), **kw)


def test_headline_pair_weights_the_model_with_the_updated_scorer(demo_loaded, demo_world, tmp_path):
    config = _short("atwu", preset="paper", params={"scorer_every": 1}, steps=1)
    job = UnlearningJob(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    (record,) = list(job.stream())
    scores = [g for gs in record.scores.values() for g in gs]
    assert max(abs(g - 0.5) for g in scores) > 1e-4  # the scorer stepped before the model's weights were formed
    assert json.loads((job.run_dir / "config.json").read_text())["params"]["pair"] == "headline"


def test_atwu_inside_npo_gives_weights_that_sum_to_each_answers_length(demo_loaded, demo_world, tmp_path):
    """The row's NPO objective reaches the scorer: its loss weights are g T / sum g (the GA pairs' are not)."""
    config = _short("atwu-npo", params={"scorer_every": 1}, steps=2)
    job = UnlearningJob(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    records = list(job.stream())
    assert all("scorer_reward" in r.losses for r in records)
    for sid, weights in records[-1].loss_weights.items():
        assert sum(weights) == pytest.approx(len(weights), rel=1e-3), sid
        assert weights != pytest.approx(records[-1].scores[sid])


def test_a_saved_scorer_reproduces_the_final_pass(demo_loaded, demo_world, tmp_path):
    from atwu_core.models import adapter_enabled

    config = _short("atwu", params={"snapshot_every": 2}, steps=4)
    job = run_job(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    assert sorted(p.name for p in (job.run_dir / "scorer").iterdir()) == [
        "scorer.json",
        "scorer.safetensors",
        "step-000002.safetensors",
        "step-000004.safetensors",
    ]
    device = next(demo_loaded.model.parameters()).device
    scorer, inp = load_scorer(job.run_dir, device=device)
    with adapter_enabled(demo_loaded, job.run_dir) as unlearned:
        again = apply_scorer(scorer, inp, unlearned, job.forget, job.pad_id, batch_size=config.forget_batch_size)
    final = RunReader(job.run_dir).final.scores
    for sample, scores in zip(job.forget, again):
        assert scores == pytest.approx(final[sample.record_id], abs=1e-4)
    early, _ = load_scorer(job.run_dir, "step-000002", device=device)
    assert not torch.equal(early.net[-1].weight, scorer.net[-1].weight)


def test_the_joint_update_trains_the_scorer_every_step(demo_loaded, demo_world, tmp_path):
    job = UnlearningJob(
        _short("atwu", params={"update": "joint", "scorer_every": 5}),
        loaded=demo_loaded,
        dataset=demo_world,
        run_dir=tmp_path / "r",
    )
    assert all("scorer" in r.losses for r in job.stream())


class EveryThird(WeightingScheme):
    """A toy scheme: weight 1 on every third answer token."""

    def weigh(self, fw: Forward) -> TokenWeights:
        rank = fw.mask.long().cumsum(1) - 1  # [B, T] position within the answer
        w = ((rank % 3 == 0) & fw.mask).float()
        return TokenWeights(loss=w, scores=w)


def test_a_scheme_registered_from_outside_runs_without_touching_the_job_or_the_app(demo_loaded, demo_world, tmp_path):
    """What adding a scheme costs: its file (here, the class above) and one row; the job, the app and its HTML
    report read the row."""
    from app.report import run_report, unpack
    from app.run_views import QUANTITIES, SCALES, sample_figure

    labels = Labels("every third answer token: 1", "1 on every third token")
    register(MethodSpec("every-third", "toy", RetainParams, lambda p, objective: EveryThird(), lambda p: GA, labels))
    try:
        job = run_job(_short("every-third"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
        snap = RunReader(job.run_dir).snapshot()
        sample = snap.samples[0]
        shown = [
            sample_figure(snap, sample, key, SCALES[0])[0].layout.annotations[0].text for key in QUANTITIES.values()
        ]
        packed = re.search(r"<script type='text/plain' id='figures'>(.*?)</script>", run_report(snap), re.DOTALL)
        reported = unpack(packed.group(1))  # the report's figures, as JSON
        with pytest.raises(ValueError, match="'every-third' is already registered"):
            register(MethodSpec("every-third", "again", RetainParams, lambda p, o: EveryThird(), lambda p: GA))
    finally:
        del REGISTRY["every-third"]
    assert shown == ["score: every third answer token: 1", "loss weight: 1 on every third token"]
    assert shown[0] in reported  # the HTML report (which draws scores) names them as the app does
    first = RunReader(job.run_dir).final.scores[job.forget[0].record_id]
    assert first[:4] == [1.0, 0.0, 0.0, 1.0]
    assert job.metrics.forget.after.prob < job.metrics.forget.before.prob


def test_set_and_flags_are_one_way_to_set_a_field(monkeypatch):
    from atwu_core import cli

    seen = []

    def record(*args, **kwargs):  # what the CLI asks for, then stop before loading anything
        seen.append((args, kwargs))
        raise SystemExit

    monkeypatch.setattr(cli, "make_config", record)
    for argv in (
        ["unlearn", "--set", "steps=3", "--set", "seed=4"],
        ["unlearn", "--steps", "3", "--seed", "4"],
        ["unlearn", "--steps", "3", "--seed", "4", "--set", "steps=9"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
    assert seen[0] == seen[1] == seen[2]
    assert split_overrides(["forget_ids=a, b", "chat_template=false"])[0] == {
        "forget_ids": ["a", "b"],
        "chat_template": False,
    }
    with pytest.raises(ValueError, match="chat_template must be true or false"):
        split_overrides(["chat_template=maybe"])


def test_the_config_holds_typed_parameters_and_config_json_keeps_its_form():
    config = make_config("atwu", "paper", {"beta": 3})
    assert isinstance(config.params, ATWUParams) and config.params.beta == 3.0
    written = json.loads(json.dumps(config.to_json()))
    assert written["params"]["beta"] == 3.0 and written["params"]["pair"] == "headline"  # the flat dict, as before
    assert JobConfig.from_json(written) == config
    job = job_settings()
    assert job["eval_max_samples"].parse("none") is None and job["lora_layers"].parse("3") == 3
    assert job["forget_ids"].parse("a, b") == ["a", "b"] and job["lr"].parse("0.5") == 0.5
    with pytest.raises(ValueError, match="eval_max_samples must be a whole number at least 1 or none, got 'many'"):
        job["eval_max_samples"].parse("many")
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 1000000, got 'none'"):
        job["steps"].parse("none")


# ------------------------------------------------------------------------------------------ old run folders


def test_an_old_format_run_folder_still_opens(tmp_path, capsys):
    run_dir = shutil.copytree(OLD_RUN, tmp_path / "runs" / "old")
    snap = RunReader(run_dir).snapshot()
    assert snap.status.state == "completed" and snap.status.phase == "done"
    sid = snap.samples[0].record_id
    assert snap.samples[0].span_labels[1] == "forget" and snap.samples[0].span_labels[0] is None
    steps, rows = snap.matrix(sid)
    assert steps == [1, 2] and rows[0] == snap.step_records[0].scores[sid]  # `weights` read as the scores
    assert snap.latest()[sid] == snap.final.scores[sid]
    assert list_runs(tmp_path / "runs")[0]["method"] == "atwu"
    config = JobConfig.load(run_dir / "config.json")  # written before `pair`: the matched pair, typed on reading
    assert isinstance(config.params, ATWUParams) and config.params.pair == "matched" and config.params.reward_norm
    assert main(["eval", str(run_dir)]) == 0
    assert "alignment  auroc=0.750" in capsys.readouterr().out


def test_an_old_config_json_reads_in_todays_keys_through_one_migrate_everywhere(tmp_path):
    """`reference` (today `retain_model`), ATWU before `pair`, `hidden_norm` as a switch: every reader of a saved
    config sees today's keys, the typed one and the raw one alike."""
    from atwu_core.methods import method_labels
    from atwu_core.rerun import cli_command, config_diff
    from atwu_core.run_table import runs_table

    run_dir = shutil.copytree(OLD_RUN, tmp_path / "runs" / "old")
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**saved, "reference": "some/retain-model"}))
    reader = RunReader(run_dir)
    raw = reader.config
    assert "reference" not in raw and raw["retain_model"] == "some/retain-model"
    assert raw["params"]["pair"] == "matched" and raw["params"]["hidden_norm"] == "none"
    typed = reader.job_config
    assert typed == reader.snapshot().job_config == JobConfig.load(run_dir / "config.json")
    assert typed.retain_model == "some/retain-model" and typed.params.pair == "matched"
    assert method_labels(raw["method"], raw["params"]).loss_weight == "g · p^β"  # the matched pair's, as it ran
    assert "--retain-model some/retain-model" in cli_command(typed)
    assert "--retain-model some/retain-model" in runs_table(tmp_path / "runs")[0]["settings"]
    diff = config_diff({"old": raw, "today": make_config("atwu", "demo", steps=2, eval_max_samples=4).to_json()})
    assert diff["retain_model"] == {"old": "some/retain-model", "today": None} and "reference" not in diff


def test_a_dataset_without_spans_is_refused_by_gt_mask(demo_loaded, tmp_path):
    data = Dataset("plain", [Record("a", "Who?", "Nobody at all.")], [Record("b", "What?", "Nothing much.")])
    with pytest.raises(Exception, match="gt-mask needs ground-truth spans"):
        run_job(_short("gt-mask"), loaded=demo_loaded, dataset=data, run_dir=tmp_path / "r")
    assert RunReader(tmp_path / "r").status.state == "failed"


def test_a_float16_model_trains_its_lora_with_a_loss_scaler(demo_world, tmp_path):
    from atwu_core.models import load_model

    half = load_model("demo", dtype="float16")
    config = _short("graddiff", dtype="float16", steps=3)
    job = run_job(config, loaded=half, dataset=demo_world, run_dir=tmp_path / "r")
    assert job.optimiser.scaler.is_enabled() and job.optimiser.scaler.get_scale() > 0
    assert all(math.isfinite(v) for r in job.records for v in r.losses.values())
    assert job.metrics.forget.after.prob < job.metrics.forget.before.prob  # it did train
    with pytest.raises(ValueError, match="full fine-tuning in float16"):
        _short("graddiff", dtype="float16", full=True)
