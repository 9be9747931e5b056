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

import aiohttp
import orjson
import pytest

from tests.helpers import fixtures
from tests.helpers.hostile import InternetReceiver, children_of, internet_receiver, signed_post
from tests.helpers.processes import http_status, scrape
from tests.helpers.processes import sample_value as value
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


async def probe(receiver: InternetReceiver, path: str) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(receiver.process.admin_url + path) as response,
    ):
        return response.status, orjson.loads(await response.read())


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


async def test_readiness_fails_while_the_spool_cannot_write_and_comes_back(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver, session() as http:
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
        assert '"spool writable again"' in receiver.process.log()


async def test_a_killed_writer_fails_readiness_and_liveness(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver, session() as http:
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
