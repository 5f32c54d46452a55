"""The explorer's derived views (token_views, fact_views, token_csv, progress, rerun), on a hand-made run whose
numbers are known."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import shlex
from pathlib import Path

import pytest

from atwu_core import fact_views, headline, progress, rerun, run_table, runs, token_csv, token_views
from atwu_core.metrics import alignment, forgetting, trajectory
from atwu_core.metrics_record import Facts, Magnitude, Metrics
from atwu_core.records import BeforeRecord, FinalRecord, SampleRecord, Status, StepRecord
from atwu_core.runs import RunSnapshot, list_runs


def sample(sid: str, mask: list[bool], labels: list[str | None]) -> SampleRecord:
    tokens = [f" t{k}" for k in range(len(mask))]
    return SampleRecord(
        sid,
        f"Q {sid}?",
        "".join(tokens),
        tokens,
        list(range(len(mask))),
        [(3 * k, 3 * k + 3) for k in range(len(mask))],
        mask,
        labels,
        any(mask),
    )


A = sample("a", [True, True, False, False], ["name", "name", None, None])
B = sample("b", [False, True, False, True], [None, "city", None, "city"])


def step(k: int, scores: dict, probs: dict) -> StepRecord:
    return StepRecord(k, float(k), {"forget": -k}, {"model": 1e-3}, 8, scores, scores, probs)


@pytest.fixture
def snap(tmp_path: Path) -> RunSnapshot:
    before = {"a": [0.9, 0.9, 0.9, 0.9], "b": [0.8, 0.8, 0.8, 0.8]}
    steps = [
        step(1, {"a": [0.5, 0.5, 0.5, 0.5]}, {"a": [0.9, 0.9, 0.9, 0.9]}),
        step(2, {"b": [0.1, 0.9, 0.2, 0.8]}, {"b": [0.8, 0.4, 0.8, 0.4]}),
    ]
    final = FinalRecord(
        2,
        {"a": [0.9, 0.8, 0.1, 0.2], "b": [0.1, 0.9, 0.2, 0.8]},
        {"a": [0.9, 0.8, 0.1, 0.2], "b": [0.1, 0.9, 0.2, 0.8]},
        {"a": [0.09, 0.9, 0.9, 0.9], "b": [0.8, 0.08, 0.8, 0.8]},
    )
    config = {"method": "atwu", "preset": "demo", "model": "demo", "data": "demo", "steps": 2, "seed": 0}
    return RunSnapshot(
        tmp_path, config, Status("completed", 2, 2, "done"), [A, B], BeforeRecord(before), steps, final, None
    )


def test_rows_and_logprob_change(snap: RunSnapshot) -> None:
    steps, matrix = token_views.rows(snap, "a")
    assert steps == [1, "final"] and matrix[-1] == [0.9, 0.8, 0.1, 0.2]
    steps, change = token_views.logprob_change(snap, "a")
    assert steps == [1, "final"] and change[0] == pytest.approx([0, 0, 0, 0])
    assert change[1][0] == pytest.approx(math.log(0.1)) and change[1][1] == pytest.approx(0.0)
    snap.before = None
    assert token_views.logprob_change(snap, "a") is None


def test_corpus_and_span_labels(snap: RunSnapshot) -> None:
    table = {row["sample"]: row for row in token_views.corpus_table(snap)}
    assert table["a"]["score AUROC"] == 1.0 and table["b"]["score AUROC"] == 1.0
    assert table["a"]["span labels"] == "name" and table["b"]["span tokens"] == 2
    assert table["a"]["mean Δ log p in spans"] == pytest.approx(math.log(0.1) / 2)
    assert table["a"]["forgetting AUROC"] == pytest.approx(0.75)  # one of the two span tokens was forgotten
    labels = {row["span label"]: row for row in token_views.span_label_table(snap)}
    assert set(labels) == {"name", "city", "outside"}
    assert labels["name"]["mean score"] == pytest.approx(0.85) and labels["outside"]["tokens"] == 4
    assert labels["city"]["mean Δ log p"] == pytest.approx(math.log(0.1) / 2)


def test_colour_ranges() -> None:
    values = [0.3] * 50 + [0.7] * 50 + [1e6]
    lo, hi = token_views.percentile_range(values)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.7)  # the outlier saturates
    assert token_views.percentile_range([0.5, 0.5])[1] > 0.5 and token_views.percentile_range([]) == (0.0, 1.0)
    assert token_views.symmetric_range([-2.0, 1.0, None]) == pytest.approx((-1.98, 1.98))
    # a floor: changes of a thousandth of a nat are not stretched over the whole colour scale
    assert token_views.symmetric_range([-0.001, 0.002]) == (-1.0, 1.0)
    assert token_views.symmetric_range([-0.001, 0.002], floor=0.01) == (-0.01, 0.01)


def test_disagreement_tables_match_their_headings() -> None:
    high_out, low_in = token_views.disagreement_tables([0.99, 0.98, 0.97, 0.2], A, k=2)
    assert [r["index"] for r in high_out] == [2, 3] and high_out[0]["score"] >= high_out[1]["score"]
    assert [r["index"] for r in low_in] == [1, 0] and low_in[0]["score"] <= low_in[1]["score"]


def test_disagreement_ranks_are_tie_aware() -> None:
    high_out, low_in = token_views.disagreement_tables([0.5, 0.5, 0.5, 0.1], A)
    # ranks 2, 3, 4 (of 1..4) shared by the three ties: all at the average rank 3, percentile (3 - 1) / 3
    assert [r["rank percentile"] for r in low_in] == pytest.approx([2 / 3, 2 / 3])
    assert [r["rank percentile"] for r in high_out] == pytest.approx([2 / 3, 0.0])
    assert token_views.disagreement_tables([1.0, 1.0, 1.0, 1.0], A) is None  # constant scores rank nothing


def test_chance_levels() -> None:
    chance = headline.chances(Metrics.from_json({"alignment": {"n_tokens": 40, "n_positive": 10}}))
    ranking = {"score AUROC": 0.5, "score AUPRC": 0.25, "score P@k": 0.25, "forgetting AUROC": 0.5, "span share": 0.25}
    assert chance == ranking
    assert headline.chances(Metrics())["score AUPRC"] is None


def test_every_headline_row_reaches_the_cli_summary_and_the_report(snap: RunSnapshot, capsys) -> None:
    """The CLI summary and the HTML report print what `HEADLINE` holds, not lists of their own."""
    from app.report import run_report
    from atwu_core.cli import _print_metrics

    facts = Facts(
        n_samples=2, n_spans=4, n_leaked=1, n_extractable=2, leak_rate=0.25, extractable_rate=0.5,
        paraphrased_leak_rate=None, per_label={}, per_sample={},
    )  # fmt: skip
    metrics = Metrics(
        alignment=alignment(snap.final.scores, snap.samples),
        forgetting=forgetting(snap.before.probs, snap.final.probs, snap.samples),
        facts=facts,
    )
    _print_metrics(metrics)
    printed = capsys.readouterr().out
    for h in headline.HEADLINE:
        assert h.value(metrics) != headline.NOT_RECORDED and f"{h.key}=" in printed, h.label
    assert "leak_rate=0.250  extractable_rate=0.500" in printed
    snap.metrics = metrics
    page = run_report(snap)
    for h in headline.HEADLINE:  # a row of its own: the label in a cell, the help beside it
        assert f"<td>{html.escape(h.label, quote=False)}</td>" in page and html.escape(h.help, quote=False) in page


def test_an_old_metrics_json_reads_as_not_recorded_and_a_bad_field_is_named(snap: RunSnapshot, capsys) -> None:
    """metrics.json is `Metrics.to_json()`; a file written before `facts` and the forgetting magnitude existed
    (today's with those keys deleted) reads back with those blocks None, shown "not recorded"; a malformed or
    out-of-range value is refused with its file and field."""
    from app.report import run_report
    from atwu_core.cli import _print_metrics
    from atwu_core.runs import RunReader

    fresh = Metrics(
        alignment=alignment(snap.final.scores, snap.samples),
        forgetting=forgetting(snap.before.probs, snap.final.probs, snap.samples),
        trajectory=trajectory(snap.step_records, snap.before.probs, snap.samples),
    ).to_json()
    assert list(fresh) == ["alignment", "forgetting", "trajectory"]
    keys = ["auroc", "auprc", "precision_at_k", "span_share", "mean_increase_span", "mean_increase_other",
            "strong_drop_share", "meaningful", "drop_nats", "meaningful_rule", "per_sample"]  # fmt: skip
    assert [k for k in fresh["forgetting"] if k in keys] == keys  # metrics.json's own order, magnitude inline
    assert Metrics.from_json(json.loads(json.dumps(fresh))).to_json() == fresh  # the same keys, the same values
    old = json.loads(json.dumps(fresh))
    for key in [f.name for f in dataclasses.fields(Magnitude)] + ["auprc"]:  # the magnitude came later
        del old["forgetting"][key]
    del old["alignment"]["precision_at_k"]
    (snap.dir / "config.json").write_text(json.dumps(snap.config))
    (snap.dir / "metrics.json").write_text(json.dumps(old))
    metrics = RunReader(snap.dir).metrics
    assert metrics.facts is None and metrics.forgetting.magnitude is None and metrics.forgetting.auroc is not None
    values = headline.values(metrics)
    assert values["leak rate"] == values["mean ΔNLL span"] == values["meaningful"] == headline.NOT_RECORDED
    assert values["score P@k"] == headline.NOT_RECORDED and values["score AUROC"] == fresh["alignment"]["auroc"]
    assert not headline.not_meaningful(metrics)  # not recorded is not "not meaningful": nothing greyed
    _print_metrics(metrics)
    printed = capsys.readouterr().out
    assert "facts      not recorded" in printed
    forgetting_line = next(line for line in printed.splitlines() if line.startswith("forgetting"))
    shown, missing = forgetting_line.rsplit("  ", 1)
    assert "auroc=" in shown and missing.endswith(": not recorded")
    missing_keys = set(missing.removesuffix(": not recorded").split(", "))
    assert {"mean_increase_span", "strong_drop_share", "meaningful"} <= missing_keys
    snap.metrics = metrics
    assert "<td>not recorded</td>" in run_report(snap) and "still said: not recorded" in run_report(snap)
    for change, field in (
        (lambda m: m["forgetting"].update(span_share="high"), "forgetting.span_share"),
        (lambda m: m["alignment"].update(auroc=1.5), "alignment.auroc"),
        (lambda m: m["trajectory"]["step"].append(3), "trajectory.score_auroc"),
        (lambda m: m["alignment"]["per_sample"]["a"].update(auprc=[0.5]), "alignment.per_sample.a.auprc"),
        (lambda m: m.update(facts={"n_spans": 2}), "facts.n_samples"),
    ):
        bad = json.loads(json.dumps(fresh))
        change(bad)
        (snap.dir / "metrics.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=rf"metrics.json: field '{field}'"):
            _ = RunReader(snap.dir).metrics


def test_tokens_csv_has_before_every_step_and_final(snap: RunSnapshot) -> None:
    rows = list(csv.DictReader(io.StringIO(token_csv.tokens_csv(snap))))
    assert {r["step"] for r in rows} == {"before", "1", "2", "final"}
    final_a = [r for r in rows if r["step"] == "final" and r["sample_id"] == "a"]
    assert len(final_a) == 4 and final_a[0]["span_label"] == "name" and float(final_a[0]["logprob_change"]) < -2
    assert len([r for r in rows if r["step"] == "final"]) == 8  # every sample in the final pass


def test_tokens_csv_keeps_formulas_as_text(tmp_path: Path) -> None:
    """Issue 24 item 10: a crafted sample id, token or span label must not run as a spreadsheet formula."""
    hostile = '=HYPERLINK("http://127.0.0.1:9/x","open")'
    crafted = sample(hostile, [True, False], ["@SUM(1)", None])
    crafted.tokens[1] = "+1"
    scores = {hostile: [0.9, 0.1]}
    run = RunSnapshot(
        tmp_path,
        {"method": "ga"},
        Status("completed"),
        [crafted],
        None,
        [],
        FinalRecord(1, scores, scores, scores),
        None,
    )
    rows = list(csv.DictReader(io.StringIO(token_csv.tokens_csv(run))))
    cells = [r[key] for r in rows for key in ("sample_id", "token", "span_label") if r[key]]
    assert cells and all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    assert rows[0]["sample_id"] == "'" + hostile and rows[1]["token"] == "'+1" and rows[0]["token"] == " t0"


def test_default_selection_and_config_diff() -> None:
    runs = [
        {"run_dir": "r4", "method": "wga", "state": "running"},
        {"run_dir": "r3", "method": "wga", "state": "completed"},
        {"run_dir": "r2", "method": "wga", "state": "completed"},
        {"run_dir": "r1", "method": "atwu", "state": "completed"},
    ]
    assert run_table.default_selection(runs) == ["r3", "r1"]
    diff = rerun.config_diff(
        {"x": {"lr": 1e-3, "params": {"beta": 5}, "created": "t1"}, "y": {"lr": 1e-3, "params": {"beta": 2}}}
    )
    assert diff == {"params.beta": {"x": 5, "y": 2}}
    three = rerun.config_diff(
        {
            "a": {"method": "atwu", "params": {"beta": 5, "budget": 0.2}},
            "b": {"method": "atwu", "params": {"beta": 5, "budget": 0.4}},
            "w": {"method": "wga", "params": {"wga_beta": 1.0}},
        }
    )
    # budget differs between the ATWU runs; wga_beta, one run's own parameter, is no difference
    assert set(three) == {"method", "params.budget"} and three["params.budget"]["w"] == "–"


def test_cli_command_reruns_the_config() -> None:
    from atwu_core.config import make_config

    config = make_config("wga", "demo", {"wga_beta": 2.0}, steps=7, seed=3)
    args = shlex.split(rerun.cli_command(config))
    assert args[:2] == ["atwu", "unlearn"] and args[args.index("--steps") + 1] == "7"
    assert args[args.index("--method") + 1] == "wga" and "wga_beta=2.0" in args
    assert "alpha=1.0" not in args  # only what differs from the preset is set


def test_progress_is_phase_aware_and_times_every_phase_from_the_ones_seen() -> None:
    reference = progress.progress(Status("running", 0, 10, "reference", 2, 8, phase_seconds={"reference": 1.0}), None)
    assert "reference pass over the forget set 2/8" in reference.text and 0.03 < reference.fraction < 0.08
    assert reference.eta_s == pytest.approx(3.0 + 4.0)  # 6 more at 0.5 s, then the final pass as long as this one
    assert reference.text.endswith("+ evaluation + training")
    seen = {"reference": 4.0, "before": 8.0}
    before = progress.progress(
        Status("running", 0, 10, "before", 3, 4, phase_seconds={"reference": 4.0, "before": 6.0}), None
    )
    assert "evaluating before unlearning 3/4" in before.text and 0.08 < before.fraction < 0.2
    assert before.eta_s == pytest.approx(2.0 + 4.0 + 8.0) and before.text.endswith("+ training")
    training = progress.progress(
        Status("running", 4, 10, "training", 4, 10, phase_seconds={**seen, "training": 3.0}), 0.5
    )
    assert training.eta_s == pytest.approx(6 * 0.5 + 4.0 + 8.0) and "step 4/10" in training.text
    assert "+" not in training.text.split("ETA")[1]  # every phase left is timed
    from_status = progress.progress(
        Status("running", 4, 10, "training", 4, 10, phase_seconds={**seen, "training": 3.0}), None
    )
    assert from_status.eta_s == pytest.approx(6 * 0.75 + 4.0 + 8.0)  # no step records: the phase's own mean
    after = progress.progress(Status("running", 10, 10, "after", 1, 4, phase_seconds={**seen, "after": 3.0}), 0.5)
    assert after.eta_s == pytest.approx(9.0) and "evaluating after unlearning 1/4" in after.text
    loading = progress.progress(Status("running"), None)
    assert "loading" in loading.text and "unknown" not in loading.text and loading.eta_s is None
    over = progress.progress(Status("cancelled", 4, 10, "done", phase_seconds=seen), 0.5)
    assert over.eta_s is None and "ETA" not in over.text and over.text.startswith("cancelled · step 4/10")


def test_rename_tag_delete(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "atwu", "model": "demo"}))
    (run / "status.json").write_text(json.dumps({"state": "completed"}))
    runs.rename_run(run, "  my run ")
    runs.tag_run(run, ["a", " b", "", "a"])
    [row] = list_runs(tmp_path)
    assert row["name"] == "my run" and row["tags"] == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        runs.rename_run(run, " ")
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": None, "host": None}))
    with pytest.raises(ValueError, match="still running"):
        runs.delete_run(run)
    (run / "status.json").write_text(json.dumps({"state": "completed"}))
    runs.delete_run(run)
    assert not run.exists()
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError):
        runs.delete_run(tmp_path / "other")  # never deletes a folder that is not a run


def test_leaked_spans_mark_their_tokens_and_old_runs_read_not_recorded():
    tokens = ["Mator", " Wynton", " was", " born", " in", " Ulmholm", "."]
    sample = SampleRecord(
        "r0", "Where?", "Mator Wynton was born in Ulmholm.", tokens,
        [5, 6, 7, 8, 9, 10, 11], [(0, 5), (5, 12), (12, 16), (16, 21), (21, 24), (24, 32), (32, 33)],
        [True, True, False, False, False, True, False], ["name", "name", None, None, None, "birthplace", None], True,
    )  # fmt: skip
    verdict = {"leaked_paraphrased": None, "extractable": False, "logprob_before": None, "logprob_after": -1.0}
    spans = [
        {"start": 0, "end": 12, "label": "name", "text": "Mator Wynton", "leaked": False, **verdict},
        {"start": 25, "end": 32, "label": "birthplace", "text": "Ulmholm", "leaked": True, **verdict},
    ]
    rates = {
        "extractable": 0,
        "leak_rate": None,
        "extractable_rate": 0.0,
        "paraphrased_spans": 0,
        "paraphrased_leak_rate": None,
    }
    metrics = Metrics.from_json({"facts": {
        "per_sample": {"r0": {"answer": "Ulmholm", "spans": spans}}, "n_samples": 1, "n_leaked": 1, "n_spans": 2,
        "n_extractable": 0, "leak_rate": 0.5, "extractable_rate": 0.0, "paraphrased_leak_rate": None,
        "per_label": {"birthplace": {"leaked": 1, "spans": 1, **rates}, "name": {"leaked": 0, "spans": 1, **rates}},
    }})  # fmt: skip
    assert fact_views.leaked_token_mask(metrics, sample) == [False, False, False, False, False, True, False]
    assert fact_views.facts_line(metrics) == "still said: 1 of 2 spans (birthplace 1/1, name 0/1)"
    assert fact_views.leaked_token_mask(None, sample) is None
    old = Metrics.from_json({"alignment": {"auroc": 0.7}, "forgetting": {"auroc": 0.8, "span_share": 0.9}})
    values = headline.values(old)
    assert values["leak rate"] == values["mean ΔNLL span"] == values["meaningful"] == headline.NOT_RECORDED
    assert values["forgetting AUROC"] == 0.8 and fact_views.facts_line(old) == "still said: not recorded"
