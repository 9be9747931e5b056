"""Health tells the truth about the store (issue 10, receiver items 10 and 11), against
real receiver processes: readiness fails while the spool cannot write and comes
back when it can; a corrupt spool is found at start and on read errors, reported,
and what is still readable is delivered, never silently stuck.

Before the fix ``/readyz`` stayed 200 while every write failed (its writer process
killed, or its files past a size limit, as on a full disk), and a corrupt page in
the spool either made the receiver exit at every start or left the events on it
stuck for ever while both probes stayed green.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import fixtures
from tests.helpers.hostile import (
    InternetReceiver,
    children_of,
    client,
    internet_receiver,
    signed_post,
)
from tests.helpers.processes import ReceiverProcess, http_status, scrape, start_receiver_async
from tests.helpers.processes import sample_value as value
from tests.helpers.spools import damage_page
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, json_body

pytestmark = pytest.mark.integration

target = fixtures.target


def writer_of(receiver: InternetReceiver) -> int:
    """The spool writer process of a receiver."""
    for pid in children_of(receiver.process.process.pid):
        if b"mailtrap_receiver.spoolfile" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("the receiver has no spool writer process")


async def probe_of(process: ReceiverProcess, path: str) -> tuple[int, dict[str, Any]]:
    async with client() as session, session.get(process.admin_url + path) as response:
        return response.status, orjson.loads(await response.read())


async def probe(receiver: InternetReceiver, path: str) -> tuple[int, dict[str, Any]]:
    return await probe_of(receiver.process, path)


async def test_readiness_fails_while_the_spool_cannot_write_and_comes_back(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver, client() as http:
        writer = writer_of(receiver)
        soft, hard = resource.prlimit(writer, resource.RLIMIT_FSIZE)
        # No file of the writer may grow past one byte: every write fails, as on a
        # full disk, while reads still work.
        resource.prlimit(writer, resource.RLIMIT_FSIZE, (1, hard))
        try:
            # Found without any request: the idle writer probes with a small write.
            async def not_ready() -> bool:
                return (await probe(receiver, "/readyz"))[0] == 503

            await eventually(not_ready, within=30, interval=0.5)
            status, answer = await probe(receiver, "/readyz")
            assert answer["detail"].startswith("the spool cannot write")
            assert (await probe(receiver, "/healthz"))[0] == 200  # no restart needed
            status, answer, _ = await signed_post(http, receiver, json_body(delivery_event()))
            assert (status, answer["error"]) == (503, "sink_unavailable")
            samples = await scrape(receiver.process)
            assert value(samples, "mailtrap_webhook_store_writable") == 0
        finally:
            resource.prlimit(writer, resource.RLIMIT_FSIZE, (soft, hard))

        async def ready() -> bool:
            return (await probe(receiver, "/readyz"))[0] == 200

        await eventually(ready, within=30, interval=0.5)
        event = delivery_event()
        status, answer, _ = await signed_post(http, receiver, json_body(event))
        assert (status, answer["accepted"]) == (200, 1)
        await eventually(lambda: event["event_id"] in target.event_ids())
        await eventually(lambda: '"spool writable again"' in receiver.process.log())


async def test_a_killed_writer_fails_readiness_and_liveness(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver, client() as http:
        os.kill(writer_of(receiver), signal.SIGKILL)

        async def unhealthy() -> bool:
            return (await probe(receiver, "/healthz"))[0] == 503

        await eventually(unhealthy, within=30, interval=0.2)
        status, answer = await probe(receiver, "/readyz")
        assert status == 503
        assert "writer process exited" in answer["detail"]
        status, answer, _ = await signed_post(http, receiver, json_body(delivery_event()))
        assert (status, answer["error"]) == (503, "sink_unavailable")
        assert await asyncio.to_thread(http_status, receiver.process.admin_url + "/metrics") == 200


def damage_value(spool: Path, value: bytes) -> None:
    """Two bytes of a stored TEXT column turned into what is not UTF-8: the file's
    structure stays intact (its integrity check passes)."""
    data = spool.read_bytes()
    start = 0
    while True:
        column = data.index(value, start)
        if data[column - 1 : column] != b'"':  # not the copy inside the JSON body
            break
        start = column + 1
    spool.write_bytes(data[:column] + b"\xff\xfe" + data[column + 2 :])


async def accept_while_the_target_is_down(
    receiver: InternetReceiver, target: RecordingTarget, events: list[dict[str, object]]
) -> None:
    async with client() as http:
        for start in range(0, len(events), 40):
            body = json_body(*events[start : start + 40])
            status, answer, _ = await signed_post(http, receiver, body)
            assert (status, answer["accepted"]) == (200, len(events[start : start + 40]))
    # A clean stop: the spool is checkpointed, its WAL folded into the file.
    assert await asyncio.to_thread(receiver.process.terminate) == 0


async def test_a_corrupt_spool_is_recovered_at_start_and_the_readable_delivered(
    tmp_path: Path, target: RecordingTarget
) -> None:
    await target.stop()
    events = [delivery_event(padding="p" * 300) for _ in range(400)]
    async with internet_receiver(tmp_path, target_url=target.url) as receiver:
        await accept_while_the_target_is_down(receiver, target, events)
        damage_page(receiver.spool, "events")
        again = await start_receiver_async(
            config=receiver.config, port=receiver.process.port, log_path=tmp_path / "again.log"
        )
        try:
            # It starts (before: it exited at every start, or its events stayed stuck).
            status, answer = await probe_of(again, "/healthz")
            assert status == 200
            [warning] = answer["warnings"]
            assert "the spool was corrupt" in warning
            assert (await probe_of(again, "/readyz"))[0] == 200
            samples = await scrape(again)
            assert value(samples, "mailtrap_webhook_spool_corruptions_total") == 1
            await eventually(lambda: '"spool recovered from corruption"' in again.log())
            [report] = [
                orjson.loads(line)
                for line in again.log().splitlines()
                if '"spool recovered from corruption"' in line
            ]
            assert 0 < report["events_unreadable"] < 40
            assert report["events"] == len(events) - report["events_unreadable"]
            assert await asyncio.to_thread(Path(report["moved_to"]).exists)
            await target.start()
            # Every readable event is delivered; the unreadable ones are reported above.
            await eventually(lambda: len(set(target.event_ids())) == report["events"], within=120)
            assert set(target.event_ids()) <= {event["event_id"] for event in events}
        finally:
            again.kill()


async def test_a_damaged_value_inside_a_row_does_not_stick_its_event(
    tmp_path: Path, target: RecordingTarget
) -> None:
    await target.stop()
    events = [delivery_event(message_id=f"m-damaged-{n:03}") for n in range(20)]
    async with internet_receiver(tmp_path, target_url=target.url) as receiver:
        await accept_while_the_target_is_down(receiver, target, events)
        damage_value(receiver.spool, b"m-damaged-007")
        again = await start_receiver_async(
            config=receiver.config, port=receiver.process.port, log_path=tmp_path / "again.log"
        )
        try:
            await target.start()
            wanted = {event["event_id"] for event in events}
            await eventually(lambda: set(target.event_ids()) == wanted, within=120)
            await eventually(lambda: '"outcome":"delivered"' in again.log())  # written out
            assert "reading the spool failed" not in again.log()
            assert (await probe_of(again, "/healthz"))[0] == 200
        finally:
            again.kill()
