"""The browser client end to end: Debian's Chromium, the service under gunicorn, the stand-in.

The service runs as production does (2 gunicorn workers, outbox mode with its embedded
deliverer, Secure session cookies, security headers) on an SQLite outbox the test can lock,
and the page is the demo page, which loads `inngest-gateway.js` through its script tag. Other
sites are servers of the test's own on other loopback ports: one the service trusts
(INNGEST_GATEWAY_TRUSTED_ORIGINS), one it does not, and one a page navigates away to.

Every wait is bounded; the servers and the browser are always stopped.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request, Route, expect

from inngest_gateway.events import EVENT_ID_NAMESPACE
from tests.browsers import Screenshots, console_errors
from tests.conftest import SECRET_KEY
from tests.processes import Server, run_flask, start_gunicorn
from tests.sites import Site
from tests.standin import InngestStandIn
from tests.test_browser import EMAIL, NAME, PASSWORD, Traffic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVENT = "app/api.posted"  # the service's default allowed and default event name
DELIVERED_WITHIN = 20.0  # seconds for the embedded deliverer to hand an event to Inngest
QUIET_SECONDS = 1.5  # how long nothing more may arrive after what was expected
BOB, BOB_EMAIL = "Bob", "bob@example.com"


@dataclass
class Service:
    """The service under gunicorn, its outbox file, and the sites around it."""

    server: Server
    url: str
    outbox: Path
    trusted: Site  # listed in INNGEST_GATEWAY_TRUSTED_ORIGINS
    other: Site  # not listed: another origin on the same host (the same site)


@pytest.fixture(scope="module")
def service(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn with 2 workers in outbox mode, Ada created by `flask users create`."""
    directory = tmp_path_factory.mktemp("client")
    trusted, other = Site(), Site()
    outbox = directory / "outbox.db"
    settings = {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest_server.default_key,
        "INNGEST_BASE_URL": inngest_server.url,
        "DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
        "CREATE_DEMO_USER": "false",
        "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
        "INNGEST_GATEWAY_OUTBOX_DATABASE_URL": f"sqlite:///{outbox}",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "true",
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
        "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "50ms",
        "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "500ms",
        # A commit waiting for a locked outbox gives up quickly: the post gets its 503.
        "INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT": "0.3s",
        "INNGEST_GATEWAY_TRUSTED_ORIGINS": trusted.url("").rstrip("/"),
    }
    for email, name in ((EMAIL, NAME), (BOB_EMAIL, BOB)):
        user = ("users", "create", email, "--name", name, "--password", PASSWORD)
        created = run_flask("wsgi", directory, settings, *user)
        assert created.returncode == 0, created.stdout + created.stderr
    server = start_gunicorn(directory, inngest_server, env=settings)
    try:
        yield Service(server, server.url, outbox, trusted, other)
    finally:
        server.kill()
        trusted.stop()
        other.stop()


# -- steps -----------------------------------------------------------------------------


def log_in(
    page: Page, service: Service, *, script: bool = True, email: str = EMAIL, name: str = NAME
) -> None:
    """Log in (as Ada) through the login page; lands on the demo page, the client loaded."""
    page.goto(f"{service.url}/auth/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{service.url}/")
    expect(page.locator("#current-user")).to_have_text(name)
    if script:
        until(page, "typeof window.InngestGateway === 'object'")


def until(page: Page, expression: str, timeout: float = 5.0) -> None:
    """Poll a JavaScript expression until true (Playwright's wait_for_function evaluates
    strings with eval, which the service's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout}s: {expression}"
        time.sleep(0.05)


def wait_for_events(inngest: InngestStandIn, count: int) -> list[dict[str, Any]]:
    """The events Inngest accepted once `count` have arrived; then nothing more may come."""
    deadline = time.monotonic() + DELIVERED_WITHIN
    while len(inngest.accepted) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(inngest.accepted) >= count, f"{len(inngest.accepted)} of {count} events arrived"
    time.sleep(QUIET_SECONDS)
    accepted = list(inngest.accepted)
    assert len(accepted) == count, [event["name"] for event in accepted]
    return accepted


def wait_for_distinct(inngest: InngestStandIn, count: int) -> list[dict[str, Any]]:
    """The events Inngest got, counted as Inngest counts them: by id, first copies in order.

    Where the client cannot know whether the service got a request (a page that goes away
    loses the answer with it; another tab's localStorage shows a sent event a moment late),
    it sends the event again, with the same id, and Inngest runs its functions once. So
    copies may arrive, each the same event (but for `data.request`, the post's own); never
    more ids than events.
    """
    deadline = time.monotonic() + DELIVERED_WITHIN
    while len({e["id"] for e in inngest.accepted}) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(QUIET_SECONDS)
    first: dict[str, dict[str, Any]] = {}

    def sent(event: dict[str, Any]) -> dict[str, Any]:  # all but the post's own request data
        return {**event, "data": {k: v for k, v in event["data"].items() if k != "request"}}

    for event in list(inngest.accepted):
        kept = first.setdefault(event["id"], event)
        assert sent(kept) == sent(event), "two different events share an id"
    assert len(first) == count, [e["data"]["message"] for e in first.values()]
    return list(first.values())


def expected_id(event: dict[str, Any], client_id: str) -> str:
    """The event id the service derives from a logged-in poster's client id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"user:{event['data']['user']['id']}\n{client_id}"))


def posted_bodies(page: Page, url: str) -> list[Any]:
    """Starts recording the JSON bodies the page posts to `url`; the list fills as it goes."""
    bodies: list[Any] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.url == url:
            bodies.append(json.loads(request.post_data or "null"))

    page.context.on("request", on_request)
    return bodies


# -- retries ---------------------------------------------------------------------------


def test_two_503s_then_202_deliver_one_event_with_the_id_the_page_made(
    page: Page, service: Service, inngest: InngestStandIn, shot: Screenshots
) -> None:
    """A busy outbox (its SQLite file locked, as by a long write) answers 503 with
    Retry-After; the client waits and sends the same event again until it is stored."""
    errors = console_errors(page)
    log_in(page, service)
    api = f"{service.url}/api"
    bodies = posted_bodies(page, api)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url == api else None)
    lock = sqlite3.connect(service.outbox, isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        page.evaluate(
            "() => { window.sent = InngestGateway.send('app/api.posted',"
            " {message: 'through a deploy'}); }"
        )
        for _ in range(2):
            with page.expect_response(lambda r: r.url == api, timeout=10_000) as answer:
                pass
            assert answer.value.status == 503, answer.value.text()
            assert answer.value.json()["code"] == "outbox_unavailable"
            assert answer.value.headers["retry-after"] == "5"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    started = time.monotonic()
    ids = page.evaluate("window.sent")
    waited = time.monotonic() - started
    shot(page, "accepted-after-retries")

    assert statuses == [503, 503, 202]
    assert waited > 3.5, f"retried {waited:.1f}s after the second 503 (Retry-After: 5)"
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2], bodies
    client_id = bodies[0]["id"]
    uuid.UUID(client_id)  # made by crypto.randomUUID() in the page
    (event,) = wait_for_events(inngest, 1)
    assert event["id"] == expected_id(event, client_id)
    assert ids == [event["id"]]
    assert event["data"]["message"] == "through a deploy"
    assert event["data"]["user"]["email"] == EMAIL
    assert page.evaluate("InngestGateway.createClient().pending()") == 0
    assert errors == [e for e in errors if "503" in e]  # only the browser's notes of the 503s


# -- offline, a reload, back online -------------------------------------------------------


def test_offline_sends_survive_a_reload_and_arrive_once_in_order_when_online(
    new_context: Callable[..., BrowserContext],
    service: Service,
    inngest: InngestStandIn,
    shot: Screenshots,
) -> None:
    context = new_context()
    page = context.new_page()
    errors = console_errors(page)
    log_in(page, service)
    # What the browser would have cached (or a service worker kept) to show the page offline.
    cached = {
        url: page.request.get(url)
        for url in (f"{service.url}/", f"{service.url}/inngest-gateway.js")
        + (f"{service.url}/static/style.css",)
    }
    for response in cached.values():
        assert response.ok, response.url

    def from_cache(route: Route) -> None:
        response = cached.get(route.request.url)
        if route.request.method == "GET" and response is not None:
            route.fulfill(response=response)
        else:
            route.continue_()

    context.set_offline(True)
    assert page.evaluate("navigator.onLine") is False
    page.evaluate(
        """() => { for (const n of [1, 2, 3]) InngestGateway.send('app/api.posted',
                   {message: 'offline ' + n}).catch(() => {}); }"""
    )
    until(page, "InngestGateway.createClient().pending() === 3")
    shot(page, "three-queued-offline")

    context.route("**/*", from_cache)
    page.reload()
    expect(page.locator("#current-user")).to_have_text(NAME)
    until(page, "typeof window.InngestGateway === 'object'")
    assert page.evaluate("navigator.onLine") is False
    assert page.evaluate("InngestGateway.createClient().pending()") == 3
    shot(page, "reloaded-offline")
    time.sleep(0.5)
    assert inngest.received == []

    context.set_offline(False)
    until(page, "InngestGateway.createClient().pending() === 0", timeout=10)
    events = wait_for_events(inngest, 3)
    shot(page, "online-sent")

    assert [e["data"]["message"] for e in events] == ["offline 1", "offline 2", "offline 3"]
    assert len({e["id"] for e in events}) == 3
    assert all(e["data"]["user"]["email"] == EMAIL for e in events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)  # when sent, offline
    assert all(e["ts"] < e["data"]["request"]["received_at"] for e in events)
    assert [e for e in errors if "ERR_INTERNET_DISCONNECTED" not in e] == []


def test_a_send_kept_for_days_goes_with_its_ts_and_one_past_api_ts_max_age_is_rejected(
    page: Page, service: Service, inngest: InngestStandIn
) -> None:
    """The client keeps an event's `ts` from `send` however long it is queued. Within
    INNGEST_GATEWAY_API_TS_MAX_AGE (7d by default) it is sent as it was; past it the service
    answers 422,
    and the client rejects that send for good instead of retrying it."""
    log_in(page, service)
    day = 86400 * 1000
    outcome = page.evaluate(
        """async (day) => {
             const at = Date.now();
             const event = (message, age) =>
               ({name: 'app/api.posted', data: {message}, ts: at - age});
             const ids = await InngestGateway.send([event('six days', 6 * day)]);
             const refused = await InngestGateway.send([event('eight days', 8 * day)]).then(
               () => null, (e) => ({status: e.status, code: e.code, errors: e.errors}));
             return {at, ids, refused, pending: InngestGateway.createClient().pending()};
           }""",
        day,
    )

    refused = outcome["refused"]
    assert refused is not None, outcome
    assert (refused["status"], refused["code"], list(refused["errors"])) == (
        422,
        "validation_failed",
        ["ts"],
    )
    assert outcome["pending"] == 0
    (event,) = wait_for_events(inngest, 1)
    assert [event["id"]] == outcome["ids"]
    assert event["ts"] == outcome["at"] - 6 * day
    assert event["data"]["message"] == "six days"


# -- leaving the page --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["another site", "about:blank"])
def test_a_click_that_navigates_away_at_once_still_delivers_its_event(
    page: Page, service: Service, inngest: InngestStandIn, shot: Screenshots, where: str
) -> None:
    """The page sends and navigates in the same click handler: the browser unloads it before
    the client's own loop would run; its pagehide handler sends with keepalive."""
    service.other.pages["/elsewhere"] = "<!doctype html><title>Elsewhere</title><h1>Elsewhere</h1>"
    elsewhere = service.other.url("/elsewhere") if where == "another site" else where
    log_in(page, service)
    page.evaluate(
        """(elsewhere) => {
             const button = document.createElement('button');
             button.id = 'leave'; button.textContent = 'Leave';
             button.addEventListener('click', () => {
               InngestGateway.send('app/api.posted', {message: 'clicked on the way out'});
               location.href = elsewhere;
             });
             document.querySelector('main').append(button);
           }""",
        elsewhere,
    )

    page.locator("#leave").click()
    page.wait_for_url(elsewhere)
    shot(page, "elsewhere")

    (event,) = wait_for_distinct(inngest, 1)
    assert event["data"]["message"] == "clicked on the way out"
    assert event["data"]["user"]["email"] == EMAIL


def test_a_send_from_a_pagehide_listener_is_delivered(
    page: Page, service: Service, inngest: InngestStandIn
) -> None:
    """ "Time on page" analytics: the page sends while it is being unloaded."""
    log_in(page, service)
    page.evaluate(
        """() => addEventListener('pagehide', () =>
             InngestGateway.send('app/api.posted', {message: 'left the page'}))"""
    )

    page.goto("about:blank")

    (event,) = wait_for_distinct(inngest, 1)
    assert event["data"]["message"] == "left the page"
    assert event["data"]["user"]["email"] == EMAIL


# -- tabs ------------------------------------------------------------------------------


def test_two_tabs_share_one_queue_and_send_each_event_under_one_id(
    new_context: Callable[..., BrowserContext],
    service: Service,
    inngest: InngestStandIn,
    shot: Screenshots,
) -> None:
    """Both tabs queue while the service is out of reach; when it is back, both flush at once.
    Web Locks let one tab send at a time; each event goes under its one id, and each tab's
    promises resolve to their events' ids, whichever tab sent them (the storage event)."""
    context = new_context()
    first = context.new_page()
    log_in(first, service)
    second = context.new_page()
    second.goto(f"{service.url}/")
    until(second, "typeof window.InngestGateway === 'object'")
    api = f"{service.url}/api"
    context.route(api, lambda route: route.abort())
    for tab, name in ((first, "first"), (second, "second")):
        tab.evaluate(
            """(name) => { window.sent = [];
                 for (const n of [1, 2, 3]) InngestGateway.send('app/api.posted',
                   {message: name + ' ' + n}).then((ids) => window.sent.push(...ids));
               }""",
            name,
        )
    until(first, "InngestGateway.createClient().pending() === 6")
    context.unroute(api)

    first.evaluate("() => { InngestGateway.flush(); }")
    second.evaluate("() => { InngestGateway.flush(); }")
    until(first, "window.sent.length === 3", timeout=10)
    until(second, "window.sent.length === 3", timeout=10)
    events = wait_for_distinct(inngest, 6)
    shot(second, "second-tab")

    assert sorted(e["data"]["message"] for e in events) == sorted(
        f"{tab} {n}" for tab in ("first", "second") for n in (1, 2, 3)
    )
    by_message = {e["data"]["message"]: e["id"] for e in events}
    assert first.evaluate("window.sent") == [by_message[f"first {n}"] for n in (1, 2, 3)]
    assert second.evaluate("window.sent") == [by_message[f"second {n}"] for n in (1, 2, 3)]
    assert first.evaluate("InngestGateway.createClient().pending()") == 0


# -- a shared computer ------------------------------------------------------------------


def test_a_queue_left_by_one_user_is_not_sent_as_the_next_who_logs_in(
    new_context: Callable[..., BrowserContext],
    service: Service,
    inngest: InngestStandIn,
    shot: Screenshots,
) -> None:
    """Ada's send cannot reach the service; she logs out, Bob logs in on the same browser.
    Her queued event carries her poster tag: the service refuses it as Bob's (409), the
    client drops it and tells the page, and nothing reaches Inngest."""
    context = new_context()
    page = context.new_page()
    page.add_init_script(
        "window.rejected = []; addEventListener('inngest-gateway:rejected', (e) =>"
        " window.rejected.push([e.detail.code, e.detail.events.map((v) => v.data.message)]));"
    )
    log_in(page, service)
    api = f"{service.url}/api"
    context.route(api, lambda route: route.abort())  # the service is out of reach for posts
    page.evaluate(
        "() => { InngestGateway.send('app/api.posted', {message: 'Ada, on a shared computer'},"
        " {budget: 500}).catch(() => {}); }"
    )
    until(page, "InngestGateway.createClient().pending() === 1")
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("#current-user")).to_have_text("Not logged in")
    log_in(page, service, email=BOB_EMAIL, name=BOB)
    assert page.evaluate("InngestGateway.createClient().pending()") == 1
    shot(page, "bob-with-adas-queue")

    context.unroute(api)
    with page.expect_response(api) as answer:
        page.reload()
    until(page, "InngestGateway.createClient().pending() === 0")
    shot(page, "refused")

    assert answer.value.status == 409
    assert answer.value.json()["code"] == "poster_changed"
    assert page.evaluate("window.rejected") == [["poster_changed", ["Ada, on a shared computer"]]]
    time.sleep(QUIET_SECONDS)
    assert inngest.received == []
    # Bob's own sends go as Bob's.
    ids = page.evaluate("() => InngestGateway.send('app/api.posted', {message: 'Bob'})")
    (event,) = wait_for_events(inngest, 1)
    assert ids == [event["id"]] and event["data"]["user"]["email"] == BOB_EMAIL


# -- other origins ----------------------------------------------------------------------

OTHER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another site</title>
<script src="{service}/inngest-gateway.js" data-endpoint="{service}/api"
        data-budget="2000"></script></head>
<body><h1>Another site</h1>
<form id="form" method="post" action="{service}/api" data-inngest-event="app/api.posted">
  <input name="message" value="from another site's form"><button>Send</button>
</form>
</body></html>"""


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["same-site", "cross-site"])
def test_a_page_on_another_origin_cannot_post_with_the_users_cookies(
    page: Page, service: Service, inngest: InngestStandIn, shot: Screenshots, host: str
) -> None:
    """The script loads anywhere, but the service grants CORS to trusted origins only: the
    browser sends the preflight, gets no grant, and never sends the post."""
    service.other.pages["/"] = OTHER_PAGE.format(service=service.url)
    log_in(page, service)
    traffic = Traffic(f"{service.url}/api")
    page.context.on("response", traffic.on_response)
    page.context.on("requestfailed", traffic.on_failed)

    page.goto(service.other.url("/", host))
    expect(page.locator("h1")).to_have_text("Another site")
    error = page.evaluate(
        """() => InngestGateway.send('app/api.posted', {message: 'forged'}, {budget: 1500})
                 .then(ids => ({ids}), e => ({code: e.code, status: e.status, queued: e.queued}))"""
    )
    page.locator("#form button").click()
    expect(page.locator("#form")).to_have_attribute("data-inngest-state", "queued", timeout=10_000)
    shot(page, "refused")

    assert error == {"code": "timeout", "status": 0, "queued": True}
    # Every post (the client retried until its budget) failed at its CORS preflight: the
    # browser never sent one, and never let the page see an answer.
    assert traffic.answered == [], traffic
    assert len(traffic.unanswered) >= 2, traffic
    assert {failure for _, failure in traffic.unanswered} == {"net::ERR_FAILED"}, traffic
    assert page.url.startswith(service.other.url("/", host))  # the form did not navigate
    time.sleep(QUIET_SECONDS)
    assert inngest.received == []
    # The events wait in the other site's own storage, never the service's.
    assert page.evaluate("InngestGateway.createClient().pending()") == 2


TRUSTED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A trusted site</title></head>
<body><h1>A trusted site</h1>
<script type="module">
import {{ createClient }} from "{service}/inngest-gateway.mjs";
window.gateway = createClient({{ endpoint: "{service}/api" }});
</script>
</body></html>"""


def test_a_trusted_origin_posts_with_the_users_cookies_through_the_module(
    page: Page, service: Service, inngest: InngestStandIn, shot: Screenshots
) -> None:
    service.trusted.pages["/"] = TRUSTED_PAGE.format(service=service.url)
    errors = console_errors(page)
    log_in(page, service)

    page.goto(service.trusted.url("/"))
    until(page, "typeof window.gateway === 'object'")
    ids = page.evaluate(
        "() => window.gateway.send('app/api.posted', {message: 'from a trusted site'})"
    )
    shot(page, "trusted")

    (event,) = wait_for_events(inngest, 1)
    assert ids == [event["id"]]
    assert event["data"]["message"] == "from a trusted site"
    assert event["data"]["user"]["email"] == EMAIL  # the cookie went, with CORS credentials
    assert errors == []


# -- the form, enhanced and plain ---------------------------------------------------------


def test_the_demo_form_posts_in_place_and_shows_field_errors(
    page: Page, service: Service, inngest: InngestStandIn, shot: Screenshots
) -> None:
    errors = console_errors(page)
    log_in(page, service)
    form = page.locator("#client-form")
    form.get_by_label("Message").fill("Hello from the enhanced form")
    with page.expect_response(f"{service.url}/api") as answer:
        form.get_by_role("button").click()
    expect(form).to_have_attribute("data-inngest-state", "sent")
    expect(page.locator("#client-result")).to_have_text("Sent.")
    shot(page, "sent-in-place")
    assert page.url == f"{service.url}/"
    (event,) = wait_for_events(inngest, 1)
    assert answer.value.json()["ids"] == [event["id"]]
    assert event["data"] == {
        "message": "Hello from the enhanced form",
        "user": event["data"]["user"],
        "request": event["data"]["request"],
    }

    form.get_by_label("Event name").fill("inngest/forged")
    form.get_by_role("button").click()
    expect(form).to_have_attribute("data-inngest-state", "error")
    expect(page.locator("#client-result")).to_have_text(
        "This event name may not be sent from a browser. "
        "name: Event name 'inngest/forged' is not allowed."
    )
    expect(form.get_by_label("Event name")).to_have_attribute("aria-invalid", "true")
    shot(page, "refused-in-place")
    assert [e for e in errors if "403" not in e] == []


def test_the_same_form_without_javascript_posts_and_gets_the_303_page(
    new_context: Callable[..., BrowserContext],
    service: Service,
    inngest: InngestStandIn,
    shot: Screenshots,
) -> None:
    page = new_context(java_script_enabled=False).new_page()
    log_in(page, service, script=False)
    form = page.locator("#client-form")
    form.get_by_label("Message").fill("Hello without JavaScript")
    with page.expect_navigation() as navigation:
        form.get_by_role("button").click()
    page.wait_for_url(f"{service.url}/sent")
    shot(page, "sent-page")

    redirect = navigation.value.request.redirected_from
    assert redirect is not None and redirect.url == f"{service.url}/api"
    assert redirect.response() is not None and redirect.response().status == 303
    (event,) = wait_for_events(inngest, 1)
    assert page.locator("code.sent-ids").inner_text() == event["id"]
    assert event["data"]["message"] == "Hello without JavaScript"
