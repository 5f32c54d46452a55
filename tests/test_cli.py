"""The `atwu` command: a job end to end, `eval`, and bad input turned into one clear line."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import pytest
from transformers import DistilBertConfig, DistilBertModel

from atwu_core.cli import build_parser, main
from atwu_core.config import make_config
from atwu_core.models import ModelLoadError, load_model


def test_unlearn_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "unlearn",
                "--model",
                "demo",
                "--data",
                "demo",
                "--method",
                "wga",
                "--steps",
                "2",
                "--out",
                str(out),
                "--seed",
                "3",
                "--set",
                "wga_beta=2",
                "--set",
                "eval_max_samples=4",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.splitlines()[0].startswith("preset: demo (the default for this model: the embedded tiny demo model")
    assert "step    2/2" in printed and "alignment  auroc=" in printed
    phases = [line.split("]")[0] + "]" for line in printed.splitlines() if line.startswith("[")]
    assert phases == ["[loading]", "[reference]", "[before]", "[training]", "[final]", "[after]"], printed
    assert "2/2 [" in captured.err  # the training bar, on stderr, reached its end
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    assert list(timing["phase_seconds"]) == ["loading", "reference", "before", "training", "final", "after"]
    assert timing["total_seconds"] == pytest.approx(sum(timing["phase_seconds"].values()), abs=0.01)
    assert 0 < timing["training_seconds"] <= timing["phase_seconds"]["training"] < timing["total_seconds"]
    assert "timing  phases: loading" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["params"]["wga_beta"] == 2.0 and config["eval_max_samples"] == 4
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["unlearn", "--data", "/nonexistent/folder"], "not 'demo', a dataset folder"),
        (["unlearn", "--model", "./no/such/model"], "no such file or folder"),
        (["unlearn", "--set", "nonsense=1"], "has no parameter 'nonsense'"),
        (["unlearn", "--set", "steps"], "expects key=value"),
        (["eval", "/nonexistent/run"], "not a run folder"),
    ],
)
def test_bad_input_is_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("atwu: error:") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_not_a_causal_lm_is_named(tmp_path):
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=8, n_layers=1, n_heads=1, hidden_dim=8)).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path / "bert"))


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_quiet_unlearn_prints_results_only_and_no_future_warning(tmp_path):
    out = tmp_path / "run"
    argv = ["unlearn", "--method", "ga", "--steps", "1", "--set", "eval_max_samples=1", "--out", str(out), "--quiet"]
    done = subprocess.run([sys.executable, "-m", "atwu_core.cli", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no bars and no FutureWarning
    assert f"run folder: {out}" in done.stdout and "alignment  auroc=" in done.stdout
    assert not [line for line in done.stdout.splitlines() if line.startswith("[")]  # no phase lines
    assert not [line for line in done.stdout.splitlines() if line.startswith("step ")]


def test_help_methods_and_eval_import_neither_torch_nor_transformers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "ga", "model": "demo", "data": "demo"}))
    (run / "status.json").write_text(json.dumps({"state": "completed"}))
    (run / "metrics.json").write_text(json.dumps({"alignment": {"auroc": 0.5, "auprc": 0.5, "precision_at_k": 0.5}}))
    script = (
        "import contextlib, io, sys\n"
        "from atwu_core.cli import main\n"
        f"for argv in (['--help'], ['unlearn', '--help'], ['methods'], ['eval', {str(run)!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_option_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {action.dest}"
        for name, command in commands.items()
        for action in command._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not missing


def test_finetune_shows_its_progress(tmp_path, capsys):
    from atwu_core.data import Dataset, Record, save_dataset_dir

    records = [Record(f"r{k}", f"Who is person {k}?", f"Person {k} is a baker in town {k}.") for k in range(4)]
    save_dataset_dir(Dataset("toy", records[:2], records[2:]), tmp_path / "data")
    argv = ["finetune", "--tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "model"), "--steps", "3"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "[teaching]" in captured.out and "3/3 [" in captured.err
    assert "step 3: loss" in captured.out  # the check at the last step, above the bar


# ------------------------------------------------------------------------------------------ settings from the fields


def _unlearn_parser() -> argparse.ArgumentParser:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["unlearn"]


def test_every_job_setting_has_help_and_each_marked_one_its_flag():
    from atwu_core.config import job_settings

    job = job_settings()
    assert all(s.help for s in job.values()), [s.name for s in job.values() if not s.help]
    unlearn = _unlearn_parser()
    options = {option: action for action in unlearn._actions for option in action.option_strings}
    flagged = [s for s in job.values() if s.flag]
    assert {options[s.option].dest for s in flagged} == {s.name for s in flagged}
    # the flags people type today stay
    old = ("--model", "--data", "--retain-data", "--method", "--preset", "--steps", "--seed", "--lora-rank", "--full")
    assert set(old + ("--retain-model", "--out", "--set", "--quiet")) <= set(options)
    listing = unlearn.format_help()  # --set's listing: every other job setting, with what it takes
    assert all(f"  {name} = " in listing for name in job if name not in ("method", "preset", "params"))
    assert "lora_dtype = float32" in listing and "one of float32, model" in listing


RERUN_CASES = {
    "wga, two flags and a parameter": lambda: make_config("wga", "demo", {"wga_beta": 2.0}, steps=7, seed=3),
    "atwu under smollm2, settings back to none": lambda: make_config(
        "atwu",
        "smollm2",
        {"budget": 0.3, "pair": "matched", "saturation": "scaled"},
        lora_layers=None,
        eval_max_samples=None,
        forget_ids=["a", "b"],
        chat_template=True,
        retain_model="some/retain-model",
        lr=5e-4,
    ),
    "full fine-tuning": lambda: make_config("graddiff", "paper", full=True, dtype="bfloat16", retain_data="r.jsonl"),
    "tokenunlearn soft": lambda: make_config(
        "tokenunlearn", "demo", {"tu_selection": "soft", "tu_temperature": 0.5}, seed=2**40, drop_nats=0.5
    ),
}


@pytest.mark.parametrize("case", list(RERUN_CASES))
def test_the_rerun_command_gives_the_same_config_through_the_cli(case):
    from atwu_core.cli import job_config
    from atwu_core.rerun import cli_command

    config = RERUN_CASES[case]()
    argv = shlex.split(cli_command(config))
    assert argv[:2] == ["atwu", "unlearn"]
    assert job_config(build_parser().parse_args(argv[1:])) == config


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"steps": 0}, "steps must be at least 1 (a whole number from 1 to 1000000), got 0."),
        ({"lora_dtype": "half"}, "lora_dtype must be one of float32, model, got 'half'."),
        ({"warmup_ratio": 1.5}, "warmup_ratio must be at most 1.0 (a number from 0.0 to 1.0), got 1.5."),
        ({"eval_max_samples": 0}, "eval_max_samples must be at least 1 (a whole number at least 1 or none), got 0."),
        ({"params": {"budget": 2}}, "budget must be at most 1.0 (a number from 0.0 to 1.0), got 2.0."),
        ({"params": {"pair": "both"}}, "pair must be one of headline, matched, got 'both'."),
    ],
)
def test_a_setting_out_of_its_range_or_choices_says_the_field_what_is_allowed_and_what_was_given(settings, message):
    with pytest.raises(ValueError) as err:
        make_config("atwu", "paper", **settings)
    assert str(err.value) == message
