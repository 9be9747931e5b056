"""The webhook app end to end in process: every documented status, every format,
forwarding to a real loopback target, metrics and the request log line."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import ClientResponse
from structlog.testing import capture_logs

from mailtrap_receiver.logs import redact_email
from mailtrap_receiver.sinks import QUICK_ATTEMPTS
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import (
    OTHER_SECRET,
    SECRET,
    delivery_event,
    json_body,
    jsonl_body,
    signed_headers,
)
from tests.unit.conftest import MakeReceiver, Receiver

PATH = "/webhooks/mailtrap"


async def assert_error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body  # type: ignore[no-any-return]


async def post(
    receiver: Receiver,
    body: bytes,
    *,
    content_type: str | None = "application/json",
    **headers: str,
) -> ClientResponse:
    return await receiver.client.post(
        PATH, data=body, headers={**signed_headers(body, content_type=content_type), **headers}
    )


def by_event_id(target: RecordingTarget) -> dict[str, Any]:
    return {item.json()["event_id"]: item for item in target.received}


async def test_a_batch_is_forwarded_event_by_event(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver()
    first, second = delivery_event(), delivery_event(event="soft bounce", extra={"n": [1, 2]})
    response = await receiver.post_events(first, second)
    assert response.status == 200
    assert await response.json() == {"accepted": 2, "duplicates": 0, "invalid": 0, "filtered": 0}
    received = by_event_id(target)
    assert set(received) == {first["event_id"], second["event_id"]}
    for event, name in ((first, "delivery"), (second, "soft_bounce")):
        item = received[event["event_id"]]
        assert item.path == "/events"
        assert item.json() == event  # the original object, unchanged
        assert item.headers["Idempotency-Key"] == event["event_id"]
        assert item.headers["X-Mailtrap-Event"] == name
        assert item.headers["Content-Type"] == "application/json"
    assert receiver.sample("mailtrap_webhook_events_received_total", {"event": "soft_bounce"}) == 1
    assert receiver.sample("mailtrap_webhook_requests_total", {"code": "200"}) == 1
    assert (
        receiver.sample(
            "mailtrap_webhook_deliveries_total", {"target": "app", "outcome": "delivered"}
        )
        == 2
    )
    assert receiver.sample("mailtrap_webhook_end_to_end_lag_seconds_count", {"target": "app"}) == 2


EVENT = delivery_event(event="bounce", event_id="fixed-id", message_id="m-1")
FORM_EVENT = {
    "event": "bounce",
    "event_id": "fixed-id",
    "message_id": "m-1",
    "email": "john.doe@example.com",
    "timestamp": 1716915293,
}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (orjson.dumps(EVENT), "application/json", EVENT),
        (json_body(EVENT), "application/json; charset=utf-8", EVENT),
        (jsonl_body(EVENT), "application/jsonl", EVENT),
        (jsonl_body(EVENT), "application/x-ndjson", EVENT),
        (urlencode(FORM_EVENT).encode(), "application/x-www-form-urlencoded", FORM_EVENT),
        (json_body(EVENT), None, EVENT),
        (b"\n" + jsonl_body(EVENT) + b"\n", "text/plain", EVENT),
    ],
    ids=["single-json", "json-batch", "jsonl", "x-ndjson", "form", "sniff-json", "sniff-jsonl"],
)
async def test_each_format(
    make_receiver: MakeReceiver,
    target: RecordingTarget,
    body: bytes,
    content_type: str | None,
    expected: dict[str, Any],
) -> None:
    receiver = await make_receiver()
    response = await post(receiver, body, content_type=content_type)
    assert response.status == 200, await response.text()
    assert (await response.json())["accepted"] == 1
    assert target.bodies() == [expected]
    assert target.received[0].headers["X-Mailtrap-Event"] == "bounce"


async def test_a_jsonl_batch_of_many(make_receiver: MakeReceiver, target: RecordingTarget) -> None:
    receiver = await make_receiver()
    events = [delivery_event() for _ in range(20)]
    response = await post(receiver, jsonl_body(*events), content_type="application/jsonl")
    assert (await response.json())["accepted"] == 20
    assert sorted(target.bodies(), key=lambda e: e["event_id"]) == sorted(
        events, key=lambda e: e["event_id"]
    )


async def test_duplicates_are_answered_200_and_not_forwarded_again(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver()
    event = delivery_event()
    assert (await (await receiver.post_events(event)).json())["accepted"] == 1
    again = await receiver.post_events(event, event)
    assert again.status == 200
    assert await again.json() == {"accepted": 0, "duplicates": 2, "invalid": 0, "filtered": 0}
    twice = delivery_event()
    assert (await (await receiver.post_events(twice, twice)).json())["duplicates"] == 1
    assert len(target.received) == 2
    assert receiver.sample("mailtrap_webhook_duplicates_total") == 3


async def test_invalid_events_go_to_the_dead_letter_store(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver()
    valid = delivery_event()
    no_email = delivery_event()
    del no_email["email"]
    body = orjson.dumps({"events": [valid, no_email, "not an event"]})
    response = await post(receiver, body)
    assert response.status == 200
    assert await response.json() == {"accepted": 1, "duplicates": 0, "invalid": 2, "filtered": 0}
    assert target.bodies() == [valid]
    letters = await receiver.dead_letters.entries()
    assert [(letter.reason, letter.event) for letter in letters] == [
        ("missing_field", no_email),
        ("not_object", "not an event"),
    ]
    assert "email" in letters[0].detail
    assert letters[0].target is None
    assert (
        receiver.sample("mailtrap_webhook_invalid_events_total", {"reason": "missing_field"}) == 1
    )


@pytest.mark.parametrize("target_format", ["mailtrap", "cloudevents"])
async def test_a_timestamp_no_datetime_can_hold_is_an_invalid_event(
    make_receiver: MakeReceiver, target: RecordingTarget, target_format: str
) -> None:
    # Microseconds, read as milliseconds, are past the year 9999: a CloudEvents
    # target's ``time`` could not be written, and the request used to fail with 500.
    receiver = await make_receiver(
        targets=[{"name": "app", "url": target.url, "format": target_format}]
    )
    good, bad = delivery_event(), delivery_event(timestamp=1_716_915_293_000_000)
    response = await receiver.post_events(good, bad)
    assert await response.json() == {"accepted": 1, "duplicates": 0, "invalid": 1, "filtered": 0}
    [letter] = await receiver.dead_letters.entries()
    assert (letter.reason, letter.event) == ("invalid_field", bad)
    assert len(target.received) == 1


@pytest.mark.parametrize("digits", [25, 400, 5000])
async def test_a_form_timestamp_of_many_digits_is_an_invalid_event(
    make_receiver: MakeReceiver, target: RecordingTarget, digits: int
) -> None:
    receiver = await make_receiver()
    fields = {**FORM_EVENT, "timestamp": "9" * digits}
    response = await post(
        receiver, urlencode(fields).encode(), content_type="application/x-www-form-urlencoded"
    )
    assert await response.json() == {"accepted": 0, "duplicates": 0, "invalid": 1, "filtered": 0}
    [letter] = await receiver.dead_letters.entries()
    assert (letter.reason, letter.event) == ("invalid_field", fields)
    assert target.received == []


async def test_inbound_and_audit_log_events_are_accepted(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver()
    inbound = {
        "event": "inbound.message_received",
        "event_id": "in-1",
        "inbox_id": 7,
        "message_id": "m",
        "from": "a@example.org",
        "timestamp": 1716915293123,
    }
    audit = {"event": "activity_log.user.updated", "description": "changed"}
    response = await receiver.post_events(inbound, audit)
    assert await response.json() == {"accepted": 2, "duplicates": 0, "invalid": 0, "filtered": 0}
    assert (await (await receiver.post_events(audit)).json())["duplicates"] == 1
    names = sorted(item.headers["X-Mailtrap-Event"] for item in target.received)
    assert names == ["audit_log", "inbound"]


async def test_event_filters_top_level_then_per_target(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    base = target.url.rsplit("/", 1)[0]
    receiver = await make_receiver(
        events=["bounce", "soft_bounce", "unknown"],
        targets=[
            {"name": "bounces", "url": f"{base}/bounces", "events": ["bounce"]},
            {"name": "everything", "url": f"{base}/all"},
        ],
    )
    bounce = delivery_event(event="bounce")
    soft = delivery_event(event="soft bounce")
    new_kind = delivery_event(event="deferred")
    opened = delivery_event(event="open")
    response = await receiver.post_events(bounce, soft, new_kind, opened)
    assert await response.json() == {"accepted": 3, "duplicates": 0, "invalid": 0, "filtered": 1}
    paths: dict[str, set[str]] = {}
    for item in target.received:
        paths.setdefault(item.path, set()).add(item.json()["event_id"])
    assert paths == {
        "/bounces": {bounce["event_id"]},
        "/all": {bounce["event_id"], soft["event_id"], new_kind["event_id"]},
    }


async def test_unparseable_body_is_400(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    await assert_error(await post(receiver, b"{nope"), 400, "malformed_body")
    await assert_error(await post(receiver, b""), 400, "malformed_body")


async def test_missing_signature_is_401(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    body = json_body(delivery_event())
    response = await receiver.client.post(
        PATH, data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 401, "signature_missing")
    assert (
        receiver.sample("mailtrap_webhook_auth_failures_total", {"reason": "signature_missing"})
        == 1
    )


async def test_bad_signature_is_401(make_receiver: MakeReceiver, target: RecordingTarget) -> None:
    receiver = await make_receiver()
    body = json_body(delivery_event())
    wrong_secret = await receiver.client.post(
        PATH, data=body, headers=signed_headers(body, secret=OTHER_SECRET)
    )
    await assert_error(wrong_secret, 401, "signature_invalid")
    tampered = await receiver.client.post(PATH, data=body + b" ", headers=signed_headers(body))
    await assert_error(tampered, 401, "signature_invalid")
    assert target.received == []
    assert (
        receiver.sample("mailtrap_webhook_auth_failures_total", {"reason": "signature_invalid"})
        == 2
    )


async def test_the_older_signature_header_is_accepted(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    body = json_body(delivery_event())
    headers = signed_headers(body)
    headers["X-Mailtrap-Signature"] = headers.pop("Mailtrap-Signature")
    assert (await receiver.client.post(PATH, data=body, headers=headers)).status == 200


async def test_a_second_secret_is_accepted_during_rotation(
    make_receiver: MakeReceiver, secret_file: Path
) -> None:
    await asyncio.to_thread(secret_file.write_bytes, SECRET + b"\n" + OTHER_SECRET + b"\n")
    receiver = await make_receiver()
    assert (await receiver.post_events(delivery_event(), secret=OTHER_SECRET)).status == 200
    assert (await receiver.post_events(delivery_event(), secret=SECRET)).status == 200


async def test_a_changed_secret_file_is_used_without_restart(
    make_receiver: MakeReceiver, secret_file: Path
) -> None:
    receiver = await make_receiver(secret_poll_interval=0.02)
    assert (await receiver.post_events(delivery_event(), secret=OTHER_SECRET)).status == 401
    await asyncio.to_thread(secret_file.write_bytes, OTHER_SECRET + b"\n")
    statuses: list[int] = []

    async def accepted() -> bool:
        response = await receiver.post_events(delivery_event(), secret=OTHER_SECRET)
        statuses.append(response.status)
        return response.status == 200

    await eventually(accepted, interval=0.02)
    assert set(statuses) <= {200, 401}
    assert (await receiver.post_events(delivery_event(), secret=SECRET)).status == 401


@pytest.fixture
def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_text("mailtrap:hook-pass\n")
    return path


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (basic("mailtrap:hook-pass"), 200, None),
        (basic("mailtrap:nope"), 401, "basic_auth_invalid"),
        (None, 401, "basic_auth_missing"),
    ],
)
async def test_basic_auth(
    make_receiver: MakeReceiver,
    credentials_file: Path,
    authorization: str | None,
    status: int,
    code: str | None,
) -> None:
    receiver = await make_receiver(basicAuthSecretFile=str(credentials_file))
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await receiver.post_events(delivery_event(), headers=headers)
    if code is None:
        assert response.status == status
    else:
        await assert_error(response, status, code)
        assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_basic_auth_comes_before_the_signature(
    make_receiver: MakeReceiver, credentials_file: Path
) -> None:
    receiver = await make_receiver(basicAuthSecretFile=str(credentials_file))
    response = await receiver.client.post(PATH, data=b"{}")
    await assert_error(response, 401, "basic_auth_missing")


@pytest.mark.parametrize(
    ("settings", "forwarded_for", "status"),
    [
        ({"allowedSourceRanges": ["127.0.0.0/8"]}, None, 200),
        ({"allowedSourceRanges": ["10.0.0.0/8"]}, None, 403),
        # The test client's peer is 127.0.0.1: untrusted, so its XFF is ignored.
        ({"allowedSourceRanges": ["10.0.0.0/8"]}, "10.1.2.3", 403),
        (
            {"allowedSourceRanges": ["10.0.0.0/8"], "trustedProxyRanges": ["127.0.0.0/8"]},
            "10.1.2.3",
            200,
        ),
        (
            {"allowedSourceRanges": ["10.0.0.0/8"], "trustedProxyRanges": ["127.0.0.0/8"]},
            "10.1.2.3, 192.0.2.1",
            403,
        ),
    ],
)
async def test_source_allow_list(
    make_receiver: MakeReceiver, settings: dict[str, Any], forwarded_for: str | None, status: int
) -> None:
    receiver = await make_receiver(**settings)
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = await receiver.post_events(delivery_event(), headers=headers)
    if status == 403:
        await assert_error(response, 403, "source_not_allowed")
    else:
        assert response.status == status


async def test_every_x_forwarded_for_line_counts(make_receiver: MakeReceiver) -> None:
    # A trusted proxy that adds a line of its own, rather than appending to the
    # client's: a forged first line must not be taken for the client.
    receiver = await make_receiver(
        allowedSourceRanges=["10.0.0.0/8"], trustedProxyRanges=["127.0.0.0/8"]
    )
    body = json_body(delivery_event())
    forged = [*signed_headers(body).items(), ("X-Forwarded-For", "10.1.2.3")]
    response = await receiver.client.post(
        PATH, data=body, headers=[*forged, ("X-Forwarded-For", "192.0.2.1")]
    )
    await assert_error(response, 403, "source_not_allowed")
    response = await receiver.client.post(
        PATH, data=body, headers=[*forged, ("X-Forwarded-For", "10.9.8.7")]
    )
    assert response.status == 200


async def test_other_paths_are_404(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    for path in ("/", "/webhooks", "/webhooks/mailtrap/extra", "/metrics"):
        await assert_error(await receiver.client.post(path, data=b"{}"), 404, "not_found")
    await assert_error(await receiver.client.get("/healthz"), 404, "not_found")


async def test_other_methods_on_the_path_are_405(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = await receiver.client.request(method, PATH)
        await assert_error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST"


async def test_a_declared_large_body_is_413(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(maxBodySize=2048)
    body = json_body(delivery_event(padding="x" * 4096))
    await assert_error(await post(receiver, body), 413, "body_too_large")


async def test_a_streamed_body_over_the_limit_is_413(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(maxBodySize=4096)
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        # Chunked encoding: no Content-Length, so only reading can find the size.
        nonlocal sent
        for _ in range(64):
            sent += 1024
            yield b" " * 1024

    response = await receiver.client.post(
        PATH, data=chunks(), headers={"Mailtrap-Signature": "0" * 64}
    )
    await assert_error(response, 413, "body_too_large")


async def test_a_body_of_exactly_the_limit_is_read(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(maxBodySize=2048)
    body = json_body(delivery_event())
    body += b" " * (2048 - len(body))
    assert (await post(receiver, body)).status == 200
    await assert_error(await post(receiver, body + b" "), 413, "body_too_large")


async def test_a_body_that_stops_arriving_is_408(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(limits={"bodyTimeout": "200ms"})
    server = receiver.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            'Content-Type: application/json\r\n\r\n{"events": ['.encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 60)
        head_and_body = await asyncio.wait_for(reader.read(4096), 60)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert b'"error":"body_timeout"' in head_and_body
    assert b"did not arrive within 0.2s" in head_and_body
    assert receiver.sample("mailtrap_webhook_refused_total", {"reason": "body_timeout"}) == 1


async def slow_request(
    receiver: Receiver, *, length: int, forwarded_for: str | None = None, first: bytes = b"{"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request whose body (``length`` bytes declared) has only begun to arrive."""
    server = receiver.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}"
        "Content-Type: application/json\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    return reader, writer


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return int(head.split(b" ")[1]), orjson.loads(await reader.readexactly(length))


async def test_a_body_slower_than_the_minimum_rate_is_408(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(limits={"minBodyRate": 1024})
    reader, writer = await slow_request(receiver, length=100_000)
    try:
        started = asyncio.get_running_loop().time()
        answer = asyncio.create_task(answer_of(reader))
        while not answer.done():  # a byte every 0.2 s: 5 bytes a second
            writer.write(b" ")
            await asyncio.sleep(0.2)
        status, body = await answer
    finally:
        writer.close()
    # After the 2 s grace, 1024 bytes a second on average are due; 5 are far short.
    assert 2.0 <= asyncio.get_running_loop().time() - started < 10
    assert (status, body["error"]) == (408, "body_too_slow")


async def test_bodies_still_arriving_are_counted_per_client(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(
        trustedProxyRanges=["127.0.0.0/8"], limits={"maxBodyReadsPerSource": 2}
    )
    # Behind a trusted proxy the client is X-Forwarded-For's; an IPv6 client is its /64.
    held = [
        await slow_request(receiver, length=1000, forwarded_for="10.0.0.1"),
        await slow_request(receiver, length=1000, forwarded_for="10.0.0.1"),
        await slow_request(receiver, length=1000, forwarded_for="2001:db8::1"),
        await slow_request(receiver, length=1000, forwarded_for="2001:db8::2"),
    ]
    try:
        for client in ("10.0.0.1", "2001:db8::3"):
            reader, writer = await slow_request(receiver, length=1000, forwarded_for=client)
            status, body = await answer_of(reader)
            writer.close()
            assert (status, body["error"]) == (429, "source_busy"), client
        body = json_body(delivery_event())
        response = await post(receiver, body, **{"X-Forwarded-For": "10.0.0.2"})
        assert response.status == 200
        assert receiver.sample("mailtrap_webhook_refused_total", {"reason": "source_busy"}) == 2
    finally:
        for _, writer in held:
            writer.close()


async def test_bodies_still_arriving_share_the_body_memory(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(
        maxBodySize="4Ki", limits={"maxBodyMemory": 2048, "maxBodyReadsPerSource": 10}
    )
    # One body always fits, even one larger than the whole budget.
    first = await slow_request(receiver, length=3000)
    try:
        await eventually(lambda: receiver.sample("mailtrap_webhook_arriving_body_bytes") == 3000)
        reader, writer = await slow_request(receiver, length=100)
        status, body = await answer_of(reader)
        writer.close()
        assert (status, body["error"]) == (503, "receiver_busy")
    finally:
        first[1].close()
    await eventually(lambda: receiver.sample("mailtrap_webhook_arriving_body_bytes") == 0)
    assert (await receiver.post_events(delivery_event())).status == 200


async def test_compressed_bodies_are_415(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    body = gzip.compress(json_body(delivery_event()))
    response = await post(receiver, body, **{"Content-Encoding": "gzip"})
    await assert_error(response, 415, "unsupported_media_type")
    plain = json_body(delivery_event())
    assert (await post(receiver, plain, **{"Content-Encoding": "identity"})).status == 200


@pytest.mark.parametrize("content_type", ["text/xml", "multipart/form-data; boundary=x"])
async def test_unsupported_content_type_is_415(
    make_receiver: MakeReceiver, content_type: str
) -> None:
    receiver = await make_receiver()
    response = await post(receiver, b"<events/>", content_type=content_type)
    await assert_error(response, 415, "unsupported_media_type")


async def test_the_signature_is_checked_before_the_content_type(
    make_receiver: MakeReceiver,
) -> None:
    receiver = await make_receiver()
    response = await receiver.client.post(
        PATH, data=b"<x/>", headers={"Content-Type": "text/xml", "Mailtrap-Signature": "00"}
    )
    await assert_error(response, 401, "signature_invalid")


async def test_too_many_requests_in_flight_is_429(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver(maxInFlightRequests=1)
    target.hold()
    first = asyncio.create_task(receiver.post_events(delivery_event()))
    await eventually(lambda: bool(target.received))
    response = await receiver.post_events(delivery_event())
    await assert_error(response, 429, "too_many_requests")
    assert response.headers["Retry-After"] == "1"
    target.release()
    assert (await first).status == 200
    assert (await receiver.post_events(delivery_event())).status == 200


async def test_a_failing_target_is_503_and_the_retry_is_forwarded(
    make_receiver: MakeReceiver, target: RecordingTarget
) -> None:
    receiver = await make_receiver()
    event = delivery_event()
    target.status = 500
    body = json_body(event, {"event": "delivery"})  # the second is invalid
    await assert_error(await post(receiver, body), 503, "sink_unavailable")
    assert await receiver.dead_letters.entries() == []
    target.status = 200
    assert receiver.sample("mailtrap_webhook_events_received_total", {"event": "delivery"}) == 0
    response = await post(receiver, body)  # Mailtrap's retry: not a duplicate
    assert await response.json() == {"accepted": 1, "duplicates": 0, "invalid": 1, "filtered": 0}
    assert len(await receiver.dead_letters.entries()) == 1
    # Counted once, when taken, not for the refused attempt as well.
    assert receiver.sample("mailtrap_webhook_events_received_total", {"event": "delivery"}) == 1
    assert (
        receiver.sample("mailtrap_webhook_invalid_events_total", {"reason": "missing_field"}) == 1
    )
    # Ack mode delivered tries a failing target a few times before answering 503.
    assert len(target.received) == QUICK_ATTEMPTS + 1
    assert (
        receiver.sample(
            "mailtrap_webhook_deliveries_total", {"target": "app", "outcome": "rejected"}
        )
        == QUICK_ATTEMPTS
    )


async def test_an_unreachable_target_is_503(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(
        targets=[{"name": "gone", "url": "http://127.0.0.1:9/events", "timeout": "5s"}]
    )
    await assert_error(await receiver.post_events(delivery_event()), 503, "sink_unavailable")
    assert (
        receiver.sample("mailtrap_webhook_deliveries_total", {"target": "gone", "outcome": "error"})
        == QUICK_ATTEMPTS
    )


async def test_shutting_down_is_503(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    receiver.lifecycle.stopping = True
    await assert_error(await receiver.post_events(delivery_event()), 503, "shutting_down")


async def test_the_request_log_line(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    events = [delivery_event() for _ in range(7)]
    body = json_body(*events)
    headers = signed_headers(body)
    with capture_logs() as logs:
        assert (await receiver.client.post(PATH, data=body, headers=headers)).status == 200
        await receiver.client.post(PATH, data=body, headers={"Mailtrap-Signature": "f" * 64})
    lines = [line for line in logs if line["event"] == "request"]
    assert len(lines) == 2
    ok, refused = lines
    assert ok["status"] == 200
    assert ok["accepted"] == 7
    assert ok["event_ids"] == [event["event_id"] for event in events[:5]]
    assert ok["message_ids"] == [event["message_id"] for event in events[:5]]
    assert ok["emails"] == ["john.doe@example.com"] * 5
    assert refused["status"] == 401
    assert refused["error"] == "signature_invalid"
    text = repr(logs)
    assert headers["Mailtrap-Signature"] not in text
    assert "f" * 64 not in text
    assert SECRET.decode() not in text


async def test_emails_are_redacted_in_logs_when_asked(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(logging={"redactEmails": True})
    with capture_logs() as logs:
        assert (await receiver.post_events(delivery_event(email="jane@example.com"))).status == 200
    line = next(line for line in logs if line["event"] == "request")
    assert line["emails"] == [redact_email("jane@example.com")]
    assert "jane@example.com" not in repr(logs)


async def test_an_empty_batch_is_fine(make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    response = await post(receiver, b'{"events": []}')
    assert await response.json() == {"accepted": 0, "duplicates": 0, "invalid": 0, "filtered": 0}
