"""The real browser for the dashboard's tests: Debian's Chromium, driven by Playwright.

pytest-playwright-asyncio's fixtures (`page`, `new_context`) run on the tests' own event loop,
beside the async fixtures of the mesh; Playwright's sync API would hold a loop open for the
whole session and break every async test after it.

Playwright's own browser download cannot be reached here, so the tests launch the system's
`chromium` (`make test` installs it: `make browser`). In CI a missing browser fails the run;
elsewhere the browser tests skip with the one line that says how to get it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.support.paths import REPO_ROOT

# Every page the tests visit is photographed here (ignored by git) for a person to look at.
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    """The system Chromium, or a skip (a failure in CI) naming the command that installs it."""
    configured = os.environ.get("KOKOROPAY_CHROMIUM")
    if configured and Path(configured).exists():
        return configured
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium for the browser tests: run `make browser` (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


async def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as build/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
