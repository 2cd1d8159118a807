"""The browser for the console tests: one headless Chromium for the whole run, and a folder
for screenshots.

Registered in conftest.py so every test_console_* module shares one browser (a session fixture
imported into two modules would be two). A missing Chromium fails the test with the install
command: a skipped browser test looks like a passing one in a summary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iotfsm.testing.chromium import ChromiumNotFoundError, find_chromium, headless_chromium

if TYPE_CHECKING:  # Playwright loads only when a test asks for the browser
    from playwright.sync_api import Browser, Page

WAIT_MS = 15_000
"""How long a page action or an `expect` waits for its condition: generous, since a loaded CI
machine can take seconds to step a platform, and a condition that holds ends the wait at once."""

ARTIFACTS_ENV = "IOTFSM_TEST_ARTIFACTS"
"""Where screenshots go; default `test-artifacts/` at the checkout's top (ignored by git)."""


def _missing_browser() -> str | None:
    try:
        find_chromium()
    except ChromiumNotFoundError as error:
        return str(error)
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    missing = _missing_browser()
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    with headless_chromium() as browser:
        yield browser


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / "test-artifacts"
    path = Path(os.environ.get(ARTIFACTS_ENV) or default) / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(chromium: Browser, artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; a screenshot of where it ended is always kept, so a
    failing run shows what the page looked like."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            tab.screenshot(path=str(artifacts_dir / f"{name}-end.png"), full_page=True)
        finally:
            context.close()
