"""Debian's Chromium under Playwright, for every browser test: the browser, fresh profiles,
a page, the errors a page reports, and full-page screenshots under artifacts/browser/.

conftest.py makes the fixtures (`browser`, `new_context`, `page`, `shot`) available to every
test module; a module may define its own of the same name instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "browser"
TIMEOUT_MS = 5_000  # for every Playwright wait: actions, navigations, assertions


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; missing Chromium is a failure, never a skip."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. "
            "`make test` installs it (apt-get install chromium); or install it yourself."
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Fresh browser profiles (cookies and all), closed after the test."""
    contexts: list[BrowserContext] = []

    def factory(**options: Any) -> BrowserContext:
        context = browser.new_context(viewport={"width": 1000, "height": 700}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context

    yield factory
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_context: Callable[..., BrowserContext]) -> Page:
    """A page in a fresh profile with JavaScript on."""
    return new_context().new_page()


def console_errors(page: Page) -> list[str]:
    """Errors the page reports from now on: console errors (CSP violations among them) and
    uncaught exceptions. The service has no favicon; the browser's 404 for it is not counted.
    """
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            errors.append(f"{message.text} at {message.location['url']}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


class Screenshots:
    """Full-page screenshots named `<test>-<step>.png` under artifacts/browser/."""

    def __init__(self, test_name: str) -> None:
        self.test = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        self.taken: list[Path] = []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for stale in SCREENSHOTS.glob(f"{self.test}-[0-9][0-9]-*.png"):
            stale.unlink()  # a previous run's steps, so the directory shows this run only

    def __call__(self, page: Page, step: str) -> Path:
        path = SCREENSHOTS / f"{self.test}-{len(self.taken) + 1:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True, timeout=TIMEOUT_MS)
        self.taken.append(path)
        return path


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Screenshots:
    return Screenshots(request.node.name)
