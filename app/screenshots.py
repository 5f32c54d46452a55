"""Screenshots of every page of a live `streamlit run` (headless Chromium via Playwright).

    python -m app.screenshots [OUT_DIR]      # default docs/screenshots

Also provides `streamlit_server` and `launch_browser`, which tests/test_browser.py uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEATMAP = ".js-plotly-plot .heatmaplayer"
COMPARED = ("wga", "tokenunlearn")
PAGE_SHOTS = (  # (page, a text its script draws last)
    ("model", "Current model"),
    ("data", "Data"),
    ("compare", "Lowest scores"),
    ("runs", "Rerun from the command line"),
)
VIEW_SHOTS = (  # (view, file, a text only that view draws)
    ("Alignment over training", "run-alignment", "Each point uses the samples"),
    ("Whole forget set", "run-corpus", "Per span label"),
)
SHOT_SETTINGS = {"eval max samples": 16}  # a shorter evaluation after each screenshot job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(runs_dir: Path, timeout: float = 60) -> Iterator[str]:
    """`streamlit run app/main.py` on a free localhost port with its own runs root; yields its URL, stops it after."""
    port = free_port()
    env = {**os.environ, "ATWU_RUNS": str(runs_dir), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app" / "main.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"streamlit did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def launch_browser() -> Iterator[object]:
    """A headless Debian Chromium page (1400 x 1000) driven by Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def settle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has drawn a page title and finished the current script run."""
    page.wait_for_selector("h1", timeout=timeout)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def press_run(
    page, url: str, steps: int | None = None, method: str = "atwu", settings: dict[str, int] | None = None
) -> None:
    """Open the Run page, pick the method, optionally set the number of steps and job settings (by their label
    in the "Job settings" box), press Run and wait until the page follows the new run (its folder name ends
    with the method)."""
    page.goto(f"{url}/run")
    settle(page)
    if method != "atwu":
        page.get_by_test_id("stSelectbox").filter(has_text="Method").click()
        page.get_by_role("option", name=method, exact=True).click()
        settle(page)
    if steps is not None:
        box = page.get_by_label("steps", exact=True)
        box.fill(str(steps))
        box.press("Enter")
        settle(page)
    if settings:
        page.get_by_text("Job settings", exact=True).click()
        for label, value in settings.items():
            field = page.get_by_label(label, exact=True)
            field.fill(str(value))
            field.press("Enter")
            settle(page)
    old = page.get_by_text(re.compile(r"^Run \d{8}-")).all_inner_texts()
    page.get_by_role("button", name=re.compile(r"Run$")).click()
    page.wait_for_function(
        "([old, method]) => [...document.querySelectorAll('h3')].some(h => h.innerText.startsWith('Run ')"
        " && h.innerText.includes('-' + method) && !old.includes(h.innerText))",
        arg=[old, method],
        timeout=60_000,
    )


def charts_drawn(page, timeout: float = 30_000) -> None:
    """Wait until every Plotly chart on the page has drawn its SVG."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        ".every(c => c.querySelector('.main-svg'))",
        timeout=timeout,
    )


def full_page_screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main section, so grow the viewport until it fits."""
    script = "() => (document.querySelector('[data-testid=\"stMain\"]') || document.scrollingElement).scrollHeight"
    for _ in range(3):  # charts drawn at the new size can change the height again
        height = min(max(page.evaluate(script), 1000), 6000)
        page.set_viewport_size({"width": 1400, "height": height})
        page.wait_for_timeout(1000)
        charts_drawn(page)
        if page.evaluate(script) <= height:
            break
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 1000})


def wait_finished(page, timeout: float) -> None:
    page.get_by_text(re.compile(r"^completed · step")).wait_for(timeout=timeout)


def take_screenshots(out_dir: Path, steps: int = 20) -> list[Path]:
    """Every page, with an ATWU demo run in progress and finished (its results, alignment over training and
    whole forget set), baselines to compare, the query and the scorer on any text; returns the PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    def shot(page, name: str) -> None:
        path = out_dir / f"{name}.png"
        full_page_screenshot(page, path)
        shots.append(path)

    with tempfile.TemporaryDirectory() as runs, streamlit_server(Path(runs)) as url, launch_browser() as page:
        press_run(page, url, steps, settings=SHOT_SETTINGS)
        page.wait_for_selector(HEATMAP, timeout=120_000)
        page.wait_for_timeout(4000)
        shot(page, "run-in-progress")
        wait_finished(page, timeout=900_000)
        page.wait_for_timeout(1500)
        shot(page, "run-finished")
        for view, name, marker in VIEW_SHOTS:
            page.get_by_test_id("stRadio").get_by_text(view, exact=True).click()
            page.get_by_text(marker).first.wait_for(timeout=120_000)  # a fragment rerun shows no status widget
            page.wait_for_timeout(1500)
            shot(page, name)
        for method in COMPARED:  # baselines for Compare
            press_run(page, url, steps, method, settings=SHOT_SETTINGS)
            wait_finished(page, timeout=900_000)
        for name, marker in PAGE_SHOTS:
            page.goto(f"{url}/{name}")
            settle(page)
            page.get_by_text(marker).first.wait_for(timeout=120_000)  # the page's last element: it has finished
            page.wait_for_timeout(2500)
            shot(page, name)
        page.goto(f"{url}/query")
        settle(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Run").first.click()
        page.get_by_role("option", name=re.compile(r"\(atwu, ")).first.click()
        settle(page)
        page.get_by_text("Forget question", exact=True).click()
        settle(page)
        page.get_by_role("button", name="Answer").click()
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        page.wait_for_timeout(1500)
        shot(page, "query")
        page.get_by_label("Text to score").fill("Lorin Vask was born in Tessaly and plays the cello.")
        page.get_by_role("button", name="Score", exact=True).click()
        page.get_by_text("scorer output g").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        shot(page, "scorer")
    return shots


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    for png in take_screenshots(target):
        print(png)
