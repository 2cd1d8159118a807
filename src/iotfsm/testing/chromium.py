"""Headless Chromium for browser tests and the console benchmark, from the system package.

Playwright drives Debian's `chromium` through `executable_path`; nothing is downloaded at run
time (CI reaches package registries only, so `playwright install` is never part of a run).
Playwright rather than Selenium: its locators and `expect` wait on conditions in the page
(text, attributes, classes) with one timeout, which is what a live console test asserts on, and
it talks to the browser over a pipe with no separate driver binary to keep in step. Debian's
Chromium tracks stable Chrome, the channel Playwright supports besides its own builds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

NAMES = ("chromium", "chromium-browser", "google-chrome")
ENV = "IOTFSM_CHROMIUM"
"""An explicit browser binary, for machines where Chromium lives off PATH."""
INSTALL_HINT = "install it (Debian/Ubuntu: `apt-get install chromium`) or set IOTFSM_CHROMIUM"


class ChromiumNotFoundError(RuntimeError):
    """No Chromium binary: browser tests fail with this message instead of skipping."""


def find_chromium() -> str:
    """The browser binary: `$IOTFSM_CHROMIUM`, else the first of `NAMES` on PATH."""
    explicit = os.environ.get(ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ChromiumNotFoundError(f"{ENV}={explicit!r} is not an executable file")
        return explicit
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumNotFoundError(
        f"no Chromium found on PATH (looked for {', '.join(NAMES)}); {INSTALL_HINT}"
    )


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """A started headless browser, closed (with its Playwright driver) on exit."""
    from playwright.sync_api import sync_playwright

    binary = find_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True)
        try:
            yield browser
        finally:
            browser.close()
