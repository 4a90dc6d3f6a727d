"""Dashboard test parts: a migrated database and tokens (as the fleet tests have them), a real headless
Chromium driven by Playwright, and screenshots kept under test-artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet.conftest import engine, token  # noqa: F401  (fixtures shared with the fleet tests)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: tools/bootstrap-system installs it
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session (Playwright cannot download browsers here: Debian's)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run tools/bootstrap-system (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def browse(chromium, fleet_service):
    """Factory: a fresh browser context (desktop, or `phone=True`); closed before the fleet service
    stops, so no live stream holds the server open."""
    contexts = []

    def make(phone: bool = False):
        context = chromium.new_context(**(PHONE if phone else {"viewport": {"width": 1280, "height": 900}}))
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def shoot(page, name: str) -> Path:
    """A full-page screenshot kept as a test artifact (a live page once its stream is on)."""
    if page.locator("body[data-stream]").count():
        page.wait_for_selector('body[data-live="on"]')
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
