"""POST /api end to end: what the browser gets back and exactly what reaches Inngest."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from inngest_gateway.errors import ValidationFailed
from inngest_gateway.events import build_events, scoped_id
from inngest_gateway.poster import ANONYMOUS_SCOPE_KEY
from inngest_gateway.settings import load_settings
from inngest_gateway.state import gateway_state
from tests.conftest import AuthActions, assert_envelope
from tests.standin import SEED, InngestStandIn

UA = "Mozilla/5.0 (test)"


def only_event(inngest: InngestStandIn) -> dict[str, Any]:
    assert len(inngest.received) == 1
    (event,) = inngest.received[0].events
    return event


def anonymous_id(client: FlaskClient, key: str) -> str:
    """The event id a client key gets from this anonymous client (its scope is in its cookie)."""
    with client.session_transaction() as session:
        return scoped_id(f"anonymous:{session[ANONYMOUS_SCOPE_KEY]}", key)


def test_original_route_body_is_sent_anonymously(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    before = int(time.time() * 1000)
    response = client.post(
        "/api",
        json={"data": "example data"},
        headers={"User-Agent": UA, "X-Request-ID": "req-123"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    (event_id,) = body["ids"]
    assert uuid.UUID(event_id)
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # the server's, not the client's

    event = only_event(inngest)
    assert set(event) == {"name", "data", "id", "ts"}
    assert event["name"] == "app/api.posted"
    assert event["id"] == event_id
    assert before <= event["ts"] <= int(time.time() * 1000)
    assert event["data"] == {
        "value": "example data",
        "user": None,
        "request": {
            "id": request_id,
            "client_request_id": "req-123",
            "received_at": event["ts"],
            "ip": "203.0.113.9",
            "user_agent": UA,
        },
    }
    assert inngest.accepted_ids() == [event_id]


def test_logged_in_post_carries_the_session_user(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    assert auth.login().status_code == 200

    response = client.post("/api", json={"name": "app/signup.clicked", "data": {"plan": "pro"}})

    assert response.status_code == 200
    event = only_event(inngest)
    assert event["name"] == "app/signup.clicked"
    assert event["data"]["plan"] == "pro"
    assert event["data"]["user"] == {
        "id": user["id"],
        "email": "ada@example.com",
        "name": "Ada Lovelace",
    }


def test_client_id_is_scoped_and_ts_and_v_pass_through(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    an_hour_ago = int(time.time() * 1000) - 3600 * 1000
    sent = {
        "name": "app/x",
        "data": {"a": [1, 2.5, None, True]},
        "id": "order-42",
        "ts": an_hour_ago,
        "v": "2024-01",
    }

    response = client.post("/api", json=sent)

    assert response.get_json() == {"status": "ok", "ids": [anonymous_id(client, "order-42")]}
    event = only_event(inngest)
    assert {k: event[k] for k in ("name", "id", "ts", "v")} == {
        "name": "app/x",
        "id": anonymous_id(client, "order-42"),
        "ts": an_hour_ago,
        "v": "2024-01",
    }
    assert event["data"]["a"] == [1, 2.5, None, True]


def test_idempotency_key_sets_the_id_of_a_single_event(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = client.post("/api", json={"data": {}}, headers={"Idempotency-Key": "click-7"})

    assert response.get_json()["ids"] == [anonymous_id(client, "click-7")]
    assert only_event(inngest)["id"] == anonymous_id(client, "click-7")


def test_batch_goes_upstream_in_one_request(client: FlaskClient, inngest: InngestStandIn) -> None:
    batch = [{"name": "app/a", "data": {"n": i}} for i in range(3)] + [
        {"name": "app/b", "id": "fixed"}
    ]

    response = client.post("/api", json=batch, headers={"Idempotency-Key": "k"})

    assert response.status_code == 200
    keys = ["k:0", "k:1", "k:2", "fixed"]
    assert response.get_json()["ids"] == [anonymous_id(client, key) for key in keys]
    assert len(inngest.received) == 1
    events = inngest.received[0].events
    assert [e["name"] for e in events] == ["app/a", "app/a", "app/a", "app/b"]
    assert [e["data"].get("n") for e in events] == [0, 1, 2, None]
    assert len({e["data"]["request"]["id"] for e in events}) == 1


def test_upstream_request_follows_the_contract(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    client.post("/api", json={"data": {"text": "héllo ✓"}})

    (received,) = inngest.received
    assert received.key == inngest.event_key
    assert received.headers["content-type"] == "application/json"
    assert re.fullmatch(r"inngest-gateway:v\d+\.\d+\.\d+", received.headers["x-inngest-sdk"])
    assert SEED.match(received.seed or "")
    assert "x-inngest-env" not in received.headers
    assert isinstance(json.loads(received.body), list)
    assert "héllo ✓".encode() in received.body  # UTF-8, not escapes


def test_branch_environment_header(make_app: Any, inngest: InngestStandIn) -> None:
    client = make_app(INNGEST_ENV="feature-x").test_client()

    assert client.post("/api", json={}).status_code == 200
    assert inngest.received[0].headers["x-inngest-env"] == "feature-x"


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_form_post_redirects_to_next(
    client: FlaskClient, inngest: InngestStandIn, content_type: str
) -> None:
    response = client.post(
        "/api",
        data={"name": "app/form.sent", "message": "hi", "tag": ["a", "b"], "next": "/thanks?x=1"},
        content_type=content_type,
        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/thanks?x=1"
    event = only_event(inngest)
    assert event["name"] == "app/form.sent"
    assert {k: v for k, v in event["data"].items() if k not in ("user", "request")} == {
        "message": "hi",
        "tag": ["a", "b"],
    }


@pytest.mark.parametrize(
    ("next_url", "referrer", "location"),
    [
        ("https://evil.example/", None, "/sent"),
        ("//evil.example/x", None, "/sent"),
        ("/\\evil.example", None, "/sent"),
        (None, "http://localhost/pricing?plan=pro", "/pricing?plan=pro"),
        (None, "https://evil.example/page", "/sent"),
        ("", None, "/sent"),
    ],
)
def test_form_redirect_stays_on_this_site(
    client: FlaskClient,
    inngest: InngestStandIn,
    next_url: str | None,
    referrer: str | None,
    location: str,
) -> None:
    data = {"message": "hi"}
    if next_url is not None:
        data["next"] = next_url
    headers = {"Referer": referrer} if referrer else {}

    response = client.post("/api", data=data, headers=headers)

    assert response.status_code == 303
    assert response.headers["Location"] == location
    assert len(inngest.accepted) == 1


def test_sent_page_shows_the_ids(client: FlaskClient, inngest: InngestStandIn) -> None:
    response = client.post("/api", data={"message": "hi"}, follow_redirects=True)

    assert response.status_code == 200
    assert response.request.path == "/sent"
    assert only_event(inngest)["id"] in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "application/json, text/plain, */*"},
        {"X-Requested-With": "XMLHttpRequest"},
    ],
)
def test_form_post_that_asks_for_json_gets_json(
    client: FlaskClient, inngest: InngestStandIn, headers: dict[str, str]
) -> None:
    response = client.post("/api", data={"name": "app/x", "next": "/elsewhere"}, headers=headers)

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "ids": [only_event(inngest)["id"]]}


def test_every_answer_carries_a_request_id(client: FlaskClient, inngest: InngestStandIn) -> None:
    first = client.post("/api", json={})
    second = client.post("/api", json={}, headers={"X-Request-ID": "bad id with spaces"})

    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]
    assert [r.events[0]["data"]["request"]["id"] for r in inngest.received] == ids
    assert [r.events[0]["data"]["request"]["client_request_id"] for r in inngest.received] == [
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-123", "req-123"),
        ("a.b:c@d/e+f=g_h-i", "a.b:c@d/e+f=g_h-i"),
        ("x" * 128, "x" * 128),
        ("x" * 129, None),
        ("two words", None),
        ('x"}, "evil', None),
        ("caf\u00e9", None),
        ("back\\slash", None),
    ],
)
def test_the_request_id_is_the_servers_and_the_clients_is_kept_aside(
    client: FlaskClient, inngest: InngestStandIn, sent: str, kept: str | None
) -> None:
    first = client.post("/api", json={}, headers={"X-Request-ID": sent})
    second = client.post("/api", json={}, headers={"X-Request-ID": sent})
    refused = client.post("/api", json={"ts": 1}, headers={"X-Request-ID": sent})

    ids = [r.headers["X-Request-ID"] for r in (first, second, refused)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 3
    assert refused.status_code == 422
    assert refused.get_json()["request_id"] == ids[2]
    requests = [r.events[0]["data"]["request"] for r in inngest.received]
    assert [r["id"] for r in requests] == ids[:2]
    assert [r["client_request_id"] for r in requests] == [kept, kept]


@pytest.mark.parametrize("key", ["user", "request", "_inngest"])
@pytest.mark.parametrize("batch", [False, True])
def test_keys_the_server_and_inngest_own_are_refused(
    client: FlaskClient, inngest: InngestStandIn, key: str, batch: bool
) -> None:
    item = {"name": "app/x", "data": {"plan": "pro", key: {"id": "forged"}}}

    response = client.post("/api", json=[{}, item] if batch else item)

    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "validation_failed"
    errors = body["errors"]["1"] if batch else body["errors"]
    reason = "reserved for Inngest" if key == "_inngest" else "set by the server"
    assert errors == {"data": {key: [f"This key is {reason}."]}}
    assert inngest.received == []


# -- ts: only within a window around the server's clock --------------------------------------

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
RECEIVED = 1_780_000_000_000  # a fixed receive time, for the edges


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize(
    "offset",
    [6 * MINUTE_MS, 365 * DAY_MS, -(7 * DAY_MS + HOUR_MS), -30 * 365 * DAY_MS],
    ids=["6m-ahead", "a-year-ahead", "7d-and-1h-old", "30-years-old"],
)
def test_a_ts_outside_the_window_around_the_servers_clock_is_422(
    client: FlaskClient, inngest: InngestStandIn, offset: int
) -> None:
    """Inngest starts the runs at a future ts: a browser must not schedule them (or backdate)."""
    single = client.post("/api", json={"name": "app/x", "ts": now_ms() + offset})
    batch = client.post(
        "/api", json=[{"name": "app/ok"}, {"name": "app/x", "ts": now_ms() + offset}]
    )

    envelope = assert_envelope(single, 422, "validation_failed")
    (message,) = envelope["errors"]["ts"]
    assert "7d" in message and "5m" in message
    assert set(envelope["errors"]) == {"ts"}
    assert assert_envelope(batch, 422, "validation_failed")["errors"] == {"1": {"ts": [message]}}
    assert inngest.received == []


def test_a_ts_within_the_window_is_accepted_and_kept(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app(INNGEST_GATEWAY_DELIVERY_MODE="outbox")  # no embedded deliverer: delivered below
    now = now_ms()
    # As old as an event the browser client kept queued for almost a week, now, and a
    # browser whose clock runs 4 minutes fast.
    sent = [now - 7 * DAY_MS + 10 * MINUTE_MS, now - MINUTE_MS, now, now + 4 * MINUTE_MS]

    response = app.test_client().post("/api", json=[{"name": "app/x", "ts": ts} for ts in sent])

    assert response.status_code == 202, response.get_data(as_text=True)
    with app.app_context():
        assert gateway_state(app).deliverer.run_once() == len(sent)
    assert [e["ts"] for r in inngest.received for e in r.events] == sent


def test_the_ts_window_is_a_setting(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(
        INNGEST_GATEWAY_API_TS_MAX_AGE="2d", INNGEST_GATEWAY_API_TS_MAX_SKEW="1h"
    ).test_client()
    now = now_ms()

    accepted = client.post("/api", json=[{"ts": now - 47 * HOUR_MS}, {"ts": now + 59 * MINUTE_MS}])
    old = client.post("/api", json={"ts": now - 49 * HOUR_MS})
    ahead = client.post("/api", json={"ts": now + 61 * MINUTE_MS})
    no_skew = (
        make_app(INNGEST_GATEWAY_API_TS_MAX_SKEW="0")
        .test_client()
        .post("/api", json={"ts": now_ms() + 2000})
    )

    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert [e["ts"] for e in inngest.received[0].events] == [
        now - 47 * HOUR_MS,
        now + 59 * MINUTE_MS,
    ]
    for refused in (old, ahead, no_skew):
        assert set(assert_envelope(refused, 422, "validation_failed")["errors"]) == {"ts"}
    assert len(inngest.received) == 1


@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        (RECEIVED - 7 * DAY_MS, True),
        (RECEIVED - 7 * DAY_MS - 1, False),
        (RECEIVED + 5 * MINUTE_MS, True),
        (RECEIVED + 5 * MINUTE_MS + 1, False),
    ],
    ids=["oldest", "1ms-older", "furthest-ahead", "1ms-further"],
)
def test_the_window_edges_on_a_fixed_clock(ts: int, accepted: bool) -> None:
    """The window is measured from the request's receive time, edges included."""
    settings = load_settings({"INNGEST_DEV": "1"})
    meta = {"id": "r", "client_request_id": None, "received_at": RECEIVED, "ip": None}

    def build() -> list[Any]:
        return build_events(
            [{"name": "app/x", "ts": ts}],
            batch=False,
            settings=settings,
            user=None,
            request_meta=meta,
            scope=lambda: "anonymous:x",
        )

    if accepted:
        (event,) = build()
        assert json.loads(event.body)["ts"] == ts
    else:
        with pytest.raises(ValidationFailed) as refused:
            build()
        assert set(refused.value.errors) == {"ts"}
