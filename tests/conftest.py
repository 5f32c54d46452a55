"""Shared fixtures: the real embedded demo model, loaded once per session; the bench scripts as modules."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from atwu_core.data import load_data
from atwu_core.models import load_model

# The tests' models are small: one intra-op thread is as fast on an idle machine and many times faster on a
# busy one (two threads fighting other processes for two cores stall each other).
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where there is no CUDA GPU."""
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def demo_loaded():
    return load_model("demo")


@pytest.fixture(scope="session")
def demo_world():
    return load_data("demo")


@pytest.fixture(scope="session")
def bench():
    """bench/ is a folder of scripts, not a package: `bench("alignment")` imports bench/alignment.py with bench/
    importable, as `python bench/alignment.py` does."""
    folder = str(Path(__file__).resolve().parent.parent / "bench")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(folder)


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    """Every test writes its runs into its own temp folder."""
    monkeypatch.setenv("ATWU_RUNS", str(tmp_path / "runs"))
