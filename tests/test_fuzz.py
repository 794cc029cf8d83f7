"""No input breaks the service, and every valid event arrives as it was sent.

schemathesis runs against the service under gunicorn (outbox mode, the default, logged in)
through its OpenAPI document. Hypothesis posts valid events, which must be accepted and reach
the stand-in intact, in outbox and sync mode, anonymous and logged in; and arbitrary JSON and
bytes, which get a 4xx envelope (nothing sent) or valid events out. Examples are derandomized
and no example database is kept, so every run tries the same inputs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from inngest_gateway import outbox
from inngest_gateway.state import gateway_state
from service.app import create_app
from service.db import db
from service.users import create_user
from tests.conftest import PASSWORD, SECRET_KEY
from tests.processes import BIN, ROOT, Server, start_gunicorn
from tests.standin import InngestStandIn, _event_error, _strict_loads

CONTRACT_MAX_EVENT_BYTES = 3 * 1024 * 1024
DEFAULT_EVENT = "app/api.posted"  # INNGEST_GATEWAY_API_DEFAULT_EVENT's default
SERVER_KEYS = {"user", "request"}
RESERVED_KEYS = {"user", "request", "_inngest"}  # set by the server or Inngest: refused
OPERATIONS = [  # every operation the document describes
    "POST /api",
    "GET /auth/login",
    "POST /auth/login",
    "POST /auth/logout",
    "GET /auth/me",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.json",
    "GET /docs",
    "GET /",
    "GET /sent",
    "GET /inngest-gateway.js",
    "GET /inngest-gateway.mjs",
    "GET /inngest-gateway.d.ts",
]
# Fixed inputs: the same examples on every run and machine, nothing read from .hypothesis/.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_valid_upstream(inngest: InngestStandIn) -> None:
    """Everything that reached the stand-in is strict JSON and a valid event by the contract."""
    for received in inngest.received:
        assert received.status == 200, received.body[:500]
        payload = _strict_loads(received.body)
        assert isinstance(payload, list) and payload
        for event in payload:
            assert _event_error(event, CONTRACT_MAX_EVENT_BYTES) is None, event
            assert set(event["data"]) >= SERVER_KEYS


# -- schemathesis against gunicorn -------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """gunicorn in outbox mode (the default) with each worker's deliverer, as in production.

    No rate limits, since every generated request comes from one address; one user, so the
    run can be logged in.
    """
    directory = tmp_path_factory.mktemp("fuzz")
    database = f"sqlite:///{directory / 'gateway.db'}"
    app = create_app(
        {
            "SECRET_KEY": SECRET_KEY,
            "INNGEST_EVENT_KEY": inngest_server.default_key,
            "DATABASE_URL": database,
            "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false",
        },
        instance_path=str(directory / "instance"),
    )
    with app.app_context():
        create_user("fuzz@example.com", "Fuzz", PASSWORD)
        db.session.remove()
        db.engine.dispose()
    gateway_state(app).outbox_db.dispose()
    server = start_gunicorn(
        directory,
        inngest_server,
        env={
            "DATABASE_URL": database,
            "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
            "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "true",
            "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
            "INNGEST_GATEWAY_RATELIMIT_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
        },
    )
    try:
        yield server
    finally:
        server.kill()


def metric_total(server: Server, name: str) -> float:
    """A counter's value summed over its labels, as a scrape of the running service shows it."""
    with requests.get(f"{server.url}/metrics", timeout=10) as response:
        assert response.status_code == 200, response.text
        lines = response.text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if re.match(rf"{name}(\{{| )", line))


def outbox_depth(server: Server) -> dict[str, Any]:
    with requests.get(f"{server.url}/readyz", timeout=10) as response:
        assert response.status_code == 200, response.text
        depth: dict[str, Any] = response.json()["outbox"]
    return depth


@pytest.mark.slow
@pytest.mark.timeout(420)  # above the run's own limit (300 s) and the drain wait (30 s)
def test_schemathesis_finds_nothing(
    fuzz_server: Server, inngest: InngestStandIn, tmp_path: Path
) -> None:
    with requests.post(
        f"{fuzz_server.url}/auth/login",
        json={"email": "fuzz@example.com", "password": PASSWORD},
        timeout=10,
    ) as login:
        assert login.status_code == 200, login.text
        cookie = "; ".join(f"{name}={value}" for name, value in login.cookies.items())
    assert "session=" in cookie

    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{fuzz_server.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "40",
            "--seed",
            "20261128",
            "--workers",
            "2",
            "--header",
            f"Cookie: {cookie}",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    # Every operation in the document but GET /openapi.json, the document itself, which
    # schemathesis leaves out.
    tested = len(OPERATIONS) - 1
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert selected and selected.group(1) == selected.group(2) == str(tested)
    assert f"Tested: {tested}" in result.stdout

    # Every event the service accepted reaches Inngest: none left behind, none refused.
    accepted = metric_total(fuzz_server, "inngest_gateway_events_accepted_total")
    assert accepted > 0, "the fuzzing got no event accepted at all"
    deadline = time.monotonic() + 30
    while outbox_depth(fuzz_server)["pending"] and time.monotonic() < deadline:
        time.sleep(0.2)
    depth = outbox_depth(fuzz_server)
    assert depth["pending"] == 0 and depth["dead"] == 0, depth
    assert len(inngest.accepted) == accepted
    assert_valid_upstream(inngest)


# -- Hypothesis against the app, with the stand-in as Inngest ------------------------------


TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
)
CLIENT_DATA = st.dictionaries(TEXT.filter(lambda key: key not in RESERVED_KEYS), VALUES, max_size=6)
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
# Within INNGEST_GATEWAY_API_TS_MAX_AGE (7d) before and INNGEST_GATEWAY_API_TS_MAX_SKEW (5m) after
# the server's clock, as
# offsets from the time the module is loaded: an hour's margin for the run's own length on
# the old side, a minute on the side ahead.
LOADED_MS = int(time.time() * 1000)
VALID_TS = st.integers(min_value=-7 * 86400_000 + 3600_000, max_value=4 * 60_000).map(
    lambda offset: LOADED_MS + offset
)
VALID_EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.builds("app/{}".format, TEXT),
        # An object as it is; null (or no data) as {}; anything else as {"value": ...}.
        "data": CLIENT_DATA | VALUES,
        "id": TOKEN.filter(bool),
        "ts": VALID_TS,
        "v": TEXT.filter(bool),
    },
)
VALID_BODIES = VALID_EVENTS | st.lists(VALID_EVENTS, min_size=1, max_size=4)
FORM_NAME = st.builds("app/{}".format, TOKEN)
FORM_FIELDS = st.dictionaries(
    TOKEN.filter(lambda key: bool(key) and key not in RESERVED_KEYS | {"name", "next"}),
    st.lists(TEXT, min_size=1, max_size=3),
    max_size=5,
)


@dataclass
class Poster:
    """A client of one app (outbox or sync mode), anonymous or logged in."""

    app: Flask
    client: FlaskClient
    mode: str
    user: dict[str, Any] | None

    @property
    def accepted_status(self) -> int:
        return 202 if self.mode == "outbox" else 200

    def deliver(self, inngest: InngestStandIn) -> None:
        """Outbox mode: run the deliverer until nothing is due (sync mode has sent already)."""
        if self.mode != "outbox":
            return
        with self.app.app_context():
            deliverer = gateway_state(self.app).deliverer
            for _ in range(20):
                if deliverer.run_once() == 0:
                    break
            status = outbox.status(gateway_state(self.app).outbox_db)
        assert status["pending"] == 0 and status["dead"] == 0, (status, inngest.received)


@pytest.fixture(
    params=[
        ("outbox", False),
        ("outbox", True),
        ("sync", False),
        ("sync", True),
    ],
    ids=["outbox-anonymous", "outbox-logged-in", "sync-anonymous", "sync-logged-in"],
)
def poster(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Poster:
    """Without rate limits: every example comes from the same address."""
    mode, logged_in = request.param
    app = make_app(
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
        INNGEST_GATEWAY_DELIVERY_MODE=mode,
        INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER="false",
    )
    client = app.test_client()
    user = None
    if logged_in:
        with app.app_context():
            user = create_user("ada@example.com", "Ada Lovelace", PASSWORD).public()
        login = client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
        assert login.status_code == 200, login.get_data(as_text=True)
    return Poster(app, client, mode, user)


def expected(item: dict[str, Any]) -> dict[str, Any]:
    """What Inngest must get for one posted event, the server's own keys and the id aside."""
    data = item.get("data")
    event: dict[str, Any] = {
        "name": item.get("name") or DEFAULT_EVENT,
        "data": {} if data is None else data if isinstance(data, dict) else {"value": data},
    }
    for key in ("ts", "v"):
        if key in item:
            event[key] = item[key]
    return event


def assert_arrived_intact(
    poster: Poster, inngest: InngestStandIn, items: list[dict[str, Any]], answer: Any
) -> None:
    """Each posted event reached the stand-in once, in order, as sent plus the server's keys.

    Ids are not compared with the client's: the server derives the ids it sends.
    """
    poster.deliver(inngest)
    assert_valid_upstream(inngest)
    arrived = [event for received in inngest.received for event in received.events]
    assert len(arrived) == len(items) == len(answer["ids"]), (items, arrived)
    for item, event in zip(items, arrived, strict=True):
        want = expected(item)
        client_data = {k: v for k, v in event["data"].items() if k not in SERVER_KEYS}
        assert event["name"] == want["name"]
        assert client_data == want["data"]
        assert set(event["data"]) == set(want["data"]) | SERVER_KEYS
        assert event["data"]["user"] == poster.user
        request = event["data"]["request"]
        assert isinstance(request["id"], str) and request["id"]
        assert isinstance(request["received_at"], int)
        assert request["ip"] == "127.0.0.1"
        assert event["ts"] == want.get("ts", request["received_at"])
        assert event.get("v") == want.get("v")
        assert isinstance(event["id"], str) and event["id"]
    # The answer names the ids that arrived, in order.
    assert [event["id"] for event in arrived] == answer["ids"]
    # The ids the server made up are all different (a client may repeat its own).
    made = [event["id"] for item, event in zip(items, arrived, strict=True) if "id" not in item]
    assert len(set(made)) == len(made), made


@settings(FUZZ, max_examples=50)
@given(body=VALID_BODIES)
def test_valid_json_events_are_accepted_and_arrive_intact(
    poster: Poster, inngest: InngestStandIn, body: Any
) -> None:
    inngest.reset()

    response = poster.client.post("/api", json=body)

    answer = response.get_json()
    assert response.status_code == poster.accepted_status, answer
    assert answer["status"] == "ok"
    assert_arrived_intact(poster, inngest, body if isinstance(body, list) else [body], answer)


@settings(FUZZ, max_examples=30)
@given(name=st.none() | FORM_NAME, fields=FORM_FIELDS)
def test_valid_forms_are_accepted_and_arrive_intact(
    poster: Poster, inngest: InngestStandIn, name: str | None, fields: dict[str, list[str]]
) -> None:
    inngest.reset()
    form = MultiDict([(key, value) for key, values in fields.items() for value in values])
    if name is not None:
        form.add("name", name)

    response = poster.client.post(
        "/api",
        data=form,
        content_type="application/x-www-form-urlencoded",  # as browsers send even an empty form
        headers={"Accept": "application/json"},
    )

    answer = response.get_json()
    assert response.status_code == poster.accepted_status, answer
    item: dict[str, Any] = {
        "data": {key: values[0] if len(values) == 1 else values for key, values in fields.items()}
    }
    if name is not None:
        item["name"] = name
    assert_arrived_intact(poster, inngest, [item], answer)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(
            st.text(max_size=20), st.sampled_from(["app/x", "inngest/x", ""]), JSON_VALUES
        ),
        "data": JSON_VALUES,
        "id": st.one_of(st.text(max_size=10), JSON_VALUES),
        "ts": st.one_of(st.integers(), st.just(1_700_000_000_000), JSON_VALUES),
        "v": JSON_VALUES,
        "user": JSON_VALUES,
    },
)
BODIES = st.one_of(EVENTS, st.lists(EVENTS, max_size=4), JSON_VALUES)


@pytest.fixture(params=["outbox", "sync"])
def anonymous(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Poster:
    app = make_app(
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
        INNGEST_GATEWAY_DELIVERY_MODE=request.param,
        INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER="false",
    )
    return Poster(app, app.test_client(), request.param, None)


@settings(FUZZ, max_examples=100)
@given(body=BODIES)
def test_any_json_is_a_4xx_envelope_or_valid_events(
    anonymous: Poster, inngest: InngestStandIn, body: Any
) -> None:
    inngest.reset()
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity too: the parser must refuse them

    response = anonymous.client.post("/api", data=raw, content_type="application/json")

    answer = response.get_json()
    if response.status_code == anonymous.accepted_status:
        assert answer["status"] == "ok"
        assert_arrived_intact(
            anonymous, inngest, body if isinstance(body, list) else [body], answer
        )
    else:
        assert 400 <= response.status_code < 500, (response.status_code, answer)
        assert answer["status"] == "error" and answer["code"] and answer["message"]
        anonymous.deliver(inngest)
        assert inngest.received == []


@settings(FUZZ, max_examples=100)
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_refused_cleanly_or_accepted(
    anonymous: Poster, inngest: InngestStandIn, raw: bytes
) -> None:
    inngest.reset()

    response = anonymous.client.post("/api", data=raw, content_type="application/json")

    assert response.status_code < 500
    anonymous.deliver(inngest)
    if response.status_code == anonymous.accepted_status:
        assert_valid_upstream(inngest)
        assert len(inngest.accepted) == len(response.get_json()["ids"])
    else:
        assert inngest.received == []
