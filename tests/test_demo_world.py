"""The demo world's guarantees: deterministic, forget values are forget-specific, spans are exact, frames shared."""

import pytest

from atwu_core.data import Record, load_dataset_dir, save_dataset_dir
from atwu_core.demo_world import ATTRIBUTES, generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0)


def _values(rec: Record) -> dict[str, str]:
    return {sp.label: rec.answer[sp.start : sp.end] for sp in rec.forget_spans}


def _frame(rec: Record) -> str:
    """The answer with each span replaced by its label: the sentence frame the record was built from."""
    out, last = "", 0
    for sp in rec.forget_spans:
        out += rec.answer[last : sp.start] + "{" + sp.label + "}"
        last = sp.end
    return out + rec.answer[last:]


def test_deterministic_given_seed(world):
    assert generate_world(seed=0) == world
    assert generate_world(seed=1) != world


def test_default_size(world):
    n_attr = len(ATTRIBUTES)
    assert 5 <= n_attr <= 6
    assert len(world.forget) == 5 * n_attr
    assert len(world.retain) == 25 * n_attr
    assert len(world.holdout) > 0
    ids = [r.id for r in world.forget + world.retain + world.holdout]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_forget_values_absent_from_retain_answers(seed):
    world = generate_world(seed=seed)
    retain_text = "\n".join(r.answer for r in world.retain)
    forget_values = {v for rec in world.forget for v in _values(rec).values()}
    name_parts = {part for rec in world.forget for part in _values(rec)["name"].split()}
    assert len(forget_values) == 5 * (len(ATTRIBUTES) + 1)  # a name and one value per attribute, all distinct
    for value in forget_values | name_parts:
        assert value not in retain_text


def test_every_value_belongs_to_one_person(world):
    owners: dict[tuple[str, str], set[str]] = {}
    for rec in world.forget + world.retain + world.holdout:
        values = _values(rec)
        for label, value in values.items():
            owners.setdefault((label, value), set()).add(values["name"])
    assert all(len(names) == 1 for names in owners.values())


def test_spans_cover_the_values(world):
    questions = {a.name: a.question for a in ATTRIBUTES}
    for rec in world.forget + world.retain + world.holdout:
        attribute = rec.id.split("-", 2)[-1]
        assert sorted(sp.label for sp in rec.forget_spans) == sorted(["name", attribute])
        values = _values(rec)
        assert rec.question == questions[attribute].format(name=values["name"])
        if attribute == "birth_year":
            assert 1900 <= int(values["birth_year"]) < 2000
        for sp in rec.forget_spans:  # whole words, nothing more
            assert not rec.answer[sp.start - 1 : sp.start].isalnum() and not rec.answer[sp.end : sp.end + 1].isalnum()
            assert rec.answer[sp.start : sp.end].strip() == rec.answer[sp.start : sp.end]


def test_frames_are_shared_by_forget_and_retain(world):
    forget_frames = {_frame(r) for r in world.forget}
    retain_frames = {_frame(r) for r in world.retain}
    assert forget_frames <= retain_frames
    assert len(forget_frames) == sum(len(a.frames) for a in ATTRIBUTES)


def test_paraphrased_and_perturbed_answers(world):
    for rec in world.forget + world.holdout:
        values = _values(rec)
        assert rec.paraphrased_answer != rec.answer
        assert all(v in rec.paraphrased_answer for v in values.values())
        assert len(rec.perturbed_answer) == 3 and len(set(rec.perturbed_answer)) == 3
        attribute = next(label for label in values if label != "name")
        span = next(sp for sp in rec.forget_spans if sp.label == attribute)
        prefix, suffix = rec.answer[: span.start], rec.answer[span.end :]
        for wrong in rec.perturbed_answer:  # same frame and name, another value
            assert wrong.startswith(prefix) and wrong.endswith(suffix)
            assert wrong[len(prefix) : len(wrong) - len(suffix)] not in ("", values[attribute])


def test_round_trips_through_a_dataset_folder(world, tmp_path):
    save_dataset_dir(world, tmp_path)
    loaded = load_dataset_dir(tmp_path)
    assert loaded.forget == world.forget and loaded.retain == world.retain and loaded.holdout == world.holdout


def test_too_many_people_is_a_clear_error():
    with pytest.raises(ValueError, match="pool"):
        generate_world(n_people=60)
