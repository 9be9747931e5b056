"""The event-name table, family validation, keys and timestamps (events.py)."""

from __future__ import annotations

import pytest

from mailtrap_receiver.events import (
    BOUNDED_FIELDS,
    CANONICAL_EVENTS,
    MAX_FIELD_LENGTH,
    WIRE_NAMES,
    Event,
    Invalid,
    canonical_name,
    classify,
    content_hash,
    preferred_wire_name,
    timestamp_seconds,
)
from tests.helpers.webhooks import delivery_event

# Written out by hand from Mailtrap's docs, not derived from WIRE_NAMES, so the table
# is checked against an independent statement of what Mailtrap sends.
EXPECTED_NAMES = {
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
    "inbound.something_new": "inbound",
    "activity_log.user.updated": "audit_log",
    "activity_log.api_token.created": "audit_log",
    "Soft Bounce": "soft_bounce",
    "  SPAM ": "spam_complaint",
    "deferred": "unknown",
    "inbound": "inbound",
    "audit_log": "audit_log",
    "": "unknown",
}


@pytest.mark.parametrize(("wire", "canonical"), sorted(EXPECTED_NAMES.items()))
def test_wire_names_map_to_canonical_names(wire: str, canonical: str) -> None:
    assert canonical_name(wire) == canonical


def test_every_table_entry_is_covered_and_canonical() -> None:
    assert set(WIRE_NAMES) <= set(EXPECTED_NAMES)
    assert set(WIRE_NAMES.values()) <= set(CANONICAL_EVENTS)
    # Every canonical name but "unknown" is reachable from some wire name.
    assert set(WIRE_NAMES.values()) == set(CANONICAL_EVENTS) - {"unknown"}


def test_preferred_wire_names_are_what_mailtrap_sends() -> None:
    assert preferred_wire_name("soft_bounce") == "soft bounce"
    assert preferred_wire_name("spam_complaint") == "spam"
    assert preferred_wire_name("delivery") == "delivery"
    assert preferred_wire_name("inbound").startswith("inbound.")
    assert preferred_wire_name("audit_log").startswith("activity_log.")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_716_915_293, 1_716_915_293.0),
        (1_716_915_293_123, 1_716_915_293.123),
        (1_716_915_293.5, 1_716_915_293.5),
        ("1716915293", 1_716_915_293.0),
        ("1716915293123", 1_716_915_293.123),
        ("2024-05-28T16:54:53Z", 1_716_915_293.0),
        ("2024-05-28T16:54:53+00:00", 1_716_915_293.0),
        ("2024-05-28T16:54:53", None),  # no zone: ambiguous
        (True, None),
        (None, None),
        (-5, None),
        (0, None),
        (float("nan"), None),
        ("soon", None),
        ([1], None),
        # Beyond 9999-12-31T23:59:59Z no datetime can hold it: microseconds read as
        # milliseconds, say. The last second itself is fine.
        (253_402_300_799_000, 253_402_300_799.0),
        (253_402_300_799_001, None),
        (1_716_915_293_000_000, None),
        ("1716915293000000", None),
        (2**64 - 1, None),
        pytest.param(10**400, None, id="int-float-overflows"),
        pytest.param("9" * 5000, None, id="5000-digits"),
        (float("inf"), None),
        ("9999-12-31T23:59:59-05:00", None),
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_timestamps_are_normalised_to_seconds(value: object, expected: float | None) -> None:
    result = timestamp_seconds(value)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_a_valid_sending_event_is_keyed_by_event_id() -> None:
    data = delivery_event(event="soft bounce")
    result = classify(data)
    assert isinstance(result, Event)
    assert result.name == "soft_bounce"
    assert result.key == data["event_id"]
    assert result.data is data
    assert result.message_id == data["message_id"]
    assert result.email == "john.doe@example.com"


@pytest.mark.parametrize("field", ["timestamp", "message_id", "email", "event_id"])
def test_sending_events_require_their_fields(field: str) -> None:
    data = delivery_event()
    del data[field]
    result = classify(data)
    assert isinstance(result, Invalid)
    assert result.reason == "missing_field"
    assert field in result.detail
    assert result.data is data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "yesterday"),
        ("timestamp", True),
        ("timestamp", 1_716_915_293_000_000),  # microseconds
        ("email", ""),
        ("event_id", ["x"]),
    ],
)
def test_sending_events_with_bad_fields_are_invalid(field: str, value: object) -> None:
    result = classify(delivery_event(**{field: value}))
    assert isinstance(result, Invalid)
    assert result.reason == "invalid_field"
    assert field in result.detail


def test_inbound_events_need_no_email() -> None:
    data = {
        "event": "inbound.message_received",
        "event_id": "3f9c0b0e-8d0a-4c2e-9d7e-1b2f3a4c5d6e",
        "inbox_id": 2048576,
        "message_id": "6a1b2c3d",
        "from": "sender@example.org",
        "timestamp": 1_716_915_293_123,
    }
    result = classify(data)
    assert isinstance(result, Event)
    assert result.name == "inbound"
    assert result.email is None
    assert result.timestamp == pytest.approx(1_716_915_293.123)


def test_inbound_events_still_need_their_own_fields() -> None:
    result = classify({"event": "inbound.message_received", "timestamp": 1_716_915_293_123})
    assert isinstance(result, Invalid)
    assert result.reason == "missing_field"


def test_audit_log_events_need_no_ids_and_are_keyed_by_a_stable_hash() -> None:
    first = classify({"event": "activity_log.user.updated", "actor": {"id": 1, "name": "J"}})
    reordered = classify({"actor": {"name": "J", "id": 1}, "event": "activity_log.user.updated"})
    other = classify({"event": "activity_log.user.updated", "actor": {"id": 2, "name": "J"}})
    assert isinstance(first, Event)
    assert isinstance(reordered, Event)
    assert isinstance(other, Event)
    assert first.name == "audit_log"
    assert first.key.startswith("sha256:")
    assert first.key == reordered.key
    assert first.key != other.key


def test_unknown_event_names_are_kept() -> None:
    result = classify({"event": "deferred", "event_id": "e-1"})
    assert isinstance(result, Event)
    assert result.name == "unknown"
    assert result.key == "e-1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("delivery", "not_object"),
        ([{"event": "delivery"}], "not_object"),
        (None, "not_object"),
        ({"email": "a@example.com"}, "missing_field"),
        ({"event": 5}, "invalid_field"),
        ({"event": "  "}, "invalid_field"),
    ],
)
def test_objects_that_are_not_events(data: object, reason: str) -> None:
    result = classify(data)
    assert isinstance(result, Invalid)
    assert result.reason == reason
    assert result.key == content_hash(data)


def test_content_hash_ignores_key_order_only() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1, "b": [1, 2]}) != content_hash({"a": 1, "b": [2, 1]})


@pytest.mark.parametrize("field", BOUNDED_FIELDS)
@pytest.mark.parametrize(
    "event",
    [
        delivery_event(),
        {"event": "activity_log.user.updated", "actor": "x"},
        {"event": "something_new", "event_id": "u-1"},
    ],
    ids=["sending", "audit_log", "unknown"],
)
def test_keys_and_logged_fields_are_bounded_in_every_family(
    field: str, event: dict[str, object]
) -> None:
    # At the limit: as valid as before. One past it: invalid, whatever the family.
    outcome = classify({**event, field: "e" * MAX_FIELD_LENGTH})
    assert not (isinstance(outcome, Invalid) and "longer" in outcome.detail)
    over = classify({**event, field: "e" * (MAX_FIELD_LENGTH + 1)})
    assert isinstance(over, Invalid)
    assert over.reason == "invalid_field"
    assert over.detail == f"invalid field: {field} (longer than {MAX_FIELD_LENGTH} characters)"
    assert over.key.startswith("sha256:")  # never the long value itself


def test_a_huge_event_id_never_becomes_a_key() -> None:
    outcome = classify(delivery_event(event_id="i" * 1_000_000))
    assert isinstance(outcome, Invalid)
    assert len(outcome.key) < 100
    assert isinstance(classify(delivery_event(event_id="i" * 300), max_field_length=300), Event)
