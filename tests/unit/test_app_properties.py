"""Property-based: whatever arrives, the receiver answers a documented status with the
documented JSON body, and never fails (no 500, no unhandled exception).

hypothesis generates bodies (random bytes, JSON of any shape, event-like objects in
every format, then mutated before or after signing), content types, signatures and
stray headers, and sends each as a real HTTP request to the webhook app on loopback.
Values reach the edges of what each format can carry: integers up to 64 bits in
JSON, numbers of thousands of digits in forms, timestamps in any unit. Events go to
two targets, one of each format (the CloudEvents one turns timestamps into dates).
The target accepts, unless a test draws a refusal, with a ``Retry-After`` of any
text: then 503 ``sink_unavailable`` is the documented answer for a request with
events to forward. Requests are sequential and nothing shuts down during the run.
Unhandled exceptions would surface as 500, which is not a documented code.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtrap_receiver.app import RUNNER_OPTIONS, create_app
from mailtrap_receiver.auth import sign
from mailtrap_receiver.config import parse_config
from mailtrap_receiver.events import WIRE_NAMES
from mailtrap_receiver.metrics import Metrics
from tests.helpers.targets import RecordingTarget
from tests.helpers.webhooks import OTHER_SECRET, SECRET

PATH = "/webhooks/mailtrap"
# Room for a form number past int()'s 4300 digits.
MAX_BODY = 8192
ERROR_CODES = {
    400: {"malformed_body"},
    401: {"signature_missing", "signature_invalid", "basic_auth_missing", "basic_auth_invalid"},
    403: {"source_not_allowed"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    413: {"body_too_large"},
    415: {"unsupported_media_type"},
    429: {"too_many_requests", "sink_overloaded"},
}
COUNTS = {"accepted", "duplicates", "invalid", "filtered"}
SUPPORTED_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/jsonl",
    "application/x-ndjson",
    "application/x-www-form-urlencoded",
)
# Random extra headers leave out those that frame the HTTP message (random values make
# a request aiohttp refuses before any handler runs) and those drawn on purpose above.
RESERVED = {
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "expect",
    "upgrade",
    "content-type",
    "content-encoding",
    "mailtrap-signature",
    "x-mailtrap-signature",
}


@dataclass
class Live:
    port: int
    metrics: Metrics
    target: RecordingTarget


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The webhook app and an always-accepting target, served from a background loop."""
    folder: Path = tmp_path_factory.mktemp("properties")
    (folder / "secret").write_bytes(SECRET + b"\n")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    metrics = Metrics()

    async def start() -> tuple[RecordingTarget, web.AppRunner, int]:
        target = await RecordingTarget().start()
        config = parse_config(
            {
                "signingSecretFile": "secret",
                "targets": [
                    {"name": "app", "url": target.url},
                    {"name": "ce", "url": target.url, "format": "cloudevents"},
                ],
                "maxBodySize": MAX_BODY,
                "delivery": {"ack": "delivered"},
            },
            base_dir=folder,
        )
        runner = web.AppRunner(
            create_app(config=config, metrics=metrics), access_log=None, **RUNNER_OPTIONS
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return target, runner, runner.addresses[0][1]

    async def stop(target: RecordingTarget, runner: web.AppRunner) -> None:
        await runner.cleanup()
        await target.close()

    target, runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield Live(port, metrics, target)
    finally:
        asyncio.run_coroutine_threadsafe(stop(target, runner), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


# What JSON parsers take (orjson writes no more either); the "json" bodies go beyond.
json_integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_scalars = (
    st.none()
    | st.booleans()
    | json_integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
wire_names = st.sampled_from([*WIRE_NAMES, "deferred", "inbound.x", "activity_log.y", "", " Spam "])
# Seconds, milliseconds, microseconds (past the year 9999 as milliseconds), the edges.
timestamps = (
    st.sampled_from([1_716_915_293, 1_716_915_293_123, 1_716_915_293_123_456, 2**63 - 1])
    | json_integers
    | st.floats(min_value=-1.0, allow_nan=False, allow_infinity=False)
    | st.sampled_from(["1716915293", "2024-05-28T16:54:53Z", "9999-12-31T23:59:59-05:00", "soon"])
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event": wire_names | json_scalars,
        "timestamp": timestamps | json_scalars,
        "message_id": st.uuids().map(str) | json_scalars,
        "email": st.emails() | json_scalars,
        "event_id": st.uuids().map(str) | st.sampled_from(["same-id", ""]) | json_scalars,
        "inbox_id": json_scalars,
        "from": st.emails() | json_scalars,
        "extra": json_values,
    },
)
# Events that pass validation but for their timestamp, so edge values reach the
# targets' encoding rather than stopping at a missing field.
sending_events = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["delivery", "soft bounce", "spam", "unknown-type"]),
        "timestamp": timestamps,
        "message_id": st.uuids().map(str),
        "email": st.emails(),
        "event_id": st.uuids().map(str),
    },
    optional={"extra": json_values},
)
events = event_like | sending_events
# Form values are text: numbers of any length, past 64 bits and past int()'s limit.
form_numbers = st.one_of(
    st.sampled_from([20, 309, 4301, 4400]), st.integers(min_value=1, max_value=4400)
).map(lambda digits: "9" * digits)


def _jsonl(items: list[Any]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def _form(item: dict[str, Any]) -> bytes:
    return urlencode({key: str(value) for key, value in item.items()}).encode()


@st.composite
def bodies(draw: st.DrawFn, *, for_targets: bool = False) -> tuple[bytes, str | None, int | None]:
    """A body, a Content-Type, and how many items a valid request of it holds (or None).

    ``for_targets``: a body of events that pass validation but for their timestamp.
    """
    kinds = ["batch", "single", "jsonl", "form", "json", "bytes"]
    kind = draw(st.sampled_from(kinds[:4] if for_targets else kinds))
    items_of = sending_events if for_targets else events
    if kind == "batch":
        items = draw(st.lists(items_of | json_values, max_size=6))
        return orjson.dumps({"events": items}), "application/json", len(items)
    if kind == "single":
        return orjson.dumps(draw(items_of)), None, 1
    if kind == "jsonl":
        items = draw(st.lists(items_of, min_size=1, max_size=6))
        return _jsonl(items), draw(st.sampled_from(SUPPORTED_TYPES[2:4])), len(items)
    if kind == "form":
        item = draw(items_of.filter(bool))
        if draw(st.booleans()):
            item["timestamp"] = draw(form_numbers)
        return _form(item), "application/x-www-form-urlencoded", 1
    if kind == "json":
        # The standard library writes integers of any size, which orjson refuses.
        value = draw(json_values | st.lists(st.integers(min_value=2**64), min_size=1))
        return json.dumps(value).encode(), None, None
    return draw(st.binary(max_size=MAX_BODY + 512)), None, None


def mutate(data: st.DataObject, body: bytes) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    if not body or how == "insert":
        at = data.draw(st.integers(0, len(body)))
        return body[:at] + data.draw(st.binary(min_size=1, max_size=8)) + body[at:]
    at = data.draw(st.integers(0, len(body) - 1))
    if how == "flip":
        return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
    return body[:at]


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
# What a refusing target may send: half the time digits str.isdigit() admits and
# float() may not, else dates, numbers, any text (HTTP/1.1 allows obsolete non-ASCII).
retry_after_values = st.one_of(
    st.sampled_from(["\u00b2", "1\u00b2", "\u2075"]),
    st.sampled_from(["120", "1.5", "-5", "Sun, 06 Nov 1994 08:49:37 GMT"])
    | header_text
    | st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12),
)
header_names = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"),
    min_size=1,
    max_size=20,
).filter(lambda name: name.lower() not in RESERVED)
content_types = st.sampled_from(
    [
        *SUPPORTED_TYPES,
        "",
        "text/plain",
        "application/octet-stream",
        "text/xml",
        "multipart/form-data; boundary=b",
        "application/cloudevents+json",
    ]
) | header_text.filter(lambda value: value == value.strip())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_answer_is_documented(live: Live, data: st.DataObject) -> None:
    # A refusal is a 400: not retried, so no example waits for a backoff.
    refused = data.draw(st.integers(0, 3)) == 0
    live.target.status = 400 if refused else 200
    live.target.response_headers = (
        {"Retry-After": data.draw(retry_after_values).strip()} if refused else {}
    )
    # A refusal matters only for a request with events to forward.
    body, content_type, items = data.draw(bodies(for_targets=refused))
    # About a third of the requests (and every refused one) pass every gate, so that
    # their values reach the sink and the targets' encoding; the rest are spoiled in
    # one way or more.
    clean = refused or data.draw(st.integers(0, 2)) == 0
    retyped = not clean and data.draw(st.booleans())
    if retyped:
        content_type = data.draw(st.none() | content_types)
    untouched = True
    if not clean and data.draw(st.integers(0, 4)) == 0:
        body, untouched = mutate(data, body), False
    signature = (
        data.draw(st.sampled_from(["valid", "valid-x"]))
        if clean
        else data.draw(st.sampled_from(["valid", "valid-x", "missing", "other", "garbage"]))
    )
    headers: dict[str, str] = {}
    if signature in ("valid", "valid-x"):
        name = "Mailtrap-Signature" if signature == "valid" else "X-Mailtrap-Signature"
        headers[name] = sign(body, secret=SECRET)
    elif signature == "other":
        headers["Mailtrap-Signature"] = sign(body, secret=OTHER_SECRET)
    elif signature == "garbage":
        headers["Mailtrap-Signature"] = data.draw(header_text)
    if not clean and data.draw(st.integers(0, 3)) == 0:  # corrupt the body after signing
        body, untouched = mutate(data, body), False
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(data.draw(st.dictionaries(header_names, header_text, max_size=3)))
    if not clean and data.draw(st.integers(0, 5)) == 0:
        headers["Content-Encoding"] = data.draw(
            st.sampled_from(["gzip", "deflate", "br", "identity"]) | header_text
        )
    method, path = "POST", PATH
    if not clean and data.draw(st.integers(0, 9)) == 0:
        method = data.draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST", "OPTIONS"]))
        path = data.draw(st.sampled_from([PATH, "/", "/webhooks", PATH + "/", "/metrics"]))

    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    finally:
        connection.close()

    codes = {**ERROR_CODES, 503: {"sink_unavailable"}} if refused else ERROR_CODES
    assert status in {200, *codes}, (status, raw)
    answer = orjson.loads(raw)
    if status == 200:
        assert set(answer) == COUNTS
        assert all(isinstance(answer[key], int) and answer[key] >= 0 for key in COUNTS)
    else:
        assert set(answer) == {"error", "detail"}
        assert answer["error"] in codes[status]
        assert isinstance(answer["detail"], str)

    # A correctly signed, unmutated request in the format it was built for succeeds,
    # and every item in it is counted exactly once.
    well_formed = (
        untouched
        and not retyped
        and items is not None
        and signature in ("valid", "valid-x")
        and headers.get("Content-Encoding", "identity").strip() in ("", "identity")
        and (method, path) == ("POST", PATH)
        and len(body) <= MAX_BODY
    )
    if well_formed and not (refused and status == 503):
        assert status == 200, (status, answer)
        assert sum(answer.values()) == items


def test_no_request_was_answered_with_a_server_error(live: Live) -> None:
    # Runs after the property test in this module: a second check, from the metrics.
    samples = {
        sample.labels["code"]
        for family in live.metrics.registry.collect()
        if family.name == "mailtrap_webhook_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples, "the property test sent no request"
    # 503 only for the refusals the property test drew.
    assert not {code for code in samples if code.startswith("5")} - {"503"}
    # The strategies reached both encodings, so their edge values were tried there.
    types = {item.headers["Content-Type"].partition(";")[0] for item in live.target.received}
    assert {"application/json", "application/cloudevents+json"} <= types
