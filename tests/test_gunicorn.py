"""The service as production runs it: real gunicorn, real sockets, the stand-in for Inngest.

Each server runs in its own process group, which teardown always kills, and every wait is
bounded, so a hung server fails the test instead of hanging the suite.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
import requests

from tests.conftest import SECRET_KEY
from tests.processes import (
    BIN,
    ROOT,
    Server,
    clean_env,
    gunicorn_refusal,
    start_gunicorn,
)
from tests.standin import InngestStandIn

# Above each test's own waits: the shared server's start (30 s, and 10 s to kill one that
# failed) plus the test's (requests of 15 s, the SIGTERM test's ~45 s), so a slow failure
# reports the test's own message rather than pytest-timeout's.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

MAX_BODY = 65536


@pytest.fixture(scope="module")
def gunicorn(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One production-like server shared by the module's request tests."""
    server = start_gunicorn(
        tmp_path_factory.mktemp("gunicorn"),
        inngest_server,
        env={"INNGEST_GATEWAY_API_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    try:
        yield server
    finally:
        server.kill()


def post(url: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST with a fresh connection; the status, the JSON body and the headers."""
    with requests.Session() as session, session.post(url, timeout=15, **kwargs) as response:
        return response.status_code, response.json(), dict(response.headers)


def on_threads(
    target: Callable[[int], None], count: int, *, seconds: float
) -> tuple[list[BaseException], list[threading.Thread]]:
    """Run target(0..count-1) on a thread each, joined within `seconds` for all of them; the
    exceptions they raised (reported in the test's thread) and the threads."""
    failures: list[BaseException] = []
    lock = threading.Lock()

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            with lock:
                failures.append(exc)

    pool = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in pool:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in pool:
        thread.join(max(0.0, deadline - time.monotonic()))
    return failures, pool


# -- requests through gunicorn -----------------------------------------------------------


def test_json_post_reaches_inngest(gunicorn: Server, inngest: InngestStandIn) -> None:
    status, body, headers = post(
        f"{gunicorn.url}/api",
        json={"name": "app/gunicorn", "data": {"k": "v"}},
        headers={"X-Request-ID": "gunicorn-1", "User-Agent": "pytest-gunicorn"},
    )

    assert status == 200, body
    assert body["status"] == "ok"
    request_id = headers["X-Request-ID"]
    assert request_id != "gunicorn-1"  # the server's own
    assert inngest.accepted_ids() == body["ids"]
    (event,) = inngest.accepted
    assert event["name"] == "app/gunicorn"
    assert event["data"]["k"] == "v"
    assert event["data"]["user"] is None
    assert event["data"]["request"]["id"] == request_id
    assert event["data"]["request"]["client_request_id"] == "gunicorn-1"
    assert event["data"]["request"]["ip"] == "127.0.0.1"
    assert event["data"]["request"]["user_agent"] == "pytest-gunicorn"
    log = gunicorn.output()
    # Production logs are JSON lines: one per request, with its id, route, status and latency.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (access,) = [
        line
        for line in lines
        if line.get("request_id") == request_id and line["logger"] == "service.access"
    ]
    assert {k: access[k] for k in ("method", "route", "status", "events", "client_ip")} == {
        "method": "POST",
        "route": "/api",
        "status": 200,
        "events": 1,
        "client_ip": "127.0.0.1",
    }
    assert access["client_request_id"] == "gunicorn-1"
    assert access["latency_ms"] >= 0 and access["user_id"] is None
    assert inngest.event_key not in log
    assert SECRET_KEY not in log


def test_body_over_the_limit_with_a_content_length_is_413(
    gunicorn: Server, inngest: InngestStandIn
) -> None:
    body = b'{"name": "app/big", "data": {"text": "' + b"x" * MAX_BODY + b'"}}'

    status, answer, headers = post(
        f"{gunicorn.url}/api", data=body, headers={"Content-Type": "application/json"}
    )

    assert status == 413, answer
    assert answer["status"] == "error"
    assert answer["code"] == "payload_too_large"
    assert answer["request_id"] == headers["X-Request-ID"]
    assert inngest.received == []


def oversized_json() -> Iterator[bytes]:
    """A JSON event whose string runs past the body limit."""
    yield b'{"name": "app/big", "data": {"text": "'
    for _ in range(2 * MAX_BODY // 4096):
        yield b"x" * 4096
    yield b'"}}'


def padded_json() -> Iterator[bytes]:
    """Valid JSON whose first max body bytes alone would also parse: a cut must not pass."""
    yield b'{"name": "app/padded"}'
    for _ in range(2 * MAX_BODY // 4096):
        yield b" " * 4096


def oversized_form() -> Iterator[bytes]:
    yield b"name=app%2Fform&message="
    for _ in range(2 * MAX_BODY // 4096):
        yield b"a" * 4096


@pytest.mark.parametrize(
    ("chunks", "content_type"),
    [
        (oversized_json, "application/json"),
        (padded_json, "application/json"),
        (oversized_form, "application/x-www-form-urlencoded"),
    ],
)
def test_chunked_body_over_the_limit_is_413_never_cut(
    gunicorn: Server,
    inngest: InngestStandIn,
    chunks: Callable[[], Iterator[bytes]],
    content_type: str,
) -> None:
    try:
        with (
            requests.Session() as session,
            session.post(
                f"{gunicorn.url}/api",
                data=chunks(),
                headers={"Content-Type": content_type, "Accept": "application/json"},
                timeout=15,
            ) as response,
        ):
            assert response.request.headers["Transfer-Encoding"] == "chunked"
            status, body = response.status_code, response.json()
            request_id = response.headers["X-Request-ID"]
    except requests.ConnectionError:
        status = None  # at worst the server may drop the connection on the unread rest

    if status is not None:
        assert status == 413, body
        assert body["status"] == "error"
        assert body["code"] == "payload_too_large"
        assert body["request_id"] == request_id
    assert inngest.received == []


@pytest.mark.parametrize("size", [3, MAX_BODY - 1024])
def test_chunked_body_within_the_limit_arrives_whole(
    gunicorn: Server, inngest: InngestStandIn, size: int
) -> None:
    text = ("0123456789abcdef" * (size // 16 + 1))[:size]

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "app/chunked",'
        yield b' "data": {"text": "'
        encoded = text.encode()
        for start in range(0, len(encoded), 4000):
            yield encoded[start : start + 4000]
        yield b'"}}'

    with (
        requests.Session() as session,
        session.post(
            f"{gunicorn.url}/api",
            data=chunks(),
            headers={"Content-Type": "application/json"},
            timeout=15,
        ) as response,
    ):
        status, body = response.status_code, response.json()
        sent_headers = response.request.headers

    assert sent_headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in sent_headers
    assert status == 200, body
    assert body["status"] == "ok"
    assert inngest.accepted_ids() == body["ids"]
    assert inngest.accepted[0]["data"]["text"] == text


def test_concurrent_posts_all_arrive(gunicorn: Server, inngest: InngestStandIn) -> None:
    threads, per_thread = 4, 5
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with requests.Session() as session:
            for i in range(per_thread):
                with session.post(
                    f"{gunicorn.url}/api",
                    json={"name": "app/concurrent", "id": f"c-{n}-{i}"},
                    timeout=15,
                ) as response:
                    with lock:
                        results.append((response.status_code, response.json()))

    failures, pool = on_threads(worker, threads, seconds=30)

    assert failures == []
    assert not any(thread.is_alive() for thread in pool)
    assert len(results) == threads * per_thread
    assert all(status == 200 and body["status"] == "ok" for status, body in results), results
    expected = {body["ids"][0] for _, body in results}  # derived from c-<n>-<i>, all distinct
    assert len(expected) == threads * per_thread
    assert sorted(inngest.accepted_ids()) == sorted(expected)


def test_sync_mode_keeps_many_sends_in_flight_at_once(
    gunicorn: Server, inngest: InngestStandIn
) -> None:
    """Sync mode's default threads (gunicorn.conf.py): a post waiting for Inngest holds a
    thread, not a worker, so 32 posts against a slow Inngest are all there at once, however
    gunicorn's 2 workers share the connections (with 4 threads each, as before, at most 8
    were)."""
    posts = 32
    inngest.delay = 2.0
    statuses: list[int] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        status, _, _ = post(f"{gunicorn.url}/api", json={"name": "app/wide", "id": f"w-{n}"})
        with lock:
            statuses.append(status)

    # 30 s for all of them: each waits 2 s at the stand-in.
    failures, _ = on_threads(one, posts, seconds=30)

    assert failures == []
    assert statuses == [200] * posts
    assert len(set(inngest.accepted_ids())) == posts
    # Counted at the stand-in, not timed: every post's send was there together.
    assert inngest.most_in_flight == posts


@pytest.mark.parametrize(
    ("path", "header", "value"),
    [
        ("//evil.example/api", "SCRIPT_NAME", "//evil.example"),
        ("/api", "PATH_INFO", "//evil.example/api"),
        ("/api", "REMOTE_USER", "admin"),
    ],
)
def test_forwarder_headers_from_loopback_are_not_trusted(
    gunicorn: Server, inngest: InngestStandIn, path: str, header: str, value: str
) -> None:
    """A form post from 127.0.0.1 cannot move the app's root (and its redirects) elsewhere."""
    host, port = gunicorn.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        connection.request(
            "POST",
            path,
            body=urlencode({"name": "app/forwarder", "note": "hi"}),
            headers={"Content-Type": "application/x-www-form-urlencoded", header: value},
        )
        response = connection.getresponse()
        status, location = response.status, response.getheader("Location")
        response.read()
    finally:
        connection.close()

    assert status < 500, (status, gunicorn.output()[-2000:])
    if location is not None:
        target = urlsplit(urljoin(gunicorn.url + path, location))
        assert (target.scheme, target.netloc) == ("http", f"{host}:{port}"), location
        assert not location.startswith("//"), location
    if inngest.accepted:  # the post went through: it lands on the service's own page
        assert (status, location) == (303, "/sent")


def test_sigterm_finishes_the_request_in_flight_and_stops(
    inngest: InngestStandIn, tmp_path: Path
) -> None:
    server = start_gunicorn(tmp_path, inngest)
    try:
        inngest.delay = 1.0
        answers: list[tuple[int, dict[str, Any]]] = []

        def slow_post() -> None:
            status, body, _ = post(f"{server.url}/api", json={"name": "app/last", "id": "last"})
            answers.append((status, body))

        client = threading.Thread(target=slow_post)
        client.start()
        deadline = time.monotonic() + 5
        while not inngest.received and time.monotonic() < deadline:
            time.sleep(0.02)  # the request is with the stand-in, which takes 1 s to answer
        time.sleep(0.2)
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=10)
        stopped_in = time.monotonic() - stopping
        client.join(10)

        assert returncode == 0, server.output()
        assert stopped_in < 5
        assert [(status, body["status"]) for status, body in answers] == [(200, "ok")]
        assert inngest.accepted_ids() == answers[0][1]["ids"]
        deadline = time.monotonic() + 5
        while server.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.group_alive()  # no worker left behind
        with pytest.raises(requests.ConnectionError), requests.Session() as session:
            session.get(f"{server.url}/healthz", timeout=2)
    finally:
        server.kill()


# -- refusing to start -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({"INNGEST_EVENT_KEY": "some-key"}, "SECRET_KEY"),
        ({"SECRET_KEY": "some-secret"}, "INNGEST_EVENT_KEY"),
    ],
)
def test_flask_cli_refuses_to_start_without_a_required_setting(
    tmp_path: Path, present: dict[str, str], missing: str
) -> None:
    # Run outside the repository so no developer's .env fills the gap.
    env = clean_env(tmp_path) | present | {"PYTHONPATH": str(ROOT)}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'gateway.db'}"

    result = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", "users", "list"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "configuration error" in line]
    assert line.startswith("inngest-gateway: configuration error: ")
    assert missing in line
    assert "some-key" not in output
    assert "some-secret" not in output
    assert not (tmp_path / "gateway.db").exists()


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({"INNGEST_EVENT_KEY": "some-key"}, "SECRET_KEY"),
        ({"SECRET_KEY": "some-secret"}, "INNGEST_EVENT_KEY"),
    ],
)
def test_gunicorn_refuses_to_start_without_a_required_setting(
    tmp_path: Path, present: dict[str, str], missing: str
) -> None:
    line, output = gunicorn_refusal(tmp_path, present)
    assert line.startswith(f"inngest-gateway: configuration error: {missing}: ")
    assert "some-key" not in output and "some-secret" not in output
