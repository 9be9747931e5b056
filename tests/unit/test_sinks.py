"""Routing, target encodings, and the forwarding sink against real loopback targets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailtrap_receiver.auth import sign
from mailtrap_receiver.config import ReceiverConfig, parse_config
from mailtrap_receiver.metrics import Metrics
from mailtrap_receiver.sinks import (
    QUICK_ATTEMPTS,
    ForwardingSink,
    Payload,
    Route,
    Routes,
    SinkUnavailable,
    encode,
    new_session,
    post,
    target_url,
)
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import classified_event as event


def config_with(*targets: dict[str, Any], **extra: Any) -> ReceiverConfig:
    return parse_config({"signingSecretFile": "/s", "targets": list(targets), **extra})


def payload(**fields: Any) -> Payload:
    return Payload.from_event(event(**fields))


def route(**target: Any) -> Route:
    config = config_with({"name": "t", "url": "http://127.0.0.1:1/in", **target})
    return Route.from_config(
        config.targets[0], index=0, namespace="ns", source="/apis/mailtrap.io/v1alpha1/x"
    )


def test_service_targets_resolve_to_cluster_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_with(
        {"name": "a", "service": {"name": "api", "port": 8080, "path": "/events"}},
        {
            "name": "b",
            "service": {"name": "api", "namespace": "ops", "port": 443, "scheme": "https"},
        },
        {"name": "c", "url": "http://example.test/x"},
    )
    urls = [target_url(target, namespace="mail") for target in config.targets]
    assert urls == [
        "http://api.mail.svc:8080/events",
        "https://api.ops.svc:443/",
        "http://example.test/x",
    ]
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    routes = Routes(config)
    assert routes.targets[0].url == "http://api.from-downward-api.svc:8080/events"


def test_cloudevents_source_comes_from_the_operator_or_names_the_receiver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_with({"name": "a", "url": "http://a/", "format": "cloudevents"})
    monkeypatch.delenv("MAILTRAP_CLOUDEVENTS_SOURCE", raising=False)
    assert Routes(config, namespace="ns").targets[0].source == "mailtrap-receiver"
    path = "/apis/mailtrap.io/v1alpha1/namespaces/mail/mailtrapwebhooks/transactional"
    monkeypatch.setenv("MAILTRAP_CLOUDEVENTS_SOURCE", path)
    routes = Routes(config, namespace="ns")
    body, _ = encode(routes.targets[0], [payload()])
    assert orjson.loads(body)["source"] == path


def test_routes_apply_the_top_level_filter_then_each_targets() -> None:
    config = config_with(
        {"name": "bounces", "url": "http://a/", "events": ["bounce", "open"]},
        {"name": "all", "url": "http://b/"},
        events=["bounce", "unknown"],
    )
    routes = Routes(config, namespace="ns")
    assert [r.name for r in routes["bounce"]] == ["bounces", "all"]
    assert [r.name for r in routes["unknown"]] == ["all"]
    assert routes["open"] == ()  # outside the top-level filter
    assert routes["delivery"] == ()


def test_mailtrap_format_single_and_batch() -> None:
    first, second = event(), event(event="spam")
    body, headers = encode(route(), [Payload.from_event(first)])
    assert orjson.loads(body) == first.data
    assert headers["Idempotency-Key"] == first.key
    assert headers["X-Mailtrap-Event"] == "delivery"
    first_payload, second_payload = Payload.from_event(first), Payload.from_event(second)
    body, headers = encode(route(), [first_payload, second_payload])
    assert orjson.loads(body) == {"events": [first.data, second.data]}
    assert headers["X-Mailtrap-Event"] == "delivery,spam_complaint"
    assert headers["Idempotency-Key"].startswith("batch:")
    reversed_key = encode(route(), [second_payload, first_payload])[1]["Idempotency-Key"]
    assert reversed_key != headers["Idempotency-Key"]


def test_cloudevents_format() -> None:
    item = event(event="soft bounce", timestamp=1_716_915_293)
    body, headers = encode(route(format="cloudevents"), [Payload.from_event(item)])
    envelope = orjson.loads(body)
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert envelope["specversion"] == "1.0"
    assert envelope["id"] == item.key
    assert envelope["type"] == "io.mailtrap.email.soft_bounce"
    assert envelope["source"] == "/apis/mailtrap.io/v1alpha1/x"
    assert envelope["time"] == "2024-05-28T16:54:53+00:00"
    assert envelope["subject"] == item.data["message_id"]
    assert envelope["data"] == item.data
    body, headers = encode(route(format="cloudevents"), [Payload.from_event(item), payload()])
    assert headers["Content-Type"] == "application/cloudevents-batch+json"
    assert orjson.loads(body)[0]["id"] == item.key


def test_cloudevents_leave_out_a_time_no_datetime_can_hold() -> None:
    # classify refuses such times now, but a spool written before it did keeps them.
    stored = Payload("k", "delivery", b'{"event":"delivery"}', 1_716_915_293_000.0, None)
    body, _ = encode(route(format="cloudevents"), [stored, payload()])
    first, second = orjson.loads(body)
    assert "time" not in first
    assert first["data"] == {"event": "delivery"}
    assert "time" in second


async def test_an_encoding_failure_is_a_failed_attempt_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: Any) -> Any:
        raise ValueError("year 10000 is out of range")

    monkeypatch.setattr("mailtrap_receiver.sinks.encode", broken)
    metrics = Metrics()
    r = route()
    metrics.add_target(r.name)
    async with new_session() as session:
        attempt = await post(session, r, [payload()], metrics=metrics)
    assert (attempt.status, attempt.error, attempt.delivered) == (None, "ValueError", False)
    sample = metrics.registry.get_sample_value(
        "mailtrap_webhook_deliveries_total", {"target": "t", "outcome": "error"}
    )
    assert sample == 1


def test_configured_headers_cannot_replace_the_receivers(tmp_path: Path) -> None:
    secret = tmp_path / "target-secret"
    secret.write_bytes(b"current\nprevious\n")
    r = route(
        headers={"Authorization": "Bearer t", "content-type": "text/plain", "IDEMPOTENCY-KEY": "x"},
        signingSecretFile=str(secret),
    )
    body, headers = encode(r, [payload()])
    assert headers["Authorization"] == "Bearer t"
    assert headers["Content-Type"] == "application/json"
    assert {name.lower() for name in headers} == {
        "authorization",
        "content-type",
        "idempotency-key",
        "x-mailtrap-event",
        "x-mailtrap-receiver-signature",
    }
    assert headers["X-Mailtrap-Receiver-Signature"] == sign(body, secret=b"current")


async def started(config: ReceiverConfig) -> ForwardingSink:
    sink = ForwardingSink(config=config, metrics=Metrics(), namespace="ns")
    await sink.start()
    return sink


async def test_a_denied_target_fails_the_request_without_quick_retries(
    target: RecordingTarget,
) -> None:
    config = config_with(
        {"name": "t", "url": f"http://localhost:{target.port}/events"},
        deniedTargetRanges=["127.0.0.0/8", "::1/128"],
    )
    sink = await started(config)
    try:
        with pytest.raises(SinkUnavailable):
            await sink.submit([event()])
    finally:
        await sink.close()
    assert target.received == []
    # One attempt: a denied address stays denied.
    attempts = sink._metrics.registry.get_sample_value(
        "mailtrap_webhook_deliveries_total", {"target": "t", "outcome": "error"}
    )
    assert attempts == 1


async def test_batches_follow_the_target_batch_size(target: RecordingTarget) -> None:
    sink = await started(config_with({"name": "t", "url": target.url, "batchSize": 2}))
    try:
        items = [event() for _ in range(3)]
        result = await sink.submit(items)
    finally:
        await sink.close()
    assert result.accepted == 3
    sizes = sorted(len(body["events"]) if "events" in body else 1 for body in target.bodies())
    assert sizes == [1, 2]


async def test_an_event_is_seen_only_once_every_target_took_it(
    target: RecordingTarget, second_target: RecordingTarget
) -> None:
    sink = await started(
        config_with({"name": "a", "url": target.url}, {"name": "b", "url": second_target.url})
    )
    try:
        item = event()
        second_target.status = 503
        with pytest.raises(SinkUnavailable):
            await sink.submit([item])
        second_target.status = 200
        assert (await sink.submit([item])).accepted == 1  # not a duplicate yet
        assert (await sink.submit([item])).duplicates == 1
    finally:
        await sink.close()
    assert len(target.received) == 2
    assert len(second_target.received) == QUICK_ATTEMPTS + 1  # the 503s were retried at once


async def test_an_event_in_flight_elsewhere_is_waited_for_not_sent_twice(
    target: RecordingTarget,
) -> None:
    sink = await started(config_with({"name": "t", "url": target.url}))
    try:
        item = event()
        target.hold()
        first = asyncio.create_task(sink.submit([item]))
        await eventually(lambda: bool(target.received))
        second = asyncio.create_task(sink.submit([item]))
        await asyncio.sleep(0)
        assert not second.done()
        target.release()
        assert (await first).accepted == 1
        assert (await second).duplicates == 1
    finally:
        await sink.close()
    assert len(target.received) == 1


async def test_a_waiter_fails_too_when_the_forwarding_request_fails(
    target: RecordingTarget,
) -> None:
    sink = await started(config_with({"name": "t", "url": target.url}))
    try:
        item = event()
        target.status = 500
        target.hold()
        first = asyncio.create_task(sink.submit([item]))
        await eventually(lambda: bool(target.received))
        second = asyncio.create_task(sink.submit([item]))
        target.release()
        results = await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await sink.close()
    assert all(isinstance(result, SinkUnavailable) for result in results)


async def test_a_retry_after_of_non_ascii_digits_is_ignored(target: RecordingTarget) -> None:
    # "²".isdigit() is true, and float("²") used to raise out of post.
    sink = await started(config_with({"name": "t", "url": target.url}))
    target.status = 503
    target.response_headers = {"Retry-After": "\u00b2"}
    try:
        with pytest.raises(SinkUnavailable):
            await sink.submit([event()])
    finally:
        await sink.close()
    assert len(target.received) == QUICK_ATTEMPTS


async def test_filtered_events_are_counted_not_sent(target: RecordingTarget) -> None:
    sink = await started(config_with({"name": "t", "url": target.url, "events": ["bounce"]}))
    try:
        result = await sink.submit([event(), event(event="bounce")])
    finally:
        await sink.close()
    assert (result.accepted, result.filtered) == (1, 1)
    assert [item.headers["X-Mailtrap-Event"] for item in target.received] == ["bounce"]


async def test_delivered_mode_retries_a_hiccup_within_the_request(
    target: RecordingTarget,
) -> None:
    sink = await started(config_with({"name": "t", "url": target.url}))
    try:
        target.status = 503
        submitting = asyncio.create_task(sink.submit([event()]))
        await eventually(lambda: bool(target.received))
        target.status = 200  # back before the quick retry
        assert (await submitting).accepted == 1
    finally:
        await sink.close()
    assert len(target.received) == 2


async def test_delivered_mode_does_not_retry_a_refusal(target: RecordingTarget) -> None:
    sink = await started(config_with({"name": "t", "url": target.url}))
    try:
        target.status = 400
        with pytest.raises(SinkUnavailable):
            await sink.submit([event()])
    finally:
        await sink.close()
    assert len(target.received) == 1


def test_an_unsafe_event_id_goes_out_hashed_in_the_header() -> None:
    for unsafe in ("a\x08b", "line\r\nX-Injected: 1", "é" * 3, "x" * 250, "two words"):
        item = Payload.from_event(event(event_id=unsafe))
        body, headers = encode(route(), [item])
        assert headers["Idempotency-Key"].startswith("sha256:")
        assert headers["Idempotency-Key"].isascii()
        assert orjson.loads(body)["event_id"] == unsafe  # the body keeps it as sent
