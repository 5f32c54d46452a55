"""The Streamlit app driven headlessly (AppTest) with the real demo model and demo world.

One short job runs to completion and one is cancelled; every page is then driven on those runs, and each
bad-input path must show `st.error`, never an exception.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from plotly.offline import get_plotlyjs
from streamlit.testing.v1 import AppTest

from app import session
from app.components.curves import line_figure, loss_figure, token_bars
from app.components.heatmap import aggregate_words, token_label, weight_heatmap
from app.components.token_chips import token_chips_html
from app.exports import build, fingerprint
from app.report import SAMPLE_CAP, unpack
from app.run_views import CHANGE
from app.state import jobs
from atwu_core import fact_views
from atwu_core.config import METADATA_KEYS, METHODS
from atwu_core.models import DEMO_MODEL
from atwu_core.records import Status
from atwu_core.run_table import run_colour, run_colours
from atwu_core.runs import RunReader, list_runs, wait_for_state

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
FAST = {
    "job_forget_batch_size_demo": 8,
    "job_retain_batch_size_demo": 8,
    "job_eval_max_samples_demo": 4,
}  # keys per preset
DONE = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory: pytest.TempPathFactory):
    """One runs root for the module (its tests reuse one finished run); one torch thread while they run, here and
    in the job workers (on a shared 2-core machine two threads run ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("runs")
        mp.setenv("ATWU_RUNS", str(root))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _runs_root(module_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides the per-test runs root of conftest.py with the module's."""
    monkeypatch.setenv("ATWU_RUNS", str(module_runs))


def app() -> AppTest:
    if not (DEMO_MODEL / "config.json").is_file():
        pytest.skip(f"no demo model at {DEMO_MODEL}")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def on_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> str:
    return " | ".join(e.value for e in at.error)


def start_job(at: AppTest, steps: int) -> str:
    """Set a short job in the Run page's widgets, press Run, and return its run folder."""
    at.number_input(key="steps_demo").set_value(steps)
    for key, value in FAST.items():
        at.number_input(key=key).set_value(value)
    at.button(key="run").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    return at.session_state[session.FOLLOWED_RUN]


def finish(at: AppTest, run_dir: str, timeout: float = 240) -> Status:
    """Wait for the job's terminal status and its worker's exit, then rerun the page."""
    deadline = time.monotonic() + timeout
    while not (Path(run_dir) / "config.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    status = wait_for_state(run_dir, DONE, max(deadline - time.monotonic(), 1))
    while jobs().tracks(run_dir) and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    at.run()
    assert not at.exception, at.exception
    return status


@pytest.fixture(scope="module")
def completed_run(module_runs: Path) -> str:
    """A 3-step ATWU job on the demo, started and watched through the Run page."""
    at = app()
    assert at.button(key="run").label == "Run"
    assert at.selectbox(key="method").options == list(METHODS)
    run_dir = start_job(at, steps=3)
    assert finish(at, run_dir).state == "completed"
    assert "completed · step 3/3" in at.get("progress")[0].proto.text
    return run_dir


def chart(at: AppTest, title: str) -> dict:
    """The plotly figure on the page whose title contains `title`."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [f for f in specs if title in (f["layout"].get("title") or {}).get("text", "")]
    assert found, [(f["layout"].get("title") or {}).get("text") for f in specs]
    return found[0]


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The dataframe on the page that has `column` (a column, or the index's name)."""
    frames = [d.value for d in at.dataframe]
    found = [f for f in frames if column in f.columns or f.index.name == column]
    assert found, [list(f.columns) for f in frames]
    return found[0]


def run_page(run_dir: str) -> AppTest:
    """The Run page reopened on a finished run (as after a refresh while it was the session's run)."""
    if not (DEMO_MODEL / "config.json").is_file():
        pytest.skip(f"no demo model at {DEMO_MODEL}")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[session.FOLLOWED_RUN] = run_dir
    at.run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    return at


def copy_run(run_dir: str, name: str) -> str:
    """A second finished run (a copy of the first) for the pages that list several."""
    target = Path(run_dir).with_name(name)
    if not target.exists():
        shutil.copytree(run_dir, target)
    return str(target)


def test_run_completes_with_metrics(completed_run: str) -> None:
    snap = RunReader(completed_run).snapshot()
    assert snap.metrics.alignment.n_tokens > 0 and snap.metrics.forgetting.auroc is not None
    assert len(snap.step_records) == 3 and snap.before is not None and snap.final is not None
    assert snap.config["steps"] == 3 and snap.config["forget_batch_size"] == 8


def test_results_card(completed_run: str) -> None:
    at = run_page(completed_run)
    metrics = {m.label: m for m in at.metric}
    expected = RunReader(completed_run).metrics
    forgot, facts = expected.forgetting, expected.facts
    ranking = ["forgetting AUROC", "span share"] if forgot.magnitude.meaningful else []  # else greyed text, not metrics
    magnitude = ["mean ΔNLL span", "mean ΔNLL other", "span tokens fell > drop", "leak rate", "extractable rate"]
    scores = ["score AUROC", "score AUPRC", "score P@k", "mean score span", "mean score other"]
    assert list(metrics) == [*scores, *ranking, *magnitude]
    assert metrics["score AUROC"].value == f"{expected.alignment.auroc:.3f}"
    assert metrics["mean score span"].value == f"{expected.alignment.score_in_span:.3f}"
    assert metrics["mean score other"].value == f"{expected.alignment.score_out_span:.3f}"
    assert metrics["mean ΔNLL span"].value == f"{forgot.magnitude.mean_increase_span:.3f}"
    assert metrics["leak rate"].value == f"{facts.leak_rate:.3f}"
    assert all(m.help for m in metrics.values())
    text = " ".join(m.value for m in at.markdown)
    assert f"still said: {facts.n_leaked} of {facts.n_spans} spans" in text
    if not forgot.magnitude.meaningful:
        assert f"**{forgot.auroc:.3f}**" in text and "not meaningful" in text
    by_label = table(at, "still said")
    assert by_label["spans"].sum() == facts.n_spans and by_label["still said"].sum() == facts.n_leaked
    quality = table(at, "set")
    assert set(quality["set"]) == {"forget", "retain"} and {"exact", "rouge_l", "prob"} <= set(quality["metric"])
    at.button(key="run_to_compare").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    assert at.session_state[session.FOCUS_RUN] == completed_run
    assert completed_run in at.multiselect(key="compare_runs").value
    at = run_page(completed_run)
    at.button(key="run_to_query").click().run()
    assert at.selectbox(key="query_run").value == completed_run


def test_forgetting_heatmap_beside_scores(completed_run: str) -> None:
    at = run_page(completed_run)
    fig = chart(at, "what was scored (top) and what was forgotten (bottom)")
    score, change = [t for t in fig["data"] if t["type"] == "heatmap"]
    names = [a["text"] for a in fig["layout"]["annotations"]]
    assert names == ["score: ATWU's scorer output g = σ(w·h + c)", CHANGE]
    assert "probability:" in score["hovertemplate"] and "probability:" in change["hovertemplate"]
    assert change["z"][-1] != change["z"][0]  # the model changed by the final pass
    assert fig["layout"]["xaxis"]["side"] == "top" and fig["layout"]["xaxis"]["tickangle"] == 0
    assert score["y"][-1] == "final" and len(score["z"]) == len(change["z"])
    # tokens of spans the final model still says are marked on the token axis
    snap = RunReader(completed_run).snapshot()
    sample = snap.sample_index[fig["layout"]["title"]["text"].split(":")[0]]
    leaked = fact_views.leaked_token_mask(snap.metrics, sample)
    marked = [t.endswith("<sup>●</sup>") for t in fig["layout"]["xaxis"]["ticktext"]]
    if leaked is None:  # this sample was not among the judged records: nothing to mark
        assert not any(marked)
    else:
        assert marked == leaked and "still said" in fig["layout"]["xaxis2"]["title"]["text"]
    assert any(t.startswith("␣") for t in fig["layout"]["xaxis2"]["ticktext"])  # leading spaces visible
    at.radio(key="run_view_quantity").set_value("loss weight").run()
    weighted = chart(at, "what was scored (top)")
    assert weighted["layout"]["annotations"][0]["text"] == "loss weight: g · p^β"
    assert weighted["data"][0]["z"] != score["z"]
    chips = " ".join(h.proto.body for h in at.get("html"))
    assert "loss weight" in chips and "p before" in chips


def test_alignment_over_time(completed_run: str) -> None:
    at = run_page(completed_run)
    at.radio(key="run_view_tab").set_value("Alignment over training").run()
    fig = chart(at, "Alignment over training")
    lines = [t for t in fig["data"] if t.get("legend") != "legend2"]
    assert {t["meta"] for t in lines} == {"score AUROC", "forgetting AUROC", "score in spans", "score outside"}
    steps = RunReader(completed_run).snapshot().metrics.trajectory.step
    assert lines[0]["x"] == steps
    assert {t["line"]["color"] for t in lines} == {run_colour(completed_run)}
    traj = RunReader(completed_run).snapshot().metrics.trajectory
    size = f"mean ΔNLL on span tokens {traj.mean_increase_span[-1]:.3f} nats"
    assert any(size in c.value for c in at.caption)  # the ranking's magnitude beside it
    second = copy_run(completed_run, "second-copy")
    compare = on_page(app(), "compare")
    compare.multiselect(key="compare_runs").set_value([completed_run, second]).run()
    assert not compare.exception and not compare.error, errors(compare)
    several = chart(compare, "Alignment over training")
    runs = [t for t in several["data"] if t.get("legend") != "legend2"]
    entries = [t["name"] for t in runs if t.get("showlegend") is not False]
    assert len(entries) == 2 and len(runs) == 8  # one legend entry per run, four series each
    styles = {t["name"]: t["line"]["dash"] for t in several["data"] if t.get("legend") == "legend2"}
    assert styles == {
        "score AUROC": "solid",
        "forgetting AUROC": "dash",
        "score in spans": "solid",
        "score outside": "dot",
    }
    roc = chart(compare, "ROC")
    colours = run_colours([completed_run, second])
    assert len(set(colours.values())) == 2  # two runs shown together never share a colour
    for d in (completed_run, second):  # each run in its one colour on every chart
        colour = colours[Path(d).name]
        assert {t["line"]["color"] for t in runs if t["legendgroup"].startswith(Path(d).name)} == {colour}
        assert [t["line"]["color"] for t in roc["data"] if t["name"].startswith(Path(d).name)] == [colour]


def test_corpus_view(completed_run: str) -> None:
    at = run_page(completed_run)
    at.radio(key="run_view_tab").set_value("Whole forget set").run()
    samples = RunReader(completed_run).samples
    frame = table(at, "forgetting AUROC")
    assert len(frame) == len(samples)
    at.selectbox(key="run_view_corpus_sort").set_value("forgetting AUROC").run()
    frame = table(at, "forgetting AUROC")
    ranked = frame["forgetting AUROC"].dropna().tolist()
    assert ranked == sorted(ranked, reverse=True) and len(ranked) > 1
    heat = chart(at, "Every forget sample")
    assert heat["data"][0]["y"] == frame["sample"].tolist()  # the heatmap rows follow the sort
    by_id = {s.record_id: s for s in samples}
    first = by_id[frame["sample"].iloc[0]]
    assert heat["data"][0]["customdata"][0][0][0] == token_label(first.tokens[0])  # token text in the hover
    span_cells = sum(m for sid in frame["sample"] for m in by_id[sid].span_mask)
    outlined = sum(round(b["x1"] - b["x0"]) for b in heat["layout"]["shapes"])
    assert span_cells > 0 and outlined == span_cells  # every span token outlined, nothing else
    labels = table(at, "span label")
    assert {"name", "birthplace", "outside"} <= set(labels["span label"])


def test_scorer_on_any_text(completed_run: str) -> None:
    at = on_page(app(), "query")
    at.selectbox(key="query_run").set_value(completed_run).run()
    at.button(key="scorer_go").click().run()
    assert "Type a text" in errors(at)
    at.text_area(key="scorer_text").set_value("Ada Vask was born in Tessaly.").run()
    at.button(key="scorer_go").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    chips = [h.proto.body for h in at.get("html") if "scorer output g" in h.proto.body]
    assert chips and chips[0].count("atwu-chip") >= 5
    at.radio(key="scorer_source").set_value("Retain sample").run()
    at.radio(key="scorer_through").set_value(at.radio(key="scorer_through").options[1]).run()
    at.button(key="scorer_go").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    assert any("scorer output g" in h.proto.body for h in at.get("html"))


def progress_text(at: AppTest) -> str:
    return at.get("progress")[0].proto.text


def steps_done(run_dir: str) -> int:
    return RunReader(run_dir).status.steps_done if (Path(run_dir) / "status.json").is_file() else 0


def wait_for_steps(run_dir: str, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while steps_done(run_dir) < steps:
        assert time.monotonic() < deadline, f"{run_dir}: fewer than {steps} steps within {timeout} s"
        time.sleep(0.1)


def test_a_second_run_waits_its_turn_and_a_refresh_finds_it(completed_run: str) -> None:
    at = app()
    first = start_job(at, steps=500)
    second = start_job(at, steps=2)
    assert second != first and "queued · 1 job(s) ahead" in progress_text(at)
    assert "1 queued" in " ".join(c.value for c in at.sidebar.caption)
    refreshed = app()  # a browser refresh: a new session finds the latest job, queued behind the first
    assert "queued · 1 job(s) ahead" in progress_text(refreshed)
    refreshed.button(key="cancel").click().run()  # cancels the queued job: it leaves the queue, nothing ran
    assert not Path(second).exists() and not jobs().waiting()
    at.session_state[session.FOLLOWED_RUN] = first
    at.run()
    wait_for_steps(first, 1)
    at.run()
    assert f"Run {Path(first).name}" in [h.value for h in at.subheader]
    text = progress_text(at)  # every phase left is timed: the steps, the final pass, the evaluation after
    assert "step" in text and "ETA" in text and "+" not in text.split("ETA")[1], text
    at.button(key="cancel").click().run()  # SIGTERM to the worker: it stops before its next step
    status = finish(at, first)
    assert status.state == "cancelled" and 0 < status.steps_done < 500
    assert RunReader(first).metrics.alignment.auroc is not None  # a cancelled job still finishes its records
    assert "Cancelled after" in " ".join(w.value for w in at.warning)
    assert "ETA" not in progress_text(at)


def test_a_job_runs_while_the_server_loads_a_model_and_answers_queries(completed_run: str) -> None:
    at = app()
    assert at.button(key="cancel").disabled  # no job to cancel
    run_dir = start_job(at, steps=500)
    wait_for_steps(run_dir, 1)
    assert RunReader(run_dir).status.pid != os.getpid()  # in a worker process
    model = on_page(app(), "model")  # a fresh load in the server (a folder spec is not cached yet)
    model.radio(key="model_source").set_value("Local folder or .gguf file").run()
    model.text_input(key="model_path").set_value(str(DEMO_MODEL)).run()
    model.button(key="load_model").click().run()
    assert not model.error and model.session_state[session.MODEL_SPEC] == str(DEMO_MODEL)
    query = on_page(app(), "query")  # the finished run's adapter answers while the job trains
    query.selectbox(key="query_run").set_value(completed_run)
    query.radio(key="query_kind").set_value("Forget question").run()
    query.button(key="query_go").click().run()
    assert not query.exception and not query.error, (query.exception, errors(query))
    assert len(query.info) >= 2
    steps = steps_done(run_dir)
    wait_for_steps(run_dir, steps + 2)  # and the job goes on
    at.button(key="cancel").click().run()
    assert finish(at, run_dir).state == "cancelled"


def test_a_worker_that_dies_is_shown_failed_with_its_reason(completed_run: str) -> None:
    at = app()
    run_dir = start_job(at, steps=500)
    wait_for_state(run_dir, ("running",), timeout=120)
    os.kill(jobs().running().process.pid, signal.SIGKILL)
    assert finish(at, run_dir).state == "failed"
    assert "The job failed: the worker process was killed by SIGKILL" in errors(at)
    assert "ETA" not in progress_text(at)
    shutil.rmtree(run_dir)  # the module's later pages show the newest run: not this failed one


def test_compare_shows_alignment(completed_run: str) -> None:
    at = on_page(app(), "compare")
    default = at.multiselect(key="compare_runs").value  # the latest completed run of each method, nothing else
    states = {r["run_dir"]: (r["state"], r["method"]) for r in list_runs()}
    assert default and all(states[d][0] == "completed" for d in default)
    assert len({states[d][1] for d in default}) == len(default)
    at.multiselect(key="compare_runs").set_value([completed_run]).run()
    frame = table(at, "span share")
    assert 0.0 <= frame["score AUROC"].iloc[0] <= 1.0 and 0.0 <= frame["forgetting AUROC"].iloc[0] <= 1.0
    metrics = RunReader(completed_run).metrics
    assert frame["leak rate"].iloc[0] == pytest.approx(metrics.facts.leak_rate)
    assert frame["mean ΔNLL span"].iloc[0] == pytest.approx(metrics.forgetting.magnitude.mean_increase_span)
    assert frame["meaningful"].iloc[0] == ("yes" if metrics.forgetting.magnitude.meaningful else "no")
    at.segmented_control(key="per_sample_number").set_value("precision_at_k").run()
    assert any(str(d.value.index.name).startswith("sample (precision@k") for d in at.dataframe)
    high_out, low_in = [d.value["score"].tolist() for d in at.dataframe if "rank percentile" in d.value.columns]
    assert high_out == sorted(high_out, reverse=True) and low_in == sorted(low_in)
    assert not at.error and not at.exception


def test_deep_links_open_the_same_view(completed_run: str) -> None:
    """?run=&sample=&view= (and Compare's ?runs=) open the same view in any session: a refresh, or a colleague
    with the link; the URL follows what is shown."""
    name = Path(completed_run).name
    sid = RunReader(completed_run).samples[1].record_id
    at = linked({"run": name, "sample": sid, "view": "forget-set"})
    assert f"Run {name}" in [h.value for h in at.subheader]
    assert at.radio(key="run_view_tab").value == "Whole forget set"
    at.radio(key="run_view_tab").set_value("One sample").run()
    assert at.selectbox(key=f"run_view_sample_{name}").value == sid
    assert at.query_params["view"] == "sample" and at.query_params["run"] == name
    refreshed = linked(dict(at.query_params))
    assert refreshed.selectbox(key=f"run_view_sample_{name}").value == sid
    assert "No run named" in linked({"run": "no-such-run"}).warning[0].value
    runs = linked({"run": name, "view": "alignment"}, page="runs")
    assert runs.selectbox(key="runs_pick").value == completed_run
    assert runs.radio(key="runs_view_tab").value == "Alignment over training"
    second = copy_run(completed_run, "second-copy")
    compare = linked({"runs": f"{Path(second).name},{name}"}, page="compare")
    assert compare.multiselect(key="compare_runs").value == [second, completed_run]
    compare.multiselect(key="compare_runs").set_value([completed_run]).run()
    assert compare.query_params["runs"] == name


def linked(params: dict, page: str | None = None) -> AppTest:
    """A fresh session opened on a URL with these query parameters (`page`: its path, else the root)."""
    if not (DEMO_MODEL / "config.json").is_file():
        pytest.skip(f"no demo model at {DEMO_MODEL}")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(params)
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    return at


def test_runs_table_filters_and_groups(completed_run: str) -> None:
    other = copy_run(completed_run, "seed-copy")
    config = json.loads((Path(other) / "config.json").read_text())
    (Path(other) / "config.json").write_text(json.dumps({**config, "seed": 7}))
    at = on_page(app(), "runs")
    frame = table(at, "retain exact")
    assert pd.api.types.is_numeric_dtype(frame["score AUROC"])  # numbers sort as numbers
    at.text_input(key="runs_filter").set_value("seed-copy").run()
    assert table(at, "retain exact")["run"].tolist() == ["seed-copy"]
    at.text_input(key="runs_filter").set_value("").run()
    at.segmented_control(key="runs_group").set_value("settings except seed").run()
    assert not at.exception and not at.error, errors(at)
    groups = table(at, "settings except seed")
    [row] = [r for _, r in groups.iterrows() if "7" in r["seeds"].split(", ")]
    same = [  # the runs whose settings equal the seed-7 copy's in everything but the seed
        r
        for r in list_runs()
        if r["state"] != "unreadable"
        and {k: v for k, v in RunReader(r["run_dir"]).config.items() if k not in {"seed", *METADATA_KEYS}}
        == {k: v for k, v in config.items() if k not in {"seed", *METADATA_KEYS}}
    ]
    aurocs = [r["auroc"] for r in same]
    assert row["runs"] == len(same) >= 2
    assert row["score AUROC"] == f"{statistics.mean(aurocs):.3f} ± {statistics.stdev(aurocs):.3f}"
    at.segmented_control(key="runs_group").set_value("tag").run()
    assert "(no tag)" in table(at, "tag")["tag"].tolist()


def test_compare_config_diff(completed_run: str) -> None:
    other = copy_run(completed_run, "seed-copy")
    config = json.loads((Path(other) / "config.json").read_text())
    (Path(other) / "config.json").write_text(json.dumps({**config, "seed": 7}))
    at = on_page(app(), "compare")
    at.multiselect(key="compare_runs").set_value([completed_run, other]).run()
    diff = table(at, "setting")
    assert list(diff.index) == ["seed"] and "7" in diff.loc["seed"].tolist()
    assert at.expander[0].label == "Settings that differ (1)"  # collapsed: the charts stay on screen


def test_query_before_after(completed_run: str) -> None:
    at = on_page(app(), "query")
    at.selectbox(key="query_run").set_value(completed_run)
    at.radio(key="query_kind").set_value("Forget question").run()
    at.button(key="query_go").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    assert len(at.info) >= 2  # the two answers
    assert at.get("plotly_chart")  # per-token log-probability change
    answers = [i.value for i in at.info]
    at.text_area(key="scorer_text").set_value("Ada Vask was born in Tessaly.").run()
    at.button(key="scorer_go").click().run()
    assert [i.value for i in at.info][: len(answers)] == answers and at.get("plotly_chart")  # kept while scoring
    assert any("scorer output g" in h.proto.body for h in at.get("html"))
    verdicts = table(at, "verdict")  # the first forget question's spans, as the run recorded them
    recorded = RunReader(completed_run).metrics.facts.per_sample[RunReader(completed_run).samples[0].record_id]
    assert verdicts["verdict"].tolist() == ["still said" if v.leaked else "not said" for v in recorded.spans]
    at.radio(key="query_kind").set_value("Type a prompt").run()
    at.button(key="query_go").click().run()
    assert "Type a prompt" in errors(at)


def test_runs_rename_tag_delete(completed_run: str) -> None:
    victim = copy_run(completed_run, "to-delete")
    at = on_page(app(), "runs")
    at.selectbox(key="runs_pick").set_value(victim).run()
    at.text_input(key=f"name_{victim}").set_value("my baseline").run()
    at.text_input(key=f"tags_{victim}").set_value("demo, keep").run()
    at.button(key="runs_save").click().run()
    assert not at.exception and not at.error, errors(at)
    row = next(r for r in list_runs() if r["run_dir"] == victim)
    assert row["name"] == "my baseline" and row["tags"] == ["demo", "keep"]
    assert "my baseline" in table(at, "retain exact")["run"].tolist()
    assert at.button(key="runs_delete").disabled  # not before the confirmation
    at.checkbox(key="runs_delete_sure").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception and not at.error, errors(at)
    assert not Path(victim).exists() and Path(completed_run).is_dir()


def test_runs_exports(completed_run: str) -> None:
    at = on_page(app(), "runs")
    at.selectbox(key="runs_pick").set_value(completed_run).run()
    buttons = {b.label: b.proto for b in at.get("download_button")}
    assert set(buttons) == {"Token values (CSV)", "Report (HTML)", "Metrics (JSON)"}
    first = next(iter(RunReader(completed_run).snapshot().step_records[0].scores))
    at.selectbox(key=f"runs_view_sample_{Path(completed_run).name}").set_value(first).run()
    at.slider(key=f"runs_step_{completed_run}").set_value(1).run()  # issue 12 item 19: a download after this failed
    assert not at.exception and not at.error
    assert "Step 1" in " ".join(m.value for m in at.markdown)
    after = {b.label: b.proto for b in at.get("download_button")}
    for label, proto in after.items():
        assert not proto.HasField("deferred_file_id") and proto.url  # built with the page, not on click
        assert proto.url == buttons[label].url  # the same file survives the rerun
    stamp = fingerprint(completed_run)
    rows = list(csv.DictReader(io.StringIO(build(completed_run, "csv", stamp).decode())))
    snap = RunReader(completed_run).snapshot()
    assert {"before", "1", "2", "3", "final"} <= {r["step"] for r in rows}
    assert {r["sample_id"] for r in rows if r["step"] == "final"} == {s.record_id for s in snap.samples}
    report = build(completed_run, "html", stamp).decode()
    assert len(report.encode()) < 2_000_000 and "score AUROC" in report
    assert "still said:" in report and "mean ΔNLL span" in report and "leak rate" in report
    blocks = dict(re.findall(r"<script type='text/plain' id='(\w+)'>(.*?)</script>", report, re.DOTALL))
    assert unpack(blocks["plotlyjs"]) == get_plotlyjs()  # plotly.js inlined once, packed
    figures = json.loads(unpack(blocks["figures"]))["figures"]
    drawn = [s for s in snap.samples if any(s.record_id in f["layout"]["title"]["text"] for f in figures)]
    assert len(drawn) == min(SAMPLE_CAP, len(snap.samples)) and f"{len(drawn)} of {len(snap.samples)}" in report
    losses = next(f for f in figures if f["layout"]["title"]["text"] == "Losses")
    assert len({t["line"]["color"] for t in losses["data"]}) > 1  # not every loss line one colour
    align = next(f for f in figures if f["layout"]["title"]["text"] == "Alignment over training")
    assert {t["line"]["color"] for t in align["data"] if t.get("legend") != "legend2"} == {run_colour(completed_run)}
    outside = report.replace(blocks["plotlyjs"], "").replace(blocks["figures"], "")
    assert "src=" not in outside and "http" not in outside  # nothing fetched: opens offline
    assert json.loads(build(completed_run, "json", stamp))["alignment"]["auroc"] is not None
    command = " ".join(c.value for c in at.code)
    assert command.startswith("atwu unlearn --model demo --data demo --method atwu") and "--steps 3" in command


def test_model_page(completed_run: str) -> None:
    at = on_page(app(), "model")
    at.button(key="load_model").click().run()
    assert not at.error and [m.label for m in at.metric][0] == "Parameters"
    at.radio(key="model_source").set_value("Local folder or .gguf file").run()
    at.text_input(key="model_path").set_value("/no/such/model").run()
    at.button(key="load_model").click().run()
    assert "no such file" in errors(at)
    assert not [e for box in at.get("expandable") for e in box.error]  # the reason is inline, not in the log box
    assert at.session_state[session.MODEL_SPEC] == "demo"  # the previous model stays in use


def test_run_page_offers_the_models_preset() -> None:
    at = app()
    assert at.selectbox(key="preset_demo").value == "demo"
    assert at.number_input(key="job_lora_layers_demo").value is None  # demo: LoRA on every block
    at.session_state[session.MODEL_SPEC] = "demo-smollm2"  # chosen, not loaded: the Run page must not load it to draw
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="preset_demo-smollm2").value == "smollm2"
    assert at.number_input(key="job_forget_batch_size_smollm2").value == 8
    assert at.number_input(key="job_lora_layers_smollm2").value == 12


def test_run_page_controls_come_from_the_settings_fields() -> None:
    from atwu_core.config import job_settings, method_params

    at = app()
    job = job_settings()
    assert at.number_input(key="job_lora_rank_demo").help.startswith(job["lora_rank"].help)
    assert at.number_input(key="job_lora_rank_demo").max == job["lora_rank"].maximum
    assert at.number_input(key="lr_demo").help.startswith(job["lr"].help)
    pair = next(s for s in method_params("atwu") if s.name == "pair")
    assert at.selectbox(key="p_atwu_demo_pair").options == list(pair.choices)
    assert at.selectbox(key="p_atwu_demo_pair").help.startswith(pair.help)
    shown_run = lambda: at.session_state[session.FOLLOWED_RUN] if session.FOLLOWED_RUN in at.session_state else None  # noqa: E731
    before = shown_run()
    at.text_area(key="job_lines_demo").set_value("max_new_tokens=20\ndtype=fp8").run()  # the rest, as --set takes it
    at.button(key="run").click().run()
    assert "dtype must be one of auto, float32" in errors(at) and "got 'fp8'" in errors(at)
    assert shown_run() == before  # refused before any job was queued


def test_data_page_bad_inputs() -> None:
    at = on_page(app(), "data")
    assert any("atwu-chip" in h.proto.body for h in at.get("html"))  # the tokenised preview
    at.radio(key="data_source").set_value("Folder or TOFU JSON").run()
    at.text_input(key="data_path").set_value("/no/such/folder").run()
    at.button(key="load_path").click().run()
    assert "no such file or folder" in errors(at)

    at.radio(key="data_source").set_value("Upload JSONL").run()
    at.file_uploader(key="upload").set_value(
        ("bad.jsonl", b'{"question": "Q?", "answer": "A."}\n{oops\n', "application/json")
    )
    at.run()
    at.button(key="use_upload").click().run()
    assert "bad.jsonl, line 2" in errors(at) and "malformed JSON" in errors(at)

    at.radio(key="data_source").set_value("Type a sample").run()
    at.button(key="use_typed").click().run()
    assert "question and an answer" in errors(at)
    at.text_input(key="typed_question").set_value("Where was Ada born?").run()
    at.text_input(key="typed_answer").set_value("Ada was born in Tessaly.").run()
    at.button(key="use_typed").click().run()
    assert "Select at least one" in errors(at)
    assert not at.exception


def test_data_page_typed_sample_with_spans() -> None:
    at = on_page(app(), "data")
    at.radio(key="data_source").set_value("Type a sample").run()
    at.text_input(key="typed_question").set_value("Where was Ada born?").run()
    at.text_input(key="typed_answer").set_value("Ada was born in Tessaly.").run()
    at.pills(key="typed_words_Ada was born in Tessaly.").set_value([4]).run()
    at.button(key="use_typed").click().run()
    assert not at.error and not at.exception, errors(at)
    record = at.session_state[session.DATASET].forget[0]
    assert [record.answer[s.start : s.end] for s in record.forget_spans] == ["Tessaly"]
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "ground truth: forget" in html


def test_upload_valid_jsonl(tmp_path: Path) -> None:
    rows = [{"id": "u1", "question": "Who?", "answer": "Ada Vask.", "forget_strings": ["Vask"]}]
    at = on_page(app(), "data")
    at.radio(key="data_source").set_value("Upload JSONL").run()
    at.file_uploader(key="upload").set_value(
        ("mine.jsonl", "\n".join(map(json.dumps, rows)).encode(), "application/json")
    )
    at.run()
    at.button(key="use_upload").click().run()
    assert not at.error, errors(at)
    assert at.session_state[session.DATA_LABEL] == "upload:mine.jsonl"


# ------------------------------------------------------------------------------------------ components


def test_components_label_every_chart() -> None:
    tokens, offsets = [" Ada", " Va", "sk", ".", "</s>"], [[0, 3], [4, 6], [6, 8], [8, 9], [9, 9]]
    matrix = [[0.1, 0.9, 0.8, 0.2, 0.0], [0.2, 1.0, 0.7, 0.1, 0.0]]
    labels, merged, mask = aggregate_words(tokens, matrix, [False, True, True, False, False], offsets)
    assert labels == [" Ada", " Vask.", "</s>"] and mask == [False, True, False]
    assert merged[0][1] == pytest.approx((0.9 + 0.8 + 0.2) / 3)
    figures = [
        weight_heatmap([1, 2], matrix, tokens, title="t", span_mask=[False, True, True, False, False]),
        token_bars(tokens, [0.1, -0.2, 0.3, 0.0, 0.0], title="t", ylabel="y", colorbar="c"),
    ]
    for fig in figures:
        assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        trace = fig.data[0]
        assert trace.colorbar.title.text if hasattr(trace, "zmin") else trace.marker.colorbar.title.text
    assert figures[0].layout.xaxis.ticktext[0] == "␣Ada" and "<b>" in figures[0].layout.xaxis.ticktext[1]
    assert "␣Va" in figures[0].layout.xaxis.ticktext[1]
    curve = line_figure({"run": ([0, 1], [0, 1])}, title="ROC", xlabel="fpr", ylabel="tpr", unit_square=True)
    assert curve.layout.xaxis.title.text == "fpr" and curve.layout.yaxis.title.text == "tpr"
    html = token_chips_html(tokens, matrix[1], span_mask=[False, True, True, False, False], previous=matrix[0])
    assert html.count("atwu-chip") == 5 and "change +0.100" in html and "score 1.000" in html
    losses = loss_figure(
        [1, 2, 3], {"forget": [1.0, 0.5, 0.2], "scorer": [None, 3.0, None], "scorer_selected": [None, 0.4, None]}
    )
    assert {t.name: t.yaxis for t in losses.data} == {"forget": "y", "scorer": "y2", "scorer_selected": "y3"}
    assert next(t for t in losses.data if t.name == "scorer").mode == "lines+markers"  # sparse: markers


def test_an_old_format_run_opens_on_runs_and_compare(module_runs: Path) -> None:
    """A run folder written before the typed records (step key `weights`, no phase, no span labels)."""
    old = shutil.copytree(Path(__file__).parent / "fixtures" / "old_run", module_runs / "old-format-run")
    try:
        at = on_page(app(), "runs")
        at.selectbox(key="runs_pick").set_value(str(old)).run()
        assert not at.exception and not at.error, errors(at)
        assert at.get("plotly_chart")  # its heatmaps draw from the old `weights`
        at = on_page(app(), "compare")
        assert not at.exception, errors(at)
    finally:
        shutil.rmtree(old)


# ------------------------------------------------------------------------------------------ crafted run folders

IMAGE = "![x](http://127.0.0.1:9/pixel)"  # rendered as Markdown, every viewer's browser would fetch it


def shown(at: AppTest) -> str:
    """The page's error messages as the viewer reads them (Markdown escapes removed)."""
    return re.sub(r"\\(.)", r"\1", errors(at))


def crafted(run_dir: str, name: str, file: str, change) -> str:
    """A copy of a finished run with one file changed by `change` (parsed JSON in, JSON out)."""
    target = Path(copy_run(run_dir, name))
    path = target / file
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return str(target)


def _drop_span_mask(samples: list) -> list:
    return [{k: v for k, v in s.items() if k != "span_mask"} for s in samples]


CRAFTED_RUNS = {  # issue 24 items 2, 3, 10, 12: each broke a page for every run, or rendered user Markdown
    "crafted-pid": ("status.json", lambda s: {**s, "state": "running", "pid": 1180591620717411303424}),
    "crafted-tags": ("config.json", lambda c: {**c, "tags": [1, 2]}),
    "crafted-method": ("config.json", lambda c: {**c, "method": "bogus"}),
    "crafted-params": ("config.json", lambda c: {**c, "params": [1]}),
    "crafted-samples": ("samples.json", _drop_span_mask),
    "crafted-no-model": ("config.json", lambda c: {k: v for k, v in c.items() if k != "model"}),
    "crafted-image": ("config.json", lambda c: {**c, "name": IMAGE}),
    "crafted-same-name": ("config.json", lambda c: {**c, "name": IMAGE}),
}


def test_a_crafted_run_is_an_error_for_that_run_and_the_page_goes_on(completed_run: str) -> None:
    made = {name: crafted(completed_run, name, file, change) for name, (file, change) in CRAFTED_RUNS.items()}
    try:
        at = on_page(app(), "runs")  # opens the newest run, a crafted one
        states = dict(zip(table(at, "state")["run"], table(at, "state")["state"], strict=True))
        unreadable = ("crafted-pid", "crafted-tags", "crafted-method", "crafted-params")
        assert {states[n] for n in unreadable} == {"unreadable"} and "completed" in states.values()
        at.selectbox(key="runs_pick").set_value(made["crafted-samples"]).run()
        assert not at.exception and "samples.json: sample 1: field 'span_mask'" in shown(at), shown(at)

        at = on_page(app(), "compare")
        chosen = [completed_run, made["crafted-samples"], made["crafted-image"], made["crafted-same-name"]]
        at.multiselect(key="compare_runs").set_value(chosen).run()
        assert not at.exception and "field 'span_mask'" in shown(at), shown(at)
        runs = table(at, "span share")["run"].tolist()
        assert len(runs) == 3 and len(set(runs)) == 3  # the two runs named alike are told apart
        captions = [c.value for c in at.caption]
        assert not any(IMAGE in c for c in captions) and any("\\!\\[x\\]" in c for c in captions)

        at = on_page(app(), "query")
        at.selectbox(key="query_run").set_value(made["crafted-no-model"])
        at.radio(key="query_kind").set_value("Forget question").run()
        at.button(key="query_go").click().run()
        assert not at.exception and "names no model" in shown(at), shown(at)
    finally:
        for path in made.values():
            shutil.rmtree(path)


def test_markdown_escaping_leaves_only_text() -> None:
    markdown_it = pytest.importorskip("markdown_it")
    from app.untrusted import md

    hostile = f"{IMAGE} **bold** <img src=x> :red[c] $x$ [l](http://h) `c`\n# h"
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md(hostile))
    assert not any(tag in html for tag in ("<img", "<a ", "<strong", "<code", "<h1"))
    assert html.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').count("![x]") == 1


def test_a_crafted_link_shows_its_run_name_as_text(completed_run: str) -> None:
    """`?run=` comes from whoever wrote the link: echoed back as Markdown it would fetch the image."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = IMAGE
    at.run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("No run named" in w for w in warnings) and not any(IMAGE in w for w in warnings), warnings
