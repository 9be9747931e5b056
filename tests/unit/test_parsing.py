"""Body formats by Content-Type, the sniffing fallback, and 400/415 (parsing.py)."""

from __future__ import annotations

import orjson
import pytest

from mailtrap_receiver.parsing import (
    MalformedBody,
    UnsupportedMediaType,
    media_type,
    parse_events,
)
from tests.helpers.webhooks import delivery_event, json_body, jsonl_body

A = delivery_event(event_id="a")
B = delivery_event(event_id="b", event="soft bounce")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Application/JSON; charset=UTF-8", "application/json"),
        (" application/jsonl ", "application/jsonl"),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "text/json", "application/vnd+json"],
)
def test_json_batch(content_type: str) -> None:
    assert parse_events(json_body(A, B), content_type=content_type) == [A, B]


def test_single_json_event() -> None:
    body = b'{"event": "delivery", "event_id": "a"}'
    assert parse_events(body, content_type="application/json") == [
        {"event": "delivery", "event_id": "a"}
    ]


def test_json_array_of_events() -> None:
    assert parse_events(b'[{"event": "open"}, 3]', content_type="application/json") == [
        {"event": "open"},
        3,
    ]


def test_empty_batch_is_fine() -> None:
    assert parse_events(b'{"events": []}', content_type="application/json") == []


@pytest.mark.parametrize(
    "content_type", ["application/jsonl", "application/x-ndjson", "application/x-jsonlines"]
)
def test_json_lines(content_type: str) -> None:
    body = b"\n" + jsonl_body(A) + b"   \r\n" + jsonl_body(B) + b"\n\n"
    assert parse_events(body, content_type=content_type) == [A, B]


def test_json_lines_keep_non_objects_for_validation() -> None:
    assert parse_events(b'{"event":"open"}\n"text"\n', content_type="application/jsonl") == [
        {"event": "open"},
        "text",
    ]


def test_form_is_one_event_with_a_numeric_timestamp() -> None:
    body = b"event=soft+bounce&email=john%40example.com&timestamp=1716915293&event_id=e-1"
    assert parse_events(body, content_type="application/x-www-form-urlencoded") == [
        {
            "event": "soft bounce",
            "email": "john@example.com",
            "timestamp": 1716915293,
            "event_id": "e-1",
        }
    ]
    # Unicode digits int() refuses stay strings (and fail validation later), not a 500.
    body = b"event=delivery&timestamp=%C2%B9"
    [event] = parse_events(body, content_type="application/x-www-form-urlencoded")
    assert event["timestamp"] == "\u00b9"


@pytest.mark.parametrize(
    ("digits", "number"),
    [
        ("9223372036854775807", True),
        ("9223372036854775808", False),
        ("9" * 25, False),
        ("9" * 400, False),
        ("9" * 5000, False),
    ],
    ids=["int64-max", "int64-max+1", "25-digits", "400-digits", "5000-digits"],
)
def test_a_form_timestamp_becomes_a_number_only_within_64_bits(digits: str, number: bool) -> None:
    # Larger ones stay strings: int() refuses over 4300 digits, orjson over 64 bits,
    # and both used to fail the request with 500.
    body = b"event=delivery&timestamp=" + digits.encode()
    [event] = parse_events(body, content_type="application/x-www-form-urlencoded")
    assert event == {"event": "delivery", "timestamp": int(digits) if number else digits}
    orjson.dumps(event)


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "text/plain"])
def test_missing_or_generic_types_are_sniffed(content_type: str | None) -> None:
    assert parse_events(json_body(A, B), content_type=content_type) == [A, B]
    assert parse_events(b"  " + jsonl_body(A, B), content_type=content_type) == [A, B]
    assert parse_events(b'{"event": "open"}', content_type=content_type) == [{"event": "open"}]


@pytest.mark.parametrize(
    "content_type",
    ["text/xml", "application/xml", "multipart/form-data; boundary=x", "image/png", "text/html"],
)
def test_unsupported_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        parse_events(json_body(A), content_type=content_type)
    assert raised.value.status == 415
    assert raised.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b'{"events": {"event": "open"}}', "application/json"),
        (b'"just a string"', "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b'{"a": ' * 2000 + b"1" + b"}" * 2000, "application/json"),  # too deep
        (b"", "application/jsonl"),
        (b"\n \n", "application/x-ndjson"),
        (b'{"event": "open"}\n{oops\n', "application/jsonl"),
        (b"", "application/x-www-form-urlencoded"),
        (b"event", "application/x-www-form-urlencoded"),
        (b"event=%ff", "application/x-www-form-urlencoded"),
        (b"\xff=1", "application/x-www-form-urlencoded"),
        (b"", None),
        (b"event=delivery", None),
        (b"<xml/>", "text/plain"),
        (b'{"event": "open"}{"event": "click"}', None),
    ],
)
def test_unparseable_bodies_are_400(body: bytes, content_type: str | None) -> None:
    with pytest.raises(MalformedBody) as raised:
        parse_events(body, content_type=content_type)
    assert raised.value.status == 400
    assert raised.value.code == "malformed_body"


def test_a_bad_json_line_is_named_by_number() -> None:
    with pytest.raises(MalformedBody, match="line 3"):
        parse_events(b'{"a": 1}\n\n{nope}\n', content_type="application/jsonl")
