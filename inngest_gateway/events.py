"""Validated items to the events sent to Inngest: names checked, ids, times and server keys set."""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from .errors import EventNotAllowed, EventTooLarge, ValidationFailed
from .schemas import MAX_ID_LENGTH, EventSchema
from .settings import Settings, format_duration

RESERVED_PREFIX = "inngest/"
# The namespace of the uuid5 event ids derived from a poster's scope and a client's key.
EVENT_ID_NAMESPACE = uuid.UUID("6d1c2f4e-9a47-5b0e-8c3d-2f7a1e5b9c40")
_schema = EventSchema(many=True)


@dataclass(frozen=True)
class Event:
    """An event ready to send: its id, and its JSON exactly as it goes to Inngest."""

    id: str
    name: str
    body: bytes


def encode(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as Inngest will measure it; never NaN or Infinity."""
    return json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def name_allowed(name: str, patterns: Sequence[str]) -> bool:
    """Names under `inngest/` are Inngest's own; others must match an allowed pattern."""
    if name.lower().startswith(RESERVED_PREFIX):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _errors(by_index: dict[int, Any], batch: bool) -> dict[str, Any]:
    """Field errors keyed by the event's index in a batch, or bare for a single event."""
    if not batch:
        return next(iter(by_index.values()), {})
    return {str(index): messages for index, messages in by_index.items()}


def build_events(
    items: list[Any],
    *,
    batch: bool,
    settings: Settings,
    user: dict[str, Any] | None,
    request_meta: dict[str, Any] | None,
    scope: Callable[[], str],
    idempotency_key: str | None = None,
    received_at: int | None = None,
) -> list[Event]:
    """Validate items and turn them into events, or raise the error that explains why not.

    `scope` names the poster (see `scoped_id`); it is asked for only when a client key is used.
    `request_meta` becomes `data.request`; `received_at` (epoch ms, default the meta's) is
    the server's time of the events, their `ts` unless given and the middle of its window.
    """
    if received_at is None:
        received_at = int(request_meta["received_at"]) if request_meta else 0
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_ID_LENGTH - 8:
        raise ValidationFailed(
            errors={"Idempotency-Key": [f"Must have 1 to {MAX_ID_LENGTH - 8} characters."]}
        )
    try:
        loaded: list[dict[str, Any]] = _schema.load(items)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {0: exc.messages}
        raise ValidationFailed(errors=_errors(messages, batch)) from None
    _check_ts(loaded, batch, settings, received_at)

    refused = {
        index: {"name": [f"Event name {item['name']!r} is not allowed."]}
        for index, item in enumerate(loaded)
        if "name" in item and not name_allowed(item["name"], settings.api_allowed_events)
    }
    if refused:
        raise EventNotAllowed(errors=_errors(refused, batch))
    _check_data(loaded, batch, settings)

    events: list[Event] = []
    too_large: dict[int, Any] = {}
    for index, item in enumerate(loaded):
        client_key = item.get("id") or _client_key(idempotency_key, index, batch)
        event_id = scoped_id(scope(), client_key) if client_key else str(uuid.uuid4())
        event: dict[str, Any] = {
            "name": item.get("name") or settings.api_default_event,
            "data": {**item["data"], "user": user, "request": request_meta},
            "id": event_id,
            "ts": item.get("ts") or received_at,
        }
        if "v" in item:
            event["v"] = item["v"]
        body = encode(event)
        if len(body) > settings.api_max_event_bytes:
            too_large[index] = {
                "_schema": [
                    f"The event is {len(body)} bytes; the limit is {settings.api_max_event_bytes}."
                ]
            }
        events.append(Event(id=event_id, name=event["name"], body=body))
    if too_large:
        raise EventTooLarge(errors=_errors(too_large, batch))
    return events


def _check_ts(loaded: list[dict[str, Any]], batch: bool, settings: Settings, now_ms: int) -> None:
    """Refuse a client's `ts` too old or too far ahead (INNGEST_GATEWAY_API_TS_MAX_AGE, _SKEW).

    Inngest starts the functions an event triggers at its `ts`: a browser must not schedule
    them ahead, nor backdate an event that time-based logic trusts. `now_ms` is when the
    request was received, by the server's clock.
    """
    oldest = now_ms - round(settings.api_ts_max_age * 1000)
    latest = now_ms + round(settings.api_ts_max_skew * 1000)
    message = (
        f"Must be at most {format_duration(settings.api_ts_max_age)} before and "
        f"{format_duration(settings.api_ts_max_skew)} after the server's clock."
    )
    outside = {
        index: {"ts": [message]}
        for index, item in enumerate(loaded)
        if "ts" in item and not oldest <= item["ts"] <= latest
    }
    if outside:
        raise ValidationFailed(errors=_errors(outside, batch))


def _check_data(loaded: list[dict[str, Any]], batch: bool, settings: Settings) -> None:
    """Check each event's data, before the server adds its keys, against the event schemas."""
    schemas = settings.event_schemas
    if schemas is None:
        return
    invalid: dict[int, Any] = {}
    for index, item in enumerate(loaded):
        failing = schemas.errors(item.get("name") or settings.api_default_event, item["data"])
        if failing:
            invalid[index] = {"data": failing}
    if invalid:
        raise ValidationFailed(
            "The event data does not match its schema.", errors=_errors(invalid, batch)
        )


def _client_key(idempotency_key: str | None, index: int, batch: bool) -> str | None:
    """The client's `Idempotency-Key` (suffixed by index in a batch), if it sent one."""
    if idempotency_key:
        return f"{idempotency_key}:{index}" if batch else idempotency_key
    return None


def scoped_id(scope: str, client_key: str) -> str:
    """The event id for a client's key, in the poster's own namespace.

    Inngest deduplicates on the event id, so a client's key is never sent as it is: anyone
    could then make another poster's event a duplicate. The same poster sending the same key
    gets the same id (retries stay idempotent); another poster never does. The scope holds no
    newline, so the name is unambiguous.
    """
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{scope}\n{client_key}"))
