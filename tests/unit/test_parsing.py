"""Body formats by Content-Type, the sniffing fallback, 400/415, and the bounds on
nesting and events per body (parsing.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtrap_receiver.parsing import (
    MAX_JSON_DEPTH,
    MalformedBody,
    NestedTooDeep,
    TooManyEvents,
    UnsupportedMediaType,
    check_depth,
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
        (b"[" * 2000, "application/json"),  # unbalanced, not deep
        (b'["]]]", 1]]]', "application/json"),
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


def nested(depth: int, inner: object = 1) -> object:
    """``inner`` inside ``depth`` levels of alternating arrays and objects."""
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        # {"events": [{...}]} takes three levels, a JSON line's event one.
        ("application/json", json_body(delivery_event(extra=nested(MAX_JSON_DEPTH - 3)))),
        ("application/jsonl", jsonl_body(delivery_event(extra=nested(MAX_JSON_DEPTH - 1)))),
        (None, orjson.dumps(nested(MAX_JSON_DEPTH))),
    ],
)
def test_a_body_at_the_depth_limit_is_parsed(content_type: str | None, body: bytes) -> None:
    assert parse_events(body, content_type=content_type)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json_body(delivery_event(extra=nested(MAX_JSON_DEPTH - 2)))),
        ("application/json", b'{"events": [{"x": ' + b"[" * 300 + b"]" * 300 + b"}]}"),
        ("application/json", b"[" * 2000 + b"]" * 2000),  # deeper than orjson reads
        ("application/jsonl", jsonl_body(delivery_event(), delivery_event(extra=nested(32)))),
        ("text/plain", orjson.dumps(nested(MAX_JSON_DEPTH + 1))),
    ],
)
def test_a_body_nested_too_deep_is_400(content_type: str, body: bytes) -> None:
    with pytest.raises(NestedTooDeep) as raised:
        parse_events(body, content_type=content_type)
    assert (raised.value.status, raised.value.code) == (400, "nesting_too_deep")


def test_the_depth_limit_is_a_parameter() -> None:
    body = orjson.dumps(nested(5))
    assert parse_events(body, content_type="application/json", max_depth=5)
    with pytest.raises(NestedTooDeep, match="deeper than 4 levels"):
        parse_events(body, content_type="application/json", max_depth=4)


def test_brackets_inside_strings_are_not_nesting() -> None:
    # Strings full of brackets, escaped quotes and backslashes around them: shallow.
    event = delivery_event(subject="[" * 100, note="]" * 100 + '\\"' + "{" * 50, path="C:\\[dir]\\")
    assert parse_events(json_body(*[event] * 50), content_type="application/json")
    # Brackets in strings placed to cancel the real ones: 100 levels deep all the same.
    disguised = b'["]",' * 100 + b"0" + b',"["]' * 100
    assert depth_of(orjson.loads(disguised)) == 100
    with pytest.raises(NestedTooDeep):
        check_depth(disguised, MAX_JSON_DEPTH)


json_text = st.text(alphabet=st.sampled_from('[]{}"\\ab'), max_size=6)
json_values = st.recursive(
    st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | json_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(json_text, children, max_size=3)
    ),
    max_leaves=40,
)


@given(value=json_values, limit=st.integers(min_value=1, max_value=8))
def test_check_depth_agrees_with_the_real_depth(value: Any, limit: int) -> None:
    body = orjson.dumps(value)
    if depth_of(value) > limit:
        with pytest.raises(NestedTooDeep):
            check_depth(body, limit)
    else:
        check_depth(body, limit)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json_body(*[{}] * 1001)),
        ("application/json", b"[" + b",".join([b"{}"] * 100_000) + b"]"),
        ("application/jsonl", b"{}\n" * 1001),
    ],
)
def test_more_events_than_the_limit_is_413(content_type: str, body: bytes) -> None:
    with pytest.raises(TooManyEvents) as raised:
        parse_events(body, content_type=content_type)
    assert (raised.value.status, raised.value.code) == (413, "too_many_events")
    assert parse_events(json_body(*[{}] * 1000), content_type="application/json")
    with pytest.raises(TooManyEvents, match="at most 10 "):
        parse_events(json_body(*[{}] * 11), content_type="application/json", max_events=10)
