"""Record loading, bad-input errors, and spans → token labels on several tokenizers."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from atwu_core.data import (
    MAX_FORGET_STRINGS,
    MAX_STRING_MATCHES,
    DataError,
    Record,
    Span,
    encode_record,
    load_data,
    load_dataset_dir,
    load_jsonl,
    load_tofu_json,
    span_index,
)

SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"

CORPUS = [
    "Question: Where was Lorin Vask born?\nAnswer: Lorin Vask was born in Tessaly.",
    "Question: What does Mira Dollen do?\nAnswer: Mira Dollen works as a glassblower in Orvane.",
    "Question: When was Ivo Brask born?\nAnswer: Ivo Brask was born in 1957.",
] * 5


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _record(**kw) -> str:
    base = {"id": "r1", "question": "Where was Lorin Vask born?", "answer": "Lorin Vask was born in Tessaly."}
    return json.dumps({**base, **kw})


# ------------------------------------------------------------------------------------------ loading


def test_forget_strings_mark_every_occurrence(tmp_path):
    rec = load_jsonl(
        _write(
            tmp_path / "f.jsonl",
            [
                json.dumps(
                    {
                        "id": "a",
                        "question": "q?",
                        "answer": "Vask met Vask in Tessaly.",
                        "forget_strings": ["Vask", "Tessaly"],
                    }
                )
            ],
        )
    )[0]
    assert [rec.answer[s.start : s.end] for s in rec.forget_spans] == ["Vask", "Vask", "Tessaly"]


def test_overlapping_and_repeated_forget_strings_cover_what_a_naive_marking_covers(tmp_path):
    """Spans from the difference array equal a character-by-character marking of every occurrence."""
    answer = "abababa cab ab xaba abab"
    strings = ["aba", "ab", "aba", "b a", "x", "abab"]
    covered = [False] * len(answer)
    for text in strings:
        for k in range(len(answer)):
            if answer.startswith(text, k):
                covered[k : k + len(text)] = [True] * len(text)
    row = json.dumps({"id": "a", "question": "q?", "answer": answer, "forget_strings": strings})
    rec = load_jsonl(_write(tmp_path / "f.jsonl", [row]))[0]
    marked = [any(s.start <= k < s.end for s in rec.forget_spans) for k in range(len(answer))]
    assert marked == covered
    assert all(b.start > a.end for a, b in zip(rec.forget_spans, rec.forget_spans[1:], strict=False))  # merged


@pytest.mark.parametrize(
    "line, message",
    [
        (_record(forget_strings=[f"s{k}" for k in range(MAX_FORGET_STRINGS + 1)]), "different forget strings"),
        (
            _record(answer="a" * 20_000, forget_strings=["a" * k for k in range(1, 8)]),
            f"occur more than {MAX_STRING_MATCHES} times",
        ),
        ('{"id": "x", "question": "q?"', "malformed JSON"),
        ('{"id": "x", "answer": "a"}', "missing field 'question'"),
        (_record(forget_spans=[{"start": 20, "end": 99}]), "outside the answer"),
        (_record(forget_spans=[{"start": 0, "end": 10}, {"start": 5, "end": 12}]), "overlap"),
        (_record(forget_strings=["Paris"]), "does not occur"),
        (_record(forget_spans=[{"start": "0", "end": 3}]), "integer 'start'"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, line, message):
    path = _write(tmp_path / "forget.jsonl", [_record(id="ok"), line])
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert message in str(err.value)
    assert f"{path}, line 2" in str(err.value)


def test_dataset_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing forget.jsonl"):
        load_dataset_dir(tmp_path)
    _write(tmp_path / "forget.jsonl", [""])
    _write(tmp_path / "retain.jsonl", [_record()])
    with pytest.raises(DataError, match="forget set is empty"):
        load_dataset_dir(tmp_path)
    with pytest.raises(DataError, match="not 'demo', a dataset folder"):
        load_data(str(tmp_path / "nothing.txt"))


def test_duplicate_ids_are_rejected(tmp_path):
    with pytest.raises(DataError, match="appears twice"):
        load_jsonl(_write(tmp_path / "f.jsonl", [_record(), _record()]))


def test_demo_world_loads():
    world = load_data("demo")
    assert world.forget and world.retain
    assert all(r.forget_spans for r in world.forget)


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is not present (fresh clone)")
def test_tofu_json_loads_with_perturbations():
    records = load_tofu_json(SHARED_TOFU / "forget01.json")
    assert len(records) == 40
    assert all(r.paraphrased_answer and r.perturbed_answer for r in records)
    # TOFU's `subject` becomes a `name` span wherever it occurs in the answer
    raw = json.loads((SHARED_TOFU / "forget01.json").read_text())
    for record, row in zip(records, raw, strict=True):
        said = [record.answer[s.start : s.end] for s in record.forget_spans]
        assert said == [row["subject"]] * record.answer.count(row["subject"])
        assert all(s.label == "name" for s in record.forget_spans)
    assert sum(bool(r.forget_spans) for r in records) > 30


SPANS_FIXTURE = Path(__file__).parent / "fixtures" / "tofu_spans"
SHARED_SPANS = SHARED_TOFU.parent / "tofu-spans"


def test_a_datasets_folder_with_target_words_loads_as_fact_spans():
    with pytest.warns(UserWarning, match="dropped 1 target_words annotation"):
        world = load_data(str(SPANS_FIXTURE))
    assert world.name == "tofu_spans" and len(world.forget) == 3 and world.retain == []
    texts = [[(r.answer[s.start : s.end], s.label) for s in r.forget_spans] for r in world.forget]
    # "Poetry" is annotated at offsets that hold " for P": dropped, its record kept with the other span
    assert texts == [[("florist", "fact"), ("Dunmere", "fact")], [("Harrow Prize", "fact")], []]


@pytest.mark.skipif(not SHARED_SPANS.is_dir(), reason="../shared/data/tofu-spans is not present (fresh clone)")
def test_the_published_tofu_span_folders_load_whole():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every forget10 annotation matches its answer: nothing dropped
        world = load_data(str(SHARED_SPANS / "forget10_with_common_words_gpt"))
    assert len(world.forget) == 400
    # 1,163 annotations; one ("Kazakhstan") lies inside another ("Kazakhstan Echoes") and merges into it
    assert sum(len(r.forget_spans) for r in world.forget) == 1162
    assert sum(not r.forget_spans for r in world.forget) == 12


# ------------------------------------------------------------------------------------------ spans -> tokens


def _byte_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def _wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]", pad_token="[SEP]")


def _metaspace_unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=["</s>", "<unk>"], unk_token="<unk>")
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="</s>")


TOKENIZERS = {"byte-bpe": _byte_bpe, "wordpiece": _wordpiece, "sentencepiece-unigram": _metaspace_unigram}
if (DEMO_MODEL / "tokenizer.json").is_file():
    TOKENIZERS["demo"] = lambda: AutoTokenizer.from_pretrained(DEMO_MODEL)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_span_tokens_cover_exactly_the_span_words(name):
    tok = TOKENIZERS[name]()
    answer = "Lorin Vask was born in Tessaly."
    rec = Record("r", "Where was Lorin Vask born?", answer, [Span(0, 10, "name"), Span(23, 30, "birthplace")])
    enc = encode_record(rec, tok)
    assert enc.labels[: enc.prompt_length] == [-100] * enc.prompt_length
    assert enc.labels[enc.prompt_length :] == enc.answer_token_ids
    assert enc.answer_token_ids[-1] == tok.eos_token_id
    inside = "".join(t for t, m in zip(enc.answer_tokens, enc.span_mask) if m).lower().replace(" ", "").replace("▁", "")
    outside = "".join(t for t, m in zip(enc.answer_tokens, enc.span_mask) if not m).lower().replace(" ", "")
    assert inside == "lorinvasktessaly"
    assert outside.replace("▁", "").startswith("wasbornin.")
    # offsets point back into the answer text
    for (s, e), t in zip(enc.answer_offsets, enc.answer_tokens):
        if e > s:
            assert answer[s:e].strip().lower() == t.strip().lower().replace("▁", "")


def test_overlong_sample_truncates_with_warning():
    tok = _byte_bpe()
    rec = Record("long", "Where was Lorin Vask born?", "Lorin Vask was born in Tessaly. " * 20)
    with pytest.warns(UserWarning, match="truncated"):
        enc = encode_record(rec, tok, max_length=40)
    assert len(enc.input_ids) == 40


def test_a_span_cut_off_by_max_length_is_no_ground_truth_and_says_so():
    """Issue 24 item 16: it kept has_ground_truth true with 0 span tokens, silently."""
    tok = _byte_bpe()
    answer = "Lorin Vask was born in a town whose name comes at the very end: Tessaly."
    rec = Record("cut", "Where was Lorin Vask born?", answer, [Span(answer.index("Tessaly"), len(answer) - 1)])
    with pytest.warns(UserWarning, match="cut off every ground-truth span"):
        enc = encode_record(rec, tok, max_length=24)
    assert not any(enc.span_mask) and enc.has_ground_truth is False
    assert encode_record(rec, tok).has_ground_truth  # uncut, the span is there


@pytest.mark.parametrize("seed", range(3))
def test_span_index_agrees_with_checking_every_span(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, 400), 40))
    spans = [Span(a, b, f"l{k}") for k, (a, b) in enumerate(zip(cuts[::2], cuts[1::2]))]
    rng.shuffle(spans)  # disjoint, in any order
    offsets = [(s, s + rng.randint(0, 6)) for s in range(0, 400, 3)]
    naive = [next((i for i, sp in enumerate(spans) if s < sp.end and e > sp.start), None) for s, e in offsets]
    assert span_index(offsets, spans) == naive
    overlapping = [*spans, Span(0, 400)]  # built by hand, overlapping: still the first span that overlaps
    naive = [next((i for i, sp in enumerate(overlapping) if s < sp.end and e > sp.start), None) for s, e in offsets]
    assert span_index(offsets, overlapping) == naive
