"""One browser session's own state: every `st.session_state` entry the app reads or writes by name lives behind
the accessors here (widgets keep their own `key=` state), and the run picker every page that opens one run uses."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from app import links, state
from app.run_views import run_label, unique_names
from atwu_core.data import Dataset
from atwu_core.models import LoadedModel
from atwu_core.run_table import run_id

DEFAULT_MODEL = "demo"
DEFAULT_DATA = "demo"

# st.session_state keys (one name per entry; nothing else in the app indexes st.session_state)
MODEL_SPEC = "model_spec"  # the model the session works with (Model page)
DATASET = "dataset"  # the session's Dataset (Data page)
DATA_LABEL = "data_label"  # what config.json records as that data's source
FOCUS_RUN = "focus_run"  # the run a results card's page link hands to the page it opens
FOLLOWED_RUN = "run_dir"  # the run the Run page follows (the one it started, or a link's)
ANSWERS = "query_result"  # Query: the last answers before/after, kept for the inputs that made them
SCORED = "scorer_result"  # Query: the last scorer output, kept likewise


def model_spec() -> str:
    return st.session_state.setdefault(MODEL_SPEC, DEFAULT_MODEL)


def set_model_spec(spec: str) -> None:
    st.session_state[MODEL_SPEC] = spec


def current_model(progress: Callable[[str], None] | None = None) -> LoadedModel:
    """The session's model (the demo model unless another was chosen), loading it if needed."""
    return state.models().get(model_spec(), progress)


def current_data() -> Dataset:
    """The session's dataset: one set on the Data page, else the demo world."""
    if DATASET not in st.session_state:
        set_data(state.cached_data(DEFAULT_DATA), DEFAULT_DATA)
    return st.session_state[DATASET]


def set_data(dataset: Dataset, label: str) -> None:
    """Make `dataset` the session's data; `label` is what config.json records as its source."""
    st.session_state[DATASET] = dataset
    st.session_state[DATA_LABEL] = label


def data_label() -> str:
    return st.session_state.get(DATA_LABEL, DEFAULT_DATA)


def focus_run() -> str | None:
    return st.session_state.get(FOCUS_RUN)


def set_focus_run(run_dir: str) -> None:
    """Hand `run_dir` to the next page opened: its run picker starts on it (a link's `?run=` still wins)."""
    st.session_state[FOCUS_RUN] = run_dir


def followed_run() -> str | None:
    return st.session_state.get(FOLLOWED_RUN)


def follow_run(run_dir: str) -> None:
    st.session_state[FOLLOWED_RUN] = run_dir


def kept(name: str, inputs: tuple, result: dict | None = None) -> dict | None:
    """A result kept in the session for the inputs that made it: pressing another button on the page reruns
    it, and the answers stay until an input changes."""
    if result is not None:
        st.session_state[name] = (inputs, result)
    stored = st.session_state.get(name)
    return stored[1] if stored is not None and stored[0] == inputs else None


def forget_widget(key: str) -> None:
    """Drop a widget's state, so it starts afresh on the next run (a picker whose run was deleted)."""
    st.session_state.pop(key, None)


def run_picker(label: str, runs: list[dict], key: str, describe: Callable[[str, dict], str] = run_label) -> dict:
    """Pick one of `runs` (`list_runs` rows) in a select box and name it in the URL (`?run=`); it starts on the
    run the link names, else on the focused run, else on the first. Returns the chosen row."""
    by_dir = {r["run_dir"]: r for r in runs}
    dirs = list(by_dir)
    start = links.wanted("run", dirs, {run_id(d): d for d in dirs}.get)
    if start is None and focus_run() in by_dir:
        start = dirs.index(focus_run())
    run_dir = st.selectbox(
        label,
        dirs,
        index=start or 0,
        key=key,
        format_func=unique_names({d: describe(d, r) for d, r in by_dir.items()}).get,
    )
    links.show(run=run_id(run_dir))
    return by_dir[run_dir]
