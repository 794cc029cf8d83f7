"""Sites of the tests' own on 127.0.0.1: fixed answers by path, a 404 for any other.

A page is HTML text, or a file served with its content type (read when asked for, so it is
always the file as it is now). Pages may be added while the site runs.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.processes import free_port

Page = str | tuple[Path, str]  # HTML, or (a file, its content type)


class Site:
    """A threaded HTTP server on a loopback port; `stop()` ends it."""

    def __init__(self, pages: dict[str, Page] | None = None) -> None:
        self.port = free_port()
        self.pages: dict[str, Page] = dict(pages or {})
        pages_ = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                page = pages_.get(self.path.split("?")[0])
                if page is None:
                    self.send_error(404)
                    return
                if isinstance(page, str):
                    body, content_type = page.encode(), "text/html"
                else:
                    body, content_type = page[0].read_bytes(), page[1]
                self.send_response(200)
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log on the test's stderr

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
