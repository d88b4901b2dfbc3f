"""Open a page in headless Chromium (Debian's ``chromium``, driven by Playwright) and say what is wrong with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_or_skip() -> str:
    """The Chromium executable, or skip the test saying why (``.ci/run`` installs Debian's ``chromium``)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]' installs it)")
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine: .ci/run installs Debian's chromium with apt-get; it could not here")


def check_page(html: Path, screenshot: Path, sections: list[str]) -> list[str]:
    """Load ``html`` (a file) in headless Chromium; return the problems found: console errors, page errors,
    images that did not load (``naturalWidth == 0``) and missing sections (element ids). Saves a full-page
    screenshot at ``screenshot``."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_or_skip(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(html.resolve().as_uri(), wait_until="load")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
            )
            problems += [f"image not loaded: {alt}" for alt in broken]
            if page.evaluate("document.images.length") == 0:
                problems.append("no images on the page")
            problems += [f"section missing: #{s}" for s in sections if page.query_selector(f"section#{s}") is None]
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return problems
