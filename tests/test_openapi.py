"""The published contract: GET /openapi.json (OpenAPI 3.1, from the schemas) and GET /docs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from inngest_gateway.api import FALLBACK_ENDPOINT
from inngest_gateway.extension import InngestGateway
from inngest_gateway.state import gateway_state
from service.openapi import build_spec
from service.security import CONTENT_SECURITY_POLICY
from tests.conftest import AuthActions
from tests.standin import InngestStandIn

PATHS = {
    "/api": {"post"},
    "/auth/login": {"get", "post"},
    "/auth/logout": {"post"},
    "/auth/me": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/openapi.json": {"get"},
    "/docs": {"get"},
    "/metrics": {"get"},
    "/": {"get"},
    "/sent": {"get"},
    "/inngest-gateway.js": {"get"},
    "/inngest-gateway.mjs": {"get"},
    "/inngest-gateway.d.ts": {"get"},
}
ORDER = {
    "type": "object",
    "properties": {"amount": {"type": "integer", "minimum": 1}},
    "required": ["amount"],
}


def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema inside the document, its `$ref`s resolved against it."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
    return Draft202012Validator(_rebase(schema), registry=registry)


def _rebase(node: Any) -> Any:
    """Point the document's local `$ref`s at the registered document."""
    if isinstance(node, dict):
        return {
            k: ("urn:doc" + v if k == "$ref" and v.startswith("#/") else _rebase(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(item) for item in node]
    return node


def assert_described(doc: dict[str, Any], path: str, method: str, response: TestResponse) -> None:
    """The answer's status and body are the ones the document gives for this operation."""
    answers = doc["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in answers, f"{method.upper()} {path} answered {status}, not in the document"
    content = answers[status].get("content", {})
    if response.status_code in (301, 302, 303):
        assert "Location" in answers[status]["headers"]
        return
    assert response.mimetype in content
    if response.mimetype == "application/json":
        schema = content["application/json"]["schema"]
        errors = list(validator(doc, schema).iter_errors(response.get_json()))
        assert not errors, [e.message for e in errors]


def test_the_document_is_valid_openapi_3_1(client: FlaskClient) -> None:
    doc = document(client)

    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in doc["paths"].items()} == PATHS


def test_it_comes_from_the_marshmallow_schemas(client: FlaskClient) -> None:
    schemas = document(client)["components"]["schemas"]

    event = schemas["Event"]
    assert set(event["properties"]) == {"name", "data", "id", "ts", "v"}
    assert event["additionalProperties"] is False
    data = event["properties"]["data"]
    assert data["properties"] == {"user": False, "request": False, "_inngest": False}
    assert all(f"`{key}`" in data["description"] for key in ("user", "request", "_inngest"))
    assert schemas["Login"]["required"] == ["email", "password"]
    assert set(schemas["Error"]["required"]) == {
        "status",
        "code",
        "message",
        "errors",
        "request_id",
    }


def test_the_ts_window_is_in_the_document(make_app: Callable[..., Flask]) -> None:
    default = document(make_app().test_client())["components"]["schemas"]["Event"]
    configured = make_app(
        INNGEST_GATEWAY_API_TS_MAX_AGE="36h", INNGEST_GATEWAY_API_TS_MAX_SKEW="30s"
    ).test_client()
    ts = document(configured)["components"]["schemas"]["Event"]["properties"]["ts"]

    assert (
        "At most 7d before (INNGEST_GATEWAY_API_TS_MAX_AGE) and 5m after "
        "(INNGEST_GATEWAY_API_TS_MAX_SKEW)" in (default["properties"]["ts"]["description"])
    )
    assert (
        "At most 36h before (INNGEST_GATEWAY_API_TS_MAX_AGE) and 30s after "
        "(INNGEST_GATEWAY_API_TS_MAX_SKEW)" in (ts["description"])
    )


@pytest.mark.parametrize("key", ["user", "request", "_inngest"])
def test_the_document_refuses_the_reserved_data_keys(client: FlaskClient, key: str) -> None:
    doc = document(client)
    event = validator(doc, {"$ref": "#/components/schemas/Event"})

    assert event.is_valid({"name": "app/x", "data": {"plan": "pro"}})
    assert not event.is_valid({"name": "app/x", "data": {key: {}}})
    response = client.post("/api", json={"name": "app/x", "data": {key: {}}})
    assert response.status_code == 422
    assert list(response.get_json()["errors"]["data"]) == [key]


def test_every_error_answer_of_post_api_is_the_envelope(client: FlaskClient) -> None:
    answers = document(client)["paths"]["/api"]["post"]["responses"]

    assert set(answers) == {
        "200",
        "202",
        "303",
        "400",
        "401",
        "403",
        "409",
        "413",
        "415",
        "422",
        "429",
        "500",
        "502",
        "503",
    }
    for status, answer in answers.items():
        if int(status) >= 400:
            schema = answer["content"]["application/json"]["schema"]
            assert schema["allOf"] == [{"$ref": "#/components/schemas/Error"}]
    assert "Retry-After" in answers["503"]["headers"]
    assert "Retry-After" in answers["429"]["headers"]


def test_real_answers_match_the_document(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    doc = document(client)
    examples: list[tuple[str, str, TestResponse]] = [
        ("/api", "post", client.post("/api", json={"name": "app/x", "data": {"a": 1}})),
        ("/api", "post", client.post("/api", json=[{"data": 1}, {"data": None}])),
        ("/api", "post", client.post("/api", data={"a": "b"})),
        ("/api", "post", client.post("/api", data="{", content_type="application/json")),
        ("/api", "post", client.post("/api", json={"name": "inngest/x"})),
        ("/api", "post", client.post("/api", json={"data": {"user": 1}})),
        ("/api", "post", client.post("/api", json=[{"data": {"user": 1}}, {"bad": 1}])),
        ("/api", "post", client.post("/api", data="x", content_type="text/plain")),
        ("/api", "post", client.post("/api", json={}, headers={"Origin": "https://evil"})),
        ("/auth/me", "get", client.get("/auth/me")),
        ("/auth/login", "get", client.get("/auth/login")),
        ("/auth/login", "post", client.post("/auth/login", json={"email": "x"})),
        ("/auth/login", "post", auth.login(password="wrong")),
        ("/auth/login", "post", auth.login()),
        ("/auth/me", "get", client.get("/auth/me")),
        ("/auth/logout", "post", auth.logout()),
        ("/healthz", "get", client.get("/healthz")),
        ("/readyz", "get", client.get("/readyz")),
        ("/openapi.json", "get", client.get("/openapi.json")),
        ("/docs", "get", client.get("/docs")),
    ]
    statuses = set()
    for path, method, response in examples:
        assert_described(doc, path, method, response)
        statuses.add(response.status_code)
    assert {200, 303, 400, 401, 403, 415, 422} <= statuses


def test_outbox_mode_answers_202_as_described(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_DELIVERY_MODE="outbox").test_client()
    doc = document(client)
    response = client.post("/api", json={"data": {"a": 1}})
    assert response.status_code == 202
    assert_described(doc, "/api", "post", response)


def test_event_schemas_are_in_the_document_when_configured(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn
) -> None:
    path = tmp_path / "schemas.json"
    path.write_text(json.dumps({"app/order.*": ORDER, "app/api.posted": {"type": "object"}}))
    client = make_app(INNGEST_GATEWAY_EVENT_SCHEMAS=str(path)).test_client()

    doc = document(client)
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert schemas["EventData0"]["x-event-pattern"] == "app/order.*"
    assert schemas["EventData0"]["required"] == ["amount"]
    assert schemas["EventData1"]["x-event-pattern"] == "app/api.posted"
    body = doc["paths"]["/api"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/CheckedEvent"}

    # The document refuses what the service refuses, and accepts what it accepts.
    checked = validator(doc, {"$ref": "#/components/schemas/CheckedEvent"})
    assert checked.is_valid({"name": "app/order.placed", "data": {"amount": 2}})
    assert not checked.is_valid({"name": "app/order.placed", "data": {"amount": 0}})
    assert checked.is_valid({"name": "app/other", "data": {"amount": 0}})
    assert not checked.is_valid({"data": []})  # the default name's schema wants an object
    for data, status in (({"amount": 2}, 200), ({"amount": 0}, 422)):
        response = client.post("/api", json={"name": "app/order.placed", "data": data})
        assert response.status_code == status
        assert_described(doc, "/api", "post", response)


def test_without_event_schemas_the_document_has_none(client: FlaskClient) -> None:
    schemas = document(client)["components"]["schemas"]
    assert not any(name.startswith("EventData") for name in schemas)
    assert "CheckedEvent" not in schemas


def test_docs_lists_every_operation_and_works_with_the_csp(client: FlaskClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = response.get_data(as_text=True)
    for path, methods in PATHS.items():
        for method in methods:
            assert f"{method.upper()} {path}</code>" in page
    assert "validation_failed" in page and "Error" in page
    assert 'href="/openapi.json"' in page
    # Nothing inline that the CSP would block, and nothing loaded from elsewhere.
    assert "<script" not in page.lower()
    assert " style=" not in page.lower() and "<style" not in page.lower()
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', page):
        assert url.startswith(("/", "#")), url


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_the_contract_needs_no_login(make_app: Callable[..., Flask], path: str) -> None:
    client = make_app(INNGEST_GATEWAY_API_REQUIRE_LOGIN="true").test_client()
    assert client.get(path).status_code == 200


def _routes(app: Flask) -> dict[str, set[str]]:
    """Every path and method `app.url_map` serves, but static files and the catch-all 405."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", FALLBACK_ENDPOINT):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(path, set()).update(methods)
    return routes


def test_every_route_in_the_url_map_is_documented(app: Flask, client: FlaskClient) -> None:
    doc = document(client)
    routes = _routes(app)

    assert routes == PATHS
    assert {path: set(ops) for path, ops in doc["paths"].items()} == routes
    validate(doc)


def test_the_mounted_api_documents_itself_at_its_own_path(
    tmp_path: Path, inngest: InngestStandIn
) -> None:
    host = Flask("host", instance_path=str(tmp_path / "instance"))
    host.config.update(
        SECRET_KEY="the host's own secret",
        INNGEST_EVENT_KEY=inngest.event_key,
        INNGEST_BASE_URL=inngest.url,
        INNGEST_GATEWAY_DELIVERY_MODE="sync",
        INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=False,
        INNGEST_GATEWAY_API_MAX_BATCH=7,
    )

    @host.get("/host-page")
    def host_page() -> str:
        return "the host's own"

    InngestGateway(host, url_prefix="/hooks", path="/events")
    try:
        doc = build_spec(host)
    finally:
        gateway_state(host).outbox_db.dispose()

    validate(doc)
    assert {path: set(ops) for path, ops in doc["paths"].items()} == {
        "/hooks/events": {"post"},
        "/hooks/inngest-gateway.js": {"get"},
        "/hooks/inngest-gateway.mjs": {"get"},
        "/hooks/inngest-gateway.d.ts": {"get"},
    }
    body = doc["paths"]["/hooks/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["oneOf"][1]["maxItems"] == 7


def _error_codes(node: Any) -> set[str]:
    """Every code an error response of the document names (its `code` enums)."""
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("properties", {}).get("code") if "properties" in node else None
        if isinstance(code, dict) and isinstance(code.get("enum"), list):
            found.update(code["enum"])
        for value in node.values():
            found |= _error_codes(value)
    elif isinstance(node, list):
        for value in node:
            found |= _error_codes(value)
    return found


def test_every_documented_error_code_is_in_the_catalogue(client: FlaskClient) -> None:
    """One catalogue: each code the document promises is an APIError subclass's code."""
    from inngest_gateway import errors

    catalogue = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.APIError)
    }
    documented = _error_codes(client.get("/openapi.json").get_json())
    assert documented, "the document names no error codes"
    assert documented <= catalogue, sorted(documented - catalogue)
