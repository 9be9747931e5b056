"""Mailtrap's event names, event families, and what one received event is.

This module holds the one table of event names. Mailtrap names events one way on
the wire (``soft bounce`` with a space, ``spam``, ``inbound.message_received``,
``activity_log.user.updated``); everything else in the product (the config and the
CRD's ``events`` enums, metric labels, the ``X-Mailtrap-Event`` header sent to
targets) uses the canonical names of `EventName`. ``tests/unit/test_schema_drift.py``
checks that the CRD's enums equal `CANONICAL_EVENTS`.

`parsing` turns a request body into raw objects; `classify` here turns each object
into an `Event` (canonical name, de-duplication key, the original object) or an
`Invalid` (a bounded reason code for metrics, a detail for people, the object for the
dead-letter store). Each of Mailtrap's three families has its own rules:

- sending events (delivery, bounce, ...) require ``event``, ``timestamp`` (seconds),
  ``message_id``, ``email`` and ``event_id``;
- inbound events (``inbound.*``) carry ``event_id``, ``inbox_id``, ``message_id``,
  ``from`` and a ``timestamp`` in milliseconds, and no ``email``;
- audit-log events (``activity_log.*``) have neither ``event_id`` nor ``message_id``.

Events of a name this table does not know become ``unknown``: they are kept and go to
targets without an event filter. Where an event has no ``event_id`` its
de-duplication key is a stable hash of its content.

Whatever the family, the fields the receiver keys on, stores beside the event or
logs (`BOUNDED_FIELDS`) are at most ``limits.maxFieldLength`` characters: a longer
one makes the event invalid (``invalid_field``), so a sender cannot make keys, rows
and log lines of any size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, get_args

import orjson

EventName = Literal[
    "delivery",
    "bounce",
    "soft_bounce",
    "open",
    "click",
    "unsubscribe",
    "spam_complaint",
    "suspension",
    "reject",
    "inbound",
    "audit_log",
    "unknown",
]
CANONICAL_EVENTS: Final[tuple[EventName, ...]] = get_args(EventName)

# Wire name -> canonical name. Where two wire spellings exist, the first one listed
# is what Mailtrap sends today (send-test uses it); canonical spellings are accepted
# too because other tools and older payloads use them. Of the two non-sending
# families only an example name is listed (for send-test): WIRE_PREFIXES maps the
# whole family.
WIRE_NAMES: Final[Mapping[str, EventName]] = {
    "delivery": "delivery",
    "bounce": "bounce",
    "soft bounce": "soft_bounce",
    "soft_bounce": "soft_bounce",
    "open": "open",
    "click": "click",
    "unsubscribe": "unsubscribe",
    "spam": "spam_complaint",
    "spam_complaint": "spam_complaint",
    "suspension": "suspension",
    "reject": "reject",
    "inbound.message_received": "inbound",
    "inbound": "inbound",
    "activity_log.user.updated": "audit_log",
    "audit_log": "audit_log",
}
# Whole families share a prefix; Mailtrap adds new names inside them over time.
WIRE_PREFIXES: Final[tuple[tuple[str, EventName], ...]] = (
    ("inbound.", "inbound"),
    ("activity_log.", "audit_log"),
)

Family = Literal["sending", "inbound", "audit_log", "unknown"]
FAMILIES: Final[Mapping[EventName, Family]] = {
    name: ("sending" if name not in ("inbound", "audit_log", "unknown") else name)
    for name in CANONICAL_EVENTS
}

# Bounded reason codes of invalid events: metric label values and dead-letter reasons.
InvalidReason = Literal["not_object", "missing_field", "invalid_field"]
INVALID_REASONS: Final[tuple[InvalidReason, ...]] = get_args(InvalidReason)

# Fields that become keys, columns or log values, and the default of
# limits.maxFieldLength (config.LimitsConfig): a UUID is 36 characters, an email
# address at most 254.
BOUNDED_FIELDS: Final = ("event", "event_id", "message_id", "inbox_id", "email")
MAX_FIELD_LENGTH: Final = 256

# Epoch values at or above this are milliseconds: as seconds it would be the year
# 5138, as milliseconds it is March 1973, before Mailtrap existed.
_MILLISECONDS_FROM: Final = 100_000_000_000
# 9999-12-31T23:59:59Z, the last whole second `datetime` can hold. A later time is no
# real event (microseconds read as milliseconds, say), and targets get event times as
# datetimes (CloudEvents ``time``): accepting it would fail each delivery instead.
MAX_TIMESTAMP: Final = 253_402_300_799


def canonical_name(wire: str) -> EventName:
    """The canonical name of a wire event name; ``unknown`` for names not in the table."""
    name = WIRE_NAMES.get(wire)
    if name is not None:
        return name
    folded = " ".join(wire.split()).lower()
    name = WIRE_NAMES.get(folded)
    if name is not None:
        return name
    for prefix, family_name in WIRE_PREFIXES:
        if folded.startswith(prefix):
            return family_name
    return "unknown"


def preferred_wire_name(name: EventName) -> str:
    """What Mailtrap sends for a canonical name (the first spelling in `WIRE_NAMES`)."""
    for wire, canonical in WIRE_NAMES.items():
        if canonical == name:
            return wire
    return name


def timestamp_seconds(value: object) -> float | None:
    """An event timestamp as Unix seconds, whatever its unit; None when unusable.

    Sending events carry seconds, inbound events milliseconds, and form-encoded
    bodies carry numbers as strings; ISO-8601 strings are accepted for audit logs.
    Usable means after the epoch and at most `MAX_TIMESTAMP` once in seconds.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)  # never raises for size: a huge number is inf
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                return None
            seconds = parsed.timestamp()
            return seconds if 0 < seconds <= MAX_TIMESTAMP else None
        value = number
    if not isinstance(value, int | float):
        return None
    # Compared before any conversion: an int of any size compares exactly, where
    # float() or math.isfinite() would raise OverflowError; NaN fails the comparison.
    if not 0 < value <= MAX_TIMESTAMP * 1000:
        return None
    return value / 1000 if value >= _MILLISECONDS_FROM else float(value)


def content_hash(data: object) -> str:
    """A stable key for an object: sha256 of its canonical (sorted-key) JSON."""
    try:
        canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # Only objects decoded from JSON or forms reach here, so this is a bug
        # guard: hash the repr rather than fail a whole request.
        canonical = repr(data).encode("utf-8", "replace")
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Event:
    """One accepted event: its canonical name, de-duplication key and original object."""

    name: EventName
    key: str
    data: Mapping[str, Any]

    @property
    def event_id(self) -> str | None:
        value = self.data.get("event_id")
        return None if value is None else str(value)

    @property
    def message_id(self) -> str | None:
        value = self.data.get("message_id")
        return None if value is None else str(value)

    @property
    def email(self) -> str | None:
        value = self.data.get("email")
        return value if isinstance(value, str) else None

    @property
    def timestamp(self) -> float | None:
        """Unix seconds of the event, normalised from seconds or milliseconds."""
        return timestamp_seconds(self.data.get("timestamp"))


@dataclass(frozen=True, slots=True)
class Invalid:
    """An object that is not a valid event: kept in the dead-letter store, never dropped."""

    reason: InvalidReason
    detail: str
    data: object
    key: str


def _is_id(value: object) -> bool:
    return (isinstance(value, str) and value.strip() != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_present(value: object) -> bool:
    return value is not None and value != ""


def _is_timestamp(value: object) -> bool:
    return timestamp_seconds(value) is not None


# Per family: the fields an event must carry, each with its check. Timestamps are
# checked as "usable as a time", so seconds, milliseconds and numeric strings (form
# bodies) all pass and `timestamp_seconds` normalises them where they are used.
_REQUIRED: Final[Mapping[Family, tuple[tuple[str, Callable[[object], bool]], ...]]] = {
    "sending": (
        ("timestamp", _is_timestamp),
        ("message_id", _is_id),
        ("email", _is_text),
        ("event_id", _is_id),
    ),
    "inbound": (
        ("timestamp", _is_timestamp),
        ("event_id", _is_id),
        ("inbox_id", _is_id),
        ("message_id", _is_id),
        ("from", _is_present),
    ),
    "audit_log": (),
    "unknown": (),
}


def classify(data: object, *, max_field_length: int = MAX_FIELD_LENGTH) -> Event | Invalid:
    """Validate one received object by the rules of its family."""
    if not isinstance(data, dict):
        return Invalid("not_object", "event is not a JSON object", data, content_hash(data))
    wire = data.get("event")
    if wire is None:
        return Invalid("missing_field", "missing field: event", data, content_hash(data))
    if not isinstance(wire, str) or not wire.strip():
        return Invalid("invalid_field", "invalid field: event", data, content_hash(data))
    for field in BOUNDED_FIELDS:
        value = data.get(field)
        if isinstance(value, str) and len(value) > max_field_length:
            detail = f"invalid field: {field} (longer than {max_field_length} characters)"
            return Invalid("invalid_field", detail, data, content_hash(data))
    name = canonical_name(wire)
    for field, check in _REQUIRED[FAMILIES[name]]:
        value = data.get(field)
        if not check(value):
            reason: InvalidReason = "missing_field" if value is None else "invalid_field"
            detail = f"{reason.replace('_', ' ')}: {field} (required for {name} events)"
            return Invalid(reason, detail, data, content_hash(data))
    event_id = data.get("event_id")
    key = str(event_id) if _is_id(event_id) else content_hash(data)
    return Event(name, key, data)
