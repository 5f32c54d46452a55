"""bench/token_signals.py: the retain-rarity signal counts the retain answers' tokens, a world's row ranks the
spans by each signal (on the embedded demo world, whose non-span tokens are template words that retain answers
share), and a run folder kept by the alignment study is judged by the same pool."""

from __future__ import annotations

import json

import pytest

from atwu_core.config import make_config
from atwu_core.data import encode_records, load_data
from atwu_core.models import load_model


@pytest.fixture(scope="module")
def token_signals(bench):
    return bench("token_signals")


def test_rare_in_retain_counts_retain_answer_tokens(token_signals):
    tok = load_model("demo").tokenizer
    data = load_data("demo")
    retain = encode_records(data.retain[:5], tok)
    same, other = encode_records(data.retain[:1], tok)[0], encode_records(data.forget[:1], tok)[0]
    in_retain, forget = token_signals.rare_in_retain([same, other], retain)
    assert (in_retain <= -1).all()  # every token of a retain answer occurs in the retain answers
    held = {t for s in retain for t in s.answer_token_ids}
    for t, v in zip(other.answer_token_ids, forget):
        assert (v == 0) == (t not in held)
    doubled = token_signals.rare_in_retain([same], retain + retain)[0]
    assert (doubled == 2 * in_retain).all()


def test_world_row_on_the_demo_world(token_signals):
    row = token_signals.world_row("demo", None)
    name, tokens, taught_auroc, _taught_levels, untaught, _, rare_auroc, absent = row
    assert name == "`demo`" and untaught.startswith("n/a")
    n, n_span = (int(x.strip("()")) for x in tokens.split())
    assert 0 < n_span < n
    assert 0.5 < float(rare_auroc) <= 1 and 0 <= float(taught_auroc) <= 1
    on, off = (float(x) for x in absent.split(" / "))
    assert off == 0.0 < on  # the template words all occur in retain answers; some span words never do


def test_a_kept_run_is_judged_against_the_spans_and_the_definition(bench, token_signals, tmp_path):
    """`bench/alignment.py --keep` keeps a job's run folder with its task; `--runs` judges its final scores with the
    alignment study's pool (the spans' AUROC is the job's own) and against the tokens retain never holds."""
    common = bench("common")
    world = common.load_world("demo", common.WorldOptions())
    task = common.Task("demo", "atwu", 0, 6)
    config = make_config("atwu", "demo", steps=task.steps, seed=task.seed, eval_max_samples=4)
    result = common.run_one(world, task, config, keep=tmp_path)
    folder = common.kept_run_dir(tmp_path, task)
    assert json.loads((folder / common.KEPT_TASK).read_text(encoding="utf-8")) == vars(task)
    name, spans, absent, levels, within_present, within_absent = token_signals.run_row(folder)
    assert name.startswith("`demo`, atwu, seed 0")
    assert spans == f"{result.metrics.alignment.auroc:.3f}"
    assert 0 <= float(absent) <= 1
    assert all(0 <= float(x) <= 1 for x in levels.split(" / "))
    assert 0 <= float(within_present) <= 1
    assert within_absent == "n/a"  # on the demo world every token the retain answers never hold is a span token
