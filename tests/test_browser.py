"""A real browser on a real server: `streamlit run app/main.py`, headless Debian Chromium via Playwright,
press Run on the demo and wait for the live steps x tokens heatmap."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.screenshots import CHROMIUM, HEATMAP, launch_browser, press_run, streamlit_server, wait_finished
from atwu_core.models import DEMO_MODEL

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(not (DEMO_MODEL / "config.json").is_file(), reason=f"no demo model at {DEMO_MODEL}"),
]


def test_run_shows_live_heatmap(tmp_path: Path) -> None:
    with streamlit_server(tmp_path / "runs") as url, launch_browser() as page:
        press_run(page, url, steps=4)
        page.wait_for_selector(HEATMAP, timeout=90_000)
        assert page.get_by_text("Forget weight per token and step").count() >= 1
        page.screenshot(path=str(tmp_path / "live-heatmap.png"))
        wait_finished(page, timeout=120_000)
        assert page.locator(".atwu-chip").count() > 0
        page.screenshot(path=str(tmp_path / "finished.png"))
    assert (tmp_path / "live-heatmap.png").stat().st_size > 10_000
