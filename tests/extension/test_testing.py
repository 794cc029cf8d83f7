"""A host's own tests and commands with the gateway mounted: no event key, nothing sent, no file.

The hosts here are plain Flask apps with Flask-Login and the extension; the stand-in for
Inngest is where a send would land, so "nothing sent" is checked where it would show.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import inngest_gateway
from inngest_gateway import InngestGateway
from inngest_gateway.state import gateway_state
from tests.extension.test_extension import (
    ROOT,
    assert_gateway_envelope,
    log_in,
    make_host,
    readme_example,
)
from tests.extension.test_host import GRACE
from tests.standin import InngestStandIn

PACKAGE_HOME = Path(inngest_gateway.__file__).resolve().parents[1]


def files_under(folder: Path) -> set[str]:
    """Every file and folder below `folder`, as relative paths."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture
def testing_hosts(tmp_path: Path, inngest: InngestStandIn) -> Iterator[Callable[..., Flask]]:
    """Hosts under TESTING with no event key; Inngest's address is the stand-in's."""
    made: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = make_host(tmp_path / f"instance-{len(made)}")
        app.config.update({"INNGEST_BASE_URL": inngest.url, **config})
        gateway = InngestGateway(app)
        app.extensions["test_gateway"] = gateway
        made.append(app)
        return app

    yield factory
    for app in made:
        state = gateway_state(app)
        state.deliverer.stop(drain_seconds=0)
        state.outbox_db.dispose()


# -- a host's tests: no key, nothing sent, events recorded with their user ---------------------


@pytest.mark.parametrize(("mode", "status"), [("outbox", 202), ("sync", 200)])
def test_under_testing_posts_are_answered_and_recorded_but_not_sent(
    testing_hosts: Callable[..., Flask],
    inngest: InngestStandIn,
    tmp_path: Path,
    mode: str,
    status: int,
) -> None:
    app = testing_hosts(INNGEST_GATEWAY_DELIVERY_MODE=mode)
    gateway: InngestGateway = app.extensions["test_gateway"]
    client = app.test_client()
    log_in(client, "7")

    with gateway.record_events(app) as events:
        answer = client.post("/api", json={"name": "app/report.run", "data": {"report": 3}})
        refused = client.post("/api", json={"name": "inngest/function.failed"})
    after = client.post("/api", json={"name": "app/after", "data": {}})

    assert answer.status_code == status, answer.get_data(as_text=True)
    assert after.status_code == status
    assert_gateway_envelope(refused, 403, "event_not_allowed")  # checked as in production
    (event,) = events  # neither the refused post nor the one after the block
    assert answer.get_json() == {"status": "ok", "ids": [event["id"]]}
    assert event["name"] == "app/report.run"
    assert event["data"]["report"] == 3
    assert event["data"]["user"] == GRACE
    assert isinstance(event["ts"], int)
    time.sleep(0.2)  # a deliverer, had one started, would have sent by now
    assert inngest.received == []
    assert files_under(tmp_path) == set()  # no outbox, no instance folder


def test_with_a_key_under_testing_still_nothing_is_sent_unless_asked(
    testing_hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    key = {"INNGEST_EVENT_KEY": inngest.event_key, "INNGEST_GATEWAY_DELIVERY_MODE": "sync"}
    suppressed = testing_hosts(**key)
    sending = testing_hosts(**key, INNGEST_GATEWAY_SUPPRESS_SEND=False)
    gateway: InngestGateway = sending.extensions["test_gateway"]

    assert suppressed.test_client().post("/api", json={"data": {"n": 1}}).status_code == 200
    assert inngest.received == []
    with gateway.record_events(sending) as events:
        answer = sending.test_client().post("/api", json={"data": {"n": 2}})

    assert answer.status_code == 200, answer.get_data(as_text=True)
    (event,) = inngest.accepted
    assert event["data"]["n"] == 2
    assert events == [event]  # a real send is recorded too, exactly as Inngest got it


def test_a_sending_test_app_keeps_its_outbox_to_itself(
    testing_hosts: Callable[..., Flask], inngest: InngestStandIn, tmp_path: Path
) -> None:
    """Not the instance folder's file, which the dev server uses, nor another test app's."""
    config = {"INNGEST_EVENT_KEY": inngest.event_key, "INNGEST_GATEWAY_SUPPRESS_SEND": False}
    first = testing_hosts(**config, INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=False)
    second = testing_hosts(**config, INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=False)

    assert first.test_client().post("/api", json={"data": {}}).status_code == 202

    paths = [gateway_state(app).outbox_db.engine.url.database for app in (first, second)]
    assert paths[0] != paths[1]
    assert Path(str(paths[0])).is_file()
    assert not Path(str(paths[0])).is_relative_to(tmp_path)
    assert files_under(tmp_path) == set()
    runner = first.test_cli_runner()
    assert "pending: 1" in runner.invoke(args=["inngest-gateway", "outbox", "status"]).output
    other = second.test_cli_runner().invoke(args=["inngest-gateway", "outbox", "status"])
    assert "pending: 0" in other.output


# -- outside testing: the key is needed to serve posts, not to load the app --------------------


def test_without_a_key_the_app_is_made_and_a_post_gets_a_clear_503(
    testing_hosts: Callable[..., Flask],
    inngest: InngestStandIn,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = testing_hosts(TESTING=False)
    client = app.test_client()

    with caplog.at_level(logging.ERROR, logger="inngest_gateway"):
        answers = [client.post("/api", json={"data": {}}) for _ in range(2)]
    home = client.get("/")

    for answer in answers:
        body = assert_gateway_envelope(answer, 503, "not_configured")
        assert "INNGEST_EVENT_KEY" in body["message"]
    assert home.get_data(as_text=True) == "host home"
    said = [r for r in caplog.records if "INNGEST_EVENT_KEY" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # once, not per post
    assert inngest.received == []
    assert files_under(tmp_path) == set()


def test_without_a_secret_key_the_app_is_made_and_a_post_gets_a_clear_503(
    testing_hosts: Callable[..., Flask],
    inngest: InngestStandIn,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flask's SECRET_KEY, like the event key, is needed to serve posts, not to load the app."""
    app = testing_hosts(TESTING=False, SECRET_KEY=None, INNGEST_EVENT_KEY=inngest.event_key)
    client = app.test_client()

    with caplog.at_level(logging.ERROR, logger="inngest_gateway"):
        answers = [client.post("/api", json={"name": "app/early"}) for _ in range(2)]
    home = client.get("/")
    app.config["SECRET_KEY"] = "set-after-init-app"  # read at each post, as Flask reads it
    later = client.post("/api", json={"name": "app/later"})

    for answer in answers:
        body = assert_gateway_envelope(answer, 503, "not_configured")
        assert "SECRET_KEY is not set" in body["message"]
        assert "set-after" not in answer.get_data(as_text=True)
    assert home.get_data(as_text=True) == "host home"
    said = [r for r in caplog.records if "SECRET_KEY" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # once, not per post
    assert later.status_code == 202, later.get_data(as_text=True)
    deadline = time.monotonic() + 10
    while not inngest.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [event["name"] for event in inngest.accepted] == ["app/later"]


def test_in_dev_mode_too_a_post_without_a_secret_key_is_503_not_a_500(
    testing_hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Dev mode needs no event key, but Flask has no session without a SECRET_KEY."""
    app = testing_hosts(TESTING=False, SECRET_KEY=None, INNGEST_DEV="1")
    client = app.test_client()

    anonymous = client.post("/api", json={"name": "app/dev", "id": "click-1"})  # a scope
    plain = client.post("/api", json={"name": "app/dev"})

    for answer in (anonymous, plain):
        body = assert_gateway_envelope(answer, 503, "not_configured")
        assert "SECRET_KEY is not set" in body["message"]
    assert inngest.received == []


@pytest.mark.timeout(30)
def test_the_deliverer_starts_with_the_first_request_of_any_kind(
    testing_hosts: Callable[..., Flask], inngest: InngestStandIn, tmp_path: Path
) -> None:
    """A backlog goes out once the app serves, a host page being enough; not when it is made."""
    config = {
        "TESTING": False,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_GATEWAY_OUTBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.db'}",
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.05",
    }
    stored = testing_hosts(**config, INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=False)
    assert stored.test_client().post("/api", json={"name": "app/backlog"}).status_code == 202

    serving = testing_hosts(**config)
    time.sleep(0.3)
    assert inngest.received == []  # made, not serving: no deliverer yet
    assert serving.test_client().get("/").get_data(as_text=True) == "host home"

    deadline = time.monotonic() + 10
    while not inngest.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [event["name"] for event in inngest.accepted] == ["app/backlog"]


# -- the README's "Testing your app", run as a host's test suite -------------------------------


def readme_testing_example() -> str:
    """The Python example of the README's "Testing your app" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's testing section has no single Python example"
    assert "gateway.record_events(app)" in blocks[0]
    return str(blocks[0])


def host_env(folder: Path, **extra: str) -> dict[str, str]:
    """A host's environment: no gateway setting at all, and no bytecode files written."""
    return {
        "PATH": os.environ.get("PATH", ""),
        # The host's folder, and wherever this run's inngest_gateway is: the checkout, or
        # the installed wheel in the lowest-version run (never the checkout there).
        "PYTHONPATH": os.pathsep.join([str(folder), str(PACKAGE_HOME)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


@pytest.mark.timeout(60)
def test_the_readmes_host_test_passes_without_a_key_and_sends_nothing(
    tmp_path: Path, inngest: InngestStandIn
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "myapp.py").write_text(readme_example().removesuffix("\napp = create_app()\n"))
    (host / "test_myapp.py").write_text(readme_testing_example())
    before = files_under(host)

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=host,
        env=host_env(host, INNGEST_BASE_URL=inngest.url),  # where a send would land
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert inngest.received == []
    assert files_under(host) == before  # no instance folder, no outbox


# -- a host's `flask` commands: no key, no file --------------------------------------------------

HOST_MODULE = """
import click
from flask import Flask
from flask_login import LoginManager

from inngest_gateway import InngestGateway

app = Flask(__name__)
app.config.from_prefixed_env("HOST")  # HOST_SECRET_KEY, when the test gives one
LoginManager(app)
InngestGateway(app)


@app.get("/")
def home():
    return "home"


@app.cli.command("greet")
@click.argument("name")
def greet(name):
    click.echo(f"hello {name}")
"""


@pytest.mark.parametrize("secret", [{"HOST_SECRET_KEY": "host-secret"}, {}], ids=["secret", "none"])
@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["routes"], "inngest_gateway.post_events"),
        (["greet", "Ada"], "hello Ada"),
        (["inngest-gateway", "--help"], "outbox"),
    ],
)
@pytest.mark.timeout(60)
def test_flask_commands_need_no_key_and_write_no_file(
    tmp_path: Path, args: list[str], shown: str, secret: dict[str, str]
) -> None:
    (tmp_path / "host.py").write_text(textwrap.dedent(HOST_MODULE))
    before = files_under(tmp_path)

    run = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "host", *args],
        cwd=tmp_path,
        env=host_env(tmp_path, **secret),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert shown in run.stdout
    assert "INNGEST_EVENT_KEY" not in run.stderr
    assert "SECRET_KEY" not in run.stderr
    assert files_under(tmp_path) == before  # no instance folder, no outbox, nothing else


def test_the_start_on_first_request_keeps_no_app_alive(tmp_path: Path) -> None:
    """A test suite makes an app per test: once dropped, each must go, engines and all."""
    app = make_host(tmp_path)
    InngestGateway(app)
    assert app.test_client().get("/").status_code == 200  # the signal has fired
    gone = weakref.ref(app)

    del app
    gc.collect()

    assert gone() is None
