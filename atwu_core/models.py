"""Loading causal LMs, attaching LoRA, and the adapter-disabled reference.

The loaded model is shared (the app caches it): a job wraps it in a LoRA adapter and unwraps it at the end,
so the original weights are never modified and "before" is always the plain loaded model.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from atwu_core import adapters
from atwu_core.files import ASSETS

# peft (0.21) reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: a FutureWarning on every
# adapter attach or load that concerns neither this project's code nor its users. Filtered by its exact message.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEMO_MODEL = ASSETS / "demo_model"
DEMO_SMOLLM2_ADAPTER = ASSETS / "demo_smollm2_adapter"
CAUSAL_TOLERANCE = 1e-4  # how much earlier predictions may move, relative to the largest logit


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
    adapter: str | Path | None = None  # a knowledge adapter merged at load (`load_model(adapter=…)`), for reloads


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
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _resolve_source(spec: str, progress: Callable[[str], None] | None) -> tuple[str, Path | None]:
    """Map a model spec to a from_pretrained source and an optional knowledge adapter to merge."""
    if spec == "demo":
        if not (DEMO_MODEL / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded demo model is missing at {DEMO_MODEL}; rebuild it with `atwu build-demo`."
            )
        return str(DEMO_MODEL), None
    if spec == "demo-smollm2":
        if not (DEMO_SMOLLM2_ADAPTER / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"the SmolLM2 demo adapter is missing at {DEMO_SMOLLM2_ADAPTER}; "
                "build it with `atwu build-demo --base smollm2`."
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
    """Load a causal LM and its (fast) tokenizer from 'demo', 'demo-smollm2', 'smollm2', a folder, a GGUF file
    or a hub id.

    `adapter`: a LoRA adapter folder merged into the weights, as 'demo-smollm2' merges its shipped one.
    Every failure (unreadable or corrupt files, a model that is not a causal LM, missing weights, an unreachable
    hub) is one ModelLoadError naming the file or model and what to do.
    """
    say = progress or (lambda _msg: None)
    source, knowledge_adapter = _resolve_source(spec, say)
    knowledge_adapter = adapter or knowledge_adapter
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    say(f"loading {spec} ({torch_dtype}, {torch_device})")
    local = Path(source).exists()
    opts = {"trust_remote_code": trust_remote_code, "local_files_only": not local and not _hub_reachable()}
    with _quiet_transformers(progress_bars=not local):
        config = _load_config(spec, source, opts)
        model = _load_weights(spec, source, config, torch_dtype, opts)
        tokenizer = _load_tokenizer(spec, source, opts)
    _check_causal(model, spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if knowledge_adapter is not None:
        say(f"merging the knowledge adapter {knowledge_adapter}")
        model = _merge_adapter(model, Path(knowledge_adapter))
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
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, adapter=adapter)


def _hub_reachable() -> bool:
    from atwu_core.hub import hub_reachable

    return hub_reachable()


@contextlib.contextmanager
def _quiet_transformers(progress_bars: bool) -> Iterator[None]:
    """transformers logs load reports and warnings over many stderr lines; every problem they describe becomes one
    ModelLoadError here. Progress bars stay on only when a hub download may be slow."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress_bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(err: BaseException) -> str:
    """transformers' messages can run to kilobytes (every supported config class); their first line says what."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _load_config(spec: str, source: str, opts: dict):
    hint = (
        "the hub cannot be reached: use a local folder or 'demo'"
        if opts["local_files_only"]
        else "give 'demo', a model folder, a .gguf file or a hub id"
    )
    try:
        return AutoConfig.from_pretrained(source, **opts)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the config of {spec!r}: {_first_line(err)} ({hint}).") from None


def _load_weights(spec: str, source: str, config, dtype: torch.dtype, opts: dict) -> PreTrainedModel:
    """The causal-LM weights; refuses other model kinds, corrupt files and checkpoints that lack weights."""
    from safetensors import SafetensorError
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not remote:
        raise ModelLoadError(
            f"{spec!r} is a {config.model_type!r} model, not a causal language model; "
            "give a decoder-only LM (Llama, GPT-2, SmolLM2, ...)."
        )
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, use_safetensors=True, output_loading_info=True, **opts
        )
    except SafetensorError as err:
        raise ModelLoadError(
            f"{_weights_file(source)}: corrupt or truncated safetensors file ({err}); "
            "download or build the model again."
        ) from None
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, torch.OutOfMemoryError):
            raise ModelLoadError(f"out of memory loading {spec!r}; try dtype=bfloat16 or a smaller model.") from None
        raise ModelLoadError(f"could not load the weights of {spec!r} (safetensors only): {_first_line(err)}") from None
    missing = loading.get("missing_keys") or []
    if missing:
        names = ", ".join(sorted(missing)[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(
            f"{_weights_file(source)}: the checkpoint lacks {len(missing)} weights of the "
            f"{type(model).__name__} ({names}); they would be random. Is it a causal LM checkpoint?"
        )
    return model


def _weights_file(source: str) -> str:
    """The file or folder to name in a weights error."""
    files = sorted(Path(source).glob("*.safetensors"))
    return str(files[0]) if len(files) == 1 else source


def _load_tokenizer(spec: str, source: str, opts: dict):
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, **opts)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{source}: no usable fast tokenizer for {spec!r} ({_first_line(err)}); the model folder "
            "needs tokenizer.json (copy it from the base model)."
        ) from None


def _check_causal(model: PreTrainedModel, spec: str) -> None:
    """Refuse a model whose predictions see later tokens: an encoder such as BERT loads with an LM head, runs and
    "unlearns", but its per-token losses mean nothing. Two 4-token passes that differ in the last token decide it:
    a causal LM's first three positions do not move at all (masked attention adds exact zeros), an encoder's do.
    The bound is relative to the logits' scale, not to the last position's change: a freshly initialised encoder's
    near-uniform attention moves earlier positions by only ~1e-3 of that change."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]]) % vocab
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device)).logits.float()  # [2, 4, V]
    moved = (logits[0, :3] - logits[1, :3]).abs().max()
    if moved > CAUSAL_TOLERANCE * logits.abs().max():
        raise ModelLoadError(
            f"{spec!r} ({type(model).__name__}) is not a causal language model: its predictions "
            "depend on later tokens (an encoder such as BERT). Give a decoder-only LM."
        )


def _merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        config = adapters.lora_config(adapter)
        adapters.check_weight_keys(adapter)
    except adapters.AdapterError as err:
        raise ModelLoadError(str(err)) from None
    try:
        return PeftModel.from_pretrained(model, str(adapter), config=config).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise ModelLoadError(f"{adapter}: not a usable LoRA adapter for this model ({_first_line(err)}).") from None


def _strip_lora_layers(model: torch.nn.Module) -> None:
    """Put back the layers a failed `PeftModel.from_pretrained` wrapped: it injects LoRA layers into the (shared)
    model before it reads the adapter's weights, and does not undo that when the read fails."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def attach_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: int,
    targets: str | list[str],
    top_layers: int | None = None,
    fp32: bool = True,
) -> PreTrainedModel:
    """Wrap `model` in a fresh LoRA adapter (in place; undo with `detach_lora`).

    `top_layers` puts the adapter on the last N decoder blocks only: backpropagation then stops below them,
    which on a CPU is most of a step's time (a deep model's lower blocks hold little answer-specific knowledge).
    `fp32=False` keeps the adapter in the model's dtype (bf16): no casts around every LoRA matmul, but AdamW's
    state and updates are bf16 too, so an update below ~1/256 of a weight is rounded away.
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(targets, str):
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    layers = None
    if top_layers:
        if targets == "all-linear":  # peft only restricts layers for named targets
            targets = _linear_module_names(model)
        check_settings(model, "all-linear", top_layers, None)
        n_layers = model.config.get_text_config().num_hidden_layers
        layers = list(range(n_layers - top_layers, n_layers))
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=fp32)


def model_skeleton(spec: str) -> PreTrainedModel | None:
    """The model's modules without weights (on the meta device: no memory, no file read but config.json), so
    settings can be checked before a load; None unless its config is a local file ('demo', a folder): hub ids,
    GGUF files and 'smollm2' are checked once loaded. Anything unreadable is left for `load_model` to report."""
    folder = DEMO_MODEL if spec == "demo" else Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        return None
    try:
        with _quiet_transformers(progress_bars=False), torch.device("meta"):
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - load_model names the problem with the file
        return None


def check_settings(model: PreTrainedModel, targets: str, top_layers: int | None, hidden: int | None) -> None:
    """The settings whose range depends on the model, checked before anything runs on it: `lora_targets`
    (module names it has), `lora_layers` and a scorer's `hidden_layer` (its depth). `model` may be a
    `model_skeleton`."""
    n_layers = model.config.get_text_config().num_hidden_layers
    if top_layers is not None and not 0 < top_layers <= n_layers:
        raise ValueError(f"lora_layers must be between 1 and the model's {n_layers} layers, got {top_layers}.")
    if hidden is not None and not -n_layers - 1 <= hidden <= n_layers:
        raise ValueError(
            f"hidden_layer must be between {-n_layers - 1} and {n_layers} (the model has {n_layers} layers; "
            f"0 = embeddings, -1 = last), got {hidden}."
        )
    if targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        missing = [t for t in wanted if t not in names]
        if missing or not wanted:
            linear = ", ".join(_linear_module_names(model))
            raise ValueError(
                f"lora_targets {', '.join(missing) or repr(targets)} not in the model; its linear layers are: "
                f"{linear} (or use all-linear)."
            )


def _linear_module_names(model: PreTrainedModel) -> list[str]:
    """The names of the linear layers "all-linear" means: every nn.Linear except the output head."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


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
    (or, for a --full run, its saved model). The adapter is untrusted (`atwu_core.adapters`): only plain LoRA
    loads, whatever fails takes the injected layers out again, and the base weights' digest is compared before
    and after; a changed model is reloaded and the call fails saying so."""
    from peft import PeftModel

    adapter, full = Path(run_dir) / "adapter", Path(run_dir) / "model"
    if (full / "config.json").is_file():
        yield load_model(str(full), device=loaded.info.device, dtype=loaded.info.dtype).model
        return
    if not (adapter / adapters.CONFIG_FILE).is_file():
        raise ModelLoadError(f"{run_dir}: no adapter or model saved in this run (it may have failed before saving).")
    try:
        config = adapters.lora_config(adapter)
        adapters.check_weight_keys(adapter)
    except adapters.AdapterError as err:
        raise ModelLoadError(str(err)) from None
    with loaded.lock:
        before = adapters.weights_digest(loaded.model)
        try:
            peft_model = PeftModel.from_pretrained(loaded.model, str(adapter), config=config)
            peft_model.eval()
            adapters.check_finite(peft_model, adapter)
        except BaseException as err:
            _strip_lora_layers(loaded.model)
            _check_unchanged(loaded, before, adapter)
            if not isinstance(err, Exception):
                raise
            if isinstance(err, adapters.AdapterError):
                raise ModelLoadError(str(err)) from None
            raise ModelLoadError(
                f"{adapter}: not a usable LoRA adapter for {loaded.info.name!r} ({_first_line(err)})."
            ) from None
        try:
            yield peft_model
        finally:
            loaded.model = detach_lora(peft_model)
            _check_unchanged(loaded, before, adapter)


def _check_unchanged(loaded: LoadedModel, before: str, adapter: Path) -> None:
    """Fail loudly, with the shared model reloaded, if an adapter left the base weights changed."""
    if adapters.weights_digest(loaded.model) == before:
        return
    fresh = load_model(loaded.info.name, device=loaded.info.device, dtype=loaded.info.dtype, adapter=loaded.adapter)
    loaded.model = fresh.model
    loaded.memo.clear()
    raise ModelLoadError(
        f"{adapter}: the base model's weights changed while this adapter was loaded; "
        f"{loaded.info.name!r} was reloaded from its source, so later answers and jobs use the original."
    )


@dataclass
class Trainable:
    """The model a job trains, and the way back to the loaded model it started from (`ref`)."""

    model: torch.nn.Module
    loaded: LoadedModel
    full: bool

    @contextlib.contextmanager
    def ref(self) -> Iterator[torch.nn.Module]:
        """The loaded model as it was: the adapter disabled (no second copy), or the untouched original with --full."""
        if self.full:
            yield self.loaded.model
        else:
            with self.model.disable_adapter():
                yield self.model


@contextlib.contextmanager
def trainable(
    loaded: LoadedModel,
    *,
    full: bool,
    rank: int,
    alpha: int,
    targets: str,
    top_layers: int | None,
    gradient_checkpointing: bool = False,
    lora_fp32: bool = True,
) -> Iterator[Trainable]:
    """Wrap the shared loaded model in a fresh LoRA adapter (or train a copy with `full`) and always give the
    plain model back on exit, whatever happened: a failed or cancelled job leaves the loaded model as it was."""
    if full:
        model = copy.deepcopy(loaded.model)
        for p in model.parameters():
            p.requires_grad_(True)
        with _checkpointing(model, gradient_checkpointing):
            yield Trainable(model, loaded, full=True)
        return
    model = attach_lora(loaded.model, rank, alpha, targets, top_layers, fp32=lora_fp32)
    try:
        with _checkpointing(loaded.model, gradient_checkpointing):
            yield Trainable(model, loaded, full=False)
    finally:
        loaded.model = detach_lora(model)


COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests use "aot_eager" (same capture, no code generation)


def decoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks: the module list with one entry per hidden layer."""
    n = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {n} decoder blocks found to compile; set compile=false.")


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, on: bool) -> Iterator[None]:
    """Regional compilation: `torch.compile` of each decoder block (with its LoRA layers) in place, not of the
    whole model, so every block reuses one compiled graph (compile time in seconds, not minutes) and the lean
    head, the losses and the scorer run as they are. Undone on exit: the loaded model is shared, and evaluation
    (no gradients, generation one token at a time) would only add graphs to compile."""
    if not on:
        yield
        return
    blocks = list(decoder_blocks(model))
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND)
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None  # nn.Module.compile's own slot: back to the eager forward


@contextlib.contextmanager
def _checkpointing(model: PreTrainedModel, on: bool) -> Iterator[None]:
    """Gradient checkpointing while training (each block's activations recomputed in the backward pass: less
    memory, about a third more compute), switched off again on exit. With frozen embeddings no block input requires
    grad and the LoRA layers inside checkpointed blocks would get none: `enable_input_require_grads` fixes that."""
    if not on:
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    try:
        yield
    finally:
        model.disable_input_require_grads()
        model.gradient_checkpointing_disable()
