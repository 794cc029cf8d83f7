"""A small app that knows its users only from another app's session, through service.identity.

It stands where the service will stand in `IDENTITY=flask-session` mode: the identity pieces
installed on a bare Flask app, the service's error envelope, and `/api` answering with the
user it found instead of sending an event.

    gunicorn 'tests.readerapp:create_reader_app()'   # settings from the environment
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask, Response, jsonify, make_response, session
from flask_login import current_user, login_required

from service import errors, identity, logs


def create_reader_app(env: Mapping[str, str] | None = None) -> Flask:
    """A Flask app reading the host's session; settings from `env`, else the environment."""
    given = dict(os.environ if env is None else env)
    settings = identity.load_identity_settings(given)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = given["SECRET_KEY"]
    logs.init_app(app)
    errors.init_app(app)
    identity.init_app(app, settings)

    @app.post("/api")
    @login_required
    def post() -> Response:
        """The user a post would carry in `data.user`."""
        return jsonify(status="ok", user=current_user.public())

    @app.get("/api/whoami")
    def whoami() -> Response:
        """The user, or null when anonymous; never asks for a login."""
        user = current_user.public() if current_user.is_authenticated else None
        return jsonify(user=user)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/api/meddle")
    def meddle() -> Response:
        """Writes the session and sets the host's cookies, as a careless hook might."""
        session["_user_id"] = "someone-else"
        session["extra"] = "x"
        response = make_response(jsonify(status="ok"))
        response.set_cookie(settings.session_cookie_name, "forged")
        response.set_cookie(settings.remember_cookie_name, "forged")
        response.set_cookie("reader_own", "kept")
        return response

    return app
