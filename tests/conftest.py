"""Shared fixtures: the real embedded demo model, loaded once per session."""

from __future__ import annotations

import pytest
import torch

from atwu_core.data import load_data
from atwu_core.models import load_model

# The tests' models are small: one intra-op thread is as fast on an idle machine and many times faster on a
# busy one (two threads fighting other processes for two cores stall each other).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_loaded():
    return load_model("demo")


@pytest.fixture(scope="session")
def demo_world():
    return load_data("demo")


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    """Every test writes its runs into its own temp folder."""
    monkeypatch.setenv("ATWU_RUNS", str(tmp_path / "runs"))
