"""The Streamlit app driven headlessly (AppTest) with the real demo model and demo world.

One short job runs to completion and one is cancelled; every page is then driven on those runs, and each
bad-input path must show `st.error`, never an exception.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.components.curves import line_figure, token_bars
from app.components.heatmap import aggregate_words, weight_heatmap
from app.components.token_chips import token_chips_html
from app.state import jobs
from atwu_core.config import METHODS
from atwu_core.models import DEMO_MODEL
from atwu_core.runs import RunReader, list_runs, wait_for_state

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
FAST = {"job_forget_batch_size_demo": 8, "job_retain_batch_size_demo": 8, "job_eval_max_samples_demo": 4}  # keys per preset
DONE = ("completed", "failed", "cancelled")

@pytest.fixture(scope="module")
def module_runs(tmp_path_factory: pytest.TempPathFactory):
    """One runs root for the module (its tests reuse one finished run); one torch thread while they run
    (on a shared 2-core machine two threads run ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("runs")
        mp.setenv("ATWU_RUNS", str(root))
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
    return at.session_state["run_dir"]


def finish(at: AppTest, run_dir: str, timeout: float = 60) -> dict:
    """Wait for the job's terminal status and its thread, then rerun the page."""
    deadline = time.monotonic() + timeout
    while not (Path(run_dir) / "config.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    status = wait_for_state(run_dir, DONE, max(deadline - time.monotonic(), 1))
    while jobs().running() is not None and time.monotonic() < deadline + 10:
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
    assert finish(at, run_dir)["state"] == "completed"
    assert len(at.get("plotly_chart")) >= 2  # losses and the steps x tokens heatmap
    assert any("atwu-chip" in h.proto.body for h in at.get("html"))
    assert "completed" in at.get("progress")[0].proto.text
    return run_dir


def test_run_completes_with_metrics(completed_run: str) -> None:
    reader = RunReader(completed_run)
    assert reader.metrics["alignment"]["n_tokens"] > 0
    assert len(reader.steps()) == 3
    assert reader.config["steps"] == 3 and reader.config["forget_batch_size"] == 8


def test_second_run_refused_and_cancel(completed_run: str) -> None:
    at = app()
    run_dir = start_job(at, steps=500)
    at.button(key="run").click().run()
    assert "already running" in errors(at)
    refreshed = app()  # a browser refresh: a new session finds the same job and cannot start another
    assert f"Run {Path(run_dir).name}" in [h.value for h in refreshed.subheader]
    refreshed.button(key="run").click().run()
    assert "already running" in errors(refreshed)
    assert len([r for r in list_runs() if r["state"] == "running"]) == 1
    refreshed.button(key="cancel").click().run()
    assert finish(at, run_dir)["state"] == "cancelled"
    assert at.session_state["run_dir"] == run_dir
    assert "Cancelled after" in " ".join(w.value for w in at.warning)


def test_compare_shows_alignment(completed_run: str) -> None:
    at = on_page(app(), "compare")
    at.multiselect(key="compare_runs").set_value([completed_run]).run()
    table = at.dataframe[0].value
    assert 0.0 <= table["AUROC"].iloc[0] <= 1.0 and 0.0 <= table["precision@k"].iloc[0] <= 1.0
    assert len(at.get("plotly_chart")) == 3  # ROC, PR, the side-by-side heatmap
    at.segmented_control(key="per_sample_number").set_value("precision_at_k").run()
    assert at.dataframe[1].value.index.name == "sample (precision@k)"
    assert not at.error and not at.exception


def test_query_before_after(completed_run: str) -> None:
    at = on_page(app(), "query")
    at.selectbox(key="query_run").set_value(completed_run)
    at.radio(key="query_kind").set_value("Forget question").run()
    at.button(key="query_go").click().run()
    assert not at.exception and not at.error, (at.exception, errors(at))
    assert len(at.info) >= 2  # the two answers
    assert at.get("plotly_chart")  # per-token log-probability change
    at.radio(key="query_kind").set_value("Type a prompt").run()
    at.button(key="query_go").click().run()
    assert "Type a prompt" in errors(at)


def test_runs_reopen_and_export(completed_run: str) -> None:
    at = on_page(app(), "runs")
    at.selectbox(key="runs_pick").set_value(completed_run).run()
    at.slider(key=f"runs_step_{completed_run}").set_value(1).run()
    assert not at.exception and not at.error
    assert "Step 1" in " ".join(m.value for m in at.markdown)
    assert {b.label for b in at.get("download_button")} >= {"Token weights (CSV)", "Heatmap (HTML)", "Metrics (JSON)"}


def test_model_page(completed_run: str) -> None:
    at = on_page(app(), "model")
    at.button(key="load_model").click().run()
    assert not at.error and [m.label for m in at.metric][0] == "Parameters"
    at.radio(key="model_source").set_value("Local folder or .gguf file").run()
    at.text_input(key="model_path").set_value("/no/such/model").run()
    at.button(key="load_model").click().run()
    assert "no such file" in errors(at)
    assert at.session_state["model_spec"] == "demo"  # the previous model stays in use


def test_run_page_offers_the_models_preset() -> None:
    at = app()
    assert at.selectbox(key="preset_demo").value == "demo"
    assert at.number_input(key="job_lora_layers_demo").value is None  # demo: LoRA on every block
    at.session_state["model_spec"] = "demo-smollm2"  # chosen, not loaded: the Run page must not load it to draw
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="preset_demo-smollm2").value == "smollm2"
    assert at.number_input(key="job_forget_batch_size_smollm2").value == 8
    assert at.number_input(key="job_lora_layers_smollm2").value == 12


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
    assert "bad.jsonl, line 2: malformed JSON" in errors(at)

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
    record = at.session_state["dataset"].forget[0]
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
    assert at.session_state["data_label"] == "upload:mine.jsonl"


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
        assert (trace.colorbar.title.text if hasattr(trace, "zmin") else trace.marker.colorbar.title.text)
    assert figures[0].layout.xaxis.ticktext[1] == "<b>Va</b>"
    curve = line_figure({"run": ([0, 1], [0, 1])}, title="ROC", xlabel="fpr", ylabel="tpr", unit_square=True)
    assert curve.layout.xaxis.title.text == "fpr" and curve.layout.yaxis.title.text == "tpr"
    html = token_chips_html(tokens, matrix[1], span_mask=[False, True, True, False, False], previous=matrix[0])
    assert html.count("atwu-chip") == 5 and "change +0.100" in html and "forget weight" in html
