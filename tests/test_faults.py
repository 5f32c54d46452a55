"""Faults around jobs and run folders (issue 12, the engine's items): settings refused before anything loads,
run folders that are claimed once and never overwritten, unreadable folders that hide nothing else, and jobs
that end in a state that says what happened."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from atwu_core import cli
from atwu_core.config import make_config
from atwu_core.files import FILE_MODE
from atwu_core.forward import Forward
from atwu_core.job import JobError, UnlearningJob, run_job
from atwu_core.methods import REGISTRY, MethodSpec, RetainParams, ga_loss, register
from atwu_core.runs import RunReader, RunWriter, list_runs
from atwu_core.weighting import TokenWeights, WeightingScheme


def _short(method: str = "ga", **kw):
    return make_config(method, steps=kw.pop("steps", 2), eval_max_samples=kw.pop("eval_max_samples", 2), **kw)


# ------------------------------------------------------------------------------------------ the CLI table
# Every row fails before a model is loaded: exit code 2, one line naming what and what to do, no traceback.

def _out_with_a_file(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")  # someone's model folder
    return ["unlearn", "--out", str(tmp / "model")]


def _out_through_a_file(tmp):
    (tmp / "afile").write_text("")
    return ["unlearn", "--out", str(tmp / "afile" / "run")]


CASES = {
    "out-not-a-run-folder": (_out_with_a_file, "already holds other files; give --out a new or empty folder"),
    "out-not-writable": (_out_through_a_file, "cannot write the run folder"),
    "lr-zero": (["--set", "lr=0"], "lr must be a positive finite number"),
    "lr-nan": (["--set", "lr=nan"], "lr must be a positive finite number"),
    "lr-inf": (["--set", "lr=inf"], "lr must be a positive finite number"),
    "lora-rank-zero": (["--lora-rank", "0"], "lora_rank must be a positive whole number"),
    "batch-zero": (["--set", "forget_batch_size=0"], "forget_batch_size must be a positive whole number"),
    "steps-zero": (["--steps", "0"], "steps must be a positive whole number"),
    "steps-negative": (["--set", "steps=-3"], "steps must be a positive whole number"),
    "scorer-every-zero": (["--set", "scorer_every=0"], "scorer_every must be at least 1"),
    "beta-nan": (["--set", "beta=nan"], "beta must be a finite number"),
    "cuda-without-gpu": (["--set", "device=cuda"], "no CUDA GPU"),
    "chat-template-maybe": (["--set", "chat_template=maybe"], "chat_template must be bool"),
    "set-a-flag-field": (["--set", "method=ga"], "set method with --method"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_settings_are_one_line_before_anything_loads(case, tmp_path, capfd):
    make, expected = CASES[case]
    argv = make(tmp_path) if callable(make) else ["unlearn", "--out", str(tmp_path / "run"), *make]
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(argv) == 2
    err = capfd.readouterr().err
    assert err.startswith("atwu: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not (tmp_path / "run").exists()  # nothing written for a job that never started
    if case == "out-not-a-run-folder":
        assert (tmp_path / "model" / "config.json").read_text() == "{}"  # the folder is untouched


# ------------------------------------------------------------------------------------------ run folders


def test_one_bad_run_folder_does_not_hide_the_others(demo_loaded, demo_world, tmp_path):
    root = tmp_path / "runs"
    run_job(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=root / "good")
    (root / "bad-status").mkdir()
    (root / "bad-status" / "config.json").write_text("{}")
    (root / "bad-status" / "status.json").write_text("{not json")
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("[1, 2]")
    (root / "dangling").symlink_to(tmp_path / "gone")
    runs = {os.path.basename(r["run_dir"]): r for r in list_runs(root)}
    assert runs["good"]["state"] == "completed"
    assert runs["bad-status"]["state"] == "unreadable" and "status.json" in runs["bad-status"]["error"]
    assert runs["bad-config"]["state"] == "unreadable" and "not a JSON object" in runs["bad-config"]["error"]
    assert runs["dangling"]["state"] == "unreadable"


def test_the_reader_skips_bad_lines_and_waits_for_a_partial_one(demo_loaded, demo_world, tmp_path):
    job = run_job(_short(steps=3), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    path = job.run_dir / "records.jsonl"
    lines = path.read_bytes().split(b"\n")  # before, step 1-3, final, ""
    lines[2] = b"\xff\xfe garbage"  # step 2 is damaged: undecodable bytes
    path.write_bytes(b"\n".join(lines[:-1]) + b'\n{"type": "step", "st')  # and a line still being written
    records, skipped = RunReader(job.run_dir).records()
    assert skipped == 1
    assert [r.step for r in RunReader(job.run_dir).steps()] == [1, 3]  # what came after the bad line is kept
    assert RunReader(job.run_dir).final is not None


def test_two_jobs_on_one_folder_cannot_both_write_it(demo_loaded, demo_world, tmp_path):
    first = UnlearningJob(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    second = UnlearningJob(_short("graddiff"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    steps = first.steps()
    next(steps)  # the first job has claimed the folder
    with pytest.raises(FileExistsError, match="already holds a run"):
        second.run()
    for _ in steps:
        pass
    run = RunReader(tmp_path / "r")
    assert run.status.state == "completed" and run.config["method"] == "ga"
    assert [r.step for r in run.steps()] == [1, 2]  # no interleaved records


def test_run_files_are_readable_by_others(demo_loaded, demo_world, tmp_path):
    job = run_job(_short(steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    for name in ("config.json", "status.json", "metrics.json", "samples.json", "records.jsonl"):
        assert stat.S_IMODE((job.run_dir / name).stat().st_mode) == FILE_MODE, name


# ------------------------------------------------------------------------------------------ how jobs end


class FailsAt(WeightingScheme):
    """Uniform weights that raise `error` at step `at`."""

    def __init__(self, at: int, error: BaseException):
        self.at, self.error = at, error

    def step(self, fw: Forward, step: int) -> tuple[TokenWeights, dict[str, float]]:
        if step == self.at:
            raise self.error
        return self.weigh(fw), {}


@pytest.fixture
def failing_method():
    def make(at: int, error: BaseException) -> str:
        register(MethodSpec("fails", "a scheme that raises", RetainParams, lambda p: FailsAt(at, error), ga_loss))
        return "fails"

    yield make
    REGISTRY.pop("fails", None)


def test_ctrl_c_is_recorded_as_cancelled_with_the_steps_that_finished(failing_method, demo_loaded, demo_world, tmp_path):
    method = failing_method(3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_job(_short(method, steps=5), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    status = RunReader(tmp_path / "r").status
    assert status.state == "cancelled" and "Ctrl-C" in status.error and status.steps_done == 2


def test_a_failure_counts_only_the_steps_that_finished(failing_method, demo_loaded, demo_world, tmp_path):
    method = failing_method(2, RuntimeError("boom"))
    with pytest.raises(JobError, match="RuntimeError: boom"):
        run_job(_short(method, steps=5), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    status = RunReader(tmp_path / "r").status
    assert status.state == "failed" and status.steps_done == 1
    assert not hasattr(demo_loaded.model, "peft_config")  # the shared model is unwrapped


def test_a_full_disk_fails_the_job_and_names_the_file(monkeypatch, demo_loaded, demo_world, tmp_path):
    real = RunWriter.write_json

    def write_json(self, name, data):
        if name == "metrics.json":
            raise OSError(28, "No space left on device", str(self.dir / name))
        real(self, name, data)

    monkeypatch.setattr(RunWriter, "write_json", write_json)
    with pytest.raises(JobError, match="No space left on device.*metrics.json"):
        run_job(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    status = RunReader(tmp_path / "r").status
    assert status.state == "failed" and "No space left" in status.error
    assert json.loads((tmp_path / "r" / "config.json").read_text())["method"] == "ga"  # what was written is kept
