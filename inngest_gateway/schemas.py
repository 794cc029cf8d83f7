"""Marshmallow schemas for what clients send: events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates

# Inngest refuses timestamps outside [1980-01-01, 2100-01-01).
TS_MIN = int(datetime(1980, 1, 1, tzinfo=UTC).timestamp() * 1000)
TS_MAX = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
# Keys of `data` clients may not send: the server sets `user` and `request`, and Inngest
# treats `_inngest` as its own.
SERVER_KEYS = ("user", "request", "_inngest")


def reserved_key_message(key: str) -> str:
    """Why a client may not set this key of `data`."""
    return (
        "This key is reserved for Inngest."
        if key == "_inngest"
        else "This key is set by the server."
    )


MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 256


class StrictInteger(fields.Integer):
    """An integer that is a JSON integer: no floats, strings or booleans."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class EventSchema(Schema):
    """One event as a client sends it; the server adds ids, times and its own keys later."""

    class Meta:
        unknown = RAISE

    name = fields.String(validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    data = fields.Raw(allow_none=True)
    id = fields.String(validate=validate.Length(min=1, max=MAX_ID_LENGTH))
    ts = StrictInteger(
        strict=True,
        validate=validate.Range(
            min=TS_MIN,
            max=TS_MAX,
            max_inclusive=False,
            error="Must be milliseconds since the epoch between 1980-01-01 and 2100-01-01.",
        ),
    )
    v = fields.String(validate=validate.Length(min=1, max=MAX_NAME_LENGTH))

    @validates("data")
    def _no_server_keys(self, value: Any, **_: Any) -> None:
        if isinstance(value, dict):
            taken = {key: [reserved_key_message(key)] for key in SERVER_KEYS if key in value}
            if taken:
                raise ValidationError(taken)

    @post_load
    def _wrap_data(self, item: dict[str, Any], **_: Any) -> dict[str, Any]:
        data = item.get("data")
        if data is None:
            item["data"] = {}
        elif not isinstance(data, dict):
            item["data"] = {"value": data}
        return item
