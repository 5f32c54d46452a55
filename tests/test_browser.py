"""A real browser on a real server: `streamlit run app/main.py`, headless Debian Chromium via Playwright,
press Run on the demo (default settings), wait for the live steps x tokens heatmap, then cancel."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from app.screenshots import CHROMIUM, HEATMAP, launch_browser, press_run, streamlit_server
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
        press_run(page, url)
        page.wait_for_selector(HEATMAP, timeout=180_000)
        assert page.get_by_text("Forget weight per token and step").count() >= 1
        assert page.locator(".atwu-chip").count() > 0
        assert page.get_by_text(re.compile(r"^running · step")).count() == 1
        page.screenshot(path=str(tmp_path / "live-heatmap.png"))
        page.get_by_role("button", name=re.compile(r"Cancel$")).click()
        page.get_by_text(re.compile(r"^cancelled · step")).wait_for(timeout=120_000)
    assert (tmp_path / "live-heatmap.png").stat().st_size > 10_000
