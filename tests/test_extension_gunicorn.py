"""The test host app (tests/hostapp.py) mounting `InngestGateway`, served by real processes.

gunicorn with 2 workers (with and without `preload_app`) and `flask run` serve the host with
`HOST_MOUNT_GATEWAY=true`; a person logs in on the host's own login page and posts to its
`/api`; the operator commands run as `flask --app ... inngest-gateway ...` subprocesses; and
a backlog left by a crash reaches Inngest once the host is back, with nobody posting.

A second host with a custom `user_serializer` and `url_prefix` is in
tests/extension/test_extension.py (in-process); nothing about it depends on the server.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PASSWORD, SECRET_KEY
from tests.hostapp import (
    HOST_COOKIE,
    HOST_HEADER,
    add_user,
    create_host_app,
    start_app,
)
from tests.processes import BIN, ROOT, Server, clean_env, free_port, launch, run_flask
from tests.standin import InngestStandIn

pytestmark = pytest.mark.slow

HOST_SPEC = "tests.hostapp:create_host_app()"


def host_env(tmp_path: Path, inngest_url: str, event_key: str) -> dict[str, str]:
    """The host's settings, and the gateway's under their own names, outbox mode."""
    return {
        "SECRET_KEY": SECRET_KEY,
        "HOST_DATABASE_URL": f"sqlite:///{tmp_path / 'host.db'}",
        "HOST_MOUNT_GATEWAY": "true",
        "INNGEST_EVENT_KEY": event_key,
        "INNGEST_BASE_URL": inngest_url,
        "INNGEST_GATEWAY_SEND_TIMEOUT": "1",
        "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "true",
        "INNGEST_GATEWAY_OUTBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.db'}",
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
        "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "100ms",
        "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "200ms",
        "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "2",
        "INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS": "1",
    }


@pytest.fixture
def env(tmp_path: Path, inngest: InngestStandIn) -> dict[str, str]:
    return host_env(tmp_path, inngest.url, inngest.event_key)


@pytest.fixture
def ada(env: dict[str, str]) -> str:
    """A user in the host's own table; her id, as Flask-Login's get_id() gives it."""
    app = create_host_app(env | {"HOST_MOUNT_GATEWAY": "false"})
    user_id = add_user(app, "ada@example.com", "Ada Lovelace", PASSWORD)
    app.extensions["host_db"].dispose()
    return str(user_id)


def documented_hooks() -> str:
    """The gunicorn hooks of docs/delivery.md's "In your Flask app", for this host (`myapp` is
    its module)."""
    text = (ROOT / "docs" / "delivery.md").read_text()
    section = text.split("\n## In your Flask app\n", 1)[1].split("\n## ", 1)[0]
    blocks = [
        textwrap.dedent(block)
        for block in re.findall(r"```python\n(.*?)```", section, re.S)
        if "def worker_exit(" in block
    ]
    assert len(blocks) == 1, "docs/delivery.md's host section has no gunicorn hooks example"
    assert "from myapp import gateway" in blocks[0]
    return blocks[0].replace("from myapp import gateway", "from tests.hostapp import gateway")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server a test starts, killed at its end whatever happened."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def serve(
    how: str, directory: Path, env: dict[str, str], servers: list[Server], **kwargs: Any
) -> Server:
    """The host under gunicorn (2 workers, `preload`: preload_app) or under `flask run`."""
    if how == "flask-run":
        server = flask_run(directory, env)
    else:
        args = ["--preload"] if how == "gunicorn-preload" else []
        server = start_app(
            HOST_SPEC, directory, env, config_text=documented_hooks(), extra_args=args, **kwargs
        )
    servers.append(server)
    return server


def flask_run(directory: Path, env: dict[str, str]) -> Server:
    """`flask run` (the development server, no reloader) serving the host on a loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(BIN / "flask"), "--app", HOST_SPEC, "run", "--port", str(port), "--no-reload"]
    return launch(command, clean_env(directory) | env, directory / "flask-run.log", port)


def flask_cli(env: dict[str, str], directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`flask --app <host factory> <args>` as an operator runs it."""
    return run_flask(HOST_SPEC, directory, env, *args, timeout=30)


def log_in(session: requests.Session, url: str, email: str, password: str) -> requests.Response:
    """Through the host's own login page: its form, its CSRF token, its session cookie."""
    page = session.get(f"{url}/login", timeout=10)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return session.post(
        f"{url}/login",
        data={"csrf_token": match.group(1), "email": email, "password": password, "next": "/"},
        allow_redirects=False,
        timeout=10,
    )


def wait_for(inngest: InngestStandIn, count: int, timeout: float, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while len(inngest.accepted) < count:
        if time.monotonic() > deadline:
            pytest.fail(
                f"Inngest has {len(inngest.accepted)} of {count} events after {timeout}s:\n"
                + server.output()
            )
        time.sleep(0.05)


def stored_while_inngest_is_down(tmp_path: Path, inngest: InngestStandIn, count: int) -> None:
    """Events posted to the mounted `/api` while nothing listens where Inngest should be."""
    down = host_env(tmp_path, f"http://127.0.0.1:{free_port()}", inngest.event_key)
    app = create_host_app(down | {"INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false"})
    client = app.test_client()
    for n in range(count):
        response = client.post("/api", json={"name": "app/backlog", "data": {"n": n}})
        assert response.status_code == 202, response.get_data(as_text=True)
    app.extensions["inngest_gateway"].outbox_db.dispose()
    app.extensions["host_db"].dispose()


# -- posting through the host, under gunicorn ----------------------------------------------------


@pytest.mark.timeout(90)  # gunicorn's start (30 s), delivery (20 s), the stop (10 s)
def test_logged_in_post_to_the_hosts_api_reaches_inngest_as_the_hosts_user(
    tmp_path: Path,
    env: dict[str, str],
    ada: str,
    inngest: InngestStandIn,
    servers: list[Server],
) -> None:
    server = serve("gunicorn", tmp_path / "host", env, servers)
    with requests.Session() as browser:
        login = log_in(browser, server.url, "ada@example.com", PASSWORD)
        assert login.status_code == 303, login.text
        assert browser.get(f"{server.url}/whoami", timeout=10).json()["user"]["id"] == int(ada)

        posted = browser.post(
            f"{server.url}/api",
            json={"name": "app/host.report", "data": {"report": 7}},
            headers={"Sec-Fetch-Site": "same-origin", "Origin": server.url},
            timeout=10,
        )

        assert posted.status_code == 202, posted.text
        (event_id,) = posted.json()["ids"]
        wait_for(inngest, 1, 20, server)
        (event,) = inngest.accepted
        assert event["id"] == event_id
        assert event["name"] == "app/host.report"
        assert event["data"]["report"] == 7
        assert event["data"]["user"] == {
            "id": int(ada),  # the model's primary key, as the model has it
            "email": "ada@example.com",
            "name": "Ada Lovelace",
        }
        # The gateway's answer is its own: its request id, its JSON.
        assert re.fullmatch(r"[0-9a-f]{32}", posted.headers["X-Request-ID"])


@pytest.mark.timeout(60)
def test_hosts_other_routes_keep_their_pages_headers_and_cookies(
    tmp_path: Path, env: dict[str, str], ada: str, servers: list[Server]
) -> None:
    server = serve("gunicorn", tmp_path / "host", env, servers)
    with requests.Session() as browser:
        missing = browser.get(f"{server.url}/no-such-page", timeout=10)
        home = browser.get(f"{server.url}/", timeout=10)
        login = log_in(browser, server.url, "ada@example.com", "wrong password")
        wrong_method = browser.get(f"{server.url}/api", timeout=10)

    # The host's own 404 page, header and cookie; nothing of the gateway's.
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("text/html")
    assert "Host app: page not found" in missing.text
    assert missing.headers[HOST_HEADER[0]] == HOST_HEADER[1]
    assert HOST_COOKIE in missing.cookies
    for response in (missing, home, login):
        assert response.headers[HOST_HEADER[0]] == HOST_HEADER[1]
        assert "X-Request-ID" not in response.headers
        assert not any(h.lower().startswith("access-control-") for h in response.headers)
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert home.status_code == 200 and 'action="/api"' in home.text
    assert login.status_code == 401 and "Wrong e-mail or password." in login.text
    # Its own path answers with its own envelope (and the host's header on top, as it asks).
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert wrong_method.headers["X-Request-ID"] == wrong_method.json()["request_id"]


# -- the operator commands on the host -----------------------------------------------------------


@pytest.mark.timeout(120)  # four commands (30 s each at most)
def test_cli_group_on_the_host(
    tmp_path: Path, env: dict[str, str], inngest: InngestStandIn
) -> None:
    stored_while_inngest_is_down(tmp_path, inngest, 2)

    status = flask_cli(env, tmp_path, "inngest-gateway", "outbox", "status")
    assert status.returncode == 0, status.stderr
    assert "pending: 2" in status.stdout
    # With Inngest up and the embedded deliverer on, the command still delivers nothing:
    # no deliverer runs in a command (and none holds up its exit to drain).
    assert inngest.received == []

    deliver = flask_cli(env, tmp_path, "inngest-gateway", "outbox", "deliver", "--once")
    assert deliver.returncode == 0, deliver.stderr
    assert "handled 2 event(s)" in deliver.stdout
    assert sorted(event["data"]["n"] for event in inngest.accepted) == [0, 1]

    after = flask_cli(env, tmp_path, "inngest-gateway", "outbox", "status")
    assert "pending: 0" in after.stdout
    unknown = flask_cli(env, tmp_path, "outbox", "status")  # one group, one name
    assert unknown.returncode != 0


# -- the deliverer starts with each serving process, not with its first post ---------------------


@pytest.mark.parametrize("how", ["gunicorn", "gunicorn-preload", "flask-run"])
@pytest.mark.timeout(120)  # the commands (30 s), the start (30 s), delivery (20 s), the stop
def test_backlog_is_delivered_after_a_restart_without_a_post(
    tmp_path: Path,
    env: dict[str, str],
    inngest: InngestStandIn,
    servers: list[Server],
    how: str,
) -> None:
    stored_while_inngest_is_down(tmp_path, inngest, 3)
    status = flask_cli(env, tmp_path, "inngest-gateway", "outbox", "status")
    assert "pending: 3" in status.stdout, status.stderr

    # Back up with Inngest reachable; only /healthz is asked (the host's own route), no post.
    server = serve(how, tmp_path / "host", env, servers)

    wait_for(inngest, 3, 20, server)
    assert sorted(event["data"]["n"] for event in inngest.accepted) == [0, 1, 2]
    assert all(event["name"] == "app/backlog" for event in inngest.accepted)
    assert len(inngest.accepted_ids()) == len(set(inngest.accepted_ids()))
    server.kill()
    assert "Traceback" not in server.output()
