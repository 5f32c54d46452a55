"""The `atwu` command: a job end to end, `eval`, and bad input turned into one clear line."""

from __future__ import annotations

import json

import pytest
from transformers import DistilBertConfig, DistilBertModel

from atwu_core.cli import main
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
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("preset: demo (the default for this model: the embedded tiny demo model")
    assert "step    2/2" in printed and "alignment  auroc=" in printed
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
    assert err.startswith("atwu: error:") and message in err
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
