"""Ack mode durable end to end inside one test: the real SpoolSink with its real writer
process and SQLite file, delivering to real HTTP targets on loopback (delivery.py,
spool.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailtrap_receiver.admin import Lifecycle
from mailtrap_receiver.config import ReceiverConfig, parse_config
from mailtrap_receiver.deadletters import DeadLetter, DeadLettersFull
from mailtrap_receiver.delivery import SpoolSink
from mailtrap_receiver.metrics import Metrics
from mailtrap_receiver.sinks import SinkOverloaded, SinkUnavailable
from mailtrap_receiver.spool import SpoolError, SpoolWriteFailed
from mailtrap_receiver.spoolfile import StoredDeadLetter, list_dead_letters, open_existing
from mailtrap_receiver.spoolfile import replay_dead_letters as replay
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import classified_event as event

FAST_RETRY: dict[str, Any] = {"maxAttempts": 20, "initialBackoff": "10ms", "maxBackoff": "50ms"}


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


SinkFactory = Callable[..., Awaitable[SpoolSink]]


@pytest.fixture
async def make_sink(spool_path: Path) -> AsyncIterator[SinkFactory]:
    """Start a SpoolSink on the test's spool file; every one is closed at the end."""
    sinks: list[SpoolSink] = []

    async def make(
        *targets: dict[str, Any],
        lifecycle: Lifecycle | None = None,
        metrics: Metrics | None = None,
        **delivery: Any,
    ) -> SpoolSink:
        config = config_for(spool_path, *targets, **delivery)
        sink = SpoolSink(
            config=config,
            metrics=metrics or Metrics(),
            lifecycle=lifecycle,
            namespace="ns",
            poll_interval=0.1,
        )
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def config_for(spool_path: Path, *targets: dict[str, Any], **delivery: Any) -> ReceiverConfig:
    settings: dict[str, Any] = {"spoolPath": str(spool_path), "retry": FAST_RETRY, **delivery}
    return parse_config(
        {"signingSecretFile": "/unused", "targets": list(targets), "delivery": settings}
    )


def letters(spool_path: Path) -> list[StoredDeadLetter]:
    conn = open_existing(spool_path)
    try:
        return list_dead_letters(conn)
    finally:
        conn.close()


async def test_concurrent_requests_share_commits(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    sink = await make_sink({"name": "app", "url": target.url, "batchSize": 50})
    events = [event() for _ in range(300)]
    results = await asyncio.gather(*(sink.submit([item]) for item in events))
    assert all(result.accepted == 1 for result in results)
    # One fsync served many requests.
    assert 1 <= sink.spool.commits < len(events) / 2
    await eventually(lambda: len(target.event_ids()) >= len(events))
    assert sorted(target.event_ids()) == sorted(item.key for item in events)


async def test_batches_and_formats_per_target(
    make_sink: SinkFactory, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    sink = await make_sink(
        {"name": "plain", "url": target.url, "batchSize": 3},
        {"name": "ce", "url": second_target.url, "batchSize": 2, "format": "cloudevents"},
    )
    events = [event(event="bounce" if n % 2 else "delivery") for n in range(7)]
    assert (await sink.submit(events)).accepted == 7
    await eventually(lambda: len(target.event_ids()) == 7 and len(second_target.event_ids()) == 7)
    assert sorted(target.event_ids()) == sorted(item.key for item in events)
    for request in target.received:
        body = request.json()
        size = len(body["events"]) if "events" in body else 1
        assert 1 <= size <= 3
        if size > 1:
            assert request.headers["Idempotency-Key"].startswith("batch:")
            assert [item["event_id"] for item in body["events"]] == request.event_ids()
        else:
            assert request.headers["Idempotency-Key"] == body["event_id"]
        names = set(request.headers["X-Mailtrap-Event"].split(","))
        assert names <= {"delivery", "bounce"}
    for request in second_target.received:
        body = request.json()
        envelopes = body if isinstance(body, list) else [body]
        assert 1 <= len(envelopes) <= 2
        assert all(envelope["specversion"] == "1.0" for envelope in envelopes)
        assert all(envelope["type"].startswith("io.mailtrap.email.") for envelope in envelopes)
    # The original event objects, unchanged.
    by_id = {item.key: item.data for item in events}
    for request in target.received:
        body = request.json()
        for item in body.get("events", [body]):
            assert item == by_id[item["event_id"]]


async def test_a_refusal_is_dead_lettered_at_once_with_the_answer(
    make_sink: SinkFactory, target: RecordingTarget, spool_path: Path
) -> None:
    metrics = Metrics()
    sink = await make_sink({"name": "app", "url": target.url}, metrics=metrics)
    target.status = 422
    item = event()
    await sink.submit([item])
    await eventually(lambda: sink.spool.pending_events == 0)
    assert len(target.received) == 1  # never retried
    [letter] = letters(spool_path)
    assert (letter.target, letter.key, letter.reason, letter.status, letter.attempts) == (
        "app",
        item.key,
        "rejected",
        422,
        1,
    )
    assert letter.response == "ok"  # what the target answered
    assert letter.event == item.data
    sample = metrics.registry.get_sample_value(
        "mailtrap_webhook_dead_letters_total", {"target": "app", "reason": "rejected"}
    )
    assert sample == 1


async def test_a_denied_target_is_dead_lettered_at_once_and_never_reached(
    target: RecordingTarget, spool_path: Path
) -> None:
    # The operator writes deniedTargetRanges; localhost resolves into it.
    config = parse_config(
        {
            "signingSecretFile": "/unused",
            "targets": [{"name": "app", "url": f"http://localhost:{target.port}/events"}],
            "delivery": {"spoolPath": str(spool_path), "retry": FAST_RETRY},
            "deniedTargetRanges": ["127.0.0.0/8", "::1/128"],
        }
    )
    metrics = Metrics()
    sink = SpoolSink(config=config, metrics=metrics, namespace="ns", poll_interval=0.1)
    await sink.start()
    try:
        item = event()
        await sink.submit([item])
        await eventually(lambda: sink.spool.pending_events == 0)
    finally:
        await sink.close()
    assert target.received == []
    [letter] = letters(spool_path)
    assert (letter.reason, letter.attempts, letter.status) == ("egress_denied", 1, None)
    assert "deniedTargetRanges" in letter.detail
    sample = metrics.registry.get_sample_value(
        "mailtrap_webhook_dead_letters_total", {"target": "app", "reason": "egress_denied"}
    )
    assert sample == 1


async def test_retry_after_is_honoured(make_sink: SinkFactory, target: RecordingTarget) -> None:
    sink = await make_sink(
        {"name": "app", "url": target.url},
        retry={"maxAttempts": 5, "initialBackoff": "10ms", "maxBackoff": "5s"},
    )
    target.status = 429
    target.response_headers = {"Retry-After": "1"}
    await sink.submit([event()])
    await eventually(lambda: len(target.received) == 1)
    target.status = 200
    await eventually(lambda: len(target.received) == 2)
    first, second = target.received
    # Without Retry-After the wait would have been 10-20 ms.
    assert second.at - first.at >= 0.95


async def test_attempts_run_out_into_dead_letters(
    make_sink: SinkFactory, target: RecordingTarget, spool_path: Path
) -> None:
    sink = await make_sink(
        {"name": "app", "url": target.url, "retry": {"maxAttempts": 3}},
        retry={"maxAttempts": 50, "initialBackoff": "10ms", "maxBackoff": "20ms"},
    )
    target.status = 500
    item = event()
    await sink.submit([item])
    await eventually(lambda: bool(letters(spool_path)))
    [letter] = letters(spool_path)
    assert (letter.reason, letter.attempts, letter.status) == ("attempts_exhausted", 3, 500)
    await asyncio.sleep(0.3)  # several backoffs: no fourth attempt comes
    assert len(target.received) == 3


async def test_pending_events_resume_and_dedup_survives_a_restart(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    url = target.url
    await target.stop()  # down: connections are refused
    first = await make_sink({"name": "app", "url": url})
    events = [event() for _ in range(5)]
    assert (await first.submit(events)).accepted == 5
    await first.close()

    await target.start()
    second = await make_sink({"name": "app", "url": url})
    await eventually(lambda: len(set(target.event_ids())) == 5)
    assert set(target.event_ids()) == {item.key for item in events}
    result = await second.submit([*events, event()])
    assert (result.accepted, result.duplicates) == (1, 5)


async def test_events_of_a_removed_target_are_counted_as_dead_letters(
    make_sink: SinkFactory, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    second_target.hold()  # the event stays pending for it
    first = await make_sink(
        {"name": "app", "url": target.url}, {"name": "crm", "url": second_target.url}
    )
    await first.submit([event()])
    await eventually(lambda: bool(second_target.received))
    await first.close()
    second_target.release()

    metrics = Metrics()
    await make_sink({"name": "app", "url": target.url}, metrics=metrics)
    sample = metrics.registry.get_sample_value(
        "mailtrap_webhook_dead_letters_total", {"target": "crm", "reason": "target_removed"}
    )
    assert sample == 1


async def test_too_many_pending_events_is_overloaded(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    url = target.url
    await target.stop()
    sink = await make_sink({"name": "app", "url": url}, maxPendingEvents=2)
    await sink.submit([event(), event()])
    with pytest.raises(SinkOverloaded):
        await sink.submit([event()])


async def test_a_replay_from_another_process_is_picked_up(
    make_sink: SinkFactory, target: RecordingTarget, spool_path: Path
) -> None:
    sink = await make_sink({"name": "app", "url": target.url})
    target.status = 400
    item = event()
    await sink.submit([item])
    await eventually(lambda: bool(letters(spool_path)))
    target.status = 200
    conn = open_existing(spool_path)  # what `dlq replay` does, beside the server
    try:
        assert replay(conn) == (1, 0)
    finally:
        conn.close()
    await eventually(lambda: len(target.received) == 2)
    assert target.received[1].event_ids() == [item.key]
    assert letters(spool_path) == []


async def test_a_failing_target_does_not_hold_back_a_healthy_one(
    make_sink: SinkFactory, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    sink = await make_sink(
        {"name": "broken", "url": target.url},
        {"name": "healthy", "url": second_target.url},
    )
    target.status = 500
    events = [event() for _ in range(50)]
    for item in events:
        await sink.submit([item])
    await eventually(lambda: len(second_target.event_ids()) == 50)
    assert sink.spool.depth["broken"] == 50


async def test_invalid_events_are_kept_as_dead_letters(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    sink = await make_sink({"name": "app", "url": target.url})
    letter = DeadLetter(
        key="sha256:1",
        reason="missing_field",
        detail="missing field: event",
        event={"email": "a@example.com"},
        received_at=time.time(),
    )
    await sink.dead_letters.add([letter])
    [stored] = await sink.dead_letters.entries()
    assert stored.key == letter.key
    assert stored.event == letter.event
    assert stored.target is None


async def test_a_full_dead_letter_store_refuses_letters_and_holds_back_given_up_events(
    make_sink: SinkFactory, target: RecordingTarget, spool_path: Path
) -> None:
    metrics = Metrics()
    sink = await make_sink(
        {"name": "app", "url": target.url, "retry": {"maxAttempts": 1, "maxBackoff": "100ms"}},
        metrics=metrics,
        maxDeadLetters=2,
    )

    def letter(key: str) -> DeadLetter:
        return DeadLetter(key, "missing_field", "missing field: event", {}, time.time())

    await sink.dead_letters.add([letter("first"), letter("second")])
    with pytest.raises(DeadLettersFull, match="holds 2 of 2"):
        await sink.dead_letters.add([letter("third")])
    # The target refuses, the event cannot become a dead letter: it stays pending and
    # is tried again (after maxBackoff), counted as held back, never dropped.
    target.status = 400
    refused = event()
    assert (await sink.submit([refused])).accepted == 1

    def held() -> float:
        value = metrics.registry.get_sample_value(
            "mailtrap_webhook_dead_letters_held_total", {"target": "app"}
        )
        return value or 0.0

    await eventually(lambda: held() >= 2)
    assert sink.spool.depth["app"] == 1
    assert [stored.key for stored in letters(spool_path)] == ["first", "second"]
    assert metrics.registry.get_sample_value("mailtrap_webhook_dead_letters_stored") == 2


async def test_shutdown_delivers_what_is_due_within_the_grace_period(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    lifecycle = Lifecycle()
    sink = await make_sink({"name": "app", "url": target.url, "batchSize": 10}, lifecycle=lifecycle)
    target.hold()
    events = [event() for _ in range(30)]
    await sink.submit(events)
    await eventually(lambda: bool(target.received))
    lifecycle.stop(grace_period=30)
    closing = asyncio.create_task(sink.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # still delivering
    target.release()
    await closing
    assert sorted(set(target.event_ids())) == sorted(item.key for item in events)
    assert sink.spool.pending_events == 0


async def test_a_dead_writer_process_fails_requests_and_health(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    lifecycle = Lifecycle()
    sink = await make_sink({"name": "app", "url": target.url}, lifecycle=lifecycle)
    process = sink.spool._process
    assert process is not None
    process.kill()
    await eventually(lambda: lifecycle.failure is not None)
    with pytest.raises(SinkUnavailable):
        await sink.submit([event()])
    assert "exited" in (lifecycle.failure or "")


async def test_a_failure_handling_a_commit_fails_requests_and_health(
    make_sink: SinkFactory, target: RecordingTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug on this side of the socket used to end the spool's receiving task
    # quietly: every request then waited for ever for its commit.
    lifecycle = Lifecycle()
    sink = await make_sink({"name": "app", "url": target.url}, lifecycle=lifecycle)

    def broken(payload: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sink.workers["app"], "offer", broken)
    async with asyncio.timeout(10):
        with pytest.raises(SpoolWriteFailed, match="RuntimeError"):
            await sink.submit([event()])
        with pytest.raises(SpoolWriteFailed):  # later ones fail at once
            await sink.submit([event()])
    assert "RuntimeError" in (lifecycle.failure or "")


async def test_a_write_the_writer_process_cannot_handle_is_answered(
    make_sink: SinkFactory, target: RecordingTarget
) -> None:
    # Not an sqlite3.Error: it used to end the writer's thread, and the request hung.
    sink = await make_sink({"name": "app", "url": target.url})
    malformed = sink.spool.store([(event(), 5)])  # type: ignore[list-item]
    async with asyncio.timeout(10):
        with pytest.raises(SpoolWriteFailed, match="TypeError"):
            await malformed
        with pytest.raises(SpoolError, match="TypeError"):
            await sink.spool.read("oldest_pending", wrong_argument=1)
        # Both threads are still there.
        assert (await sink.submit([event()])).accepted == 1
        assert await sink.spool.read("oldest_pending", targets=["app"]) != {}


async def test_a_target_gets_the_event_as_received_through_the_spool(
    make_sink: SinkFactory, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    # Kept as JSON bytes in the spool and sent on without parsing them again: the
    # same object, nested values, non-ASCII text and floats included.
    sink = await make_sink(
        {"name": "plain", "url": target.url},
        {"name": "ce", "url": second_target.url, "format": "cloudevents"},
    )
    extra = {"nested": [1, {"deep": None}], "text": "Zoë \u2603", "ratio": 0.1}
    item = event(extra=extra)
    assert (await sink.submit([item])).accepted == 1
    await eventually(lambda: bool(target.received) and bool(second_target.received))
    [plain], [cloud] = target.received, second_target.received
    assert plain.body == orjson.dumps(item.data)
    assert plain.json()["extra"] == extra
    assert cloud.json()["data"] == item.data
