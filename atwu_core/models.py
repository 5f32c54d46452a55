"""Loading causal LMs, attaching LoRA, and the adapter-disabled reference.

The loaded model is shared (the app caches it): a job wraps it in a LoRA adapter and unwraps it at the end,
so the original weights are never modified and "before" is always the plain loaded model.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODEL = ASSETS / "demo_model"
DEMO_SMOLLM2_ADAPTER = ASSETS / "demo_smollm2_adapter"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


@dataclass
class ModelInfo:
    name: str
    architecture: str
    n_params: int
    device: str
    dtype: str
    vocab_size: int


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    info: ModelInfo
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # results that depend only on the loaded weights, which jobs never change (they train an adapter or a copy):
    # e.g. the "before" evaluation, computed once per model and data instead of once per job
    memo: dict = field(default_factory=dict, repr=False)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                    "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _resolve_source(spec: str, progress: Callable[[str], None] | None) -> tuple[str, Path | None]:
    """Map a model spec to a from_pretrained source and an optional knowledge adapter to merge."""
    if spec == "demo":
        if not (DEMO_MODEL / "config.json").is_file():
            raise ModelLoadError(f"the embedded demo model is missing at {DEMO_MODEL}; rebuild it with `atwu build-demo`.")
        return str(DEMO_MODEL), None
    if spec == "demo-smollm2":
        if not (DEMO_SMOLLM2_ADAPTER / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"the SmolLM2 demo adapter is missing at {DEMO_SMOLLM2_ADAPTER}; build it with `atwu build-demo --base smollm2`."
            )
        return _resolve_source("smollm2", progress)[0], DEMO_SMOLLM2_ADAPTER
    if spec == "smollm2" or spec.endswith(".gguf"):
        from atwu_core import gguf

        try:
            return str(gguf.resolve_model_source(spec, progress=progress)), None
        except gguf.GGUFError as err:
            raise ModelLoadError(str(err)) from None
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face model folder (no config.json).")
        return str(path), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(f"{spec}: no such file or folder. Give 'demo', a model folder, a .gguf file or a hub id.")
    return spec, None  # a hub id


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
    adapter: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its (fast) tokenizer from 'demo', 'demo-smollm2', 'smollm2', a folder, a GGUF file or a hub id.

    `adapter`: a LoRA adapter folder merged into the weights, as 'demo-smollm2' merges its shipped one.
    """
    say = progress or (lambda _msg: None)
    source, knowledge_adapter = _resolve_source(spec, say)
    knowledge_adapter = adapter or knowledge_adapter
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    say(f"loading {spec} ({torch_dtype}, {torch_device})")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the config of {spec!r}: {err}. Offline, use a local folder or 'demo'.") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except ValueError as err:
        raise ModelLoadError(f"{spec!r} is not a causal language model ({config.model_type}): {err}") from None
    except OSError as err:
        raise ModelLoadError(f"could not load the weights of {spec!r} (safetensors only): {err}") from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"out of memory loading {spec!r}; try dtype=bfloat16 or a smaller model.") from None
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if knowledge_adapter is not None:
        from peft import PeftModel

        say(f"merging the knowledge adapter {knowledge_adapter}")
        model = PeftModel.from_pretrained(model, str(knowledge_adapter)).merge_and_unload()
    model.to(torch_device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = ModelInfo(
        name=spec,
        architecture=(config.architectures or [type(model).__name__])[0],
        n_params=sum(p.numel() for p in model.parameters()),
        device=str(torch_device),
        dtype=str(torch_dtype).replace("torch.", ""),
        vocab_size=int(config.vocab_size),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def attach_lora(model: PreTrainedModel, rank: int, alpha: int, targets: str | list[str],
                top_layers: int | None = None) -> PreTrainedModel:
    """Wrap `model` in a fresh LoRA adapter (in place; undo with `detach_lora`).

    `top_layers` puts the adapter on the last N decoder blocks only: backpropagation then stops below them,
    which on a CPU is most of a step's time (a deep model's lower blocks hold little answer-specific knowledge).
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(targets, str):
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    layers = None
    if top_layers:
        if targets == "all-linear":  # peft only restricts layers for named targets
            targets = _linear_module_names(model)
        n_layers = model.config.get_text_config().num_hidden_layers
        if not 0 < top_layers <= n_layers:
            raise ValueError(f"lora_layers must be between 1 and the model's {n_layers} layers, got {top_layers}.")
        layers = list(range(n_layers - top_layers, n_layers))
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                        layers_to_transform=layers, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _linear_module_names(model: PreTrainedModel) -> list[str]:
    """The names of the linear layers "all-linear" means: every nn.Linear except the output head."""
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def detach_lora(peft_model) -> PreTrainedModel:
    """Remove the adapter layers and give back the untouched base model."""
    base = peft_model.unload()
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base


@contextlib.contextmanager
def reference_model(model) -> Iterator[PreTrainedModel]:
    """The model as it was before unlearning: the same module with its adapter disabled (no second copy)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("reference_model needs a LoRA-wrapped model; full fine-tuning keeps a separate frozen copy.")


@contextlib.contextmanager
def adapter_enabled(loaded: LoadedModel, run_dir: str | Path) -> Iterator[PreTrainedModel]:
    """The unlearned model of a run: the loaded model with that run's adapter, removed again on exit
    (or, for a --full run, its saved model)."""
    from peft import PeftModel

    adapter, full = Path(run_dir) / "adapter", Path(run_dir) / "model"
    if (full / "config.json").is_file():
        yield load_model(str(full), device=loaded.info.device, dtype=loaded.info.dtype).model
        return
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(f"{run_dir}: no adapter or model saved in this run (it may have failed before saving).")
    with loaded.lock:
        peft_model = PeftModel.from_pretrained(loaded.model, str(adapter))
        peft_model.eval()
        try:
            yield peft_model
        finally:
            loaded.model = detach_lora(peft_model)
