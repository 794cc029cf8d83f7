"""The HTML pages a person uses to try the service: the demo page and the "sent" page."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template

from inngest_gateway import apidoc
from inngest_gateway.state import gateway_state

from .auth import current

bp = Blueprint("pages", __name__)


@apidoc.documented(
    "get",
    {
        "summary": "The demo page: a form and a fetch button posting to /api",
        "responses": {
            "200": apidoc.page("The page"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.get("/")
def index() -> str:
    """Who is logged in, and two ways to post to `/api`: a plain form and `fetch`."""
    settings = gateway_state().settings
    return render_template(
        "index.html",
        user=current(),
        default_event=settings.api_default_event,
        require_login=settings.api_require_login,
    )


@apidoc.documented(
    "get",
    {
        "summary": "Where a form post lands when it names no page; shows the sent ids",
        "responses": {
            "200": apidoc.page("The page"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.get("/sent")
def sent() -> str:
    """Where a form post lands when it names no page to return to."""
    return render_template("sent.html", user=current())


def init_app(app: Flask) -> None:
    """Register the pages."""
    app.register_blueprint(bp)
