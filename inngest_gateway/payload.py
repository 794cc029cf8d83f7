"""Request bodies to raw event items (strict JSON or form fields), and the answer wanted."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from flask import Request, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from .errors import EmptyBody, InvalidForm, InvalidJSON, UnsupportedMediaType, ValidationFailed

MAX_DEPTH = 64
JSON_TYPE = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
FORM_FIELDS = ("name", "next")
_SURROGATE = re.compile("[\ud800-\udfff]")


def buffer_streamed_body(limit: int | None = None) -> None:
    """Refuse a body over the limit; read one sent without Content-Length (chunked) in full.

    Werkzeug would stop reading at the limit and hand on a body cut short. The limit is
    the given one (the gateway's, per request), else the request's `max_content_length`:
    Flask before 3.1 cannot set that per request, so the gateway checks its own here.
    """
    if limit is None:
        limit = request.max_content_length
    if limit is None:
        return
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()
    environ = request.environ
    if environ.get("CONTENT_LENGTH") or not environ.get("wsgi.input_terminated"):
        return
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
    environ["CONTENT_LENGTH"] = str(size)


def _strict_parser(request: Request) -> Callable[[], FormDataParser]:
    def make() -> FormDataParser:
        parser = type(request).make_form_data_parser(request)
        parser.silent = False
        return parser

    return make


def form_fields(request: Request) -> MultiDict[str, str]:
    """The form's fields; a body that is not a well-formed form is a 400.

    Werkzeug parses forms silently (a malformed body reads as an empty form); this request,
    and only this one, gets a parser that raises instead, so the host's request class and
    its other routes are left as they are.
    """
    real: Request = getattr(request, "_get_current_object", lambda: request)()
    if "form" not in real.__dict__:
        real.make_form_data_parser = _strict_parser(real)  # type: ignore[method-assign]
    try:
        return real.form
    except ValueError as exc:
        raise InvalidForm(f"The form body could not be parsed: {exc}.") from None


@dataclass(frozen=True)
class Payload:
    """The event items a request carries, before validation."""

    items: list[Any]
    batch: bool
    form: bool
    next: str | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)  # Python refuses integers of more than 4300 digits
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"number out of range: {text[:40]}...") from None
    return value


def _check_tree(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings holding lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise InvalidJSON(
                    "The JSON holds a lone surrogate (\\ud800-\\udfff), not valid text."
                )
        elif isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidJSON(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def strict_json(raw: bytes) -> Any:
    """Parse JSON that Inngest will also accept: UTF-8, finite numbers, bounded depth."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not UTF-8.") from None
    if not text.strip():
        raise EmptyBody()
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})."
        ) from None
    except ValueError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise InvalidJSON(f"The JSON is nested more than {MAX_DEPTH} levels deep.") from None
    _check_tree(value)
    return value


def _form_payload(request: Request) -> Payload:
    form = form_fields(request)
    if any(upload.filename for upload in request.files.values()):
        raise UnsupportedMediaType("File uploads are not supported; send text fields only.")
    single: dict[str, str | None] = {}
    for field in FORM_FIELDS:
        values = form.getlist(field)
        if len(values) > 1:
            raise ValidationFailed(errors={field: ["Give this field once."]})
        single[field] = values[0].strip() if values and values[0].strip() else None
    data = {
        key: values[0] if len(values) == 1 else values
        for key, values in form.lists()
        if key not in FORM_FIELDS
    }
    item: dict[str, Any] = {"data": data}
    if single["name"]:
        item["name"] = single["name"]
    return Payload(items=[item], batch=False, form=True, next=single["next"])


def read_payload(request: Request, max_batch: int) -> Payload:
    """The event items in a JSON or form body; any other body is refused."""
    if request.mimetype in FORM_TYPES:
        return _form_payload(request)
    if request.mimetype != JSON_TYPE:
        raise UnsupportedMediaType()
    body = strict_json(request.get_data(cache=False))
    if isinstance(body, dict):
        return Payload(items=[body], batch=False, form=False)
    if not isinstance(body, list):
        raise ValidationFailed(
            "Send one event object or an array of event objects.",
            errors={"_schema": ["Expected an object or an array."]},
        )
    if not body:
        raise ValidationFailed(
            "The array holds no events.", errors={"_schema": ["Send at least one event."]}
        )
    if len(body) > max_batch:
        raise ValidationFailed(
            f"At most {max_batch} events can be sent at once.",
            errors={"_schema": [f"Got {len(body)} events; the limit is {max_batch}."]},
        )
    return Payload(items=body, batch=True, form=False)


def wants_json(request: Request) -> bool:
    """Whether to answer with JSON rather than redirect: JSON bodies, XHR, or an explicit Accept."""
    if request.mimetype == JSON_TYPE:
        return True
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return True
    accept = request.accept_mimetypes
    if not any(mimetype == JSON_TYPE and q > 0 for mimetype, q in accept):
        return False
    html = max((q for mimetype, q in accept if mimetype == "text/html"), default=0)
    return accept[JSON_TYPE] >= html


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None


def same_origin_path(target: str | None) -> str | None:
    """`target` if it is a path on this site, else None: no scheme, host or `//` tricks."""
    if not target:
        return None
    target = target.strip()
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(ord(c) < 0x20 or c == "\\" for c in target):
        return None
    parts = _split(target)
    if parts is None or parts.scheme or parts.netloc:
        return None
    return target


def referrer_path(request: Request) -> str | None:
    """The referring page's path, when the referrer is this service itself."""
    parts = _split(request.referrer or "")
    own = _split(request.host_url)
    if not parts or not own or (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
        return None
    return same_origin_path(parts.path + (f"?{parts.query}" if parts.query else ""))
