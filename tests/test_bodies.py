"""Bodies at the edges: streamed (chunked) bodies, malformed forms, odd referrers."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

LIMIT = 1024
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=b"


def streamed(client: FlaskClient, body: bytes, content_type: str, **kwargs: Any) -> Any:
    """Post a body without Content-Length, as a server hands on a chunked request."""
    return client.post(
        "/api",
        input_stream=io.BytesIO(body),
        content_type=content_type,
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
        **kwargs,
    )


def multipart(*parts: tuple[str, str], filename: str | None = None) -> bytes:
    lines = []
    for name, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None and name == "upload":
            disposition += f'; filename="{filename}"'
        lines += ["--b", f"Content-Disposition: {disposition}", "", value]
    return ("\r\n".join([*lines, "--b--", ""])).encode()


@pytest.fixture
def small_client(make_app: Any) -> FlaskClient:
    return make_app(INNGEST_GATEWAY_API_MAX_BODY_BYTES=str(LIMIT)).test_client()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"data": "' + b"x" * 3000 + b'"}', "application/json"),
        (b'{"data": 1}' + b" " * 3000, "application/json"),
        (b"message=" + b"x" * 3000 + b"&name=app/other", FORM),
        (multipart(("message", "x" * 3000), ("name", "app/other")), MULTIPART),
    ],
)
def test_streamed_body_over_the_limit_is_refused_not_cut(
    small_client: FlaskClient, inngest: InngestStandIn, body: bytes, content_type: str
) -> None:
    response = streamed(small_client, body, content_type, headers={"Accept": "application/json"})

    assert_envelope(response, 413, "payload_too_large")
    assert inngest.received == []


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b'{"name": "app/x", "data": {"message": "' + b"y" * 900 + b'"}}',
            "application/json",
            "y" * 900,
        ),
        (b"name=app/x&message=" + b"y" * 900, FORM, "y" * 900),
    ],
)
def test_streamed_body_at_the_limit_arrives_whole(
    small_client: FlaskClient, inngest: InngestStandIn, body: bytes, content_type: str, message: str
) -> None:
    response = streamed(small_client, body, content_type, headers={"Accept": "application/json"})

    assert response.status_code == 200, response.get_data(as_text=True)
    (event,) = inngest.received[0].events
    assert event["name"] == "app/x"
    assert event["data"]["message"] == message


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"name=app/x&m=ok&n=\xff", FORM),
        (b"m=caf\xe9", FORM),
        (b'--b\r\nContent-Disposition: form-data; name="m"\r\n\r\nok', MULTIPART),
        (b"m=ok", "multipart/form-data"),
    ],
)
def test_malformed_form_is_400(
    client: FlaskClient, inngest: InngestStandIn, body: bytes, content_type: str
) -> None:
    response = client.post("/api", data=body, content_type=content_type)

    body_json = assert_envelope(response, 400, "invalid_form")
    assert "could not be parsed" in body_json["message"]
    assert inngest.received == []


def test_malformed_form_login_is_400(client: FlaskClient) -> None:
    response = client.post("/auth/login", data=b"email=a%40b.c&password=\xff", content_type=FORM)

    assert_envelope(response, 400, "invalid_form")


def test_empty_file_input_is_ignored(client: FlaskClient, inngest: InngestStandIn) -> None:
    # Browsers send a part with filename="" for a file input left empty.
    body = multipart(("name", "app/x"), ("message", "hi"), ("upload", ""), filename="")

    response = client.post(
        "/api", data=body, content_type=MULTIPART, headers={"Accept": "application/json"}
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    (event,) = inngest.received[0].events
    assert event["data"]["message"] == "hi"
    assert "upload" not in event["data"]


@pytest.mark.parametrize("referrer", ["http://[oops/", "http://local host/x", "::::"])
def test_unparseable_referrer_falls_back_to_the_sent_page(
    client: FlaskClient, inngest: InngestStandIn, referrer: str
) -> None:
    response = client.post("/api", data={"name": "app/x", "m": "1"}, headers={"Referer": referrer})

    assert response.status_code == 303
    assert response.headers["Location"] == "/sent"
    assert len(inngest.accepted) == 1
