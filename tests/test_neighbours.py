"""The gateway beside the extensions Flask apps already run, each set up as its docs say."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask_login import LoginManager, UserMixin, login_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from wtforms import StringField

from service import InngestGateway
from service.state import gateway_state
from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

SECRET = "host-secret-0123456789abcdef0123456789"
HOST = "http://localhost"


class Member(UserMixin):
    def __init__(self, user_id: str, email: str) -> None:
        self.id, self.email = user_id, email


MEMBERS = {"3": Member("3", "ada@example.com")}


class NoteForm(FlaskForm):
    text = StringField()


def host_with_csrf_protect(instance: Path, config: dict[str, Any], *, csrf_first: bool) -> Flask:
    """A host with Flask-WTF's CSRFProtect on every post, bound before or after the gateway."""
    app = Flask("host", instance_path=str(instance))
    app.config.update(SECRET_KEY=SECRET, **config)
    login = LoginManager(app)
    login.user_loader(MEMBERS.get)
    csrf = CSRFProtect()
    if csrf_first:
        csrf.init_app(app)
    InngestGateway(app, url_prefix="/events")
    if not csrf_first:
        csrf.init_app(app)

    @app.get("/login/<user_id>")
    def log_in(user_id: str) -> str:
        login_user(MEMBERS[user_id])
        return "in"

    @app.route("/notes", methods=["GET", "POST"])
    def notes() -> str:
        form = NoteForm()
        if form.validate_on_submit():
            return f"saved {form.text.data}"
        return render_template_string(
            '<form method="post">{{ form.csrf_token }}{{ form.text }}</form>', form=form
        )

    return app


@pytest.fixture
def make_host(tmp_path: Path, inngest: InngestStandIn) -> Iterator[Callable[..., Flask]]:
    config = {
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_SEND_TIMEOUT": 2,
        "DELIVERY_MODE": "sync",
        "OUTBOX_EMBEDDED_DELIVERER": False,
    }
    made: list[Flask] = []

    def factory(**kwargs: Any) -> Flask:
        app = host_with_csrf_protect(tmp_path / f"instance-{len(made)}", config, **kwargs)
        made.append(app)
        return app

    yield factory

    for app in made:
        gateway_state(app).outbox_db.dispose()


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-first", "gateway-first"])
def test_flask_wtf_csrf_protect_leaves_the_gateways_posts_to_the_gateway(
    make_host: Callable[..., Flask], inngest: InngestStandIn, csrf_first: bool
) -> None:
    app = make_host(csrf_first=csrf_first)
    client = app.test_client()
    assert client.get("/login/3").status_code == 200
    same_origin = {"Origin": HOST, "Sec-Fetch-Site": "same-origin"}

    json_post = client.post("/events/api", json={"name": "app/note"}, headers=same_origin)
    assert json_post.status_code == 200, json_post.get_data(as_text=True)
    form_post = client.post(
        "/events/api",
        data={"name": "app/form"},
        headers={**same_origin, "Accept": "application/json"},
    )
    assert form_post.status_code == 200, form_post.get_data(as_text=True)
    users = [e["data"]["user"]["id"] for r in inngest.received for e in r.events]
    assert users == ["3", "3"]

    # The gateway's own check still refuses another site, in its own envelope.
    cross = client.post(
        "/events/api",
        json={"name": "app/note"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert_envelope(cross, 403, cross.get_json()["code"])
    assert len(inngest.received) == 2

    # The host's own forms are protected as before.
    page = client.get("/notes").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, page
    assert client.post("/notes", data={"text": "hi"}).status_code == 400
    saved = client.post("/notes", data={"text": "hi", "csrf_token": token.group(1)})
    assert saved.get_data(as_text=True) == "saved hi"
    # Other methods on the gateway's path get its JSON 405, not CSRFProtect's 400.
    assert_envelope(
        client.put("/events/api", json={}, headers=same_origin), 405, "method_not_allowed"
    )
