"""Faults around jobs and run folders (issue 12, the engine's items): settings refused before anything loads,
run folders that are claimed once and never overwritten, unreadable folders that hide nothing else, and jobs
that end in a state that says what happened."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
from pathlib import Path

import pytest

from atwu_core import cli, runs
from atwu_core.cancel import CancelToken
from atwu_core.config import make_config
from atwu_core.files import FILE_MODE
from atwu_core.forward import Forward
from atwu_core.job import JobError, UnlearningJob, run_job
from atwu_core.methods import GA, REGISTRY, MethodSpec, RetainParams, register
from atwu_core.runs import RecordLog, RunReader, RunWriter, list_runs
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


@pytest.fixture(scope="module")
def finished_run(demo_loaded, demo_world, tmp_path_factory) -> Path:
    """One short finished run; tests copy it before they damage it."""
    return run_job(
        _short(steps=3), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path_factory.mktemp("f") / "r"
    ).run_dir


def _copy(run: Path, tmp_path: Path, name: str = "r") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_crafted_run_files_are_each_listed_as_unreadable_and_hide_nothing(finished_run, tmp_path):
    """Issue 24 items 2-3: values that crashed every page (a pid beyond 64 bits, tags that are numbers, ...)."""
    root = tmp_path / "runs"
    crafted = {
        "pid": ("status.json", {"state": "running", "pid": 1180591620717411303424}, "field 'pid'"),
        "tags": ("config.json", {"tags": [1, 2]}, "field 'tags'"),
        "updated": ("status.json", {"updated": "yesterday"}, "field 'updated'"),
        "steps": ("status.json", {"steps_done": "abc"}, "field 'steps_done'"),
        "metrics": ("metrics.json", {"forget": {"after": {"exact": [1]}}}, "field 'forget.after.exact'"),
    }
    _copy(finished_run, root, "good")
    for name, (file, change, _) in crafted.items():
        _edit_json(_copy(finished_run, root, name) / file, **change)
    runs = {os.path.basename(r["run_dir"]): r for r in list_runs(root)}
    assert runs["good"]["state"] == "completed"
    for name, (file, _, field) in crafted.items():
        assert runs[name]["state"] == "unreadable" and f"{file}: {field}" in runs[name]["error"], runs[name]


def test_a_crafted_sample_is_named_by_file_sample_and_field(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    samples = json.loads((run / "samples.json").read_text())
    del samples[1]["span_mask"]
    (run / "samples.json").write_text(json.dumps(samples))
    with pytest.raises(ValueError, match=r"samples.json: sample 2: field 'span_mask' must be a list"):
        RunReader(run).snapshot()


def test_crafted_record_lines_are_skipped_and_counted(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    path = run / "records.jsonl"
    step = json.loads(path.read_text().splitlines()[1])
    sid = next(iter(step["scores"]))
    bad = [
        {**step, "step": "abc"},
        {**step, "scores": "not a map"},
        {**step, "scores": {sid: step["scores"][sid][:-1]}},  # one value short of the sample's tokens
        {**step, "probs": {"no-such-sample": [0.5]}},
        {**step, "losses": {"forget": "big"}},
        [1, 2],
    ]
    with path.open("a") as fh:
        fh.writelines(json.dumps(b) + "\n" for b in bad)
    snap = RunReader(run).snapshot()
    assert snap.skipped_lines == len(bad) and [r.step for r in snap.step_records] == [1, 2, 3]


def test_the_live_reader_parses_only_the_new_lines(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    path = run / "records.jsonl"
    step = json.loads(path.read_text().splitlines()[1])
    reader, log = RunReader(run), RecordLog(path)
    first = reader.snapshot(log)
    assert log.offset == path.stat().st_size
    with path.open("a") as fh:
        fh.write(json.dumps({**step, "step": 4}) + '\n{"type": "step", "st')  # a new line, and half of another
    second = reader.snapshot(log)
    assert [r.step for r in second.step_records] == [1, 2, 3, 4]
    assert second.step_records[0] is first.step_records[0]  # parsed once, not again
    assert log.offset == path.stat().st_size - len('{"type": "step", "st')  # the partial line waits
    path.write_text(path.read_text().split("\n", 1)[0] + "\n")  # replaced by a shorter file: read afresh
    assert reader.snapshot(log).step_records == [] and reader.snapshot(log).before is not None


def test_a_line_over_the_cap_is_skipped_without_holding_it(finished_run, tmp_path, monkeypatch):
    run = _copy(finished_run, tmp_path)
    path = run / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    cap = max(len(line) for line in lines)
    monkeypatch.setattr(runs, "MAX_RECORD_LINE", cap)
    monkeypatch.setattr(runs, "READ_CHUNK", 97)  # lines cross chunk boundaries
    path.write_text("".join([*lines[:2], "x" * (3 * cap) + "\n", *lines[2:]]))
    snap = RunReader(run).snapshot()
    assert snap.skipped_lines == 1 and [r.step for r in snap.step_records] == [1, 2, 3] and snap.final is not None


def test_the_reader_skips_bad_lines_and_waits_for_a_partial_one(demo_loaded, demo_world, tmp_path):
    job = run_job(_short(steps=3), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    path = job.run_dir / "records.jsonl"
    lines = path.read_bytes().split(b"\n")  # before, step 1-3, final, ""
    lines[2] = b"\xff\xfe garbage"  # step 2 is damaged: undecodable bytes
    path.write_bytes(b"\n".join(lines[:-1]) + b'\n{"type": "step", "st')  # and a line still being written
    assert RunReader(job.run_dir).records().skipped == 1
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
    job = run_job(_short("atwu", steps=1), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    saved = ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "scorer/scorer.safetensors")
    for name in ("config.json", "status.json", "metrics.json", "samples.json", "records.jsonl", *saved):
        assert stat.S_IMODE((job.run_dir / name).stat().st_mode) == FILE_MODE, name


# ------------------------------------------------------------------------------------------ how jobs end


class FailsAt(WeightingScheme):
    """Uniform weights that raise `error` at step `at`."""

    def __init__(self, at: int, error: BaseException):
        self.at, self.error = at, error

    def step(self, fw: Forward, step: int, retain: Forward | None = None) -> tuple[TokenWeights, dict[str, float]]:
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

    def write_json(self, name, data, **kw):
        if name == "metrics.json":
            raise OSError(28, "No space left on device", str(self.dir / name))
        real(self, name, data, **kw)

    monkeypatch.setattr(RunWriter, "write_json", write_json)
    with pytest.raises(JobError, match="No space left on device.*metrics.json"):
        run_job(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    status = RunReader(tmp_path / "r").status
    assert status.state == "failed" and "No space left" in status.error
    assert json.loads((tmp_path / "r" / "config.json").read_text())["method"] == "ga"  # what was written is kept


# -------------------------------------------------------------------------------------- issue 24: a job that notices


def _stream_then(job: UnlearningJob, after_step: int, act) -> None:
    """Run `job`, doing `act()` once step `after_step` is recorded."""
    for record in job.stream():
        if record.step == after_step:
            act()


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_run_folder_moved_or_deleted_mid_job_fails_it_and_is_never_recreated(how, demo_loaded, demo_world, tmp_path):
    run_dir, moved = tmp_path / "r", tmp_path / "moved"
    job = UnlearningJob(_short(steps=4), loaded=demo_loaded, dataset=demo_world, run_dir=run_dir)
    trash = tmp_path / "trash"  # deleted as a file manager does: gone from its path at once, then removed
    delete = lambda: (run_dir.rename(trash), shutil.rmtree(trash, ignore_errors=True))  # noqa: E731
    act = (lambda: run_dir.rename(moved)) if how == "moved" else delete
    with pytest.raises(JobError, match="was moved, deleted or replaced while the job ran"):
        _stream_then(job, 1, act)
    assert not run_dir.exists()  # the old path is not re-created with a partial run
    if how == "moved":  # the moved folder holds the whole story: its steps and why the job stopped
        status = RunReader(moved).status
        assert status.state == "failed" and "moved" in status.error
        steps = [r.step for r in RunReader(moved).step_records()]  # written on a thread: step 1's may have
        assert steps in ([], [1])  # landed before the move; nothing after it did
    assert not hasattr(demo_loaded.model, "peft_config")


def test_a_file_too_large_for_the_disk_fails_the_job_naming_records_jsonl(demo_loaded, demo_world, tmp_path):
    """A real write error (RLIMIT_FSIZE: EFBIG, as ENOSPC would be) on records.jsonl, not a simulated one; the
    second failure when the file is closed does not escape."""
    job = UnlearningJob(_short(steps=3), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    records = tmp_path / "r" / "records.jsonl"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises(JobError, match=r"File too large.*records\.jsonl"):
            _stream_then(job, 1, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (records.stat().st_size + 1, hard)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    status = RunReader(tmp_path / "r").status
    assert status.state == "failed" and "records.jsonl" in status.error


def test_a_failed_save_names_the_adapter_and_leaves_no_temp_folder(monkeypatch, demo_loaded, demo_world, tmp_path):
    from peft import PeftModel

    real = PeftModel.save_pretrained

    def full_disk(self, folder, **kw):
        real(self, folder, **kw)  # the files are half there, as on a disk that filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    with pytest.raises(JobError, match=r"could not save the adapter to .*adapter: .*No space left"):
        run_job(_short(), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")) == []
    assert RunReader(tmp_path / "r").status.state == "failed"


class CancelAt(CancelToken):
    """A cancel pressed once the job reaches `phase` (what a user does from the app while it evaluates)."""

    def __init__(self, job_status, phase: str):
        super().__init__()
        self.job_status, self.phase = job_status, phase

    @property
    def cancelled(self) -> bool:
        return self.job_status().phase == self.phase


@pytest.mark.parametrize("phase", ["before", "after"])
def test_cancel_is_honoured_inside_the_evaluations(phase, demo_loaded, demo_world, tmp_path):
    demo_loaded.memo.clear()  # the before-evaluation runs, not a remembered one
    job = UnlearningJob(_short(eval_max_samples=40), loaded=demo_loaded, dataset=demo_world, run_dir=tmp_path / "r")
    job.run(CancelAt(lambda: job.status, phase))
    status = RunReader(tmp_path / "r").status
    assert status.state == "cancelled"
    if phase == "before":  # stopped inside it; nothing trained
        assert status.phase == "before" and status.phase_done < status.phase_total and status.steps_done == 0
        assert not (tmp_path / "r" / "adapter").exists()
    else:  # trained and kept, judged without the evaluation after
        metrics = RunReader(tmp_path / "r").metrics
        assert (tmp_path / "r" / "adapter").is_dir() and metrics.alignment is not None and metrics.forget is None
    assert not hasattr(demo_loaded.model, "peft_config")
