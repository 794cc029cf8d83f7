"""Real-browser tests: Debian's Chromium, driven by Playwright, against the service under gunicorn.

The service runs as production does (2 gunicorn workers, Secure session cookies, security
headers, sync delivery to the stand-in Inngest), and the browser is a real one: it keeps the
Secure cookie on http://127.0.0.1 (a potentially trustworthy origin), runs the demo page's own
script under its Content-Security-Policy, and sends `Origin` and `Sec-Fetch-Site` as it would
for a person. A page served from another origin tries to post to `/api` with the user's cookies,
by form and by fetch, and is refused both ways.

Every page visited is saved as a full-page screenshot under artifacts/browser/.
Every wait is bounded; the server, the attacker's server and the browser are always stopped.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request, Response, expect

from tests.browsers import Screenshots, console_errors
from tests.conftest import SECRET_KEY
from tests.processes import Server, free_port, run_flask, start_gunicorn
from tests.standin import InngestStandIn

# Above each test's own waits: the service's start (`flask users create` 60 s, gunicorn 30 s),
# Chromium's launch (30 s) when a test is the first to need them, and the test's Playwright
# waits (5 s each), so a slow failure reports the test's own message.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

QUIET_SECONDS = 1.0  # how long the stand-in must stay silent after an attack

EMAIL = "ada@example.com"
NAME = "Ada Lovelace"
PASSWORD = "analytical-engine-1843"
SESSION_COOKIE = "session"


# -- the service, the browser, the attacker's site ---------------------------------------


@dataclass
class Service:
    """The service under gunicorn, and the user who logs in to it."""

    server: Server
    url: str


@pytest.fixture(scope="module")
def service(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn with 2 workers in sync mode, and Ada created by `flask users create`."""
    directory = tmp_path_factory.mktemp("browser")
    settings = {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest_server.default_key,
        "INNGEST_BASE_URL": inngest_server.url,
        "DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
        "CREATE_DEMO_USER": "false",
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false",
    }
    user = ("users", "create", EMAIL, "--name", NAME, "--password", PASSWORD)
    created = run_flask("wsgi", directory, settings, *user)
    assert created.returncode == 0, created.stdout + created.stderr
    server = start_gunicorn(directory, inngest_server, env=settings)
    try:
        yield Service(server, server.url)
    finally:
        server.kill()


ATTACK_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Win a prize</title></head>
<body>
<h1>Totally harmless page on {origin}</h1>
<form id="attack-form" method="post" action="{target}">
  <input type="hidden" name="name" value="app/attack.form">
  <input type="hidden" name="message" value="forged by a form on {origin}">
  <input type="hidden" name="next" value="/sent">
  <button type="submit">Claim the prize (form)</button>
</form>
<button id="fire-fetches" type="button">Claim the prize (fetch)</button>
<p>JSON fetch with credentials: <output id="json-result"></output></p>
<p>text/plain no-cors fetch: <output id="no-cors-result"></output></p>
<script>
const target = {target_json};
async function jsonFetch() {{
  try {{
    const response = await fetch(target, {{
      method: "POST",
      credentials: "include",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{name: "app/attack.json", data: {{message: "forged JSON"}}}}),
    }});
    return "answered " + response.status + ": " + await response.text();
  }} catch (error) {{
    return "blocked: " + error;
  }}
}}
async function noCorsFetch() {{
  try {{
    const response = await fetch(target, {{
      method: "POST",
      mode: "no-cors",
      credentials: "include",
      body: JSON.stringify({{name: "app/attack.text", data: {{message: "forged text"}}}}),
    }});
    return "sent, " + response.type + " answer (status " + response.status + ")";
  }} catch (error) {{
    return "blocked: " + error;
  }}
}}
document.getElementById("fire-fetches").addEventListener("click", async () => {{
  document.getElementById("json-result").textContent = await jsonFetch();
  document.getElementById("no-cors-result").textContent = await noCorsFetch();
}});
</script>
</body>
</html>
"""


class AttackerSite:
    """Another site's server on a loopback port: one page that posts to the service's /api."""

    def __init__(self, target: str) -> None:
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                origin = f"http://{self.headers.get('Host', '')}"
                body = ATTACK_PAGE.format(
                    origin=origin, target=target, target_json=json.dumps(target)
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log on the test's stderr

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> AttackerSite:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/"


@pytest.fixture(scope="module")
def attacker(service: Service) -> Iterator[AttackerSite]:
    """The attacker's page, served on 127.0.0.1 at another port (also reached as localhost)."""
    site = AttackerSite(f"{service.url}/api").start()
    try:
        yield site
    finally:
        site.stop()


# -- steps -----------------------------------------------------------------------------


def log_in(page: Page, service: Service, shot: Screenshots) -> None:
    """Log in as Ada through the login page, as a person would; lands on the demo page."""
    page.goto(f"{service.url}/auth/login")
    shot(page, "login-page")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{service.url}/")
    expect(page.locator("#current-user")).to_have_text(NAME)
    shot(page, "logged-in")


def send_html_form(page: Page, service: Service, shot: Screenshots, message: str) -> str:
    """Submit the demo page's HTML form; it lands on /sent, which shows the event id."""
    form = page.locator("#html-form")
    form.get_by_label("Message").fill(message)
    form.get_by_role("button").click()
    page.wait_for_url(f"{service.url}/sent")
    expect(page.locator("h1")).to_have_text("Sent")
    shot(page, "sent-page")
    ids = page.locator("code.sent-ids").inner_text().split(", ")
    assert len(ids) == 1 and ids[0], ids
    return ids[0]


def only_event(inngest: InngestStandIn) -> dict[str, Any]:
    """The one event the stand-in received, in the one request it received."""
    assert len(inngest.received) == 1, inngest.received
    (record,) = inngest.received
    assert record.status == 200
    assert len(record.events) == 1, record.events
    event: dict[str, Any] = record.events[0]
    return event


def assert_sent_by_ada(event: dict[str, Any], event_id: str, message: str) -> None:
    assert event["id"] == event_id
    assert event["name"] == "app/api.posted"
    assert event["data"]["message"] == message
    assert event["data"]["user"]["email"] == EMAIL
    assert event["data"]["user"]["name"] == NAME
    assert event["data"]["request"]["ip"] == "127.0.0.1"
    assert "Chrome" in event["data"]["request"]["user_agent"]


# -- the pages as a person uses them -----------------------------------------------------


def test_login_page_logs_in_and_keeps_the_secure_cookie(
    page: Page, service: Service, shot: Screenshots
) -> None:
    errors = console_errors(page)
    log_in(page, service, shot)

    (cookie,) = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["domain"] == "127.0.0.1"
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.reload()  # the cookie goes back: still logged in on the next page load
    expect(page.locator("#current-user")).to_have_text(NAME)
    expect(page.get_by_text(f"({EMAIL})")).to_be_visible()
    shot(page, "reloaded")
    assert errors == []


def test_html_form_lands_on_the_sent_page_and_reaches_inngest(
    page: Page, service: Service, shot: Screenshots, inngest: InngestStandIn
) -> None:
    errors = console_errors(page)
    log_in(page, service, shot)
    message = f"Hello from a browser form {uuid.uuid4().hex[:8]}"

    event_id = send_html_form(page, service, shot, message)

    assert_sent_by_ada(only_event(inngest), event_id, message)
    assert errors == []


def test_client_form_shows_the_result_in_place_and_reaches_inngest(
    page: Page, service: Service, shot: Screenshots, inngest: InngestStandIn
) -> None:
    errors = console_errors(page)
    log_in(page, service, shot)
    message = f"Hello from the client {uuid.uuid4().hex[:8]}"
    form = page.locator("#client-form")
    form.get_by_label("Message").fill(message)

    with page.expect_response(f"{service.url}/api") as answer:
        form.get_by_role("button").click()

    expect(form).to_have_attribute("data-inngest-state", "sent")
    expect(page.locator("#client-result")).to_have_text("Sent.")
    assert page.url == f"{service.url}/"  # the script posted; the page stayed
    shot(page, "client-result")
    assert answer.value.status == 200
    (event_id,) = answer.value.json()["ids"]
    assert_sent_by_ada(only_event(inngest), event_id, message)
    assert errors == []  # inngest-gateway.js ran under the page's CSP without a violation


def test_login_and_form_post_work_without_javascript(
    new_context: Callable[..., BrowserContext],
    service: Service,
    shot: Screenshots,
    inngest: InngestStandIn,
) -> None:
    page = new_context(java_script_enabled=False).new_page()
    log_in(page, service, shot)
    # Without the script the client form is the plain form it enhances: it posts, gets the
    # 303 and lands on the sent page, like the HTML form does below.
    form = page.locator("#client-form")
    form.get_by_role("button").click()
    page.wait_for_url(f"{service.url}/sent")
    expect(page.locator("h1")).to_have_text("Sent")
    shot(page, "client-form-without-js")
    only_event(inngest)
    inngest.reset()
    page.goto(f"{service.url}/")
    message = f"Hello without JavaScript {uuid.uuid4().hex[:8]}"

    event_id = send_html_form(page, service, shot, message)

    assert_sent_by_ada(only_event(inngest), event_id, message)


# -- another site posting with the user's cookies ----------------------------------------


@dataclass
class Traffic:
    """What the browser did with requests to the service's /api, in order.

    `answered` holds (resource type, status); `unanswered` the requests that failed before
    any answer came, with the browser's reason. A no-cors fetch is answered, then its body
    is withheld from the page (net::ERR_ABORTED); that one counts as answered.
    """

    api: str
    answered: list[tuple[str, int]] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)

    def on_response(self, response: Response) -> None:
        if response.url == self.api:
            self.answered.append((response.request.resource_type, response.status))

    def on_failed(self, request: Request) -> None:
        if request.url == self.api and request.response() is None:
            self.unanswered.append((request.resource_type, request.failure or ""))


def assert_nothing_reaches_inngest(inngest: InngestStandIn) -> None:
    """The stand-in stays silent for a while (bounded); a single request fails at once."""
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert inngest.received == [], [r.body for r in inngest.received]
        time.sleep(0.05)
    assert inngest.received == [], [r.body for r in inngest.received]


@pytest.mark.parametrize(
    ("host", "fetch_site", "cookie_sent"),
    [
        # Another port on the same host: a different origin but the same site, so the
        # browser sends the SameSite=Lax session cookie; only the Origin check stops it.
        pytest.param("127.0.0.1", "same-site", True, id="other-port-same-site"),
        # localhost is another site than 127.0.0.1: the Lax cookie stays home as well.
        pytest.param("localhost", "cross-site", False, id="localhost-cross-site"),
    ],
)
def test_another_origin_cannot_post_with_the_users_cookies(
    page: Page,
    service: Service,
    attacker: AttackerSite,
    shot: Screenshots,
    inngest: InngestStandIn,
    host: str,
    fetch_site: str,
    cookie_sent: bool,
) -> None:
    log_in(page, service, shot)
    traffic = Traffic(f"{service.url}/api")
    page.context.on("response", traffic.on_response)
    page.context.on("requestfailed", traffic.on_failed)

    page.goto(attacker.url(host))
    expect(page.locator("h1")).to_contain_text(f"http://{host}:{attacker.port}")
    shot(page, "attacker-page")

    page.locator("#fire-fetches").click()
    json_result = page.locator("#json-result")
    no_cors_result = page.locator("#no-cors-result")
    expect(no_cors_result).not_to_be_empty()
    shot(page, "attacker-fetches")
    # The JSON post needs a CORS preflight, which the service does not grant to this origin.
    assert json_result.inner_text().startswith("blocked: TypeError"), json_result.inner_text()
    assert no_cors_result.inner_text() == "sent, opaque answer (status 0)"

    with page.expect_navigation() as navigation:
        page.locator("#attack-form button").click()
    refused = navigation.value
    assert refused is not None and refused.url == f"{service.url}/api"
    assert refused.status == 403
    text = page.locator("body").inner_text()  # Chromium shows JSON as text
    envelope = json.loads(text[text.index("{") : text.rindex("}") + 1])
    shot(page, "attacker-form-refused")
    assert envelope["status"] == "error"
    assert envelope["code"] == "cross_site_request"
    assert envelope["message"] == f"Requests from http://{host}:{attacker.port} are not allowed."

    assert_nothing_reaches_inngest(inngest)

    # What the browser sent and got: the no-cors fetch and the form went out and were
    # refused; the JSON fetch never left (its preflight failed).
    assert traffic.answered == [("fetch", 403), ("document", 403)], traffic
    assert traffic.unanswered == [("fetch", "net::ERR_FAILED")], traffic
    # The form post carried Origin, Sec-Fetch-Site and (same site only) the session cookie.
    sent = refused.request.all_headers()
    assert sent["origin"] == f"http://{host}:{attacker.port}", sent
    assert sent["sec-fetch-site"] == fetch_site, sent
    assert (f"{SESSION_COOKIE}=" in sent.get("cookie", "")) is cookie_sent, sent

    # The same browser, on the service's own page, is still logged in and can post.
    page.goto(f"{service.url}/")
    expect(page.locator("#current-user")).to_have_text(NAME)
    shot(page, "back-home")
    message = f"Hello after the attack {uuid.uuid4().hex[:8]}"
    event_id = send_html_form(page, service, shot, message)
    assert_sent_by_ada(only_event(inngest), event_id, message)
