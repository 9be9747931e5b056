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
the whole batch. Parsing uses orjson, which rejects invalid UTF-8.

Even a signed body is bounded (``limits`` of the config): a JSON body nested deeper
than ``maxJsonDepth`` is `NestedTooDeep` (400), found by `check_depth` on the raw
bytes before anything parses or recurses into it (orjson serialises at most 254
levels, and the receiver serialises events again to store, hash and forward them);
more than ``maxEventsPerRequest`` items is `TooManyEvents` (413).
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

# Defaults of limits.maxJsonDepth and limits.maxEventsPerRequest (config.LimitsConfig).
MAX_JSON_DEPTH: Final = 32
MAX_EVENTS: Final = 1000
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


class NestedTooDeep(BodyError):
    """JSON nested deeper than the limit (400)."""

    code = "nesting_too_deep"


class TooManyEvents(BodyError):
    """More items in one body than the limit (413)."""

    status = 413
    code = "too_many_events"


# Every byte but a quote and the four brackets, for bytes.translate to delete.
_NOT_STRUCTURE: Final = bytes(set(range(256)) - set(b'"[]{}'))
_OPEN_CLOSE: Final = bytes.maketrans(b"[{]}", b"(())")


def check_depth(body: bytes, limit: int) -> None:
    """Raise `NestedTooDeep` when JSON ``body`` (a document, or JSON Lines) nests
    objects and arrays more than ``limit`` deep; cheap, and no recursion.

    Escaped backslashes and quotes go first (most bodies have no backslash at all),
    then everything but quotes and brackets: a short skeleton, from which a body
    with no more opening brackets than ``limit`` passes at once (a single event
    does). Otherwise string contents go (what lies between quotes); of the brackets
    left, each pass removes the innermost pairs, so a body ``limit`` deep is empty
    after ``limit`` passes. Whatever remains is too deep, or broken JSON, which the
    parser then reports.

    Strings rarely hold brackets, and then each is a bare pair of quotes in the
    skeleton: removing adjacent pairs, left to right, removes them all. A string
    that holds a bracket leaves a quote behind (its opening quote is followed by
    the bracket, and every quote before it was paired already), and only then are
    strings cut out one by one, which costs an object per string.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = body.translate(None, _NOT_STRUCTURE)
    if skeleton.count(b"[") + skeleton.count(b"{") <= limit:
        return
    structure = skeleton.replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(skeleton.split(b'"')[::2])
    structure = structure.translate(_OPEN_CLOSE)
    for _ in range(limit):
        shorter = structure.replace(b"()", b"")
        if len(shorter) == len(structure):
            break
        structure = shorter
    if structure and structure.count(b"(") == structure.count(b")"):
        raise NestedTooDeep(f"the JSON nests objects and arrays deeper than {limit} levels")


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lowercased, without parameters."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


def parse_events(
    body: bytes,
    *,
    content_type: str | None,
    max_depth: int = MAX_JSON_DEPTH,
    max_events: int = MAX_EVENTS,
) -> list[object]:
    """The raw event objects of a request body (see the module docstring)."""
    kind = media_type(content_type)
    if kind in FORM_TYPES:
        return _parse_form(body)
    if kind in JSON_TYPES or kind.endswith("+json"):
        check_depth(body, max_depth)
        events = _parse_json(body)
    elif kind in JSON_LINES_TYPES:
        check_depth(body, max_depth)
        events = _parse_json_lines(body)
    elif kind in SNIFFED_TYPES:
        check_depth(body, max_depth)
        events = _sniff(body)
    else:
        raise _unsupported(kind)
    if len(events) > max_events:
        raise TooManyEvents(
            f"the body holds {len(events)} events; at most {max_events} are accepted at once"
        )
    return events


def _unsupported(kind: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
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
