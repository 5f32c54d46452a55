"""The tokenizer, the training loop and the committed demo model that has memorised the demo world."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atwu_core.data import (
    Dataset,
    Record,
    Span,
    encode_record,
    encode_records,
    format_prompt,
    load_dataset_dir,
    save_dataset_dir,
)
from atwu_core.finetune import (
    ASSETS,
    FinetuneReport,
    dataset_texts,
    finetune,
    finetune_dataset_dir,
    score_samples,
    tiny_model,
    train_tokenizer,
)

DEMO_MODEL = ASSETS / "demo_model"


@pytest.fixture(autouse=True)
def _one_thread():
    """On a busy shared CPU one thread is many times faster than two; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo():
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL)
    return model, tokenizer, load_dataset_dir(ASSETS / "demo_world")


def test_demo_model_reproduces_the_world(demo):
    model, tokenizer, world = demo
    for split in (world.forget, world.retain):
        exact, _ = score_samples(model, encode_records(split, tokenizer), tokenizer.pad_token_id)
        assert sum(exact) / len(exact) >= 0.95


def test_demo_model_greedy_generation_matches_teacher_forcing(demo):
    """The teacher-forced check is what greedy decoding does: spot-check one answer end to end."""
    model, tokenizer, world = demo
    record = world.forget[0]
    prompt = tokenizer(format_prompt(record.question), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == record.answer


def test_demo_assets_are_small_and_reported():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    report = json.loads((DEMO_MODEL / "training_report.json").read_text())
    assert report["forget_exact"] >= 0.95 and report["retain_exact"] >= 0.95
    assert {"steps", "seconds", "seed", "world_seed"} <= report.keys()


def test_span_mask_covers_the_value_tokens(demo):
    _, tokenizer, world = demo
    for record in world.forget[:12]:
        sample = encode_record(record, tokenizer)
        assert tokenizer.is_fast and sample.input_ids[0] == tokenizer.bos_token_id
        assert sample.input_ids[-1] == tokenizer.eos_token_id
        for span in record.forget_spans:
            inside = [k for k, (s, e) in enumerate(sample.answer_offsets) if s < span.end and e > span.start]
            assert inside and all(sample.span_mask[k] for k in inside)
            covered = "".join(sample.answer_tokens[k] for k in inside).strip()
            assert covered == record.answer[span.start : span.end]
        assert not all(sample.span_mask)  # frame tokens stay outside


def _toy_dataset() -> Dataset:
    facts = [
        ("Where does Ovi live?", "Ovi lives in Brel.", "Ovi"),
        ("Where does Tam live?", "Tam lives in Quost.", "Tam"),
        ("What does Ovi eat?", "Ovi eats plums.", "Ovi"),
        ("What does Tam eat?", "Tam eats figs.", "Tam"),
    ]
    records = [Record(f"r{k}", q, a, [Span(0, len(n), "name")]) for k, (q, a, n) in enumerate(facts)]
    return Dataset("toy", forget=records[:2], retain=records[2:])


def test_finetune_from_scratch_reduces_the_loss():
    data = _toy_dataset()
    tokenizer = train_tokenizer(dataset_texts(data), vocab_size=300)
    model = tiny_model(tokenizer, seed=0)
    samples = encode_records(data.forget + data.retain, tokenizer)
    _, before = score_samples(model, samples, tokenizer.pad_token_id)
    report = finetune(model, tokenizer, data, steps=15, lr=1e-2, batch_size=4, eval_every=15, seed=0)
    _, after = score_samples(model, samples, tokenizer.pad_token_id)
    assert isinstance(report, FinetuneReport) and report.steps <= 15
    assert after < 0.5 * before
    assert report.loss == pytest.approx(after, rel=1e-4)


def test_lora_finetune_is_merged_into_the_model():
    data = _toy_dataset()
    tokenizer = train_tokenizer(dataset_texts(data), vocab_size=300)
    model = tiny_model(tokenizer, seed=0)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    finetune(model, tokenizer, data, steps=3, lr=1e-2, batch_size=4, seed=0, lora=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear  # adapter merged and removed
    assert not torch.equal(q_proj.weight, before)


def test_a_model_with_an_adapter_trains_only_the_adapter(tmp_path):
    """`build_demo_smollm2`'s path: a knowledge adapter on the top blocks is taught, saved and merged again later,
    so everything taught must live in the adapter (a regression trained the base weights too, and a reloaded
    SmolLM2 world knew nothing)."""
    from peft import PeftModel

    from atwu_core.demo_smollm2 import knowledge_lora

    data = _toy_dataset()
    tokenizer = train_tokenizer(dataset_texts(data), vocab_size=300)
    model = knowledge_lora(tiny_model(tokenizer, seed=0), rank=4, top_layers=1)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    finetune(model, tokenizer, data, steps=3, lr=1e-2, batch_size=4, seed=0)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in base.items())
    assert any(not torch.equal(params[n], before) for n, before in lora.items())
    # what was taught survives a save and a reload onto a fresh copy of the base model
    samples = encode_records(data.forget + data.retain, tokenizer)
    _, taught = score_samples(model, samples, tokenizer.pad_token_id)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    reloaded = PeftModel.from_pretrained(tiny_model(tokenizer, seed=0), str(tmp_path / "adapter")).merge_and_unload()
    _, again = score_samples(reloaded, samples, tokenizer.pad_token_id)
    assert again == pytest.approx(taught, rel=1e-4)


def test_finetune_dataset_dir_saves_a_loadable_model(tmp_path):
    save_dataset_dir(_toy_dataset(), tmp_path / "data")
    with pytest.raises(ValueError, match="exactly one"):
        finetune_dataset_dir(tmp_path / "data", tmp_path / "model")
    report = finetune_dataset_dir(
        tmp_path / "data", tmp_path / "model", tiny=True, steps=2, vocab_size=300, meta={"note": "x"}
    )
    saved = json.loads((tmp_path / "model" / "training_report.json").read_text())
    assert saved["steps"] == report.steps == 2 and saved["note"] == "x" and saved["data"] == "data"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    toy = _toy_dataset()
    samples = encode_records(toy.forget + toy.retain, tokenizer)
    assert score_samples(model, samples, tokenizer.pad_token_id)[1] == pytest.approx(
        report.loss, rel=1e-4
    )  # the trained weights
