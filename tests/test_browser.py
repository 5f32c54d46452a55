"""A real browser on a real server: `streamlit run app/main.py`, headless Debian Chromium via Playwright.
Press Run on the demo (3 steps, a small evaluation), watch the live heatmaps, wait for the end, and check that
the results card and both heatmaps (score, log-probability change) are drawn."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from app.screenshots import (
    CHROMIUM,
    HEATMAP,
    charts_drawn,
    full_page_screenshot,
    launch_browser,
    press_run,
    streamlit_server,
    wait_finished,
)
from atwu_core.models import DEMO_MODEL

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(not (DEMO_MODEL / "config.json").is_file(), reason=f"no demo model at {DEMO_MODEL}"),
]
QUICK = {"forget batch size": 8, "retain batch size": 8, "eval max samples": 4}


def test_run_shows_results_and_both_heatmaps(tmp_path: Path) -> None:
    with streamlit_server(tmp_path / "runs") as url, launch_browser() as page:
        press_run(page, url, steps=3, settings=QUICK)
        page.get_by_text(re.compile(r"^running · ")).first.wait_for(timeout=60_000)  # phase-aware progress
        assert page.get_by_text(re.compile(r"unknown · ")).count() == 0
        page.wait_for_selector(HEATMAP, timeout=180_000)
        wait_finished(page, timeout=300_000)
        card = page.locator(".st-key-results_run")
        card.get_by_text("forgetting AUROC").first.wait_for(timeout=60_000)
        charts_drawn(page)
        assert card.get_by_text("score AUROC").count() >= 1
        assert card.get_by_role("button", name=re.compile("Compare this run")).count() == 1
        figure = page.locator(".js-plotly-plot", has_text="what was scored (top)")
        assert figure.locator(".heatmaplayer").count() == 2  # score and log-probability change
        assert figure.get_by_text("log-probability change since before training", exact=False).count() >= 1
        page.locator(".atwu-chip").first.wait_for(timeout=60_000)  # the chips draw after the charts
        assert page.get_by_text(re.compile(r"ETA")).count() == 0  # none once finished
        full_page_screenshot(page, tmp_path / "finished.png")
    assert (tmp_path / "finished.png").stat().st_size > 10_000
