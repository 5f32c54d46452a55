"""Process-wide resources: loaded models, the job queue, parsed records, datasets (a session's own choices
are in `app.session`).

Models and the job queue live in `st.cache_resource` registries so that reruns, page switches and browser
refreshes neither reload a model nor lose, kill or duplicate a job (jobs themselves run in worker processes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from atwu_core.data import Dataset, load_data
from atwu_core.models import LoadedModel, load_model
from atwu_core.runs import RecordLog
from atwu_core.worker import JobQueue

MAX_MODELS = 2  # a 135M model is ~2 GB in fp32: keep few
MAX_LOGS = 8  # parsed records of the runs viewed last (a 10 000-step demo run is ~0.7 GB parsed)
_LOGS_LOCK = threading.Lock()


class ModelRegistry:
    """Loaded models by spec, most recently loaded last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}

    def get(self, spec: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
        """The loaded model for `spec`, loading it once (errors propagate and are not cached)."""
        with self._lock:
            if spec not in self._models:
                loaded = load_model(spec, progress=progress)
                while len(self._models) >= MAX_MODELS:
                    self._models.pop(next(iter(self._models)))
                self._models[spec] = loaded
            return self._models[spec]

    def cached(self, spec: str) -> LoadedModel | None:
        return self._models.get(spec)


@st.cache_resource(show_spinner=False)
def models() -> ModelRegistry:
    return ModelRegistry()


@st.cache_resource(show_spinner=False)
def jobs() -> JobQueue:
    """The server's job queue: jobs run one at a time in worker processes, never in the server."""
    return JobQueue()


@st.cache_resource(show_spinner=False)
def _record_logs() -> OrderedDict[str, RecordLog]:
    return OrderedDict()


def record_log(run_dir: str) -> RecordLog:
    """The parsed records.jsonl of a run, shared by every session, so a refresh parses only the new lines; the
    MAX_LOGS runs viewed last are kept."""
    logs = _record_logs()
    with _LOGS_LOCK:
        log = logs.pop(run_dir, None) or RecordLog(Path(run_dir) / "records.jsonl")
        logs[run_dir] = log
        while len(logs) > MAX_LOGS:
            logs.popitem(last=False)
    return log


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_data(spec: str, retain_spec: str | None = None) -> Dataset:
    """A dataset from a spec (demo, a folder, a .json/.jsonl path); DataError propagates."""
    return load_data(spec, retain_spec)
