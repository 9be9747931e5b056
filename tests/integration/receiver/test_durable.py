"""Delivery by the real receiver process to real loopback targets: outages and retry
spacing, attempts running out into dead letters and their replay with the dlq
command, one broken target beside a healthy one (measured), ack mode delivered, and
draining on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.helpers.processes import (
    ReceiverProcess,
    dlq,
    http_status,
    sample_value,
    scrape,
    start_receiver_async,
    write_config,
)
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, post_signed

pytestmark = pytest.mark.integration

Start = Callable[..., Awaitable[ReceiverProcess]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


@pytest.fixture
async def start(tmp_path: Path, secret_file: Path) -> AsyncIterator[Start]:
    """Start the real receiver with a config; killed at teardown whatever happens."""
    started: list[ReceiverProcess] = []

    async def run(*, name: str = "receiver", **config: Any) -> ReceiverProcess:
        path = write_config(
            tmp_path / f"{name}.json", {"signingSecretFile": secret_file.name, **config}
        )
        receiver = await start_receiver_async(config=path)
        started.append(receiver)
        return receiver

    yield run
    for receiver in started:
        receiver.kill()


async def metric(receiver: ReceiverProcess, name: str, **labels: str) -> float:
    return sample_value(await scrape(receiver), name, **labels)


async def send_each(
    session: aiohttp.ClientSession, receiver: ReceiverProcess, events: list[dict[str, Any]]
) -> None:
    """Post each event in its own request, a few at a time; every one must get 200."""

    async def one(event: dict[str, Any]) -> None:
        status, answer = await post_signed(session, receiver.url(), event)
        assert (status, answer["accepted"]) == (200, 1), answer

    for start in range(0, len(events), 8):
        await asyncio.gather(*(one(event) for event in events[start : start + 8]))


def arrivals(target: RecordingTarget) -> dict[str, list[float]]:
    """When each event id arrived (every attempt), in order."""
    times: dict[str, list[float]] = defaultdict(list)
    for request in target.received:
        for event_id in request.event_ids():
            times[event_id].append(request.at)
    return times


async def test_an_outage_is_ridden_out_with_spaced_retries(
    start: Start,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    initial, maximum = 0.2, 1.0
    spool = tmp_path / "spool" / "spool.db"
    url = target.url
    receiver = await start(
        targets=[{"name": "app", "url": url}],
        delivery={
            "spoolPath": str(spool),
            "retry": {"maxAttempts": 100, "initialBackoff": "200ms", "maxBackoff": "1s"},
        },
    )
    await target.stop()  # down: connections refused
    events = [delivery_event() for _ in range(20)]
    await send_each(session, receiver, events)
    await asyncio.sleep(2)
    assert target.received == []
    assert await metric(receiver, "mailtrap_webhook_queue_depth", target="app") == 20
    assert await metric(receiver, "mailtrap_webhook_oldest_pending_age_seconds", target="app") > 0

    await target.start()  # up, but failing: each attempt is seen, with its time
    target.status = 503
    await asyncio.sleep(4)
    target.status = 200
    ids = {event["event_id"] for event in events}
    await eventually(lambda: ids <= set(target.event_ids()), within=60)

    times = arrivals(target)
    gaps = [
        later - earlier
        for event_id in ids
        for earlier, later in zip(times[event_id], times[event_id][1:], strict=False)
    ]
    assert len(gaps) >= len(ids)  # every event was retried against the 503s
    # Never sooner than initialBackoff; never much later than maxBackoff (the slack is
    # scheduling on a busy machine, not the policy).
    assert min(gaps) >= initial * 0.9, sorted(gaps)[:5]
    assert max(gaps) <= maximum + 1.5, sorted(gaps)[-5:]

    out = await dlq("list", "--spool", str(spool), "--json")
    assert orjson.loads(out) == []  # nothing gave up: attempts did not run out
    await eventually(
        lambda: metric_is(receiver, "mailtrap_webhook_queue_depth", 0, target="app"), within=10
    )


async def metric_is(receiver: ReceiverProcess, name: str, value: float, **labels: str) -> bool:
    return await metric(receiver, name, **labels) == value


async def test_attempts_run_out_into_dead_letters_that_can_be_replayed(
    start: Start,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool" / "spool.db"
    receiver = await start(
        targets=[{"name": "app", "url": target.url, "retry": {"maxAttempts": 2}}],
        delivery={
            "spoolPath": str(spool),
            "retry": {"initialBackoff": "50ms", "maxBackoff": "100ms"},
        },
    )
    target.status = 500
    events = [delivery_event() for _ in range(3)]
    await send_each(session, receiver, events)

    async def dead_letters() -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = orjson.loads(
            await dlq("list", "--spool", str(spool), "--json")
        )
        return letters

    async def all_dead() -> bool:
        return len(await dead_letters()) == 3

    await eventually(all_dead, within=30)
    letters = await dead_letters()
    assert {letter["key"] for letter in letters} == {event["event_id"] for event in events}
    for letter in letters:
        assert (letter["target"], letter["reason"], letter["attempts"], letter["status"]) == (
            "app",
            "attempts_exhausted",
            2,
            500,
        )
        assert letter["event"]["event_id"] == letter["key"]
    assert len(target.received) == 6  # two attempts each, no more
    assert (
        await metric(
            receiver,
            "mailtrap_webhook_dead_letters_total",
            target="app",
            reason="attempts_exhausted",
        )
        == 3
    )

    target.status = 200  # the target is fixed; replay while the receiver runs
    out = await dlq("replay", "--spool", str(spool), "--target", "app")
    assert out.strip() == "replayed 3 dead letters"
    ids = {event["event_id"] for event in events}
    await eventually(lambda: ids <= set(target.event_ids()[6:]), within=30)
    assert await dead_letters() == []


async def deliver_and_time(
    receiver: ReceiverProcess,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    count: int,
) -> tuple[float, float]:
    """Send ``count`` events; seconds until the target had them all, and the mean
    time from an event's acknowledgement to its arrival."""
    events = [delivery_event() for _ in range(count)]
    acked: dict[str, float] = {}
    started = time.monotonic()

    async def one(event: dict[str, Any]) -> None:
        status, _ = await post_signed(session, receiver.url(), event)
        assert status == 200
        acked[event["event_id"]] = time.monotonic()

    for first in range(0, count, 10):
        await asyncio.gather(*(one(event) for event in events[first : first + 10]))
    await eventually(lambda: set(acked) <= set(target.event_ids()), within=120)
    took = time.monotonic() - started
    arrived = {event_id: at[0] for event_id, at in arrivals(target).items() if event_id in acked}
    lag = sum(arrived[event_id] - acked[event_id] for event_id in acked) / count
    return took, lag


async def test_a_target_failing_forever_does_not_slow_a_healthy_one(
    start: Start,
    target: RecordingTarget,
    second_target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    count = 1000
    retry = {"maxAttempts": 1000, "initialBackoff": "100ms", "maxBackoff": "500ms"}
    alone = await start(
        name="alone",
        targets=[{"name": "healthy", "url": target.url}],
        delivery={"spoolPath": str(tmp_path / "alone" / "spool.db"), "retry": retry},
        logging={"level": "warning"},
    )
    alone_took, alone_lag = await deliver_and_time(alone, target, session, count)
    alone.kill()

    target.received.clear()
    second_target.status = 500
    beside = await start(
        name="beside",
        targets=[
            {"name": "healthy", "url": target.url},
            {"name": "broken", "url": second_target.url},
        ],
        delivery={"spoolPath": str(tmp_path / "beside" / "spool.db"), "retry": retry},
        logging={"level": "warning"},
    )
    beside_took, beside_lag = await deliver_and_time(beside, target, session, count)
    print(
        f"\nisolation: {count} events to the healthy target took {alone_took:.2f}s alone "
        f"(mean lag {alone_lag * 1000:.1f} ms) and {beside_took:.2f}s beside a target "
        f"answering 500 (mean lag {beside_lag * 1000:.1f} ms, {len(second_target.received)} "
        "failed requests to it)"
    )
    # The broken one was tried for every event, and retried. Its worker runs beside the
    # healthy one's, not in step with it: on a busy machine the healthy target may have
    # all its events a moment before the broken one has seen each of them once.
    await eventually(lambda: len(second_target.received) >= count, within=30)
    await eventually(
        lambda: metric_is(beside, "mailtrap_webhook_queue_depth", 0, target="healthy"), within=10
    )
    # Generous bounds: the two workers share the event loop's CPU (the broken one is
    # retried every 100-500 ms here, its failures logged), but no queue, so the
    # healthy target's events never wait for the broken one's.
    assert beside_took <= alone_took * 3 + 2
    assert beside_lag <= alone_lag * 10 + 0.5


async def test_delivered_mode_answers_after_the_target_took_it(
    start: Start,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "unused-spool"
    url = target.url
    receiver = await start(
        targets=[{"name": "app", "url": url}],
        delivery={"ack": "delivered", "spoolPath": str(spool_dir / "spool.db")},
    )
    await target.stop()
    event = delivery_event()
    status, answer = await post_signed(session, receiver.url(), event)
    assert (status, answer["error"]) == (503, "sink_unavailable")
    assert not spool_dir.exists()  # nothing stored anywhere

    await target.start()
    status, answer = await post_signed(session, receiver.url(), event)
    # By the time the answer arrives, the target has the event.
    assert target.event_ids() == [event["event_id"]]
    assert (status, answer["accepted"]) == (200, 1)
    assert not spool_dir.exists()


async def test_sigterm_delivers_what_is_pending_then_exits_cleanly(
    start: Start,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    grace = 20.0
    receiver = await start(
        targets=[{"name": "app", "url": target.url, "batchSize": 5, "concurrency": 1}],
        delivery={"spoolPath": str(tmp_path / "spool" / "spool.db")},
        shutdownGracePeriod=f"{grace:g}s",
    )
    target.hold()  # the first request stays in flight; the rest wait in the spool
    events = [delivery_event() for _ in range(40)]
    await send_each(session, receiver, events)
    await eventually(lambda: bool(target.received))
    signalled = time.monotonic()
    receiver.process.send_signal(signal.SIGTERM)

    async def not_ready() -> bool:
        return await asyncio.to_thread(http_status, receiver.admin_url + "/readyz") == 503

    await eventually(not_ready)
    await asyncio.sleep(0.5)
    assert receiver.process.poll() is None  # still delivering
    target.release()
    code = await asyncio.to_thread(receiver.process.wait, grace + 10)
    took = time.monotonic() - signalled
    assert code == 0, receiver.log()
    assert took < grace
    assert {event["event_id"] for event in events} <= set(target.event_ids())
    assert '"msg":"delivery drained"' in receiver.log()


async def test_what_the_grace_period_could_not_deliver_resumes_after_a_restart(
    start: Start,
    target: RecordingTarget,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    config: dict[str, Any] = {
        "targets": [{"name": "app", "url": target.url}],
        "delivery": {"spoolPath": str(tmp_path / "spool" / "spool.db")},
        "shutdownGracePeriod": "2s",
    }
    receiver = await start(**config)
    await target.stop()
    events = [delivery_event() for _ in range(10)]
    await send_each(session, receiver, events)
    code = await asyncio.to_thread(receiver.terminate, timeout=30)
    assert code == 0, receiver.log()
    assert '"msg":"delivery stopped at the deadline"' in receiver.log()

    await target.start()
    await start(name="restarted", **config)
    ids = {event["event_id"] for event in events}
    await eventually(lambda: ids <= set(target.event_ids()), within=60)
