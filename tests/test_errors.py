"""Every error POST /api answers: its status, its envelope, its field errors, and nothing sent."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import AuthActions, assert_envelope
from tests.standin import TS_MAX, TS_MIN, InngestStandIn

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
HTML_ACCEPT = "text/html,application/xhtml+xml,*/*;q=0.8"
SERVER_KEYS = ("user", "request")


def post_raw(client: FlaskClient, body: bytes, content_type: str | None = JSON) -> TestResponse:
    """POST /api with exactly these bytes as the body."""
    if content_type is None:
        return client.post("/api", data=body)
    return client.post("/api", data=body, content_type=content_type)


def nested_arrays(levels: int, inner: str = "") -> str:
    """JSON text of `levels` arrays, each inside the one before."""
    return "[" * levels + inner + "]" * levels


def nested_objects(levels: int) -> str:
    """JSON text of `levels` objects, each the value of the key "a" in the one before."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def strict_loads(raw: bytes) -> Any:
    """Parse as Inngest would: UTF-8, no NaN or Infinity, no lone surrogates."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} was sent upstream")

    value = json.loads(raw.decode("utf-8"), parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return value


def client_data(item: dict[str, Any]) -> dict[str, Any]:
    """The `data` a client sent, as the service promises to pass it on."""
    data = item.get("data")
    if data is None:
        return {}
    return data if isinstance(data, dict) else {"value": data}


def without_server_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in SERVER_KEYS}


# -- 400 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"data": ', id="truncated"),
        pytest.param(b"{'data': 1}", id="single-quotes"),
        pytest.param(b'{"data": 1,}', id="trailing-comma"),
        pytest.param(b"{} {}", id="two-documents"),
        pytest.param(b'{"data": undefined}', id="undefined"),
        pytest.param(b'{"data": NaN}', id="nan"),
        pytest.param(b'{"data": Infinity}', id="infinity"),
        pytest.param(b'{"data": -Infinity}', id="minus-infinity"),
        pytest.param(b"[NaN]", id="nan-in-batch"),
        pytest.param(b'{"data": "\\ud800"}', id="lone-high-surrogate"),
        pytest.param(b'{"data": "x\\udfffy"}', id="lone-low-surrogate"),
        pytest.param(b'{"data": {"\\ud800": 1}}', id="lone-surrogate-in-key"),
        pytest.param(b'{"name": "app/\\ud83d"}', id="lone-surrogate-in-name"),
        pytest.param(b'"\\ud800"', id="lone-surrogate-as-body"),
        pytest.param(nested_arrays(65).encode(), id="65-levels-of-arrays"),
        pytest.param(('{"data": ' + nested_arrays(64) + "}").encode(), id="65-levels-in-data"),
        pytest.param(('{"data": ' + nested_objects(64) + "}").encode(), id="65-levels-of-objects"),
        pytest.param(nested_arrays(100_000).encode(), id="100000-levels-of-arrays"),
        pytest.param(('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), id="100000-objects"),
        pytest.param(b'{"data": 1e400}', id="1e400"),
        pytest.param(b'{"data": -1e400}', id="minus-1e400"),
        pytest.param(b'{"data": 1.5e309}', id="1.5e309"),
        pytest.param(b'{"data": ' + b"9" * 400 + b"}", id="400-digit-integer"),
        pytest.param(b'{"data": -' + b"9" * 400 + b"}", id="negative-400-digit-integer"),
        pytest.param(b'{"data": ' + b"1" * 5000 + b"}", id="5000-digit-integer"),
        pytest.param(b'{"data": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"data": "caf\xe9"}', id="latin-1"),
        pytest.param(b'{"data": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(b'{"data": "\xc0\xaf"}', id="overlong-utf8"),
        pytest.param('{"data": 1}'.encode("utf-16"), id="utf-16"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param(b'{"data": "a\x01b"}', id="raw-control-character"),
        pytest.param(b'{"data": "a\nb"}', id="raw-newline-in-string"),
    ],
)
def test_invalid_json_is_400(client: FlaskClient, inngest: InngestStandIn, body: bytes) -> None:
    response = post_raw(client, body)

    envelope = assert_envelope(response, 400, "invalid_json")
    assert envelope["errors"] == {}
    assert inngest.received == []


@pytest.mark.parametrize(
    "body",
    [
        nested_arrays(65),
        '{"data": ' + nested_objects(64) + "}",
        nested_arrays(100_000),
        '{"a":' * 100_000 + "1" + "}" * 100_000,
    ],
    ids=["65-arrays", "65-objects", "100000-arrays", "100000-objects"],
)
def test_deep_nesting_is_refused_naming_the_limit(
    client: FlaskClient, inngest: InngestStandIn, body: str
) -> None:
    response = post_raw(client, body.encode())

    envelope = assert_envelope(response, 400, "invalid_json")
    assert "nested more than 64 levels" in envelope["message"]
    assert inngest.received == []


@pytest.mark.parametrize("body", [b"", b" ", b"\r\n\t  \n"], ids=["empty", "space", "whitespace"])
def test_empty_body_is_400(client: FlaskClient, inngest: InngestStandIn, body: bytes) -> None:
    response = post_raw(client, body)

    envelope = assert_envelope(response, 400, "empty_body")
    assert envelope["errors"] == {}
    assert inngest.received == []


def test_nesting_of_64_levels_is_accepted(client: FlaskClient, inngest: InngestStandIn) -> None:
    """The limit is exact: the 65-level bodies above fail, 64 levels pass."""
    response = post_raw(client, ('{"data": ' + nested_arrays(63) + "}").encode())

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "ok"
    (received,) = inngest.received
    assert received.events[0]["data"]["value"] == json.loads(nested_arrays(63))


# -- 401 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "post",
    [
        pytest.param({"json": {"name": "app/x", "data": {"n": 1}}}, id="json"),
        pytest.param(
            {"data": {"name": "app/x", "n": "1"}, "headers": {"Accept": HTML_ACCEPT}}, id="form"
        ),
    ],
)
def test_login_required_refuses_anonymous_posts_until_login(
    make_app: Callable[..., Flask],
    user: dict[str, Any],
    inngest: InngestStandIn,
    post: dict[str, Any],
) -> None:
    client = make_app(INNGEST_GATEWAY_API_REQUIRE_LOGIN="true").test_client()

    refused = client.post("/api", **post)

    envelope = assert_envelope(refused, 401, "login_required")
    assert envelope["errors"] == {}
    assert inngest.received == []

    assert AuthActions(client).login().status_code == 200
    accepted = client.post("/api", **{**post, "headers": {"Accept": JSON}})

    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    (event_id,) = accepted.get_json()["ids"]
    (received,) = inngest.received
    (event,) = received.events
    assert event["id"] == event_id
    assert event["name"] == "app/x"
    assert event["data"]["user"] == user


def test_login_required_is_checked_before_the_body(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_API_REQUIRE_LOGIN="true").test_client()

    response = post_raw(client, b"{not json")

    assert_envelope(response, 401, "login_required")
    assert inngest.received == []


# -- 403 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "name"),
    [
        (None, "other/x"),
        (None, "App/x"),
        (None, "appx"),
        (None, "inngest/function.failed"),
        ("app/*,billing/*", "shipping/sent"),
        ("*", "inngest/x"),
        ("*", "INNGEST/x"),
        ("*", "Inngest/function.finished"),
        ("inngest/*", "inngest/x"),
    ],
)
def test_event_name_not_allowed_is_403(
    make_app: Callable[..., Flask], inngest: InngestStandIn, allowed: str | None, name: str
) -> None:
    app = make_app() if allowed is None else make_app(INNGEST_GATEWAY_API_ALLOWED_EVENTS=allowed)

    response = app.test_client().post("/api", json={"name": name, "data": {}})

    envelope = assert_envelope(response, 403, "event_not_allowed")
    assert list(envelope["errors"]) == ["name"]
    assert repr(name) in envelope["errors"]["name"][0]
    assert inngest.received == []


def test_event_not_allowed_in_a_batch_is_keyed_by_index(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    batch = [{"name": "app/ok"}, {"name": "inngest/x"}, {"name": "app/ok"}, {"name": "evil/x"}]

    response = client.post("/api", json=batch)

    envelope = assert_envelope(response, 403, "event_not_allowed")
    assert set(envelope["errors"]) == {"1", "3"}
    assert list(envelope["errors"]["1"]) == ["name"]
    assert "'evil/x'" in envelope["errors"]["3"]["name"][0]
    assert inngest.received == []


def test_event_not_allowed_from_a_form_is_403_not_a_redirect(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = client.post(
        "/api",
        data={"name": "inngest/x", "next": "/thanks"},
        headers={"Accept": HTML_ACCEPT},
    )

    envelope = assert_envelope(response, 403, "event_not_allowed")
    assert list(envelope["errors"]) == ["name"]
    assert "Location" not in response.headers
    assert inngest.received == []


# -- 413 -------------------------------------------------------------------------------

SMALL_BODY_LIMIT = "1024"


@pytest.mark.parametrize(
    "post",
    [
        pytest.param({"json": {"data": {"text": "x" * 1100}}}, id="json"),
        pytest.param({"json": [{"data": {"n": i}} for i in range(80)]}, id="json-batch"),
        pytest.param({"data": {"text": "x" * 1100}, "content_type": FORM}, id="urlencoded"),
        pytest.param({"data": {"text": "x" * 1100}, "content_type": MULTIPART}, id="multipart"),
        pytest.param({"data": b"\x00" * 5000, "content_type": JSON}, id="binary-junk"),
    ],
)
def test_body_over_the_limit_is_413(
    make_app: Callable[..., Flask], inngest: InngestStandIn, post: dict[str, Any]
) -> None:
    client = make_app(INNGEST_GATEWAY_API_MAX_BODY_BYTES=SMALL_BODY_LIMIT).test_client()

    response = client.post("/api", headers={"Accept": JSON}, **post)

    assert int(response.request.headers["Content-Length"]) > int(SMALL_BODY_LIMIT)
    envelope = assert_envelope(response, 413, "payload_too_large")
    assert envelope["errors"] == {}
    assert inngest.received == []


def test_body_limit_is_exact(make_app: Callable[..., Flask], inngest: InngestStandIn) -> None:
    client = make_app(INNGEST_GATEWAY_API_MAX_BODY_BYTES=SMALL_BODY_LIMIT).test_client()
    prefix, suffix = b'{"data": "', b'"}'
    fits = prefix + b"x" * (int(SMALL_BODY_LIMIT) - len(prefix) - len(suffix)) + suffix
    assert len(fits) == int(SMALL_BODY_LIMIT)

    too_big = post_raw(client, fits + b" ")
    accepted = post_raw(client, fits)

    assert_envelope(too_big, 413, "payload_too_large")
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    (event_id,) = accepted.get_json()["ids"]
    assert inngest.accepted_ids() == [event_id]


def test_default_body_limit_is_one_mebibyte(client: FlaskClient, inngest: InngestStandIn) -> None:
    response = post_raw(client, b'{"data": "' + b"x" * (1024 * 1024) + b'"}')

    envelope = assert_envelope(response, 413, "payload_too_large")
    assert envelope["errors"] == {}
    assert inngest.received == []


def test_event_over_the_limit_is_413_per_index(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_API_MAX_EVENT_BYTES="1024").test_client()
    batch = [
        {"name": "app/small", "data": {"n": 0}},
        {"name": "app/big", "data": {"text": "x" * 1100}},
        {"name": "app/small", "data": {"n": 2}},
        {"name": "app/big", "data": {"text": "é" * 600}},  # 600 characters, 1200 bytes
    ]

    response = client.post("/api", json=batch)

    envelope = assert_envelope(response, 413, "event_too_large")
    assert set(envelope["errors"]) == {"1", "3"}
    for index in ("1", "3"):
        (message,) = envelope["errors"][index]["_schema"]
        assert "1024" in message
    assert inngest.received == []


def test_single_event_over_the_limit_is_413(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_API_MAX_EVENT_BYTES="1024").test_client()

    response = client.post("/api", json={"data": {"text": "x" * 1100}})

    envelope = assert_envelope(response, 413, "event_too_large")
    assert list(envelope["errors"]) == ["_schema"]
    assert inngest.received == []


def test_event_size_counts_the_keys_the_server_adds(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Small as the client sent it, too large once `data.request` holds a long User-Agent."""
    client = make_app(INNGEST_GATEWAY_API_MAX_EVENT_BYTES="1024").test_client()
    sent = {"name": "app/x", "data": {"text": "x" * 700}}
    assert len(json.dumps(sent)) < 1024

    short_agent = client.post("/api", json=sent, headers={"User-Agent": "ua"})
    long_agent = client.post("/api", json=sent, headers={"User-Agent": "u" * 400})

    assert short_agent.status_code == 200, short_agent.get_data(as_text=True)
    assert short_agent.get_json()["status"] == "ok"
    assert len(inngest.received) == 1
    assert_envelope(long_agent, 413, "event_too_large")
    assert len(inngest.received) == 1


# -- 415 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        None,
        "application/xml",
        "text/xml",
        "text/html",
        "application/octet-stream",
        "application/x-json",
        "application/vnd.api+json",
        "application/ld+json",
        "text/json",
    ],
)
def test_unsupported_content_type_is_415(
    client: FlaskClient, inngest: InngestStandIn, content_type: str | None
) -> None:
    response = post_raw(client, b'{"name": "app/x", "data": {}}', content_type)

    envelope = assert_envelope(response, 415, "unsupported_media_type")
    assert envelope["errors"] == {}
    assert inngest.received == []


@pytest.mark.parametrize("accept", [HTML_ACCEPT, JSON])
def test_multipart_form_with_a_file_is_415(
    client: FlaskClient, inngest: InngestStandIn, accept: str
) -> None:
    response = client.post(
        "/api",
        data={"name": "app/x", "note": "hi", "upload": (io.BytesIO(b"hello"), "hello.txt")},
        content_type=MULTIPART,
        headers={"Accept": accept},
    )

    envelope = assert_envelope(response, 415, "unsupported_media_type")
    assert "file" in envelope["message"].lower()
    assert inngest.received == []


# -- 422 -------------------------------------------------------------------------------

REASONS_422: list[Any] = [
    # unknown top-level fields, the deprecated `user` among them
    pytest.param({"name": "app/x", "extra": 1}, {"extra"}, id="unknown-field"),
    pytest.param({"user": {"id": "u1"}}, {"user"}, id="top-level-user"),
    pytest.param({"user": None, "data": {}}, {"user"}, id="top-level-user-null"),
    pytest.param({"Name": "app/x"}, {"Name"}, id="field-names-are-case-sensitive"),
    # keys the server owns
    pytest.param({"data": {"user": {"id": 1}}}, {"data"}, id="data.user"),
    pytest.param({"data": {"request": {"ip": "1.2.3.4"}}}, {"data"}, id="data.request"),
    pytest.param({"data": {"user": None}}, {"data"}, id="data.user-null"),
    # ts
    pytest.param({"ts": 0}, {"ts"}, id="ts-zero"),
    pytest.param({"ts": -1}, {"ts"}, id="ts-negative"),
    pytest.param({"ts": TS_MIN - 1}, {"ts"}, id="ts-before-1980"),
    pytest.param({"ts": TS_MAX}, {"ts"}, id="ts-2100"),
    pytest.param({"ts": 10**18}, {"ts"}, id="ts-far-future"),
    pytest.param({"ts": 1700000000000.0}, {"ts"}, id="ts-float-whole"),
    pytest.param({"ts": 1700000000000.5}, {"ts"}, id="ts-float"),
    pytest.param({"ts": True}, {"ts"}, id="ts-bool"),
    pytest.param({"ts": "1700000000000"}, {"ts"}, id="ts-string"),
    pytest.param({"ts": None}, {"ts"}, id="ts-null"),
    # name
    pytest.param({"name": ""}, {"name"}, id="name-empty"),
    pytest.param({"name": "app/" + "x" * 253}, {"name"}, id="name-257-chars"),
    pytest.param({"name": 5}, {"name"}, id="name-number"),
    pytest.param({"name": None}, {"name"}, id="name-null"),
    pytest.param({"name": ["app/x"]}, {"name"}, id="name-list"),
    pytest.param({"name": {"app": "x"}}, {"name"}, id="name-object"),
    # id and v
    pytest.param({"id": ""}, {"id"}, id="id-empty"),
    pytest.param({"id": 42}, {"id"}, id="id-number"),
    pytest.param({"id": None}, {"id"}, id="id-null"),
    pytest.param({"id": "x" * 257}, {"id"}, id="id-257-chars"),
    pytest.param({"v": ""}, {"v"}, id="v-empty"),
    pytest.param({"v": 2}, {"v"}, id="v-number"),
    # several at once: every field is reported
    pytest.param({"name": "", "ts": "now", "extra": 1}, {"name", "ts", "extra"}, id="several"),
]


@pytest.mark.parametrize(("body", "fields"), REASONS_422)
def test_invalid_event_is_422_with_field_errors(
    client: FlaskClient, inngest: InngestStandIn, body: dict[str, Any], fields: set[str]
) -> None:
    response = client.post("/api", json=body)

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == fields
    for messages in envelope["errors"].values():
        assert messages and isinstance(messages, (list, dict))
    assert inngest.received == []


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ({"user": {"id": 1}}, {"user"}),
        ({"request": {}}, {"request"}),
        ({"user": None, "request": None, "ok": 1}, {"user", "request"}),
    ],
)
def test_server_keys_in_data_are_named(
    client: FlaskClient, inngest: InngestStandIn, data: dict[str, Any], keys: set[str]
) -> None:
    response = client.post("/api", json={"name": "app/x", "data": data})

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == {"data"}
    assert set(envelope["errors"]["data"]) == keys
    assert inngest.received == []


@pytest.mark.parametrize(
    "body",
    [b'"x"', b"5", b"-1.5", b"true", b"false", b"null", b'""'],
    ids=["string", "integer", "float", "true", "false", "null", "empty-string"],
)
def test_scalar_body_is_422(client: FlaskClient, inngest: InngestStandIn, body: bytes) -> None:
    response = post_raw(client, body)

    envelope = assert_envelope(response, 422, "validation_failed")
    assert envelope["errors"] == {"_schema": ["Expected an object or an array."]}
    assert inngest.received == []


def test_empty_array_is_422(client: FlaskClient, inngest: InngestStandIn) -> None:
    response = post_raw(client, b"[]")

    envelope = assert_envelope(response, 422, "validation_failed")
    assert list(envelope["errors"]) == ["_schema"]
    assert inngest.received == []


@pytest.mark.parametrize(("limit", "count"), [(None, 101), ("3", 4), ("1", 2)])
def test_batch_over_the_limit_is_422(
    make_app: Callable[..., Flask], inngest: InngestStandIn, limit: str | None, count: int
) -> None:
    app = make_app() if limit is None else make_app(INNGEST_GATEWAY_API_MAX_BATCH=limit)

    response = app.test_client().post("/api", json=[{"data": {"n": i}} for i in range(count)])

    envelope = assert_envelope(response, 422, "validation_failed")
    (message,) = envelope["errors"]["_schema"]
    assert str(count) in message
    assert inngest.received == []


def test_batch_at_the_limit_is_accepted(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_API_MAX_BATCH="3").test_client()

    response = client.post("/api", json=[{"data": {"n": i}} for i in range(3)])

    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["ids"]) == 3
    assert len(inngest.received) == 1


def test_batch_errors_are_keyed_by_index(client: FlaskClient, inngest: InngestStandIn) -> None:
    batch = [
        {"name": "", "data": {}},
        {"name": "app/ok", "data": {"fine": True}},
        {"name": "app/ok", "ts": 1.5, "extra": 1},
        {"name": "app/ok"},
    ]

    response = client.post("/api", json=batch)

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == {"0", "2"}
    assert set(envelope["errors"]["0"]) == {"name"}
    assert set(envelope["errors"]["2"]) == {"ts", "extra"}
    assert inngest.received == []


@pytest.mark.parametrize(
    ("batch", "bad"),
    [
        ([{"name": "app/ok"}, "oops"], "1"),
        ([5], "0"),
        ([None], "0"),
        ([{}, [], {}], "1"),
        ([[{"name": "app/x"}]], "0"),
        ([{}, {}, True], "2"),
    ],
)
def test_non_object_item_in_a_batch_is_422(
    client: FlaskClient, inngest: InngestStandIn, batch: list[Any], bad: str
) -> None:
    response = client.post("/api", json=batch)

    envelope = assert_envelope(response, 422, "validation_failed")
    assert list(envelope["errors"]) == [bad]
    assert list(envelope["errors"][bad]) == ["_schema"]
    assert inngest.received == []


@pytest.mark.parametrize("body", [{"data": {}}, [{"data": {}}, {"data": {}}]], ids=["one", "batch"])
def test_idempotency_key_too_long_is_422(
    client: FlaskClient, inngest: InngestStandIn, body: Any
) -> None:
    response = client.post("/api", json=body, headers={"Idempotency-Key": "k" * 249})

    envelope = assert_envelope(response, 422, "validation_failed")
    assert list(envelope["errors"]) == ["Idempotency-Key"]
    assert inngest.received == []


def test_longest_idempotency_key_is_accepted(client: FlaskClient, inngest: InngestStandIn) -> None:
    key = "k" * 248

    response = client.post("/api", json=[{}, {}], headers={"Idempotency-Key": key})

    assert response.status_code == 200, response.get_data(as_text=True)
    ids = response.get_json()["ids"]  # derived from the key (tests/test_event_ids.py)
    assert len(set(ids)) == 2
    assert inngest.accepted_ids() == ids


@pytest.mark.parametrize("content_type", [FORM, MULTIPART])
@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"name": ["app/a", "app/b"], "note": "hi"}, {"name"}),
        ({"next": ["/a", "/b"], "note": "hi"}, {"next"}),
    ],
    ids=["repeated-name", "repeated-next"],
)
def test_form_with_a_repeated_control_field_is_422(
    client: FlaskClient,
    inngest: InngestStandIn,
    content_type: str,
    fields: dict[str, Any],
    errors: set[str],
) -> None:
    response = client.post(
        "/api", data=fields, content_type=content_type, headers={"Accept": HTML_ACCEPT}
    )

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == errors
    assert "Location" not in response.headers
    assert inngest.received == []


@pytest.mark.parametrize("field", ["user", "request"])
def test_form_field_named_like_a_server_key_is_422(
    client: FlaskClient, inngest: InngestStandIn, field: str
) -> None:
    response = client.post("/api", data={"name": "app/x", field: "admin"})

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == {"data"}
    assert set(envelope["errors"]["data"]) == {field}
    assert inngest.received == []


# -- 404 and 405 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/nope"), ("POST", "/api/"), ("POST", "/api/events"), ("GET", "/nope")],
)
def test_unknown_path_is_404_in_the_envelope(
    client: FlaskClient, inngest: InngestStandIn, method: str, path: str
) -> None:
    response = client.open(path, method=method, json={"name": "app/x"})

    envelope = assert_envelope(response, 404, "not_found")
    assert envelope["errors"] == {}
    assert inngest.received == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_wrong_method_is_405_with_allow(
    client: FlaskClient, inngest: InngestStandIn, method: str
) -> None:
    response = client.open("/api", method=method, json={"name": "app/x"})

    envelope = assert_envelope(response, 405, "method_not_allowed")
    assert envelope["errors"] == {}
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert "POST" in allowed
    assert method not in allowed
    assert inngest.received == []


# -- no input answers 5xx --------------------------------------------------------------

HOSTILE: list[Any] = [
    pytest.param(b"{}", 200, id="empty-object"),
    pytest.param(b'{"data": null}', 200, id="data-null"),
    pytest.param(b'{"data": ""}', 200, id="data-empty-string"),
    pytest.param(b'{"data": false}', 200, id="data-false"),
    pytest.param(b'{"data": [1, "two", null, true, 2.5, {"k": []}]}', 200, id="data-mixed-list"),
    pytest.param(json.dumps({"data": {"s": "x" * 250_000}}).encode(), 200, id="250k-string"),
    pytest.param(json.dumps({"data": {"s": "x" * 300_000}}).encode(), 413, id="300k-string"),
    pytest.param(json.dumps({"data": {"k" * 100_000: 1}}).encode(), 200, id="100k-key"),
    pytest.param(json.dumps({"data": {str(i): i for i in range(5000)}}).encode(), 200, id="keys"),
    pytest.param(json.dumps({"data": [0] * 100_000}).encode(), 200, id="wide-array"),
    pytest.param(('{"data": ' + nested_arrays(63) + "}").encode(), 200, id="63-deep-arrays"),
    pytest.param(('{"data": ' + nested_objects(63) + "}").encode(), 200, id="63-deep-objects"),
    pytest.param(
        json.dumps(
            {
                "data": {
                    "emoji": "😀👩‍👩‍👧",
                    "rtl": "\u202eabc",
                    "cjk": "漢字",
                    "combining": "e\u0301",
                    "bom": "\ufeff",
                    "nonchar": "\uffff",
                    "astral": "\U0010ffff",
                }
            },
            ensure_ascii=False,
        ).encode(),
        200,
        id="unicode-raw",
    ),
    pytest.param(b'{"data": "\\ud83d\\ude00 \\u00e9"}', 200, id="escaped-surrogate-pair"),
    pytest.param(
        json.dumps(
            {"data": {"nul": "\u0000", "ctl": "".join(map(chr, range(32))) + "\x7f\x80\x9f"}}
        ).encode(),
        200,
        id="escaped-control-characters",
    ),
    pytest.param(b'{"data": "\\u2028\\u2029</script><!--"}', 200, id="separators-and-html"),
    pytest.param(
        b'{"data": {"": 1, "__proto__": {"polluted": true}, "constructor": null, "$where": 4}}',
        200,
        id="odd-keys",
    ),
    pytest.param(b'{"data": {"a": 1, "a": 2}}', 200, id="duplicate-keys"),
    pytest.param(
        json.dumps(
            {
                "data": {
                    "u64": 2**64,
                    "i64": -(2**63) - 1,
                    "e300": 10**300,
                    "max": 1.7976931348623157e308,
                    "tiny": 5e-324,
                    "negzero": -0.0,
                }
            }
        ).encode(),
        200,
        id="extreme-finite-numbers",
    ),
    pytest.param(b'{"data": 1E+2, "v": "1"}', 200, id="exponent"),
    pytest.param(b' \r\n\t{"data": 1}\n ', 200, id="whitespace-around"),
    pytest.param(json.dumps({"name": "app/" + "x" * 252}).encode(), 200, id="name-256-chars"),
    pytest.param(json.dumps({"name": "app/\u0000\n\u202e"}).encode(), 200, id="name-controls"),
    # Inngest's own bounds, far outside INNGEST_GATEWAY_API_TS_MAX_AGE and
    # INNGEST_GATEWAY_API_TS_MAX_SKEW.
    pytest.param(json.dumps({"ts": TS_MIN, "data": 1}).encode(), 422, id="ts-1980"),
    pytest.param(json.dumps({"ts": TS_MAX - 1}).encode(), 422, id="ts-just-before-2100"),
    pytest.param(b'[{"data": 1}, {"data": [2]}, {"data": {"three": 3}}]', 200, id="batch"),
    pytest.param(b"[null]", 422, id="batch-of-null"),
    pytest.param(b"[[]]", 422, id="batch-of-array"),
    pytest.param(b"null", 422, id="null"),
    pytest.param(b'{"data": {"user": null}}', 422, id="data-user"),
    pytest.param(b'{"data": "a\x00b"}', 400, id="raw-nul"),
    pytest.param(b'{"data": {"\\udc00": 1}}', 400, id="surrogate-key"),
    pytest.param(b"\x00\x00\x00\x00", 400, id="nul-bytes"),
    pytest.param(b"[" * 5000, 400, id="unclosed-arrays"),
    pytest.param(b'{"data": 0.' + b"1" * 5000 + b"}", 200, id="5000-fraction-digits"),
]


HOSTILE_CODES = {400: "invalid_json", 413: "event_too_large", 422: "validation_failed"}


@pytest.mark.parametrize(("body", "expected"), HOSTILE)
def test_no_body_answers_5xx(
    client: FlaskClient, inngest: InngestStandIn, body: bytes, expected: int
) -> None:
    assert len(body) <= 1024 * 1024
    response = post_raw(client, body)

    assert response.status_code == expected, response.get_data(as_text=True)
    if expected != 200:
        assert_envelope(response, expected, HOSTILE_CODES[expected])
        assert inngest.received == []
        return
    answer = response.get_json()
    assert answer["status"] == "ok"
    sent = json.loads(body)
    items = sent if isinstance(sent, list) else [sent]
    (received,) = inngest.received
    assert received.status == 200
    events = strict_loads(received.body)
    assert [event["id"] for event in events] == answer["ids"]
    for item, event in zip(items, events, strict=True):
        assert without_server_keys(event["data"]) == client_data(item)
        assert event["data"]["user"] is None
        assert event["data"]["request"]["id"] == response.headers["X-Request-ID"]
        assert event["name"] == item.get("name", "app/api.posted")
