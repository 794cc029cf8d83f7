"""The stand-in for Inngest refuses what real Inngest (or its SDK contract) would refuse.

These tests speak HTTP to it directly, as a buggy sender would; every other test relies on
it refusing such requests, and on the `inngest` fixture failing a test that caused one.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from inngest_gateway.inngest import id_seed
from tests.standin import InngestStandIn

GOOD_EVENT = {"name": "app/x", "data": {}, "id": "e-1", "ts": 1767225600000, "v": "1"}


def post(
    inngest: InngestStandIn,
    body: Any,
    *,
    content_type: str | None = "application/json",
    seed: str | None = None,
) -> requests.Response:
    headers = {"x-inngest-event-id-seed": seed if seed is not None else id_seed()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{inngest.url}/e/{inngest.event_key}", data=data, headers=headers, timeout=5
    )


def test_a_well_formed_request_is_accepted(inngest: InngestStandIn) -> None:
    response = post(inngest, [GOOD_EVENT], content_type="application/json; charset=utf-8")

    assert response.status_code == 200
    assert response.json()["status"] == 200 and len(response.json()["ids"]) == 1
    assert inngest.accepted_ids() == ["e-1"]
    assert inngest.violations == []


@pytest.mark.parametrize(
    ("content_type", "seed"),
    [
        (None, None),
        ("text/plain", None),
        ("application/x-www-form-urlencoded", None),
        ("application/json", ""),
        ("application/json", "not-a-seed"),
        ("application/json", "1767225600000,c2hvcnQ="),  # 5 bytes, not 10
        ("application/json", "abc,AAAAAAAAAAAAAA=="),
    ],
)
def test_wrong_content_type_or_seed_is_400_on_every_request(
    inngest: InngestStandIn, content_type: str | None, seed: str | None
) -> None:
    inngest.fail_next(1, 500)  # even a request a fault would answer is checked first

    response = post(inngest, [GOOD_EVENT], content_type=content_type, seed=seed)

    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert inngest.accepted == []
    assert len(inngest.violations) == 1
    inngest.violations.clear()  # caused on purpose


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"id": 5}, "id must be a string"),
        ({"v": 1}, "v must be a string"),
        ({"ts": 1767225600000.5}, "ts must be an integer"),
        ({"ts": "1767225600000"}, "ts must be an integer"),
        ({"ts": True}, "ts must be an integer"),
        ({"name": ""}, "event name is required"),
        ({"name": 7}, "event name is required"),
        ({"data": [1]}, "data must be an object"),
        ({"data": "text"}, "data must be an object"),
    ],
)
def test_fields_of_the_wrong_type_are_400(
    inngest: InngestStandIn, change: dict[str, Any], error: str
) -> None:
    response = post(inngest, [{"name": "app/first", "id": "first"}, {**GOOD_EVENT, **change}])

    assert response.status_code == 400
    assert response.json() == {"ids": [response.json()["ids"][0]], "status": 400, "error": error}
    assert inngest.accepted_ids() == ["first"]  # taken in order up to the bad one
    assert inngest.violations == [error]
    inngest.violations.clear()


def test_an_event_over_the_size_limit_is_400_but_not_a_violation(
    inngest: InngestStandIn,
) -> None:
    inngest.max_event_bytes = 100

    response = post(inngest, [{**GOOD_EVENT, "data": {"x": "y" * 200}}])

    assert response.status_code == 400
    assert "too large" in response.json()["error"]
    assert inngest.violations == []  # a plan's limit, not a malformed request


def test_raw_faults_answer_the_exact_body(inngest: InngestStandIn) -> None:
    inngest.answer_next_raw(1, 200, b"<html>hi</html>", "text/html")
    inngest.answer_next_raw(1, 204, b"")

    html = post(inngest, [GOOD_EVENT])
    empty = post(inngest, [GOOD_EVENT])

    assert (html.status_code, html.headers["Content-Type"], html.content) == (
        200,
        "text/html",
        b"<html>hi</html>",
    )
    assert (empty.status_code, empty.content) == (204, b"")
    assert inngest.accepted == []  # a proxy answered; Inngest never saw them


@pytest.mark.timeout(20)
@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickled_answer_is_complete_and_valid_when_waited_for(
    inngest: InngestStandIn, part: str
) -> None:
    inngest.trickle_next(1, part, seconds=1, interval=0.1)

    started = time.monotonic()
    response = post(inngest, [GOOD_EVENT])
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.9  # it did trickle, for about a second
    assert response.json()["status"] == 200
    assert inngest.accepted_ids() == ["e-1"]


@pytest.mark.timeout(20)
def test_a_stalled_answer_has_already_accepted_the_events(inngest: InngestStandIn) -> None:
    inngest.stall_next(1, 5)

    with pytest.raises(requests.ReadTimeout):
        requests.post(
            f"{inngest.url}/e/{inngest.event_key}",
            json=[GOOD_EVENT],
            headers={"x-inngest-event-id-seed": id_seed()},
            timeout=(1, 0.5),
        )

    assert inngest.accepted_ids() == ["e-1"]
    assert [r.status for r in inngest.received] == [200]
