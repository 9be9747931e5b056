"""The crash test: nothing the receiver acknowledged is lost when it is killed.

A load generator (several concurrent senders, each event with its own id, signed as
Mailtrap signs) sends thousands of events to the real receiver process in ack mode
durable, and, like Mailtrap, sends an event again until it gets a 200. Meanwhile the
receiver is killed with SIGKILL several times (no chance to flush or say goodbye)
and restarted on the same ports with the same spool file. Afterwards every event that
got a 200 must have reached the recording target at least once. Duplicates are
allowed (delivery is at least once: an event sent just before a kill is sent again)
and counted; lost events are counted and must be none.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.processes import (
    ReceiverProcess,
    free_port,
    start_receiver_async,
    write_config,
)
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, post_signed

pytestmark = pytest.mark.integration

EVENTS = 4000
SENDERS = 8
KILLS = 4


async def test_nothing_acknowledged_is_lost_across_sigkills(
    tmp_path: Path, secret_file: Path, target: RecordingTarget
) -> None:
    config = write_config(
        tmp_path / "receiver.json",
        {
            "signingSecretFile": secret_file.name,
            "targets": [{"name": "app", "url": target.url, "batchSize": 25}],
            "delivery": {
                "ack": "durable",
                "spoolPath": str(tmp_path / "spool" / "spool.db"),
                "retry": {"initialBackoff": "100ms", "maxBackoff": "1s"},
            },
            "logging": {"level": "warning"},
        },
    )
    ports = {"port": free_port(), "metrics_port": free_port()}
    starts = 0

    async def start() -> ReceiverProcess:
        nonlocal starts
        starts += 1
        return await start_receiver_async(
            config=config, log_path=tmp_path / f"receiver-{starts}.log", **ports
        )

    receiver = await start()
    url = receiver.url()
    events = [delivery_event() for _ in range(EVENTS)]
    acked: set[str] = set()
    tries = 0

    async def sender(mine: list[dict[str, Any]]) -> None:
        nonlocal tries
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for event in mine:
                while True:  # as Mailtrap does: again until it is answered 200
                    tries += 1
                    try:
                        status, _ = await post_signed(session, url, event)
                    except (aiohttp.ClientError, TimeoutError):
                        status = None
                    if status == 200:
                        acked.add(event["event_id"])
                        break
                    await asyncio.sleep(0.05)

    load = asyncio.gather(*(sender(events[i::SENDERS]) for i in range(SENDERS)))
    kills = 0
    try:
        for kill in range(1, KILLS + 1):
            # Kill at evenly spread points of the load, so each kill hits it mid-flight.
            threshold = EVENTS * kill // (KILLS + 1)

            def reached(threshold: int = threshold) -> bool:
                return len(acked) >= threshold

            await eventually(reached, within=120)
            receiver.process.kill()
            await asyncio.to_thread(receiver.process.wait, 30)
            kills += 1
            receiver = await start()
        await asyncio.wait_for(load, 300)
    finally:
        load.cancel()
        try:
            await eventually(lambda: acked <= set(target.event_ids()), within=120)
        finally:
            received = target.event_ids()
            lost = acked - set(received)
            duplicates = len(received) - len(set(received))
            print(
                f"\ncrash test: {EVENTS} events, {tries} requests, {len(acked)} answered 200, "
                f"{kills} SIGKILLs, {len(received)} deliveries of {len(set(received))} "
                f"distinct events, {duplicates} duplicates, {len(lost)} lost"
            )
            receiver.kill()
    assert kills == KILLS
    assert len(acked) == EVENTS
    assert not lost, f"acknowledged but never delivered: {sorted(lost)[:10]}"
