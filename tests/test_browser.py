"""A real browser on a real server: `streamlit run app/main.py`, headless Debian Chromium via Playwright.
Press Run on the demo (3 steps, a small evaluation), watch the live heatmaps, wait for the end, and check that
the results card and both heatmaps (score, log-probability change) are drawn; then reload a deep link and open
the run's HTML report offline to check its colours."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from app.report import run_report
from app.screenshots import (
    CHROMIUM,
    HEATMAP,
    charts_drawn,
    full_page_screenshot,
    launch_browser,
    press_run,
    settle,
    streamlit_server,
    wait_finished,
)
from atwu_core.models import DEMO_MODEL
from atwu_core.run_table import run_colour
from atwu_core.runs import RunReader

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
        card.get_by_text("extractable rate").first.wait_for(timeout=60_000)  # the card's last row of numbers
        charts_drawn(page)
        assert card.get_by_text("score AUROC").count() >= 1
        # facts still said and the forgetting's magnitude, beside its ranking
        assert card.get_by_text(re.compile(r"still said: \d+ of \d+ spans")).count() >= 1
        assert card.get_by_text("leak rate").count() >= 1 and card.get_by_text("mean ΔNLL span").count() >= 1
        assert card.get_by_role("button", name=re.compile("Compare this run")).count() == 1
        from playwright.sync_api import expect  # imported here: without playwright the module is skipped

        settle(page)  # a rerun still under way keeps the previous run's figure beside the new one until it ends
        figure = page.locator(".js-plotly-plot", has_text="what was scored (top)")
        # score and log-probability change; under load a rerun can still show the previous figure for a while
        expect(figure.locator(".heatmaplayer")).to_have_count(2, timeout=60_000)
        assert figure.get_by_text("log-probability change since before training", exact=False).count() >= 1
        page.locator(".atwu-chip").first.wait_for(timeout=60_000)  # the chips draw after the charts
        assert page.get_by_text(re.compile(r"ETA")).count() == 0  # none once finished
        full_page_screenshot(page, tmp_path / "finished.png")
        reload_deep_link(page)
        run_dir = next((tmp_path / "runs").iterdir())
        report_colours(page, run_dir, tmp_path / "report.html")
    assert (tmp_path / "finished.png").stat().st_size > 10_000


def reload_deep_link(page) -> None:
    """The URL names the run, sample and view: after choosing the whole forget set, a reload (or anyone with the
    link) opens that view of that run again, at /run (not "Page not found")."""
    page.get_by_test_id("stRadio").get_by_text("Whole forget set", exact=True).click()
    page.get_by_text("Per span label").first.wait_for(timeout=60_000)
    page.wait_for_function("() => location.search.includes('view=forget-set')", timeout=30_000)
    link = page.url
    assert "/run?" in link and "run=" in link
    page.goto("about:blank")
    page.goto(link)
    settle(page)
    page.get_by_text("Per span label").first.wait_for(timeout=60_000)
    assert page.get_by_text("Page not found").count() == 0
    heading = page.locator("h3", has_text=re.compile(r"^Run ")).first.inner_text()
    assert heading.endswith(re.search(r"run=([^&]+)", link).group(1))


def report_colours(page, run_dir: Path, path: Path) -> None:
    """The HTML report, opened offline, draws the loss lines in several colours (not all black) and the
    alignment lines in the run's own colour, as the app does."""
    path.write_text(run_report(RunReader(run_dir).snapshot()))
    page.goto(path.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3", timeout=60_000)
    strokes = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(p => [p.layout.title.text,"
        " [...p.querySelectorAll('.scatterlayer path.js-line')].map(l => getComputedStyle(l).stroke)])"
    )
    by_title = {title: colours for title, colours in strokes}
    losses = set(by_title["Losses"])
    assert len(losses) > 1 and "rgb(0, 0, 0)" not in losses
    red, green, blue = (int(run_colour(run_dir)[k : k + 2], 16) for k in (1, 3, 5))
    assert f"rgb({red}, {green}, {blue})" in set(by_title["Alignment over training"])
