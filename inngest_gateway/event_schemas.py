"""Per-event JSON Schemas for `data`, read from the event schemas file (JSON or YAML).

The file is named by INNGEST_GATEWAY_EVENT_SCHEMAS.

The file maps event names or glob patterns (as in INNGEST_GATEWAY_API_ALLOWED_EVENTS) to a JSON
Schema. An
event's data must match every entry whose pattern matches its name; names no entry matches
are not checked. The schema sees the data as the event will carry it, before the server adds
`user` and `request`: an object (other JSON values arrive as `{"value": ...}`, a missing or
null `data` as `{}`). Clients can never send `user`, `request` or `_inngest` themselves,
whatever a schema says: the event schema refuses them before any data schema runs.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from .schemas import SERVER_KEYS

MAX_MESSAGE = 200
MAX_ERRORS = 50
_SYNTAX = set("^$\\.*+?()[]{}|/")
_CLASS_SPECIAL = set("\\]^[")


class EventSchemasError(Exception):
    """The INNGEST_GATEWAY_EVENT_SCHEMAS file is missing, unreadable or holds an invalid schema."""


@dataclass(frozen=True)
class Rule:
    """One entry of the file: a name or glob pattern and its schema for `data`."""

    pattern: str
    schema: dict[str, Any] | bool
    validator: Validator = field(compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(self.pattern)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class EventSchemas:
    """The rules read from the INNGEST_GATEWAY_EVENT_SCHEMAS file, in file order."""

    path: str
    rules: tuple[Rule, ...]

    def __hash__(self) -> int:
        return hash((self.path, self.rules))

    def errors(self, name: str, data: Any) -> dict[str, list[str]]:
        """Failing fields of `data` (dotted paths, `_schema` for the whole) under `name`'s rules."""
        found: dict[str, list[str]] = {}
        for rule in self.rules:
            if not rule.matches(name):
                continue
            for error in rule.validator.iter_errors(data):
                for key, message in _describe(error):
                    messages = found.setdefault(key, [])
                    if message not in messages:
                        messages.append(message)
                if len(found) >= MAX_ERRORS:
                    return found
        return found


def _key(path: Any) -> str:
    parts = [str(part) for part in path]
    return ".".join(parts) if parts else "_schema"


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _describe(error: Any) -> list[tuple[str, str]]:
    """A jsonschema error as (field, message) pairs; a missing property is named itself."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        return [(_key([*path, p]), "Missing data for required field.") for p in missing]
    return [(_key(path), _short(error.message))]


def glob_regex(pattern: str) -> str:
    """An ECMA-262 regular expression matching what `fnmatch.fnmatchcase(name, pattern)` does."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append("[\\s\\S]*")
        elif char == "?":
            out.append("[\\s\\S]")
        elif char == "[":
            end = i
            if end < n and pattern[end] == "!":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            while end < n and pattern[end] != "]":
                end += 1
            if end >= n:
                out.append("\\[")
                continue
            body, i = pattern[i:end], end + 1
            negate = body.startswith("!")
            chars = "".join("\\" + c if c in _CLASS_SPECIAL else c for c in body[negate:])
            out.append(f"[{'^' if negate else ''}{chars}]")
        else:
            out.append("\\" + char if char in _SYNTAX else char)
    return "^" + "".join(out) + "$"


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        return yaml.safe_load(text)
    return json.loads(text)


def _rule(pattern: Any, schema: Any) -> Rule:
    if not isinstance(pattern, str) or not pattern:
        raise EventSchemasError(f"event names must be non-empty strings, got {pattern!r}")
    if not isinstance(schema, (dict, bool)):
        raise EventSchemasError(f"the schema for {pattern!r} must be an object or a boolean")
    cls: Any = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        raise EventSchemasError(
            f"the schema for {pattern!r} is not a valid JSON Schema at {where}: {exc.message}"
        ) from None
    required = schema.get("required", []) if isinstance(schema, dict) else []
    taken = [key for key in SERVER_KEYS if isinstance(required, list) and key in required]
    if taken:
        raise EventSchemasError(
            f"the schema for {pattern!r} requires {', '.join(taken)}, which only the server sets"
        )
    return Rule(pattern, schema, cls(schema, format_checker=cls.FORMAT_CHECKER))


def load_event_schemas(path: str) -> EventSchemas:
    """Read and check the file, or raise EventSchemasError saying what is wrong."""
    file = Path(path)
    try:
        document = _parse(file)
    except FileNotFoundError:
        raise EventSchemasError(f"file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EventSchemasError(f"file {path!r} cannot be read: {exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise EventSchemasError(f"file {path!r} is not valid JSON or YAML: {exc}") from None
    if not isinstance(document, dict):
        raise EventSchemasError(f"file {path!r} must map event names or patterns to JSON Schemas")
    return EventSchemas(path, tuple(_rule(pattern, s) for pattern, s in document.items()))
