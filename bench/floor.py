"""The bench's yardsticks: a bare Flask + Flask-Login app, and the same app sending with inngest-py.

- `POST /login` logs in the one user of an in-memory dict (the bench does it once and reuses
  the session cookie);
- `POST /ok` (login required) answers `{"status": "ok"}`: the bare floor;
- `POST /sdk` (login required) sends the posted `data` with inngest-py's `send_sync` to
  `INNGEST_BASE_URL` with `INNGEST_EVENT_KEY`: the SDK peer of the service's sync mode.

Served by bench/bench.py under gunicorn with the service's own gunicorn.conf.py.
"""

from __future__ import annotations

import os
from typing import Any

import inngest
from flask import Flask, jsonify, request
from flask_login import LoginManager, UserMixin, login_required, login_user


class User(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str, email: str) -> None:
        self.id, self.email = user_id, email


USERS = {"1": User("1", "bench@example.com")}

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
login_manager = LoginManager(app)
client = inngest.Inngest(
    app_id="bench-sdk-peer",
    event_key=os.environ.get("INNGEST_EVENT_KEY"),
    event_api_base_url=os.environ.get("INNGEST_BASE_URL"),
    is_production=True,
)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return USERS.get(user_id)


@app.post("/login")
def login() -> Any:
    login_user(USERS["1"])
    return jsonify(status="ok")


@app.post("/ok")
@login_required  # type: ignore[misc]
def ok() -> Any:
    return jsonify(status="ok")


@app.post("/sdk")
@login_required  # type: ignore[misc]
def sdk() -> Any:
    body = request.get_json(force=True)
    ids = client.send_sync(inngest.Event(name=body["name"], data=body.get("data") or {}))
    return jsonify(status="ok", ids=ids)
