"""Production as users run it: real nginx (deploy/nginx.conf) in front of real gunicorn.

nginx listens on loopback ports, plain and TLS; gunicorn runs 2 workers with
TRUSTED_PROXIES=1, so the service believes nginx's forwarded headers and nobody else's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PASSWORD, SECRET_KEY
from tests.processes import BIN, ROOT, Nginx, Server, clean_env, start_gunicorn, start_nginx
from tests.standin import InngestStandIn

# Above each test's own waits: the stack's start (gunicorn 30 s, `flask users create` 60 s,
# openssl 60 s and nginx 45 s, when a test is the first to use it) plus the test's (the
# reload test's ~45 s), so a slow failure reports the test's own message.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(330)]


@dataclass
class Stack:
    gunicorn: Server
    nginx: Nginx
    url: str
    https_url: str
    certificate: str


@pytest.fixture(scope="module")
def stack(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("nginx-stack")
    env = {
        "TRUSTED_PROXIES": "1",
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        # The reload test's load comes from one address.
        "INNGEST_GATEWAY_RATELIMIT_API": "100000 per minute",
    }
    gunicorn = start_gunicorn(directory, inngest_server, env=env)
    nginx: Nginx | None = None
    try:
        create_user(directory)
        port = int(gunicorn.url.rsplit(":", 1)[1])
        nginx = start_nginx(directory, port)
        yield Stack(gunicorn, nginx, nginx.url, nginx.https_url, str(nginx.certificate))
    finally:
        if nginx is not None:
            nginx.kill()
        gunicorn.kill()


def create_user(directory: Path) -> None:
    """`flask users create` against the database gunicorn serves."""
    environment = clean_env(directory) | {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": "test-event-key",
        "DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
        "CREATE_DEMO_USER": "false",
    }
    result = subprocess.run(
        [
            str(BIN / "flask"),
            "--app",
            "wsgi",
            "users",
            "create",
            "ada@example.com",
            "--name",
            "Ada Lovelace",
            "--password",
            PASSWORD,
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def only_event(inngest: InngestStandIn) -> dict[str, Any]:
    (received,) = inngest.received
    (event,) = received.events
    return event


def test_login_and_json_post_carry_the_user_and_the_client_ip(
    stack: Stack, inngest: InngestStandIn
) -> None:
    # Over https: outside dev mode the session cookie is Secure, so a client keeps it
    # only for https (over plain http the same post goes out with user null).
    tls: dict[str, Any] = {"verify": stack.certificate, "timeout": 10}
    with requests.Session() as session:
        login = session.post(
            f"{stack.https_url}/auth/login",
            json={"email": "ada@example.com", "password": PASSWORD},
            **tls,
        )
        assert login.status_code == 200, login.text
        response = session.post(
            f"{stack.https_url}/api",
            json={"name": "app/through.nginx", "data": {"k": 1}},
            headers={"X-Forwarded-For": "6.6.6.6"},  # the client's own claim
            **tls,
        )

    assert response.status_code == 200, response.text
    event = only_event(inngest)
    assert event["name"] == "app/through.nginx"
    assert event["data"]["user"]["email"] == "ada@example.com"
    # The address nginx saw, not the one the client claimed.
    assert event["data"]["request"]["ip"] == "127.0.0.1"
    assert response.json()["ids"] == [event["id"]]


def test_form_post_through_nginx_redirects(stack: Stack, inngest: InngestStandIn) -> None:
    response = requests.post(
        f"{stack.url}/api",
        data={"name": "app/form", "message": "hi", "next": "/thanks"},
        allow_redirects=False,
        timeout=10,
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/thanks"
    assert only_event(inngest)["data"]["message"] == "hi"


def test_request_id_is_the_services_and_the_clients_is_kept_aside(
    stack: Stack, inngest: InngestStandIn
) -> None:
    given = requests.post(
        f"{stack.url}/api", json={}, headers={"X-Request-ID": "client-req-1"}, timeout=10
    )
    made = requests.post(f"{stack.url}/api", json={}, timeout=10)
    hostile = requests.post(
        f"{stack.url}/api", json={}, headers={"X-Request-ID": 'x"}, "evil'}, timeout=10
    )

    answered = [r.headers["X-Request-ID"] for r in (given, made, hostile)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in answered)  # the service's own
    assert len(set(answered)) == 3
    requests_seen = [r.events[0]["data"]["request"] for r in inngest.received]
    assert [r["id"] for r in requests_seen] == answered
    clients = [r["client_request_id"] for r in requests_seen]
    assert clients[0] == "client-req-1"
    # Without a usable id from the browser, nginx passes its own $request_id.
    assert all(re.fullmatch(r"[0-9a-f]{32}", c) for c in clients[1:])
    assert len(set(clients + answered)) == 6


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_refused_cleanly(
    stack: Stack, inngest: InngestStandIn, chunked: bool
) -> None:
    body = b'{"data": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    data: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body

    try:
        response = requests.post(
            f"{stack.url}/api",
            data=data,
            headers={"Content-Type": "application/json", "X-Request-ID": "too-big"},
            timeout=10,
        )
    except requests.ConnectionError:
        pytest.fail("nginx closed the connection instead of answering 413")

    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # nginx's own, not the client's
    assert response.json() == {
        "status": "error",
        "code": "payload_too_large",
        "message": "The request body is too large.",
        "errors": {},
        "request_id": request_id,
    }
    assert inngest.received == []


def test_https_through_nginx_is_https_to_the_service(stack: Stack, inngest: InngestStandIn) -> None:
    tls: dict[str, Any] = {"verify": stack.certificate, "timeout": 10}  # per request: an
    # environment CA bundle would win over a session-wide setting
    with requests.Session() as session:
        login = session.post(
            f"{stack.https_url}/auth/login",
            json={"email": "ada@example.com", "password": PASSWORD},
            **tls,
        )
        assert login.status_code == 200
        assert "Secure" in login.headers["Set-Cookie"]
        assert login.headers["Strict-Transport-Security"]

        # Same-origin checks use the scheme nginx was reached with.
        own = session.post(
            f"{stack.https_url}/api", json={}, headers={"Origin": stack.https_url}, **tls
        )
        http_origin = stack.https_url.replace("https://", "http://")
        other = session.post(
            f"{stack.https_url}/api", json={}, headers={"Origin": http_origin}, **tls
        )
        form = session.post(
            f"{stack.https_url}/api",
            data={"m": "1"},
            headers={"Referer": f"{stack.https_url}/pricing"},
            allow_redirects=False,
            **tls,
        )

    assert own.status_code == 200
    assert other.status_code == 403
    assert other.json()["code"] == "cross_site_request"
    assert form.headers["Location"] == "/pricing"
    assert [r.events[0]["data"]["user"]["email"] for r in inngest.received] == [
        "ada@example.com",
        "ada@example.com",
    ]


def test_hup_reload_under_load_fails_no_request(stack: Stack, inngest: InngestStandIn) -> None:
    statuses: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{stack.url}/api", json={"data": {}}, timeout=15)
                    with lock:
                        statuses.append(response.status_code)
                except requests.RequestException as exc:
                    with lock:
                        failures.append(repr(exc))

    booted_before = stack.gunicorn.output().count("Booting worker")
    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        stack.gunicorn.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while stack.gunicorn.output().count("Booting worker") < booted_before + 2:
            assert time.monotonic() < deadline, stack.gunicorn.output()
            time.sleep(0.1)
        time.sleep(1.5)  # keep the load on while the old workers finish and leave
    finally:
        stop.set()
        joined_by = time.monotonic() + 20  # for all of them, not 20 s each
        for thread in threads:
            thread.join(timeout=max(0.0, joined_by - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)

    assert failures == []
    assert len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(inngest.accepted) == len(statuses)
