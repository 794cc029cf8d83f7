"""Unit tests of the browser client (service/js/inngest-gateway.js), run in Debian's Chromium.

tests/js/client.test.js holds the tests: the queue, batching, backoff, retries, budgets,
keepalive and forms, against the page's `fetch` replaced by scripted answers. A server on
127.0.0.1 serves that page and the client's files as the service ships them; the page runs
every test once per module, and each test here reports one of them, so a failure names it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext

from service.browser import FILES, FOLDER
from tests.browsers import console_errors
from tests.processes import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TESTS = ROOT / "tests" / "js"
TEST_FILE = TESTS / "client.test.js"
NAMES = re.findall(r'^test\("((?:[^"\\]|\\.)*)"', TEST_FILE.read_text(), flags=re.MULTILINE)


def _routes() -> dict[str, tuple[Path, str]]:
    routes = {f"/{name}": (FOLDER / name, mimetype) for name, mimetype in FILES.items()}
    routes["/"] = (TESTS / "runner.html", "text/html")
    routes["/client.test.js"] = (TEST_FILE, "text/javascript")
    return routes


class UnitPages:
    """The test page and the client's files on a loopback port; everything else is a 404."""

    def __init__(self) -> None:
        routes = _routes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                found = routes.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body = found[0].read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", f"{found[1]}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def results(browser: Browser) -> Iterator[dict[str, str]]:
    """Every test of client.test.js, run once in a fresh profile: name -> "ok" or the failure."""
    pages = UnitPages()
    context: BrowserContext = browser.new_context()
    try:
        page = context.new_page()
        errors = console_errors(page)
        page.goto(f"http://127.0.0.1:{pages.port}/")
        page.wait_for_function("window.testsReady === true", timeout=10_000)
        assert page.evaluate("window.testNames()") == NAMES
        outcome: dict[str, str] = page.evaluate("window.runTests()")
        # Nothing else went wrong on the page: no uncaught error, no failed load.
        assert [e for e in errors if "/t/" not in e] == [], errors
        yield outcome
    finally:
        context.close()
        pages.stop()


def test_the_file_has_tests() -> None:
    assert len(NAMES) >= 20, NAMES
    assert len(set(NAMES)) == len(NAMES), "two tests share a name"


@pytest.mark.parametrize("name", NAMES)
def test_client(results: dict[str, str], name: str) -> None:
    assert results[name] == "ok", results[name]
