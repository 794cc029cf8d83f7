"""Unit tests of the browser client (inngest_gateway/js/inngest-gateway.js), in Chromium.

tests/js/client.test.js holds the tests: the queue, batching, backoff, retries, budgets,
keepalive and forms, against the page's `fetch` replaced by scripted answers. A server on
127.0.0.1 serves that page and the client's files as the service ships them; the page runs
every test once per module, and each test here reports one of them, so a failure names it.
A rejection nobody handles, or an error thrown in a timer, fails the JS test it happened in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, BrowserContext

from inngest_gateway.browser import FILES, FOLDER
from tests.browsers import console_errors
from tests.processes import ROOT
from tests.sites import Page, Site

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TESTS = ROOT / "tests" / "js"
TEST_FILE = TESTS / "client.test.js"
NAMES = re.findall(r'^test\("((?:[^"\\]|\\.)*)"', TEST_FILE.read_text(), flags=re.MULTILINE)


def unit_pages() -> Site:
    """The test page and the client's files as the service ships them."""
    pages: dict[str, Page] = {f"/{name}": (FOLDER / name, type_) for name, type_ in FILES.items()}
    pages["/"] = (TESTS / "runner.html", "text/html")
    pages["/client.test.js"] = (TEST_FILE, "text/javascript")
    return Site(pages)


@dataclass
class Run:
    """What running client.test.js gave: name -> "ok" or the failure, and the page's errors."""

    results: dict[str, str]
    page_errors: list[str]


@pytest.fixture(scope="module")
def run(browser: Browser) -> Iterator[Run]:
    """Every test of client.test.js, run once in a fresh profile."""
    pages = unit_pages()
    context: BrowserContext = browser.new_context()
    try:
        page = context.new_page()
        errors = console_errors(page)
        page.goto(pages.url("/"))
        page.wait_for_function("window.testsReady === true", timeout=10_000)
        assert page.evaluate("window.testNames()") == NAMES
        results: dict[str, str] = page.evaluate("window.runTests()")
        # Requests to the tests' endpoints (/t/...) are the scripted fetch's, not the page's.
        yield Run(results, [e for e in errors if "/t/" not in e])
    finally:
        context.close()
        pages.stop()


def test_the_file_has_tests() -> None:
    assert len(NAMES) >= 20, NAMES
    assert len(set(NAMES)) == len(NAMES), "two tests share a name"


def test_nothing_else_went_wrong_on_the_page(run: Run) -> None:
    """No failed load, nor an error outside every test (one inside fails that test)."""
    assert run.page_errors == []


@pytest.mark.parametrize("name", NAMES)
def test_client(run: Run, name: str) -> None:
    assert run.results[name] == "ok", run.results[name]
