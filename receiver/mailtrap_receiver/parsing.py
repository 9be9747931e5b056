"""Request bodies to raw event objects, by Content-Type, with a safe fallback.

`app` calls `parse_events` once the body is read and its signature verified; each
object it returns then goes through `events.classify`. Accepted formats:

- ``application/json`` (and ``text/json``, ``*/*+json``): Mailtrap's
  ``{"events": [...]}``, a single event object, or a JSON array of events;
- ``application/jsonl`` (what Mailtrap sends), ``application/x-ndjson`` and the
  other JSON Lines names: one event per line, blank lines ignored;
- ``application/x-www-form-urlencoded``: one event (``event=delivery&email=...``);
  values are strings, except a numeric ``timestamp`` that fits in 64 bits, which
  becomes a number so targets see the same shape as from JSON;
- no Content-Type, ``application/octet-stream`` or ``text/plain``: sniffed, as one
  JSON document and else as JSON Lines.

Any other type is `UnsupportedMediaType` (415); a body that cannot be read in the
format it claims is `MalformedBody` (400). Items that parse but are not event
objects are returned as they are, so they become invalid events rather than failing
the whole batch. Parsing uses orjson, which rejects invalid UTF-8 and deep nesting.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

import orjson

JSON_TYPES: Final = frozenset({"application/json", "text/json"})
JSON_LINES_TYPES: Final = frozenset(
    {
        "application/jsonl",
        "application/x-ndjson",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-lines",
    }
)
FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded"})
SNIFFED_TYPES: Final = frozenset({"", "application/octet-stream", "text/plain"})

# A form body is one event of a dozen fields; this only stops hostile bodies early.
_MAX_FORM_FIELDS: Final = 1000
# The largest number a form value becomes (what JSON parsers and orjson take).
_MAX_INT64: Final = 2**63 - 1
_MAX_INT64_DIGITS: Final = len(str(_MAX_INT64))


class BodyError(Exception):
    """A body the receiver cannot take; `app` turns it into a JSON error response."""

    status = 400
    code = "malformed_body"


class MalformedBody(BodyError):
    """The body cannot be parsed in its format (400)."""


class UnsupportedMediaType(BodyError):
    """The Content-Type is one the receiver does not read (415)."""

    status = 415
    code = "unsupported_media_type"


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lowercased, without parameters."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


def parse_events(body: bytes, *, content_type: str | None) -> list[object]:
    """The raw event objects of a request body (see the module docstring)."""
    kind = media_type(content_type)
    if kind in JSON_TYPES or kind.endswith("+json"):
        return _parse_json(body)
    if kind in JSON_LINES_TYPES:
        return _parse_json_lines(body)
    if kind in FORM_TYPES:
        return _parse_form(body)
    if kind in SNIFFED_TYPES:
        return _sniff(body)
    raise UnsupportedMediaType(
        f"unsupported Content-Type {kind!r}; send application/json, application/jsonl, "
        "application/x-ndjson or application/x-www-form-urlencoded"
    )


def _parse_json(body: bytes) -> list[object]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise MalformedBody(f"invalid JSON: {error}") from None
    if isinstance(document, dict):
        if "events" not in document:
            return [document]
        events = document["events"]
        if not isinstance(events, list):
            raise MalformedBody('"events" must be a JSON array')
        return events
    if isinstance(document, list):
        return document
    raise MalformedBody("expected a JSON object or array")


def _parse_json_lines(body: bytes) -> list[object]:
    events: list[object] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError as error:
                raise MalformedBody(f"invalid JSON on line {number}: {error}") from None
    if not events:
        raise MalformedBody("no events in the body")
    return events


def _parse_form(body: bytes) -> list[object]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise MalformedBody(f"invalid form body: {error}") from None
    if not pairs:
        raise MalformedBody("empty form body")
    event: dict[str, object] = dict(pairs)
    timestamp = event.get("timestamp")
    # isdigit() alone also admits digits int() refuses, such as superscripts. Only a
    # number that fits in 64 bits becomes one: int() refuses over 4300 digits, and
    # orjson (the spool, targets) anything larger; a longer one stays a string
    # (and fails validation as a timestamp).
    if (
        isinstance(timestamp, str)
        and len(timestamp) <= _MAX_INT64_DIGITS
        and timestamp.isascii()
        and timestamp.isdigit()
    ):
        number = int(timestamp)
        if number <= _MAX_INT64:
            event["timestamp"] = number
    return [event]


def _sniff(body: bytes) -> list[object]:
    stripped = body.strip()
    if stripped[:1] not in (b"{", b"["):
        raise MalformedBody(
            "could not detect the body format; send a Content-Type such as application/json"
        )
    try:
        return _parse_json(stripped)
    except MalformedBody:
        if b"\n" not in stripped:
            raise
    return _parse_json_lines(stripped)
