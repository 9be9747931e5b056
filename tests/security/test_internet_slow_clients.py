"""Slow and partial requests from the internet cannot starve signed ones, nor exhaust
memory (issue 10, receiver item 5), against real receiver processes on loopback.

Before the fix, 1,100 connections sending one body byte a second made every signed
request get 429 (the in-flight slot was taken before any credential check and held
while the body trickled in); 200 partial 1 MiB bodies added ~180 MiB of RSS that
never came back; connections with half a request line or half their headers stayed
open for an hour.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import fixtures
from tests.helpers.hostile import (
    MIB,
    PATH,
    bodies_begun,
    client,
    internet_receiver,
    raise_open_files_limit,
    raw_exchange,
    rss,
    signed_post,
    slow_body_head,
    slow_clients_process,
    source,
)
from tests.helpers.processes import sample_value as value
from tests.helpers.processes import scrape
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, json_body

pytestmark = pytest.mark.integration

target = fixtures.target

# The receiver's default memory limit in its Pod (the operator's default resources).
MEMORY_LIMIT = 256 * MIB
HEADER_TIMEOUT = 5.0  # limits.headerTimeout's default


async def test_signed_requests_are_served_through_a_slowloris_attack(
    tmp_path: Path, target: RecordingTarget
) -> None:
    assert raise_open_files_limit() > 2500
    async with (
        internet_receiver(tmp_path, target_url=target.url) as receiver,
        # The attack of the issue (1,100 bodies at a byte a second), and 200 classic
        # slowloris connections (headers at a byte a second) on top.
        slow_clients_process(
            receiver.process, bodies=1100, headers=200, sources=11, seconds=180
        ) as attack,
        client(fresh=True) as session,
    ):
        pid = receiver.process.process.pid
        await eventually(lambda: attack.open >= 1100, within=60, interval=0.2)
        results: list[tuple[int, float]] = []
        memory: list[int] = []
        open_during: list[int] = []
        ids = []
        for _ in range(200):
            event = delivery_event()
            status, _, seconds = await signed_post(session, receiver, json_body(event))
            results.append((status, seconds))
            if status == 200:
                ids.append(event["event_id"])
            memory.append(rss(pid))
            open_during.append(attack.open)
            await asyncio.sleep(0.05)
        answers = dict(attack.answers)
    served = sum(1 for status, seconds in results if status == 200 and seconds < 1.0)
    report = (
        f"{served}/200 signed requests got 200 within 1 s; statuses "
        f"{sorted({s for s, _ in results})}; slowest {max(s for _, s in results):.2f} s; "
        f"attack connections open: min {min(open_during)}, median "
        f"{statistics.median(open_during)}; RSS max {max(memory) / MIB:.0f} MiB; "
        f"the attackers got {answers}"
    )
    print(report)
    assert served >= 190, report
    assert max(memory) < MEMORY_LIMIT, report
    # The attack was one: over 1,100 slow connections open throughout, and the
    # receiver cut them (408) or turned away what a source holds beyond its share (429).
    assert statistics.median(open_during) >= 1100, report
    assert any(status.startswith("HTTP/1.1 408") for status in answers), report
    assert any(status.startswith("HTTP/1.1 429") for status in answers), report
    await eventually(lambda: set(ids) <= set(target.event_ids()), within=60)


async def test_partial_bodies_cannot_exhaust_memory_and_it_comes_back(
    tmp_path: Path, target: RecordingTarget
) -> None:
    raise_open_files_limit()
    async with internet_receiver(tmp_path, target_url=target.url) as receiver:
        process = receiver.process
        pid = process.process.pid
        baseline = rss(pid)
        # 200 bodies of 1 MiB, all but the last byte sent at once, from 10 addresses.
        sources = [source(2, number % 10) for number in range(200)]
        async with (
            bodies_begun(process, sources, length=MIB, sent=b" " * (MIB - 1)),
            client(fresh=True) as session,
        ):
            peak = baseline
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                peak = max(peak, rss(pid))
                status, _, _ = await signed_post(session, receiver, json_body(delivery_event()))
                assert status == 200
                await asyncio.sleep(0.2)
            samples = await scrape(process)
            held = value(samples, "mailtrap_webhook_arriving_body_bytes")
            busy = value(samples, "mailtrap_webhook_refused_total", reason="receiver_busy")
        # Every partial body gone (closed by the client here); give glibc its trim.
        await eventually(lambda: rss(pid) < baseline + 48 * MIB, within=30, interval=0.5)
        after = rss(pid)
    print(
        f"RSS baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, after "
        f"{after / MIB:.0f} MiB; held {held / MIB:.0f} MiB of bodies; {busy:.0f} refused 503"
    )
    assert peak < MEMORY_LIMIT
    assert held <= 64 * MIB  # limits.maxBodyMemory's default
    assert busy > 0  # the rest did not fit and were turned away at once


async def test_half_a_request_is_closed_within_the_header_timeout(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver:
        process = receiver.process
        partial = [
            b"",  # connects and says nothing
            b"POST /webhooks/mai",
            b"POST /webhooks/mailtrap HTTP/1.1\r\nHost: receiver\r\nContent-Le",
        ]
        exchanges = await asyncio.gather(
            *(raw_exchange(process.host, process.port, data, within=60) for data in partial)
        )
        for data, (answer, seconds) in zip(partial, exchanges, strict=True):
            assert HEADER_TIMEOUT - 0.5 < seconds < HEADER_TIMEOUT + 10, (data, seconds)
            if data:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), answer
                assert orjson.loads(body)["error"] == "header_timeout"
            else:
                assert answer == b""
        samples = await scrape(process)
        assert value(samples, "mailtrap_webhook_refused_total", reason="header_timeout") == 3
        assert value(samples, "mailtrap_webhook_requests_total", code="408") == 2


async def test_an_idle_keep_alive_connection_outlives_the_header_timeout(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver:
        process = receiver.process
        reader, writer = await asyncio.open_connection(process.host, process.port)
        try:
            for _ in range(2):
                body = json_body(delivery_event())
                headers = "".join(f"{k}: {v}\r\n" for k, v in receiver.sign(body).items())
                writer.write(
                    f"POST {PATH} HTTP/1.1\r\nHost: receiver\r\n{headers}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                assert head.startswith(b"HTTP/1.1 200"), head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                # Idle, as a proxy's pooled connection is between two requests.
                await asyncio.sleep(HEADER_TIMEOUT + 2)
        finally:
            writer.close()


async def test_slow_bodies_hold_no_processing_slot(tmp_path: Path, target: RecordingTarget) -> None:
    settings = {"maxInFlightRequests": 2}
    async with (
        internet_receiver(tmp_path, target_url=target.url, settings=settings) as receiver,
        bodies_begun(receiver.process, [source(3, n) for n in range(20)], length=1000),
        client(fresh=True) as session,
    ):
        await asyncio.sleep(0.5)
        for _ in range(5):
            status, answer, _ = await signed_post(session, receiver, json_body(delivery_event()))
            assert status == 200, answer


async def test_a_source_gets_its_share_of_bodies_still_arriving(
    tmp_path: Path, target: RecordingTarget
) -> None:
    settings = {"limits": {"maxBodyReadsPerSource": 3}}
    async with (
        internet_receiver(tmp_path, target_url=target.url, settings=settings) as receiver,
        bodies_begun(receiver.process, [source(4, 1)] * 3, length=1000),
    ):
        process = receiver.process
        await asyncio.sleep(0.5)
        # A fourth from the same address is turned away at once; another address is not.
        answer, _ = await raw_exchange(
            process.host, process.port, slow_body_head(1000), local=source(4, 1), within=10
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429"), answer
        assert orjson.loads(body)["error"] == "source_busy"
        answer, _ = await raw_exchange(
            process.host, process.port, slow_body_head(2) + b"{}", local=source(4, 2), within=10
        )
        assert answer.startswith(b"HTTP/1.1 401"), answer  # read, then unsigned


async def test_past_the_connection_limit_the_longest_idle_connection_goes(
    tmp_path: Path, target: RecordingTarget
) -> None:
    settings = {"limits": {"maxConnections": 10}}
    async with internet_receiver(tmp_path, target_url=target.url, settings=settings) as receiver:
        process = receiver.process
        idle = []
        try:
            for _ in range(10):
                reader, writer = await asyncio.open_connection(process.host, process.port)
                writer.write(f"GET {PATH} HTTP/1.1\r\nHost: receiver\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                assert head.startswith(b"HTTP/1.1 405")
                idle.append((reader, writer))
            async with client(fresh=True) as session:
                status, _, _ = await signed_post(session, receiver, json_body(delivery_event()))
            assert status == 200
            # The first idle connection made room: the receiver closed it.
            first_reader = idle[0][0]
            await asyncio.wait_for(first_reader.read(), 30)  # returns at the end of stream
            assert first_reader.at_eof()
            assert not idle[-1][0].at_eof()
            samples = await scrape(process)
            assert value(samples, "mailtrap_webhook_refused_total", reason="connection_limit") >= 1
        finally:
            for _, writer in idle:
                writer.close()
