"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by the
playwright package. The tests skip, saying what is missing, when either is absent,
unless AGENTMAIL_RUNNER_REQUIRE_BROWSER=1 (as in CI), which makes that a failure."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Read at import: the suite's environment fixture hides AGENTMAIL_* from the tests.
REQUIRED = os.environ.get("AGENTMAIL_RUNNER_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return (
            f"browser tests need {CHROMIUM}: apt-get update && apt-get install -y "
            "chromium"
        )
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need the playwright package: pip install playwright"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"AGENTMAIL_RUNNER_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (no cookies), 1280 pixels wide."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()
