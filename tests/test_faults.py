"""Faults around jobs and run folders (issue 12, the engine's items): settings refused before anything loads,
run folders that are claimed once and never overwritten, unreadable folders that hide nothing else, and jobs
that end in a state that says what happened."""

from __future__ import annotations

import json
import os
import stat

import pytest

from atwu_core import cli
from atwu_core.config import make_config
from atwu_core.files import FILE_MODE
from atwu_core.forward import Forward
from atwu_core.job import JobError, UnlearningJob, run_job
from atwu_core.methods import GA, REGISTRY, MethodSpec, RetainParams, register
from atwu_core.runs import RunReader, RunWriter, list_runs
from atwu_core.weighting import TokenWeights, WeightingScheme


def _short(method: str = "ga", **kw):
    return make_config(method, steps=kw.pop("steps", 2), eval_max_samples=kw.pop("eval_max_samples", 2), **kw)


# ------------------------------------------------------------------------------------------ refused early
# The settings and --out rows of the bad-input table are in tests/test_bad_inputs.py; here, that nothing is written.


def test_a_refused_job_writes_nothing_and_touches_no_folder(tmp_path, capfd):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # someone's model folder
    assert cli.main(["unlearn", "--out", str(tmp_path / "model")]) == 2
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["config.json"]
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    assert cli.main(["unlearn", "--out", str(tmp_path / "run"), "--set", "lr=0"]) == 2
    assert not (tmp_path / "run").exists()


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
    assert [r.step for r in RunReader(job.run_dir).step_records()] == [1, 3]  # what came after the bad line is kept
    assert RunReader(job.run_dir).final is not None


def test_two_jobs_on_one_folder_cannot_both_write_it(demo_loaded, demo_world, tmp_path):
    first = UnlearningJob(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    second = UnlearningJob(_short("graddiff"), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    steps = first.stream()
    next(steps)  # the first job has claimed the folder
    with pytest.raises(FileExistsError, match="already holds a run"):
        second.run()
    for _ in steps:
        pass
    run = RunReader(tmp_path / "r")
    assert run.status.state == "completed" and run.config["method"] == "ga"
    assert [r.step for r in run.step_records()] == [1, 2]  # no interleaved records


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
        register(
            MethodSpec("fails", "a scheme that raises", RetainParams, lambda p, o: FailsAt(at, error), lambda p: GA)
        )
        return "fails"

    yield make
    REGISTRY.pop("fails", None)


def test_ctrl_c_is_recorded_as_cancelled_with_the_steps_that_finished(
    failing_method, demo_loaded, demo_world, tmp_path
):
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
