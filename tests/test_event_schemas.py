"""INNGEST_GATEWAY_EVENT_SCHEMAS: per-event JSON Schemas for `data`, checked before Inngest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from inngest_gateway.event_schemas import glob_regex, load_event_schemas
from inngest_gateway.settings import ConfigError, load_settings
from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "minLength": 1},
        "amount": {"type": "integer", "minimum": 1},
        "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, Any] = {
    "app/order.placed": ORDER,
    "app/signup.*": {"type": "object", "properties": {"email": {"type": "string"}}},
    "app/*": {"type": "object", "maxProperties": 5},
}
YAML = """\
# The schemas, as an operator might write them.
app/order.placed:
  type: object
  properties:
    order_id: {type: string, minLength: 1}
    amount: {type: integer, minimum: 1}
  required: [order_id, amount]
"""


def write(tmp_path: Path, content: Any, name: str = "schemas.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.fixture
def checked(make_app: Callable[..., Flask], tmp_path: Path) -> FlaskClient:
    return make_app(INNGEST_GATEWAY_EVENT_SCHEMAS=write(tmp_path, SCHEMAS)).test_client()


def test_a_good_post_reaches_inngest(checked: FlaskClient, inngest: InngestStandIn) -> None:
    data = {"order_id": "o-1", "amount": 3}
    response = checked.post("/api", json={"name": "app/order.placed", "data": data})

    assert response.status_code == 200, response.get_data(as_text=True)
    (received,) = inngest.received
    (event,) = received.events
    assert event["name"] == "app/order.placed"
    assert {k: v for k, v in event["data"].items() if k not in ("user", "request")} == data
    assert event["data"]["user"] is None and event["data"]["request"]["id"]


def test_a_bad_post_is_refused_with_the_failing_fields(
    checked: FlaskClient, inngest: InngestStandIn
) -> None:
    response = checked.post(
        "/api",
        json={"name": "app/order.placed", "data": {"amount": "3", "lines": [{}], "x": 1}},
    )

    body = assert_envelope(response, 422, "validation_failed")
    errors = body["errors"]["data"]
    assert errors["order_id"] == ["Missing data for required field."]
    assert "not of type 'integer'" in errors["amount"][0]
    assert errors["lines.0.sku"] == ["Missing data for required field."]
    assert "x" in errors["_schema"][0]  # additionalProperties: the whole object is to blame
    assert inngest.received == []


def test_glob_patterns_apply_and_every_matching_entry_counts(
    checked: FlaskClient, inngest: InngestStandIn
) -> None:
    refused = checked.post("/api", json={"name": "app/signup.done", "data": {"email": 5}})
    assert "email" in assert_envelope(refused, 422, "validation_failed")["errors"]["data"]

    too_many = {str(i): i for i in range(6)}  # app/* allows five properties at most
    refused = checked.post("/api", json={"name": "app/signup.done", "data": too_many})
    assert assert_envelope(refused, 422, "validation_failed")["errors"]["data"]["_schema"]

    ok = checked.post("/api", json={"name": "app/signup.done", "data": {"email": "a@b.c"}})
    assert ok.status_code == 200
    assert len(inngest.received) == 1


def test_the_default_event_name_is_checked_too(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn
) -> None:
    path = write(tmp_path, {"app/api.posted": {"required": ["message"]}})
    client = make_app(INNGEST_GATEWAY_EVENT_SCHEMAS=path).test_client()

    assert_envelope(client.post("/api", json={"data": {}}), 422, "validation_failed")
    refused = client.post("/api", data={"other": "x"})  # a form posts the default event too
    assert refused.status_code == 422
    assert client.post("/api", data={"message": "hi"}).status_code == 303
    assert len(inngest.received) == 1


def test_unmatched_names_are_not_checked(checked: FlaskClient, inngest: InngestStandIn) -> None:
    response = checked.post("/api", json={"name": "other/x", "data": {"anything": 1}})
    assert (
        response.status_code == 403
    )  # refused by INNGEST_GATEWAY_API_ALLOWED_EVENTS, not by a schema
    response = checked.post("/api", json={"name": "app/x", "data": [1, 2]})
    assert response.status_code == 200  # app/* is only about objects' size
    assert inngest.received[0].events[0]["data"]["value"] == [1, 2]


def test_batches_get_errors_per_index(checked: FlaskClient, inngest: InngestStandIn) -> None:
    good = {"name": "app/order.placed", "data": {"order_id": "o", "amount": 1}}
    bad = {"name": "app/order.placed", "data": {"order_id": "", "amount": 0}}
    response = checked.post("/api", json=[good, bad, good, {**bad, "data": {"amount": 1}}])

    errors = assert_envelope(response, 422, "validation_failed")["errors"]
    assert set(errors) == {"1", "3"}
    assert set(errors["1"]["data"]) == {"order_id", "amount"}
    assert errors["3"]["data"] == {"order_id": ["Missing data for required field."]}
    assert inngest.received == []


@pytest.mark.parametrize("key", ["user", "request", "_inngest"])
def test_server_keys_stay_refused_whatever_the_schema_says(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn, key: str
) -> None:
    lenient = {"app/*": {"type": "object", "properties": {key: {"type": "object"}}}}
    client = make_app(INNGEST_GATEWAY_EVENT_SCHEMAS=write(tmp_path, lenient)).test_client()

    response = client.post("/api", json={"name": "app/x", "data": {key: {"id": 1}}})

    body = assert_envelope(response, 422, "validation_failed")
    reason = "reserved for Inngest" if key == "_inngest" else "set by the server"
    assert body["errors"]["data"][key] == [f"This key is {reason}."]
    assert inngest.received == []


def test_schemas_see_the_clients_data_without_the_server_keys(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn
) -> None:
    closed = {"app/*": {"type": "object", "properties": {"a": {}}, "additionalProperties": False}}
    client = make_app(INNGEST_GATEWAY_EVENT_SCHEMAS=write(tmp_path, closed)).test_client()

    assert client.post("/api", json={"name": "app/x", "data": {"a": 1}}).status_code == 200
    assert set(inngest.received[0].events[0]["data"]) == {"a", "user", "request"}


def test_yaml_files_work(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn
) -> None:
    client = make_app(
        INNGEST_GATEWAY_EVENT_SCHEMAS=write(tmp_path, YAML, "schemas.yaml")
    ).test_client()

    refused = client.post("/api", json={"name": "app/order.placed", "data": {"amount": 0}})
    assert set(assert_envelope(refused, 422, "validation_failed")["errors"]["data"]) == {
        "order_id",
        "amount",
    }
    good = {"name": "app/order.placed", "data": {"order_id": "o", "amount": 2}}
    assert client.post("/api", json=good).status_code == 200


def test_without_the_setting_nothing_is_checked(client: FlaskClient) -> None:
    response = client.post("/api", json={"name": "app/order.placed", "data": {"amount": "x"}})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.json", "does not exist"),
        ("{not json", "bad.json", "not valid JSON or YAML"),
        ("a: [unclosed", "bad.yaml", "not valid JSON or YAML"),
        ("[1, 2]", "list.json", "must map event names"),
        ({"app/x": {"type": "no-such-type"}}, "s.json", "not a valid JSON Schema at type"),
        ({"app/x": {"minLength": -1}}, "s.json", "not a valid JSON Schema"),
        ({"app/x": 5}, "s.json", "must be an object or a boolean"),
        ({"app/x": {"required": ["user"]}}, "s.json", "only the server sets"),
    ],
)
def test_a_bad_file_stops_the_start(tmp_path: Path, content: Any, name: str, message: str) -> None:
    path = str(tmp_path / name) if content is None else write(tmp_path, content, name)

    with pytest.raises(ConfigError) as raised:
        load_settings({"INNGEST_DEV": "1", "INNGEST_GATEWAY_EVENT_SCHEMAS": path})

    assert str(raised.value).startswith("INNGEST_GATEWAY_EVENT_SCHEMAS: ")
    assert message in str(raised.value)


def test_the_schemas_are_read_once_at_start(tmp_path: Path) -> None:
    path = write(tmp_path, SCHEMAS)
    settings = load_settings({"INNGEST_DEV": "1", "INNGEST_GATEWAY_EVENT_SCHEMAS": path})
    assert settings.event_schemas == load_event_schemas(path)
    assert [rule.pattern for rule in settings.event_schemas.rules] == list(SCHEMAS)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("app/*", "app/a/b"),
        ("app/*", "ap/x"),
        ("a?c", "abc"),
        ("a?c", "ac"),
        ("x[!a-c]y", "xdy"),
        ("x[!a-c]y", "xay"),
        ("x[]a]y", "x]y"),
        ("a.b+c", "aXb+c"),
        ("a.b+c", "a.b+c"),
        ("[x", "[x"),
    ],
)
def test_glob_regex_agrees_with_fnmatch(pattern: str, name: str) -> None:
    import fnmatch
    import re

    assert bool(re.search(glob_regex(pattern), name)) == fnmatch.fnmatchcase(name, pattern)
