"""Metrics and generation, checked against values worked out by hand.

Two models, both with the demo tokenizer: a hand-wired bigram Llama (the next-token distribution depends
only on the current token and is set weight by weight, so every probability and every argmax is known in
advance), and the project's demo model, which has memorised the demo world.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from atwu_core.data import IGNORE_INDEX, Dataset, EncodedSample, Record, Span, encode_records, load_data
from atwu_core.generation import collate, greedy_answer, greedy_answers
from atwu_core.metrics import (
    alignment,
    alignment_curves,
    answer_stats,
    disagreements,
    forget_quality,
    peak_memory_mb,
    per_token_nll,
    quality,
)
from atwu_core.metrics_record import Separation

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
STRENGTH = 10.0  # logit of the wired next token; every other token has logit 0

RECORD = Record("r0", "Where does Ada Quill live?", "Ada Quill lives in Brightwater.", [Span(19, 30)])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a busy shared CPU their spin-waits cost seconds a call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(DEMO_MODEL)


@pytest.fixture(scope="module")
def demo(tokenizer) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, Dataset]:
    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL).eval(), tokenizer, load_data("demo")


def bigram_llama(vocab_size: int, transitions: dict[int, int]) -> LlamaForCausalLM:
    """A Llama whose logits at a position are STRENGTH on `transitions[current token]` and 0 elsewhere
    (all 0 for tokens without a transition, so their argmax is token 0).

    Each source token gets its own one-hot embedding; the block's output projections are zero, so the
    residual stream carries the embedding unchanged to the final norm (scaled back to the one-hot) and lm_head.
    """
    hidden = 2 * ((len(transitions) + 1) // 2 + 1)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        rms_norm_eps=1e-12,
        tie_word_embeddings=False,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.norm.weight.fill_(hidden**-0.5)
        for slot, (source, target) in enumerate(transitions.items()):
            model.model.embed_tokens.weight[source, slot] = 1.0
            model.lm_head.weight[target, slot] = STRENGTH
    return model.eval()


@pytest.fixture(scope="module")
def wired(tokenizer) -> tuple[LlamaForCausalLM, EncodedSample]:
    """The bigram model wired to answer RECORD: last prompt token -> answer tokens -> EOS, and EOS -> the first
    answer token again (so an answer only ends where generation stops at EOS)."""
    (sample,) = encode_records([RECORD], tokenizer)
    chain = sample.input_ids[sample.prompt_length - 1 :]
    assert len(set(chain)) == len(chain), "the wiring needs distinct tokens"
    transitions = dict(zip(chain, chain[1:])) | {tokenizer.eos_token_id: chain[1]}
    return bigram_llama(len(tokenizer), transitions), sample


def p_wired(vocab_size: int) -> float:
    return math.exp(STRENGTH) / (math.exp(STRENGTH) + vocab_size - 1)


# --------------------------------------------------------------------------------------------- collate


def _sample(ids: list[int], prompt_length: int, span: list[bool] | None = None, sid: str = "s") -> EncodedSample:
    n = len(ids) - prompt_length
    return EncodedSample(
        record_id=sid,
        input_ids=ids,
        labels=[IGNORE_INDEX] * prompt_length + ids[prompt_length:],
        prompt_length=prompt_length,
        answer_tokens=[f"t{k}" for k in range(n)],
        answer_offsets=[(k, k + 1) for k in range(n)],
        span_mask=span if span is not None else [False] * n,
        has_ground_truth=bool(span and any(span)),
    )


def test_collate_pads_right_by_default_and_left_on_request() -> None:
    long, short = _sample([5, 6, 7, 8], 2), _sample([9, 10, 11], 1)
    right = collate([long, short], pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert right["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, 11, -100]]
    left = collate([long, short], pad_id=0, left_pad=True)
    assert left["input_ids"].tolist() == [[5, 6, 7, 8], [0, 9, 10, 11]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert left["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, 10, 11]]


# --------------------------------------------------------------------------------------------- hand-wired model


def test_per_token_nll_scores_each_answer_token_from_the_previous_position(wired, tokenizer) -> None:
    model, sample = wired
    shorter = replace(sample, input_ids=sample.input_ids[:-2], labels=sample.labels[:-2], record_id="short")
    batch = collate([sample, shorter], tokenizer.pad_token_id)
    nll = per_token_nll(model, batch)
    assert nll.shape == (2, len(sample.input_ids) - 1)
    expected = -math.log(p_wired(len(tokenizer)))
    answer = batch["labels"][:, 1:] != IGNORE_INDEX
    assert torch.allclose(nll[answer], torch.full_like(nll[answer], expected), atol=1e-4)
    assert torch.all(nll[~answer] == 0)
    assert int(answer[1].sum()) == len(sample.answer_token_ids) - 2  # pads are not scored


def test_answer_stats_and_extraction_strength_on_hand_made_errors(wired, tokenizer) -> None:
    model, sample = wired
    ids, n = sample.input_ids, len(sample.answer_token_ids)
    stranger = next(t for t in range(3, len(tokenizer)) if t not in ids)  # a token without a transition: argmax 0

    def corrupt(position: int, sid: str) -> EncodedSample:
        at = sample.prompt_length + position
        new = ids[:at] + [stranger] + ids[at + 1 :]
        return replace(
            sample, record_id=sid, input_ids=new, labels=sample.labels[:at] + [stranger] + sample.labels[at + 1 :]
        )

    # at position 2 the stranger is mispredicted, and from it the model predicts token 0, not answer token 3:
    # the answer is right from position 4 on, so the shortest prefix after which all is right is 4 tokens.
    # open-unlearning's ES and EM leave EOS (the last answer token) out: |y| = n - 1, and a missed EOS costs nothing
    cases = [sample, corrupt(2, "middle"), corrupt(n - 1, "last"), corrupt(0, "first")]
    stats = answer_stats(model, cases, tokenizer.pad_token_id, batch_size=3)
    assert [s["id"] for s in stats] == ["r0", "middle", "last", "first"]
    y = n - 1
    assert [s["extraction_strength"] for s in stats] == pytest.approx([1.0, 1 - 4 / y, 1.0, 1 - 2 / y])
    assert [s["exact_memorization"] for s in stats] == pytest.approx([1.0, (y - 2) / y, 1.0, (y - 2) / y])
    assert stats[2]["token_correct"] == [True] * (n - 1) + [False]
    assert stats[0]["prob"] == pytest.approx(p_wired(len(tokenizer)), rel=1e-4)
    assert len(stats[0]["token_logprobs"]) == n
    # the stranger's own token and the one after it are the unlikely ones
    low = [k for k, lp in enumerate(stats[1]["token_logprobs"]) if lp < math.log(0.5)]
    assert low == [2, 3]


def test_greedy_answers_follow_the_wiring_and_stop_at_eos(wired, tokenizer) -> None:
    model, sample = wired
    assert greedy_answers(model, tokenizer, [sample]) == [RECORD.answer]
    assert greedy_answer(model, tokenizer, RECORD.question) == RECORD.answer
    two_tokens = tokenizer.decode(sample.answer_token_ids[:2]).strip()
    assert greedy_answers(model, tokenizer, [sample], max_new_tokens=2) == [two_tokens]


def test_quality_of_the_wired_model_is_known_exactly(wired, tokenizer) -> None:
    model, sample = wired
    result = quality(model, tokenizer, [RECORD], [sample])
    assert result.to_json() == pytest.approx(
        {
            "n": 1,
            "prob": p_wired(len(tokenizer)),
            "rouge_l": 1.0,
            "exact": 1.0,
            "extraction_strength": 1.0,
            "exact_memorization": 1.0,
        },
        rel=1e-4,
    )
    with pytest.raises(ValueError, match="same order"):
        quality(model, tokenizer, [replace(RECORD, id="other")], [sample])


def test_truth_ratio_compares_perturbed_with_paraphrased_answers(wired, tokenizer) -> None:
    model, sample = wired
    # the paraphrase is the wired answer; a perturbed answer equal to it gives R = 1, other answers R << 1
    tied = replace(RECORD, paraphrased_answer=RECORD.answer, perturbed_answer=[RECORD.answer, RECORD.answer])
    wrong = replace(
        RECORD, paraphrased_answer=RECORD.answer, perturbed_answer=[RECORD.answer, "Ada Quill lives nowhere."]
    )
    only_wrong = replace(wrong, perturbed_answer=["Ada Quill lives nowhere."])
    assert quality(model, tokenizer, [tied], [sample]).truth_ratios == [pytest.approx(1.0)]
    result = quality(model, tokenizer, [wrong], [sample])
    (r_wrong,) = quality(model, tokenizer, [only_wrong], [sample]).truth_ratios
    assert r_wrong < 0.1
    # TOFU's geometric form: the perturbed answers' losses are averaged before exponentiating (sqrt(1 * r_wrong)),
    # not their ratios averaged ((1 + r_wrong) / 2)
    assert result.truth_ratios == [pytest.approx(math.sqrt(r_wrong), rel=1e-5)]
    assert result.truth_ratio == pytest.approx(math.sqrt(r_wrong), rel=1e-5)  # forget form: min(R, 1/R) = R
    assert result.truth_ratio_form == "forget"


# --------------------------------------------------------------------------------------------- demo model


def test_demo_model_has_memorised_the_forget_set(demo) -> None:
    model, tokenizer, world = demo
    result = quality(model, tokenizer, world.forget, encode_records(world.forget, tokenizer))
    assert result.n == len(world.forget)
    assert result.exact >= 0.9 and result.rouge_l >= 0.95
    assert result.prob >= 0.8 and result.extraction_strength >= 0.9
    assert len(result.truth_ratios) == len(world.forget) and all(r > 0 for r in result.truth_ratios)
    assert greedy_answer(model, tokenizer, world.forget[0].question) == world.forget[0].answer


def test_greedy_exact_match_is_teacher_forced_all_argmax_correct(demo) -> None:
    """For greedy decoding the two criteria are the same event: every answer token (EOS included) is the argmax."""
    model, tokenizer, world = demo
    originals = world.forget[:6]
    wrong = [
        Record(f"{r.id}/wrong", r.question, r.perturbed_answer[0]) for r in originals
    ]  # same prompt, a wrong value
    records = originals + wrong
    samples = encode_records(records, tokenizer)
    answers = greedy_answers(model, tokenizer, samples, batch_size=6)  # mixed prompt lengths in a left-padded batch
    exact = [" ".join(a.split()) == r.answer for a, r in zip(answers, records)]
    all_correct = [all(s["token_correct"]) for s in answer_stats(model, samples, tokenizer.pad_token_id, 5)]
    assert exact == all_correct
    assert any(exact) and not all(exact)
    assert answers == greedy_answers(model, tokenizer, samples, batch_size=1)  # padding changes nothing


def test_generation_and_scores_through_a_peft_wrapper(demo) -> None:
    model, tokenizer, world = demo
    samples = encode_records(world.forget[:4], tokenizer)
    wrapped = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )  # B = 0: same function
    wrapped.train()
    assert greedy_answers(wrapped, tokenizer, samples) == greedy_answers(model, tokenizer, samples)
    assert [s["prob"] for s in answer_stats(wrapped, samples, tokenizer.pad_token_id)] == pytest.approx(
        [s["prob"] for s in answer_stats(model, samples, tokenizer.pad_token_id)], rel=1e-5
    )
    assert wrapped.training  # evaluation leaves a training model in training mode


# --------------------------------------------------------------------------------------------- alignment


@pytest.fixture
def spans() -> list[EncodedSample]:
    return [
        _sample([1, 2, 3, 4, 5, 6], 1, [False, True, True, False, False], "a"),
        _sample([1, 2, 3, 4, 5], 1, [True, False, False, False], "b"),
        _sample([1, 2, 3], 1, [False, False], "no-truth"),  # left out: no ground truth
    ]


def test_alignment_of_perfect_reversed_and_uniform_weights(spans) -> None:
    perfect = {s.record_id: [float(m) for m in s.span_mask] for s in spans}
    reversed_ = {sid: [1 - w for w in ws] for sid, ws in perfect.items()}
    uniform = {sid: [0.3] * len(ws) for sid, ws in perfect.items()}
    best, worst, flat = alignment(perfect, spans), alignment(reversed_, spans), alignment(uniform, spans)
    assert (best.n_tokens, best.n_positive, best.n_samples) == (9, 3, 2)
    assert (best.auroc, best.auprc, best.precision_at_k) == (1.0, 1.0, 1.0)
    assert (worst.auroc, worst.precision_at_k) == (0.0, 0.0)
    assert worst.auprc == pytest.approx(3 / 9)  # all span tokens tied last: precision = the span rate
    assert flat.auroc == 0.5
    assert flat.precision_at_k == pytest.approx(3 / 9)  # the tie at the cut-off counts at the span rate
    assert flat.auprc == pytest.approx(3 / 9)
    assert best.per_sample["a"] == Separation(auroc=1.0, auprc=1.0, precision_at_k=1.0)
    assert set(best.per_sample) == {"a", "b"}
    # the magnitude beside the ranking: the same ranking at a margin of 0.01 and of 1
    assert (best.score_in_span, best.score_out_span) == (1.0, 0.0)
    assert (flat.score_in_span, flat.score_out_span) == (pytest.approx(0.3), pytest.approx(0.3))
    squashed = alignment({sid: [0.97 + 0.01 * w for w in ws] for sid, ws in perfect.items()}, spans)
    assert squashed.auroc == 1.0 and squashed.score_in_span - squashed.score_out_span == pytest.approx(0.01)


def test_precision_at_k_counts_the_top_k_and_splits_ties(spans) -> None:
    # pooled: 3 span tokens; the top 3 weights are a span token (0.9), a non-span (0.8), a span token (0.7)
    weights = {"a": [0.8, 0.9, 0.1, 0.2, 0.2], "b": [0.7, 0.1, 0.1, 0.1]}
    assert alignment(weights, spans).precision_at_k == pytest.approx(2 / 3)
    # a tie at the cut-off: 0.9 (span) then 0.5 shared by 1 span + 1 non-span token for the last 2 places
    tied = {"a": [0.5, 0.9, 0.5, 0.1, 0.1], "b": [0.1, 0.1, 0.1, 0.1]}
    assert alignment(tied, spans).precision_at_k == pytest.approx((1 + 2 * 0.5) / 3)


def test_alignment_rejects_wrong_lengths_and_marks_one_class_samples(spans) -> None:
    with pytest.raises(ValueError, match="4 weights for 5 answer tokens"):
        alignment({"a": [0.1, 0.2, 0.3, 0.4]}, spans)
    all_span = [_sample([1, 2, 3], 1, [True, True], "all")]
    result = alignment({"all": [0.1, 0.9]}, all_span)
    assert result.auroc is None and result.per_sample["all"].auroc is None
    assert result.score_in_span == pytest.approx(0.5) and result.score_out_span is None  # no other token to average


def test_alignment_curves_and_disagreements(spans) -> None:
    perfect = {s.record_id: [float(m) for m in s.span_mask] for s in spans}
    curves = alignment_curves(perfect, spans)
    assert [0.0, 1.0] in [list(p) for p in zip(curves["fpr"], curves["tpr"])]
    assert len(curves["precision"]) == len(curves["recall"]) > 1
    # sample "a": span tokens 1 and 2; token 0 gets the top weight outside, token 2 the lowest weight inside
    top = disagreements([0.9, 0.8, 0.0, 0.3, 0.4], spans[0], k=2)
    assert [(d["index"], d["in_span"]) for d in top] == [(0, False), (2, True)]
    assert top[0]["token"] == "t0" and top[0]["weight"] == 0.9


def test_forget_quality_is_the_ks_p_value() -> None:
    same = [0.2, 0.4, 0.6, 0.8]
    assert forget_quality(same, same) == 1.0
    assert forget_quality([0.01, 0.02, 0.03, 0.04, 0.05], [0.95, 0.96, 0.97, 0.98, 0.99]) < 0.01


def test_peak_memory_is_this_process_rss() -> None:
    assert 10 < peak_memory_mb("cpu") < 64_000


def test_truth_ratio_survives_probabilities_that_underflow(wired, tokenizer) -> None:
    model, sample = wired
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(100)  # tokens off the wiring now get log p ≈ -1000: p underflows to 0
    record = replace(
        RECORD,
        paraphrased_answer="Ada Quill lives nowhere.",
        perturbed_answer=["Ada Quill lives nowhere.", RECORD.answer],
    )
    (ratio,) = quality(sharp, tokenizer, [record], [sample]).truth_ratios
    assert math.isfinite(ratio) and ratio > 1  # (1 + e^(a large gap)) / 2, not 0/0
