"""Who is posting: the host's Flask-Login user as `data.user`, their event-id scope and tag."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

import sqlalchemy
from flask import current_app, g, request, session
from flask_login import current_user

from .errors import PosterChanged
from .limits import client_ip
from .state import gateway_state

# Where an anonymous poster's scope for event ids lives in the (signed) session cookie.
ANONYMOUS_SCOPE_KEY = "anonymous_scope"
# The poster a page's queued events were made by (`poster_tag`), sent by the browser client.
POSTER_HEADER = "X-Inngest-Poster"
_USER = "_inngest_gateway_user"


def _json_key(value: Any) -> Any:
    """A key as JSON carries it: an int or a string stays one, anything else (a UUID) is text."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return str(value)


def user_key(user: Any) -> Any:
    """The user's lasting identity: the model's primary key, else `id`, else `get_id()`.

    Not `get_id()` first: that is what Flask-Login keeps in the session, which some hosts
    replace to log a user out everywhere (Flask-Security-Too's `fs_uniquifier` changes with
    every password change). The key keeps its type (an integer key stays an integer); a
    composite primary key is a list.
    """
    state = sqlalchemy.inspect(user, raiseerr=False)
    identity = getattr(state, "identity", None)
    if identity:
        keys = [_json_key(value) for value in identity]
        return keys[0] if len(keys) == 1 else keys
    value = getattr(user, "id", None)
    if value is not None and not callable(value):
        return _json_key(value)
    return _json_key(user.get_id())


def default_user_serializer(user: Any) -> dict[str, Any]:
    """`data.user` for a Flask-Login user: `user_key`, plus `email` and `name` if it has them."""
    serialized: dict[str, Any] = {"id": user_key(user)}
    for attribute in ("email", "name"):
        value = getattr(user, attribute, None)
        if isinstance(value, (str, int, float, bool)):
            serialized[attribute] = value
    return serialized


def current_poster() -> dict[str, Any] | None:
    """The logged-in user of the host's Flask-Login, serialized; None when anonymous.

    Computed once per request. A host without a LoginManager has only anonymous posters.
    """
    if _USER in g:
        cached: dict[str, Any] | None = g.get(_USER)
        return cached
    serialized: dict[str, Any] | None = None
    if hasattr(current_app, "login_manager") and current_user.is_authenticated:
        user = current_user._get_current_object()
        if gateway_state().settings.api_session_only and not _from_session(user):
            user = None
    else:
        user = None
    if user is not None:
        serialized = gateway_state().user_serializer(user)
        if not isinstance(serialized, dict) or serialized.get("id") in (None, ""):
            raise TypeError("user_serializer must return a dict with a non-empty 'id'")
    setattr(g, _USER, serialized)
    return serialized


def _from_session(user: Any) -> bool:
    """Whether Flask-Login took the user from the session (or the remember cookie, which it
    copies into the session) rather than from the host's `request_loader`."""
    return session.get("_user_id") is not None and session.get("_user_id") == user.get_id()


def carries_credentials() -> bool:
    """Whether the request names a user by credentials of its own, for the host's loader.

    Only where the host's LoginManager has a `request_loader` (else such headers are not
    credentials for it: a site behind a proxy's HTTP Basic login, say): an `Authorization`
    header, or Flask-Security-Too's token header or query argument, under the names it is
    configured with (`SECURITY_TOKEN_AUTHENTICATION_HEADER`, `..._KEY`; read, never set).
    """
    manager = getattr(current_app, "login_manager", None)
    if manager is None or getattr(manager, "_request_callback", None) is None:
        return False
    config = current_app.config
    header = config.get("SECURITY_TOKEN_AUTHENTICATION_HEADER") or "Authentication-Token"
    argument = config.get("SECURITY_TOKEN_AUTHENTICATION_KEY") or "auth_token"
    return (
        "Authorization" in request.headers or header in request.headers or argument in request.args
    )


def _page_scope() -> str | None:
    """The anonymous scope a page gave its events, from its tag in `X-Inngest-Poster`."""
    match = _ANONYMOUS_PAGE_TAG.fullmatch(request.headers.get(POSTER_HEADER, ""))
    return match[1] if match else None


def poster_scope(user: dict[str, Any] | None) -> str:
    """Who is posting, as the namespace of their event ids: the user, else this browser.

    A user's scope is their serialized `id`, stable across logins. An anonymous poster's is
    the random id in their page's tag (`page_tag`), which the browser client keeps with each
    queued event, so a retry whose first answer was lost keeps its ids; without one (curl, a
    plain form), a random id kept in the session cookie, made by the first post that needs
    it: a client that does not keep the cookie gets a new one with every post.
    """
    if user is not None:
        return f"user:{user['id']}"
    anonymous = _page_scope()
    if anonymous is None:
        anonymous = session.get(ANONYMOUS_SCOPE_KEY)
    if not isinstance(anonymous, str):
        anonymous = session[ANONYMOUS_SCOPE_KEY] = secrets.token_urlsafe(16)
    return f"anonymous:{anonymous}"


ANONYMOUS_TAG = "anonymous"
# An anonymous page's tag: `anonymous.` and its scope, 16 random bytes (no newline, see
# `events.scoped_id`). A bare `anonymous` is the tag of pages of earlier versions.
_ANONYMOUS_PAGE_TAG = re.compile(r"anonymous\.([A-Za-z0-9_-]{22})")


def page_tag(user: dict[str, Any] | None) -> str:
    """The tag a page's script carries: the user's `poster_tag`, else `anonymous.<scope>`.

    An anonymous page's scope is new with each page and kept by the page alone: the page
    sets no cookie and reads no session, so it stays cacheable as the host made it (a copy
    from a shared cache gives its viewers one scope; the client's keys are random, so their
    events still never collide).
    """
    if user is not None:
        return poster_tag(user)
    return f"{ANONYMOUS_TAG}.{secrets.token_urlsafe(16)}"


def poster_tag(user: dict[str, Any] | None) -> str:
    """An opaque tag of the poster, for the browser client to bind queued events to.

    A page gets it in its script tag; the client stores it with each event and sends it back
    in `X-Inngest-Poster`, and a post whose tag is not the current poster's is refused
    (`409`): events queued by one user are never sent as another who logs in later on the
    same browser. A user's tag is a keyed hash of their scope, so it names nobody; anonymous
    tags (`anonymous`, or a page's `anonymous.<scope>`) are accepted for every anonymous
    visitor (their session cookie may end with the browser while their queue lives on;
    their events are still nobody's).
    """
    if user is None:
        return ANONYMOUS_TAG
    secret = current_app.secret_key or ""
    key = secret.encode() if isinstance(secret, str) else secret
    scope = f"user:{user['id']}".encode()
    digest = hmac.new(key, b"inngest-gateway poster\n" + scope, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def check_poster(user: dict[str, Any] | None) -> None:
    """Refuse (`409`) a post whose `X-Inngest-Poster` names another poster than the current one."""
    claimed = request.headers.get(POSTER_HEADER)
    if claimed is None:
        return
    if user is None:
        if claimed != ANONYMOUS_TAG and _page_scope() is None:
            raise PosterChanged()
        return
    # As bytes: a header may hold any Latin-1 text, which compare_digest takes only as bytes.
    if not hmac.compare_digest(
        claimed.encode("utf-8", "surrogateescape"), poster_tag(user).encode()
    ):
        raise PosterChanged()


def poster_key() -> str:
    """Who a post counts against for the rate limit: the user, else the client's IP."""
    user = current_poster()
    return f"user:{user['id']}" if user is not None else f"ip:{client_ip()}"
