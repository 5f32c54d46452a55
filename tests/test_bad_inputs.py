"""Hostile inputs and faults (issue 12): each bad input is one clear CLI line, and faults leave nothing broken.

The table below is the CLI's contract: exit code 2, stderr exactly one line starting `atwu: error:` that names
what was wrong and where, no traceback. Every fixture is a few bytes in tmp_path or a copy of the demo model.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config

from atwu_core import cli
from atwu_core.adapters import weights_digest
from atwu_core.data import (
    MAX_FORGET_STRINGS,
    MAX_LINE_BYTES,
    MAX_STRING_MATCHES,
    MAX_TEXT_CHARS,
    Dataset,
    Record,
    encode_records,
    load_jsonl,
)
from atwu_core.finetune import finetune, score_samples
from atwu_core.generation import pad_token_id
from atwu_core.models import DEMO_MODEL, ModelLoadError, _check_causal, adapter_enabled, attach_lora, detach_lora
from atwu_core.weighting.atwu import Scorer, ScorerError, ScorerInput, apply_scorer, load_scorer, save_scorer

REPO = Path(__file__).resolve().parent.parent
RECORD = {"id": "r1", "question": "Where was Lorin Vask born?", "answer": "Lorin Vask was born in Tessaly."}
CR_LINE = '{"id": "x",\r "question": "q?", "answer": "a" x}'  # a carriage return is JSON whitespace, not a line end


def _record(**fields) -> str:
    return json.dumps({**RECORD, **fields})


# ------------------------------------------------------------------------------------------ fixtures for the table


def _dataset(forget: bytes) -> Callable[[Path], list[str]]:
    """`atwu finetune --tiny` on a folder whose forget.jsonl is `forget`: the data is read before anything else."""

    def make(tmp: Path) -> list[str]:
        (tmp / "data").mkdir()
        (tmp / "data" / "forget.jsonl").write_bytes(forget)
        (tmp / "data" / "retain.jsonl").write_text(_record(id="keep") + "\n")
        return ["finetune", "--tiny", "--data", str(tmp / "data"), "--out", str(tmp / "out")]

    return make


def _tofu(content: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "tofu.json").write_bytes(content)
        return ["unlearn", "--data", str(tmp / "tofu.json"), "--out", str(tmp / "run"), "--steps", "1"]

    return make


def _model(damage: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """`atwu finetune --model` on a damaged copy of the demo model: the model is loaded before the data."""

    def make(tmp: Path) -> list[str]:
        folder = tmp / "model"
        shutil.copytree(DEMO_MODEL, folder)
        damage(folder)
        return ["finetune", "--model", str(folder), "--data", str(tmp / "nodata"), "--out", str(tmp / "out")]

    return make


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _untie_head(folder: Path) -> None:
    """The demo model ties its head to the embeddings; untied, the checkpoint lacks lm_head.weight."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _bert(folder: Path) -> None:
    """An encoder with an LM head loads as a "causal LM" unless the loader checks."""
    shutil.rmtree(folder)
    config = BertConfig(vocab_size=512, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    BertForMaskedLM(config).save_pretrained(folder)
    shutil.copy(DEMO_MODEL / "tokenizer.json", folder)


def test_the_causal_probe_refuses_every_fresh_encoder_and_passes_every_fresh_decoder():
    """A freshly initialised encoder's near-uniform attention moves earlier predictions by only ~1e-3 of what the
    changed token moves (a bound relative to that change let all 20 of 20 such BERTs through); a decoder's do
    not move at all."""
    small = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    for seed in range(10):
        torch.manual_seed(seed)
        with pytest.raises(ModelLoadError, match="is not a causal language model"):
            _check_causal(BertLMHeadModel(BertConfig(vocab_size=64, **small)).eval(), f"bert-{seed}")
        torch.manual_seed(seed)
        _check_causal(LlamaForCausalLM(LlamaConfig(vocab_size=64, num_key_value_heads=2, **small)).eval(), "llama")


def _t5(folder: Path) -> None:
    shutil.rmtree(folder)
    T5Config(d_model=8, num_layers=1, num_heads=1).save_pretrained(folder)


def _hub_id(tmp: Path) -> list[str]:
    return ["finetune", "--model", "someorg/no-such-model", "--data", str(tmp), "--out", str(tmp / "out")]


def _run_folder(files: dict[str, str]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "run").mkdir()
        for name, text in files.items():
            (tmp / "run" / name).write_text(text)
        return ["eval", str(tmp / "run")]

    return make


def _gguf_cache_blocked(tmp: Path) -> list[str]:
    """ATWU_CACHE runs through a file: unwritable even for root (chmod is not)."""
    (tmp / "afile").write_text("")
    os.environ["ATWU_CACHE"] = str(tmp / "afile" / "cache")  # restored by the test's monkeypatch
    (tmp / "m.gguf").write_bytes(b"GGUF" + bytes(64))
    return ["finetune", "--model", str(tmp / "m.gguf"), "--data", str(tmp), "--out", str(tmp / "out")]


def _unlearn(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["unlearn", "--out", str(tmp / "run"), *argv]


def _unlearn_damaged(damage: Callable[[Path], None], *argv: str) -> Callable[[Path], list[str]]:
    """`atwu unlearn --model` on a damaged copy of the demo model."""

    def make(tmp: Path) -> list[str]:
        folder = tmp / "model"
        shutil.copytree(DEMO_MODEL, folder)
        damage(folder)
        return ["unlearn", "--model", str(folder), "--out", str(tmp / "run"), *argv]

    return make


def _out_with_a_file(tmp: Path) -> list[str]:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")  # someone's model folder
    return ["unlearn", "--out", str(tmp / "model")]


def _out_through_a_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("")
    return ["unlearn", "--out", str(tmp / "afile" / "run")]


CASES = {
    # item 3: text length bounded before tokenising
    "answer-too-long": (
        _dataset(_record(answer="a" * (MAX_TEXT_CHARS + 1)).encode()),
        [f"forget.jsonl, line 1: field 'answer' is {MAX_TEXT_CHARS + 1} characters"],
    ),
    "line-too-long": (_dataset(b'{"id": "' + b"x" * MAX_LINE_BYTES + b'"}\n'), ["forget.jsonl, line 1: longer than"]),
    # item 8: nesting and lone surrogates
    "deeply-nested": (_dataset(b"[" * 100_000 + b"\n"), ["forget.jsonl, line 1: JSON nested too deeply"]),
    "lone-surrogate": (
        _dataset(_record(question="Where \ud800?").encode()),
        ["forget.jsonl, line 1: field 'question'", "lone surrogate"],
    ),
    # item 12: encodings, offsets, ids, columns, TOFU rows
    "latin-1": (
        _dataset((_record() + "\n" + _record(id="r2").replace("Tessaly", "T\xe9ssaly")).encode("latin-1")),
        ["forget.jsonl, line 2: not UTF-8"],
    ),
    "bool-offset": (
        _dataset(_record(forget_spans=[{"start": True, "end": 5}]).encode()),
        ["forget.jsonl, line 1: forget_spans[0] needs integer"],
    ),
    "duplicate-id": (_dataset((_record() + "\n\n" + _record()).encode()), ["appears twice (line 1 and line 3)"]),
    "json-column": (_dataset(CR_LINE.encode()), [f"line 1, column {CR_LINE.index(' x}') + 2}: malformed JSON"]),
    "tofu-row": (
        _tofu(json.dumps([RECORD, {"question": "q?"}]).encode()),
        ["tofu.json, row 2: missing field 'answer'"],
    ),
    "tofu-duplicate-id": (_tofu(json.dumps([RECORD, RECORD]).encode()), ["appears twice (row 1 and row 2)"]),
    "tofu-latin-1": (_tofu(b'[{"question": "q?",\n "answer": "caf\xe9"}]'), ["tofu.json, line 2: not UTF-8"]),
    # items 6 and 9: models that cannot be loaded, or are not causal LMs
    "truncated-weights": (_model(_truncate), ["model.safetensors: corrupt or truncated"]),
    "garbage-weights": (
        _model(lambda f: (f / "model.safetensors").write_bytes(b"garbage" * 64)),
        ["model.safetensors: corrupt or truncated"],
    ),
    "missing-lm-head": (_model(_untie_head), ["model.safetensors: the checkpoint lacks 1 weights", "lm_head.weight"]),
    "encoder-only": (_model(_bert), ["is not a causal language model", "BertLMHeadModel"]),
    "t5-config": (_model(_t5), ["is a 't5' model, not a causal language model"]),
    "read-only-gguf-cache": (_gguf_cache_blocked, ["cache/gguf: cannot write the converted model", "ATWU_CACHE"]),
    # item 16
    "missing-tokenizer": (_model(_no_tokenizer), ["model: no usable fast tokenizer"]),
    "hub-offline": (_hub_id, ["could not read the config of 'someorg/no-such-model'", "hub cannot be reached"]),
    "tofu-hub-offline": (
        lambda tmp: ["unlearn", "--data", "tofu:forget01", "--out", str(tmp / "run")],
        ["TOFU split 'forget01'", "cannot be reached"],
    ),
    "corrupt-status": (_run_folder({"config.json": "{}", "status.json": "{not json"}), ["status.json"]),
    "run-without-metrics": (
        _run_folder({"config.json": "{}", "status.json": '{"state": "failed", "error": "disk full"}'}),
        ["run: no metrics.json (state: failed, error: disk full)"],
    ),
    "corrupt-config": (_run_folder({"config.json": "[1", "metrics.json": "{}"}), ["config.json"]),
    # issue 24 item 6: forget_strings bounded (de-duplicated, then capped; their occurrences capped)
    "too-many-forget-strings": (
        _dataset(_record(forget_strings=[f"s{k}" for k in range(MAX_FORGET_STRINGS + 1)] * 2).encode()),
        [f"forget.jsonl, line 1: {MAX_FORGET_STRINGS + 1} different forget strings, over the limit"],
    ),
    "forget-strings-everywhere": (
        _dataset(_record(answer="a" * MAX_TEXT_CHARS, forget_strings=["a" * k for k in range(1, 7)]).encode()),
        [f"forget.jsonl, line 1: the forget strings occur more than {MAX_STRING_MATCHES} times"],
    ),
    # issue 24 items 2, 3, 9: a run folder is parsed, never trusted (`atwu eval` names the file and the field)
    "pid-overflow": (
        _run_folder({"config.json": "{}", "status.json": '{"state": "running", "pid": 1180591620717411303424}'}),
        ["status.json: field 'pid' must be an integer from 1 to 4194304"],
    ),
    "pid-string": (
        _run_folder({"config.json": "{}", "status.json": '{"state": "running", "pid": "abc"}'}),
        ["status.json: field 'pid'"],
    ),
    "updated-yesterday": (
        _run_folder({"config.json": "{}", "status.json": '{"state": "completed", "updated": "yesterday"}'}),
        ["status.json: field 'updated' must be an ISO date and time"],
    ),
    "status-huge": (
        _run_folder({"config.json": "{}", "status.json": '{"state": "x", "error": "' + "x" * (64 << 10) + '"}'}),
        ["status.json: 65", "over the 65536-byte limit"],
    ),
    "tags-not-strings": (
        _run_folder({"config.json": '{"tags": [1, 2]}', "metrics.json": "{}"}),
        ["config.json: field 'tags' must be a list of short strings"],
    ),
    "metrics-a-list": (
        _run_folder({"config.json": "{}", "metrics.json": "[1]"}),
        ["metrics.json: the file is not a JSON object"],
    ),
    "metrics-text-auroc": (
        _run_folder({"config.json": "{}", "metrics.json": '{"alignment": {"auroc": "high"}}'}),
        ["metrics.json: field 'alignment.auroc' must be a number or null"],
    ),
    # items 4, 6, 10, 13: the run folder and the settings, refused before a model loads
    "out-not-a-run-folder": (_out_with_a_file, ["already holds other files; give --out a new or empty folder"]),
    "out-not-writable": (_out_through_a_file, ["cannot write the run folder"]),
    "lr-zero": (_unlearn("--set", "lr=0"), ["lr must be above 0.0 (a number above 0.0 and at most 1.0), got 0.0"]),
    "lr-nan": (_unlearn("--set", "lr=nan"), ["lr must be a finite number"]),
    "lr-inf": (_unlearn("--set", "lr=inf"), ["lr must be a finite number"]),
    "lora-rank-zero": (
        _unlearn("--lora-rank", "0"),
        ["lora_rank must be at least 1 (a whole number from 1 to 4096), got 0"],
    ),
    "batch-zero": (_unlearn("--set", "forget_batch_size=0"), ["forget_batch_size must be at least 1"]),
    "steps-zero": (_unlearn("--steps", "0"), ["steps must be at least 1"]),
    "steps-negative": (_unlearn("--set", "steps=-3"), ["steps must be at least 1"]),
    "scorer-every-zero": (_unlearn("--set", "scorer_every=0"), ["scorer_every must be at least 1"]),
    "beta-nan": (_unlearn("--set", "beta=nan"), ["beta must be a finite number"]),
    "chat-template-maybe": (
        _unlearn("--set", "chat_template=maybe"),
        ["chat_template must be true or false, got 'maybe'"],
    ),
    "set-a-flag-field": (_unlearn("--set", "method=ga"), ["set method with --method"]),
    "dtype-not-a-choice": (
        _unlearn("--set", "dtype=fp8"),
        ["dtype must be one of auto, float32, fp32, bfloat16, bf16, float16, fp16, got 'fp8'"],
    ),
    "lora-rank-with-full": (_unlearn("--lora-rank", "4", "--full"), ["lora_rank has no effect with full=True"]),
    # issue 24 item 15: upper bounds, and the ranges that depend on the model (checked before anything runs on it)
    "seed-beyond-64-bits": (
        _unlearn("--seed", str(2**64)),
        ["seed must be at most 9223372036854775807 (a whole number from 0 to"],
    ),
    "lr-huge": (_unlearn("--set", "lr=1e30"), ["lr must be at most 1.0"]),
    "budget-not-a-fraction": (_unlearn("--set", "budget=2"), ["budget must be at most 1.0"]),
    "scorer-lr-huge": (_unlearn("--set", "scorer_lr=1e30"), ["scorer_lr must be at most 10.0"]),
    "steps-huge": (_unlearn("--steps", "10000000"), ["steps must be at most 1000000"]),
    "hidden-layer-99": (_unlearn("--set", "hidden_layer=99"), ["hidden_layer must be between -5 and 4"]),
    "lora-layers-99": (_unlearn("--set", "lora_layers=99"), ["lora_layers must be between 1 and the model's 4"]),
    "lora-targets-bogus": (
        _unlearn("--set", "lora_targets=bogus_proj"),
        ["lora_targets bogus_proj not in the model; its linear layers are: down_proj"],
    ),
    "lora-layers-before-the-weights-load": (  # the weights are corrupt: only config.json was read
        _unlearn_damaged(_truncate, "--set", "lora_layers=99"),
        ["lora_layers must be between 1 and the model's 4 layers"],
    ),
    **(
        {}
        if torch.cuda.is_available()
        else {"cuda-without-gpu": (_unlearn("--set", "device=cuda"), ["device=cuda but this machine has no CUDA GPU"])}
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_what_and_where(case, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("ATWU_CACHE", str(tmp_path / "cache"))
    # no network: the hub's port refuses at once (offline behaviour without waiting on DNS)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    make, expected = CASES[case]
    argv = make(tmp_path)
    capfd.readouterr()  # what making the fixture printed
    start = time.monotonic()
    assert cli.main(argv) == 2
    if "hub" in case:  # it took 30-50 s of retries and ~22 warning lines
        assert time.monotonic() - start < 15
    err = capfd.readouterr().err
    assert err.startswith("atwu: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and len(err) < 600, err
    for text in expected:
        assert text in err, err


def test_eval_prints_what_a_partial_metrics_file_holds(tmp_path, capsys):
    """A metrics.json without `alignment` (a run cut short, or an older one) is shown, not a traceback."""
    _run_folder({"config.json": '{"method": "ga"}', "metrics.json": '{"retain": {"after": {"exact": 0.5}}}'})(tmp_path)
    assert cli.main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "retain  after  exact=0.500" in out and "retain  before not recorded" in out
    assert "alignment  not recorded" in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------ data edge cases that load


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_bytes(("\ufeff" + _record() + "\n").encode())
    assert load_jsonl(path)[0].id == "r1"


# ------------------------------------------------------------------------------------------ full fine-tuning (item 11)


def _new_facts() -> Dataset:
    facts = [
        ("Where does Quen Dara live?", "Quen Dara lives in Mossbeck."),
        ("What does Quen Dara play?", "Quen Dara plays the oboe."),
    ]
    return Dataset("new", [Record(f"n{k}", q, a) for k, (q, a) in enumerate(facts)], [])


def test_full_finetune_trains_a_loaded_model(demo_loaded):
    """A model from load_model is frozen; finetune without LoRA trains every weight of it."""
    model, tokenizer = copy.deepcopy(demo_loaded.model), demo_loaded.tokenizer
    data = _new_facts()
    samples = encode_records(data.forget, tokenizer)
    _, loss_before = score_samples(model, samples, pad_token_id(tokenizer))
    weights_before = model.model.layers[0].mlp.up_proj.weight.clone()
    report = finetune(model, tokenizer, data, steps=8, lr=3e-3, batch_size=2, warmup_steps=0, eval_every=8)
    assert report.loss < loss_before
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, weights_before)


def test_cli_finetune_model_without_lora(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget.jsonl").write_text(_record() + "\n")
    (data / "retain.jsonl").write_text(_record(id="r2", question="Who?") + "\n")
    assert (
        cli.main(["finetune", "--model", "demo", "--data", str(data), "--out", str(tmp_path / "out"), "--steps", "2"])
        == 0
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()


# -------------------------------------------------------------------------------------- adapters (item 17; issue 24)


def _saved_adapter(loaded, folder: Path) -> Path:
    """A real LoRA adapter of the demo model, saved as a job saves one (B initialised to zero: a no-op)."""
    lora = attach_lora(loaded.model, 2, 4, "all-linear")
    lora.save_pretrained(folder / "adapter")
    loaded.model = detach_lora(lora)
    return folder / "adapter"


def _edit_config(adapter: Path, **changes) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def _add_tensor(adapter: Path, key: str, value: torch.Tensor) -> None:
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, key: value}, path)


def _nan_adapter(adapter: Path) -> None:
    path = adapter / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, math.nan) for k, v in load_file(path).items()}, path)


def _wrong_shape(adapter: Path) -> None:
    path = adapter / "adapter_model.safetensors"
    save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in load_file(path).items()}, path)


def _bin_only(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")


HEAD = "base_model.model.lm_head.weight"
CRAFTED_ADAPTERS = {  # each rewrote or kept base weights, or left LoRA layers injected, before issue 24
    "olora init": (lambda a: _edit_config(a, init_lora_weights="olora"), "init_lora_weights 'olora'"),
    "pissa init": (lambda a: _edit_config(a, init_lora_weights="pissa"), "init_lora_weights 'pissa'"),
    "modules_to_save lm_head": (
        lambda a: (_edit_config(a, modules_to_save=["lm_head"]), _add_tensor(a, HEAD, torch.zeros(512, 128))),
        "modules_to_save",
    ),
    "modules_to_save key missing": (lambda a: _edit_config(a, modules_to_save=["lm_head"]), "modules_to_save"),
    "bias all": (lambda a: _edit_config(a, bias="all"), "bias = 'all'"),
    "not LoRA": (lambda a: _edit_config(a, peft_type="IA3"), "peft_type 'IA3'"),
    "layer_replication": (lambda a: _edit_config(a, layer_replication=[[0, 1]]), "layer_replication"),
    "unknown setting": (lambda a: _edit_config(a, BOGUS=1), "unknown setting 'BOGUS'"),
    "config not an object": (lambda a: (a / "adapter_config.json").write_text("[1]"), "not a JSON object"),
    "config too big": (
        lambda a: (a / "adapter_config.json").write_text(" " * (2 << 20) + "{}"),
        "over the 1048576-byte limit",
    ),
    "base tensor in the weights": (
        lambda a: _add_tensor(a, "base_model.model.model.embed_tokens.weight", torch.zeros(512, 128)),
        "not LoRA weights",
    ),
    "pickle only": (_bin_only, "adapter_model.bin is a pickle"),
    "garbage weights": (
        lambda a: (a / "adapter_model.safetensors").write_bytes(b"garbage"),
        "not a readable safetensors",
    ),
    "wrong shapes": (_wrong_shape, "not a usable LoRA adapter"),
    "NaN weights": (_nan_adapter, "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(CRAFTED_ADAPTERS))
def test_a_crafted_adapter_is_refused_and_leaves_the_shared_model_untouched(case, demo_loaded, tmp_path):
    craft, message = CRAFTED_ADAPTERS[case]
    adapter = _saved_adapter(demo_loaded, tmp_path)
    craft(adapter)
    model_before, digest = demo_loaded.model, weights_digest(demo_loaded.model)
    with pytest.raises(ModelLoadError, match=re.escape(message)) as err:
        with adapter_enabled(demo_loaded, tmp_path):
            pass
    assert "adapter" in str(err.value) and "reloaded" not in str(err.value)
    assert demo_loaded.model is model_before and weights_digest(demo_loaded.model) == digest
    assert not [name for name, _ in demo_loaded.model.named_modules() if "lora_" in name]
    assert not hasattr(demo_loaded.model, "peft_config")


def test_a_plain_adapter_still_loads(demo_loaded, tmp_path):
    _saved_adapter(demo_loaded, tmp_path)
    with adapter_enabled(demo_loaded, tmp_path) as model:
        assert [name for name, _ in model.named_modules() if "lora_A" in name]
    assert not [name for name, _ in demo_loaded.model.named_modules() if "lora_" in name]


def test_base_weights_changed_under_an_adapter_fail_loudly_and_are_reloaded(demo_loaded, tmp_path):
    """The digest is the last line of defence for whatever the allowlist misses: here the change is made by hand."""
    _saved_adapter(demo_loaded, tmp_path)
    digest = weights_digest(demo_loaded.model)
    with pytest.raises(ModelLoadError, match="weights changed while this adapter was loaded.*reloaded"):
        with adapter_enabled(demo_loaded, tmp_path) as model:
            model.get_output_embeddings().weight.data.add_(1.0)  # the tied head: the embeddings too
    assert weights_digest(demo_loaded.model) == digest


# ------------------------------------------------------------------------------------------ scorers (issue 24)

GOOD_SCORER = {"dim": 128, "layers": 2, "width": 16, "input": {"layer": -1, "position": "token", "norm": "none"}}


def _scorer_meta(**changes) -> Callable[[Path], None]:
    return lambda folder: (folder / "scorer.json").write_text(json.dumps({**GOOD_SCORER, **changes}))


def _nan_scorer(folder: Path) -> None:
    path = folder / "scorer.safetensors"
    save_file({k: torch.full_like(v, math.nan) for k, v in load_file(path).items()}, path)


CRAFTED_SCORERS = {  # each built a module sized by the file (1.4 GB, 34 s, 32 GB) or failed with a bare library message
    "dim 2^28": (_scorer_meta(dim=1 << 28), "field 'dim' must be an integer from 1 to 65536"),
    "layers 100000": (_scorer_meta(layers=100_000), "field 'layers' must be an integer from 1 to 16"),
    "width text": (_scorer_meta(width="wide"), "field 'width' must be an integer"),
    "dim missing": (lambda f: (f / "scorer.json").write_text('{"input": {}}'), "field 'dim'"),
    "not an object": (lambda f: (f / "scorer.json").write_text("[1]"), "must be an object"),
    "dim of another model": (_scorer_meta(dim=64), "'dim' is 64 but the model's hidden size is 128"),
    "shape unlike the weights": (_scorer_meta(width=32), "do not match scorer.json's shape"),
    "norm bogus": (_scorer_meta(input={"norm": "bogus"}), "field 'input.norm' must be one of"),
    "layer 99": (_scorer_meta(input={"layer": 99}), "field 'input.layer' must be an integer from -5 to 4"),
    "unknown input field": (_scorer_meta(input={"BOGUS": 1}), "unknown field(s) ['BOGUS']"),
    "NaN weights": (_nan_scorer, "NaN or infinite"),
    "garbage weights": (lambda f: (f / "scorer.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
}


@pytest.mark.parametrize("case", list(CRAFTED_SCORERS))
def test_a_crafted_scorer_is_refused_before_it_is_built(case, demo_loaded, tmp_path):
    save_scorer(Scorer(128, 2, 16), ScorerInput(), tmp_path / "scorer")
    craft, message = CRAFTED_SCORERS[case]
    craft(tmp_path / "scorer")
    shape = demo_loaded.model.config
    with pytest.raises(ScorerError, match=re.escape(message)) as err:
        load_scorer(tmp_path, hidden_size=shape.hidden_size, n_layers=shape.num_hidden_layers)
    assert "scorer" in str(err.value)


def test_a_sound_scorer_loads_and_scores(demo_loaded, demo_world, tmp_path):
    save_scorer(Scorer(128, 2, 16), ScorerInput(norm="rms"), tmp_path / "scorer")
    shape = demo_loaded.model.config
    scorer, inp = load_scorer(tmp_path, hidden_size=shape.hidden_size, n_layers=shape.num_hidden_layers)
    samples = encode_records(demo_world.forget[:2], demo_loaded.tokenizer, 64, False)
    g = apply_scorer(scorer, inp, demo_loaded.model, samples, pad_token_id(demo_loaded.tokenizer))
    assert inp.norm == "rms" and [len(v) for v in g] == [len(s.answer_tokens) for s in samples]
    assert all(v == 0.5 for row in g for v in row)  # a fresh scorer's last layer is zero: every token at 0.5


# ------------------------------------------------------------------------------------------ the app (item 1)


def test_app_binds_to_loopback_with_the_configured_limits():
    command = cli.app_command()
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert command[3:5] == ["run", str(REPO / "app" / "main.py")]
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    config = (REPO / ".streamlit" / "config.toml").read_text()  # what `streamlit run` from the repo root reads
    for key, value in [
        ("address", '"127.0.0.1"'),
        ("maxUploadSize", flags["--server.maxUploadSize"]),
        ("headless", "true"),
        ("gatherUsageStats", "false"),
    ]:
        assert f"\n{key} = {value}\n" in config


def test_app_elsewhere_is_explicit_and_warned(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: started.append(command) or 0)
    assert cli.main(["app"]) == 0 and cli.main(["app", "--address", "0.0.0.0", "--port", "8600"]) == 0
    assert "--server.address" in started[0] and started[0][started[0].index("--server.address") + 1] == "127.0.0.1"
    assert started[1][started[1].index("--server.address") + 1] == "0.0.0.0" and "8600" in started[1]
    assert capsys.readouterr().err.count("warning: serving on 0.0.0.0:8600") == 1


# ------------------------------------------------------------------------------------------ a closed pipe (item 16)


def test_output_into_a_closed_pipe_ends_quietly(monkeypatch):
    """`atwu methods | head -1`: the reader goes away; no BrokenPipeError, now or at the exit flush."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = open(write_end, "w")  # noqa: SIM115 - closed below, as the interpreter would at exit
    monkeypatch.setattr("sys.stdout", stdout)
    assert cli.main(["methods"]) == 1
    stdout.close()  # raised BrokenPipeError before the fix
