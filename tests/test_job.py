"""Every method as a short job on the real demo model; run folders, reopening, cancel, failure paths."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import threading

import pytest
import torch
from peft import PeftModel

from atwu_core.cancel import CancelToken
from atwu_core.config import METHODS, make_config
from atwu_core.files import write_json_atomic
from atwu_core.job import JobError, UnlearningJob, run_job
from atwu_core.metrics_record import Metrics
from atwu_core.records import Status
from atwu_core.runs import RunReader, RunWriter, list_runs, wait_for_state


def _fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _short(method: str, **kw):
    return make_config(method, steps=kw.pop("steps", 3), eval_max_samples=kw.pop("eval_max_samples", 4), **kw)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_records_every_token(method, demo_loaded, demo_world, tmp_path):
    before = _fingerprint(demo_loaded.model)
    job = run_job(_short(method), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "run")
    run = RunReader(job.run_dir)
    samples = {s.record_id: s for s in run.samples}
    assert len(samples) == len(demo_world.forget)
    steps = run.step_records()
    assert [r.step for r in steps] == [1, 2, 3]
    for rec in steps:
        assert set(rec.scores) == set(samples)  # the demo forget set fits one batch
        for sid, w in rec.scores.items():
            assert len(w) == len(samples[sid].tokens) == len(rec.probs[sid]) == len(rec.loss_weights[sid])
        assert all(torch.isfinite(torch.tensor(list(rec.losses.values()))))
    assert run.final is not None and set(run.final.scores) == set(samples)
    m = run.metrics
    assert 0.0 <= m.alignment.auroc <= 1.0
    for split in ("forget", "retain"):
        for when in ("before", "after"):
            quality = getattr(m.quality(split), when)
            assert None not in (quality.prob, quality.rouge_l, quality.exact, quality.extraction_strength)
    assert m.timing.tokens_per_second > 0
    assert run.status.state == "completed"
    assert not isinstance(demo_loaded.model, PeftModel)
    assert _fingerprint(demo_loaded.model) == before, "the loaded model must never be modified"


def test_uniform_weights_give_chance_alignment(demo_loaded, demo_world, tmp_path):
    job = run_job(_short("graddiff", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    assert job.metrics.alignment.auroc == pytest.approx(0.5)


def test_atwu_scores_start_at_one_half_and_move(demo_loaded, demo_world, tmp_path):
    job = UnlearningJob(_short("atwu", steps=4), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    records = list(job.stream())
    first = [w for ws in records[0].scores.values() for w in ws]
    assert first == pytest.approx([0.5] * len(first))
    last = [w for ws in records[-1].scores.values() for w in ws]
    assert max(abs(w - 0.5) for w in last) > 1e-3
    assert "scorer" in records[-1].losses


def test_adapter_reloads_with_peft_and_changes_the_model(demo_loaded, demo_world, tmp_path):
    job = run_job(_short("ga", steps=5), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    ids = torch.tensor([job.forget[0].input_ids], device=next(demo_loaded.model.parameters()).device)
    with torch.no_grad():
        base_logits = demo_loaded.model(ids).logits
        peft = PeftModel.from_pretrained(demo_loaded.model, str(job.run_dir / "adapter"))
        after_logits = peft(ids).logits
        demo_loaded.model = peft.unload()
    assert not torch.allclose(base_logits, after_logits)


def test_full_finetuning_trains_a_copy(demo_loaded, demo_world, tmp_path):
    before = _fingerprint(demo_loaded.model)
    job = run_job(
        _short("graddiff", steps=2, full=True), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r"
    )
    assert (job.run_dir / "model" / "model.safetensors").is_file()
    assert _fingerprint(demo_loaded.model) == before


def test_reopen_run_and_list_it(demo_loaded, demo_world, tmp_path):
    job = run_job(_short("wga"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "runs" / "a")
    run = RunReader(job.run_dir).snapshot()
    sid = run.samples[0].record_id
    steps, matrix = run.matrix(sid)
    assert steps == [1, 2, 3] and len(matrix[0]) == len(run.samples[0].tokens)
    assert run.latest()[sid] == run.final.scores[sid]
    config = json.loads((job.run_dir / "config.json").read_text())
    assert config["method"] == "wga" and config["seed"] == 0 and "versions" in config
    summary = list_runs(tmp_path / "runs")
    assert summary[0]["method"] == "wga" and summary[0]["state"] == "completed"


def test_cancel_is_honoured_within_a_step_and_leaves_everything_usable(demo_loaded, demo_world, tmp_path):
    before = _fingerprint(demo_loaded.model)
    job, cancel = (
        UnlearningJob(make_config("atwu", steps=500), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r"),
        CancelToken(),
    )
    assert job.state == "created"
    thread = threading.Thread(target=job.run, args=(cancel,))
    thread.start()
    wait_for_state(job.run_dir, ("running",), timeout=30)
    while not RunReader(job.run_dir).step_records():
        thread.join(0.05)
    cancel.cancel()
    thread.join(60)
    status = RunReader(job.run_dir).status
    assert status.state == job.state == "cancelled" and status.steps_done < 500
    assert len(RunReader(job.run_dir).step_records()) == status.steps_done
    assert (job.run_dir / "adapter" / "adapter_config.json").is_file()
    assert RunReader(job.run_dir).metrics.alignment.auroc is not None
    assert _fingerprint(demo_loaded.model) == before
    run_job(_short("ga", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r3")  # still usable


def test_a_diverging_job_fails_with_a_clear_error(demo_loaded, demo_world, tmp_path):
    before = _fingerprint(demo_loaded.model)
    with pytest.raises(ValueError, match="gamma must be a finite number"):  # refused before anything loads
        _short("graddiff", params={"gamma": "nan"})
    config = _short("graddiff", steps=2, params={"gamma": 1e300})  # lr is capped at 1 now; gamma overflows fp32
    with pytest.raises(JobError, match="lower the learning rate"):
        run_job(config, loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    status = RunReader(tmp_path / "r").status
    assert status.state == "failed" and "lower the learning rate" in status.error
    assert _fingerprint(demo_loaded.model) == before


def test_existing_run_folder_is_not_overwritten(demo_loaded, demo_world, tmp_path):
    run_job(_short("ga", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    with pytest.raises(FileExistsError):
        run_job(_short("ga", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")


def test_atomic_json_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1, "bad": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1, "bad": None}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1, "bad": None}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"params": {"beta": "high"}}, "beta must be a number"),
        ({"params": {"nonsense": 1}}, "has no parameter 'nonsense'"),
        ({"params": {"saturation": "cubic"}}, "saturation must be one of fixed, scaled"),
        # settings the chosen variant ignores are refused, not silently dropped
        ({"params": {"pair": "headline"}}, r"reward_norm=True has no effect with pair=headline"),
        ({"params": {"pair": "headline", "reward_norm": False, "saturation": "scaled"}}, "saturation='scaled' has"),
        ({"params": {"scorer_width": 64}}, "scorer_width=64 has no effect with scorer_layers=1"),
        ({"method": "tokenunlearn", "params": {"tu_temperature": 0.5}}, "no effect with tu_selection=hard"),
        ({"method": "tokenunlearn", "params": {"tu_selection": "soft", "tu_top_fraction": 0.5}}, "tu_selection=soft"),
        ({"method": "tokenunlearn", "params": {"npo_beta": 0.2}}, "npo_beta=0.2 has no effect with tu_base=ga"),
    ],
)
def test_bad_parameters_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**{"method": "atwu", **overrides})


def test_default_atwu_job_forgets_keeps_and_aligns(demo_loaded, demo_world, tmp_path):
    """The product's headline claim on the demo world: forget gone, retain kept, scores that find the spans
    better than the probability heuristic. (Measured 0.853 +- 0.013 AUROC over seeds 0-2 in the alignment study;
    the targets are discussed in docs/results.md, not tuned into this test.)"""
    job = run_job(make_config("atwu"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "atwu")
    m = job.metrics
    _facts_match_a_direct_check(job, demo_loaded, demo_world)
    assert m.forget.after.exact <= 0.10
    assert m.retain.after.exact >= 0.90 * m.retain.before.exact
    assert m.alignment.auroc >= 0.80
    wga = run_job(
        make_config("wga", eval_max_samples=4), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "wga"
    )
    assert m.alignment.auroc > wga.metrics.alignment.auroc + 0.1


def _facts_match_a_direct_check(job: UnlearningJob, demo_loaded, demo_world) -> None:
    """The job's `facts` agree with its final model's greedy answers asked one by one, span text by span text."""
    from atwu_core.generation import greedy_answer
    from atwu_core.models import adapter_enabled

    facts = job.metrics.facts
    norm = lambda text: " ".join(text.lower().split())  # noqa: E731
    leaked: dict[str, int] = {}
    with adapter_enabled(demo_loaded, job.run_dir) as unlearned:
        for record in demo_world.forget:
            said = norm(greedy_answer(unlearned, demo_loaded.tokenizer, record.question, max_new_tokens=200))
            verdicts = facts.per_sample[record.id].spans
            direct = [norm(record.answer[sp.start : sp.end]) in said for sp in record.forget_spans]
            assert [v.leaked for v in verdicts] == direct, record.id
            for sp, hit in zip(record.forget_spans, direct):
                leaked[sp.label] = leaked.get(sp.label, 0) + hit
    assert facts.n_spans == sum(len(r.forget_spans) for r in demo_world.forget)
    assert {k: v.leaked for k, v in facts.per_label.items()} == leaked
    assert facts.leak_rate == pytest.approx(sum(leaked.values()) / facts.n_spans)
    assert facts.n_leaked < facts.n_spans  # the default job forgets some facts outright


def test_two_ga_steps_forget_nothing_and_say_so(demo_loaded, demo_world, tmp_path):
    """A 2-step GA job barely moves the span tokens: its forgetting ranking is flagged as not meaningful, and
    nearly every fact is still said (issue 20: it scored forgetting AUROC 0.80, span share 0.98)."""
    job = run_job(make_config("ga", steps=2), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "ga")
    forgot, facts = job.metrics.forgetting, job.metrics.facts
    assert forgot.magnitude.meaningful is False and forgot.magnitude.strong_drop_share < 0.1
    assert forgot.magnitude.mean_increase_span < 0.1
    assert facts.leak_rate >= 0.9 and facts.extractable_rate >= 0.9
    assert len(job.metrics.trajectory.mean_increase_span) == 2


def test_a_run_whose_process_died_reads_as_interrupted(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    writer = RunWriter(tmp_path / "r")
    writer.write_json("config.json", {"method": "ga"})
    writer.status(Status("running", 3, 10, phase="training"))
    assert RunReader(tmp_path / "r").status.state == "running"  # this process is alive
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    write_json_atomic(tmp_path / "r" / "status.json", {**status, "pid": int(dead.stdout)})
    assert RunReader(tmp_path / "r").status.state == "interrupted"
    assert list_runs(tmp_path)[0]["state"] == "interrupted"
    writer.close()


def test_lora_on_the_top_layers_only_trains_those_layers(demo_loaded, demo_world, tmp_path):
    n_layers = demo_loaded.model.config.num_hidden_layers
    job = run_job(
        _short("graddiff", steps=2, lora_layers=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r"
    )
    from safetensors.torch import load_file

    names = load_file(str(job.run_dir / "adapter" / "adapter_model.safetensors")).keys()
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in names}
    assert layers == {n_layers - 1}
    assert {n.split(".")[-3] for n in names} >= {"q_proj", "down_proj"}  # every linear kind, as all-linear means
    with pytest.raises(ValueError, match="lora_layers must be between 1 and"):  # refused before the job starts
        run_job(
            _short("graddiff", steps=1, lora_layers=n_layers + 1),
            loaded=demo_loaded,
            dataset=demo_world,
            run_dir=tmp_path / "bad",
        )
    assert not isinstance(demo_loaded.model, PeftModel)


def test_the_before_evaluation_is_computed_once_per_model_and_data(demo_loaded, demo_world, tmp_path):
    first = run_job(_short("ga", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "a")
    entries = len(demo_loaded.memo)
    second = run_job(_short("graddiff", steps=2), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "b")
    assert len(demo_loaded.memo) == entries  # reused, not recomputed
    for split in ("forget", "retain"):
        assert second.metrics.quality(split).before == first.metrics.quality(split).before
    from atwu_core import metrics

    fresh = metrics.quality(demo_loaded.model, demo_loaded.tokenizer, demo_world.forget[:4], first.forget[:4])
    assert fresh == first.metrics.forget.before
    other = run_job(
        _short("ga", steps=1, eval_max_samples=3), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "c"
    )
    assert other.metrics.forget.before.n == 3  # another cap is another entry


def test_presets_follow_what_the_model_is(tmp_path):
    """Not its name: a SmolLM2 taught into a folder of its own gets `smollm2`, a tiny model's folder gets `demo`."""
    import json
    import shutil

    from atwu_core.config import default_preset
    from atwu_core.files import ASSETS

    assert default_preset("demo").name == "demo" and default_preset("some/hub-model").name == "smollm2"
    tiny = shutil.copytree(ASSETS / "demo_model", tmp_path / "tiny")
    assert default_preset(str(tiny)).name == "demo"
    taught = tmp_path / "taught"  # SmolLM2-135M's config.json, as `atwu finetune --model smollm2 --out` writes it
    taught.mkdir()
    sizes = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
    (taught / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **sizes}))
    chosen = default_preset(str(taught))
    assert chosen.name == "smollm2" and "LlamaForCausalLM" in chosen.reason and "M parameters" in chosen.reason
    (taught / "config.json").write_text("{}")
    assert default_preset(str(taught)).name == "demo"  # no sizes: the cheap preset, and the reason says why
    smol = make_config("atwu", default_preset("demo-smollm2").name)
    assert (
        smol.preset == "smollm2" and smol.lora_layers and smol.forget_batch_size < make_config("atwu").forget_batch_size
    )
    assert make_config("atwu", "smollm2", forget_batch_size=4).forget_batch_size == 4  # a user's setting wins


def test_centred_scorer_input_ignores_a_shift_shared_by_every_token():
    from atwu_core.weighting.atwu import ScorerInput

    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 1)
    h, mask = (
        torch.randn(2, 6, 4),
        torch.ones(2, 5, dtype=torch.bool),
    )  # hidden at input positions, mask in target space
    mask[1, 3:] = False
    shifted = h + torch.randn(4)
    centred, plain = ScorerInput(centre=True), ScorerInput()

    def scores(inp, hidden):
        return torch.sigmoid(linear(inp(hidden, mask)).squeeze(-1))[mask]

    assert torch.allclose(scores(centred, h), scores(centred, shifted), atol=1e-6)
    assert not torch.allclose(scores(plain, h), scores(plain, shifted), atol=1e-3)


def test_an_adapter_can_be_merged_in_at_load_time(demo_loaded, demo_world, tmp_path):
    from atwu_core.models import adapter_enabled, load_model

    job = run_job(_short("ga", steps=5), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    ids = torch.tensor([job.forget[0].input_ids], device=next(demo_loaded.model.parameters()).device)
    with torch.no_grad(), adapter_enabled(demo_loaded, job.run_dir) as unlearned:
        expected = unlearned(ids).logits
    merged = load_model("demo", adapter=job.run_dir / "adapter")
    with torch.no_grad():
        assert torch.allclose(merged.model(ids).logits, expected, atol=1e-4)
    assert not any(p.requires_grad for p in merged.model.parameters())


def test_evaluation_in_chunks_gives_the_whole_splits_quality(demo_loaded, demo_world):
    """The job evaluates 16 samples at a time to report progress; merged, that is metrics.quality of the split."""
    from atwu_core import evaluation, metrics
    from atwu_core.data import encode_records

    # every other answer swapped for a false one the model does not know: the chunks' means differ
    records = [
        r if k % 2 else dataclasses.replace(r, answer=r.perturbed_answer[0], forget_spans=[])
        for k, r in enumerate(demo_world.forget[:7])
    ]
    samples = encode_records(records, demo_loaded.tokenizer)
    seen = []
    merged, stats, answers = evaluation.split_quality(
        demo_loaded.model, demo_loaded.tokenizer, evaluation.Split("forget", records, samples, None),
        make_config("ga"), seen.append, chunk=3,
    )  # fmt: skip
    whole = metrics.quality(demo_loaded.model, demo_loaded.tokenizer, records, samples)
    assert seen == [3, 6, 7] and merged.n == whole.n == 7 and 0 < whole.exact < 1
    assert merged.to_json().keys() == whole.to_json().keys() and whole.truth_ratio is not None
    assert len(stats) == len(answers) == 7
    for key in ("prob", "rouge_l", "exact", "extraction_strength", "exact_memorization", "truth_ratio"):
        assert getattr(merged, key) == pytest.approx(getattr(whole, key), rel=1e-5), key
    assert merged.truth_ratios == pytest.approx(whole.truth_ratios, rel=1e-5)


def _verdicts(metrics: Metrics) -> dict[str, list[tuple[bool, bool]]]:
    return {k: [(v.leaked, v.extractable) for v in s.spans] for k, s in metrics.facts.per_sample.items()}


def test_recompute_rederives_a_runs_metrics_from_its_folder(demo_loaded, demo_world, tmp_path, capsys):
    """`atwu eval --recompute`: an old-form metrics.json (no facts, no magnitude) gets today's blocks back, equal to
    what the job wrote (up to the 5 significant digits the records keep)."""
    from atwu_core.cli import main
    from atwu_core.recompute import recompute

    job = run_job(_short("ga", steps=2), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    written = job.metrics
    old = {k: v for k, v in written.to_json().items() if k not in ("facts", "forgetting")}
    (job.run_dir / "metrics.json").write_text(json.dumps(old))
    main(["eval", str(job.run_dir)])
    assert "facts      not recorded" in capsys.readouterr().out  # an old run reads "not recorded"
    again = recompute(job.run_dir, loaded=demo_loaded)
    assert again.facts.per_label == written.facts.per_label
    assert _verdicts(again) == _verdicts(written)
    assert again.forgetting.magnitude.meaningful == written.forgetting.magnitude.meaningful
    size, size_written = again.forgetting.magnitude.mean_increase_span, written.forgetting.magnitude.mean_increase_span
    assert size == pytest.approx(size_written, 1e-2)
    for key in ("exact", "rouge_l", "prob", "extraction_strength", "truth_ratio"):
        assert getattr(again.forget.after, key) == pytest.approx(getattr(written.forget.after, key))
    assert again.timing == written.timing and RunReader(job.run_dir).metrics == again
