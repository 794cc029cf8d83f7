"""Request ids: the client's own `X-Request-ID`, kept aside from the server's id for a request."""

from __future__ import annotations

import re

from flask import request

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def client_request_id() -> str | None:
    """The `X-Request-ID` the client sent, when it is a plain token of at most 128 characters.

    Only for correlating with the client's own logs: it is never the request's id.
    """
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _VALID_REQUEST_ID.fullmatch(incoming) else None
