"""No input breaks the service: schemathesis against the running service's OpenAPI document,
and Hypothesis on the validation. Either a 4xx envelope comes back, or a valid event goes out.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import BIN, ROOT, Server, start_gunicorn
from tests.standin import InngestStandIn, _event_error, _strict_loads

CONTRACT_MAX_EVENT_BYTES = 3 * 1024 * 1024
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
]


def assert_valid_upstream(inngest: InngestStandIn) -> None:
    """Everything that reached the stand-in is strict JSON and a valid event by the contract."""
    for received in inngest.received:
        assert received.status == 200, received.body[:500]
        payload = _strict_loads(received.body)
        assert isinstance(payload, list) and payload
        for event in payload:
            assert _event_error(event, CONTRACT_MAX_EVENT_BYTES) is None, event
            assert set(event["data"]) >= {"user", "request"}


@pytest.fixture(scope="module")
def fuzz_server(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    # Sync mode, so events reach the stand-in within the run; no rate limits, since every
    # generated request comes from one address.
    server = start_gunicorn(
        tmp_path_factory.mktemp("fuzz"),
        inngest_server,
        env={"DELIVERY_MODE": "sync", "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"},
    )
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_schemathesis_finds_nothing(
    fuzz_server: Server, inngest: InngestStandIn, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{fuzz_server.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "100",
            "--seed",
            "20261128",
            "--workers",
            "2",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    # Every operation in the document but GET /openapi.json, the document itself, which
    # schemathesis leaves out.
    tested = len(OPERATIONS) - 1
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert selected and selected.group(1) == selected.group(2) == str(tested)
    assert f"Tested: {tested}" in result.stdout
    assert inngest.received, "the fuzzing sent no event at all"
    assert_valid_upstream(inngest)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    """The app without rate limits: every example comes from the same address."""
    return make_app(RATELIMIT_ENABLED="false").test_client()


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


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
def test_any_json_is_a_4xx_envelope_or_valid_events(
    client: FlaskClient, inngest: InngestStandIn, body: Any
) -> None:
    inngest.reset()
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity too: the parser must refuse them

    response = client.post("/api", data=raw, content_type="application/json")

    answer = response.get_json()
    if response.status_code == 200:
        assert answer["status"] == "ok"
        assert len(inngest.received) == 1
        assert_valid_upstream(inngest)
        assert [e["id"] for e in inngest.received[0].events] == answer["ids"]
    else:
        assert 400 <= response.status_code < 500, (response.status_code, answer)
        assert answer["status"] == "error" and answer["code"] and answer["message"]
        assert inngest.received == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_refused_cleanly_or_accepted(
    client: FlaskClient, inngest: InngestStandIn, raw: bytes
) -> None:
    inngest.reset()

    response = client.post("/api", data=raw, content_type="application/json")

    assert response.status_code < 500
    if response.status_code == 200:
        assert_valid_upstream(inngest)
    else:
        assert inngest.received == []
