"""Posts that need a login: a form goes to the host's login page (`303`), the rest get `401`."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import current_app, redirect, request, url_for
from werkzeug.routing import BuildError
from werkzeug.wrappers import Response as BaseResponse

from .errors import LoginRequired
from .payload import FORM_TYPES, referrer_path, wants_json
from .state import BLUEPRINT


def check_login_url(url: str) -> str:
    """A path on this site (`/login`) or an http(s) URL; never `//host` or control characters."""
    url = url.strip()
    if any(ord(c) < 0x20 or c in "\\ " for c in url):
        raise ValueError("must not contain spaces, backslashes or control characters")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    if url.startswith("/") and not url.startswith("//") and not parts.netloc:
        return url
    raise ValueError(f"must be a path like /login or an http(s) URL, got {url!r}")


def login_redirect_url(login_url: str, next_path: str | None) -> str:
    """LOGIN_URL with `next` set to the page to come back to, keeping LOGIN_URL's own query."""
    if not next_path:
        return login_url
    parts = urlsplit(login_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "next"]
    query.append(("next", next_path))
    return urlunsplit(parts._replace(query=urlencode(query)))


def host_login_view() -> str | None:
    """The host's Flask-Login `login_view` (for our blueprint, else the app's) as a URL.

    Resolved as Flask-Login does: an http(s) URL or a path as it is, else an endpoint. None
    when the host has none, or names an endpoint it does not have.
    """
    manager = getattr(current_app, "login_manager", None)
    if manager is None:
        return None
    view = getattr(manager, "blueprint_login_views", {}).get(BLUEPRINT) or manager.login_view
    if not view:
        return None
    if view.startswith(("https://", "http://", "/")):
        return str(view)
    try:
        return url_for(view)
    except BuildError:
        return None


def login_required(login_url: str | None) -> BaseResponse:
    """Answer a post that needs a login: a form goes to the host's login page, the rest get 401.

    A form post (from a page, not asking for JSON) is redirected with `303` to `login_url`,
    else to Flask-Login's `login_view` when the host has one, with `next` set to the
    referring page, when that page is on this site. JSON, fetch and XHR posts, and every post
    when there is no login page, get the `401 login_required` envelope.
    """
    if request.mimetype not in FORM_TYPES or wants_json(request):
        raise LoginRequired()
    target = login_url or host_login_view()
    if target is None:
        raise LoginRequired()
    return redirect(login_redirect_url(target, referrer_path(request)), 303)
