"""Malformed HTTP and signed-but-hostile bodies get clear errors, never a 500, a leak
or unbounded keys (issue 10, receiver items 6, 7 and 9), against real receiver
processes on loopback. The answers go to the ``evidence`` the folder's leak check
(test_canary.py) searches, as do the receivers' logs.

Before the fix: ``Authorization: Basic <valid>\\x7f`` got aiohttp's text/plain 400
whose body quoted the header, credential included, and the log held it too; JSON
nested 300 deep inside an event got 500; a 900 KB ``event_id`` was accepted as a
key (and logged whole); 100,000 ``{}`` in one body were 100,000 dead letters.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from tests.helpers import fixtures
from tests.helpers.canary import leaks
from tests.helpers.hostile import (
    MIB,
    PATH,
    client,
    internet_receiver,
    raw_exchange,
    rss,
    signed_post,
)
from tests.helpers.processes import dlq, scrape
from tests.helpers.processes import sample_value as value
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, json_body
from tests.security.conftest import Evidence

pytestmark = pytest.mark.integration

target = fixtures.target


def split(answer: bytes) -> tuple[bytes, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, orjson.loads(body)


def log_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_malformed_header_gets_json_and_leaves_no_credential_behind(
    tmp_path: Path, target: RecordingTarget, evidence: Evidence
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url, basic_auth=True) as receiver:
        process, secrets = receiver.process, receiver.secrets
        credentials = base64.b64encode(f"{secrets.username}:{secrets.password}".encode())
        answers = []
        for header in (
            b"Authorization: Basic " + credentials + b"\x7f",
            b"Authorization: Basic " + credentials + b"\r\nX-Long: " + b"a" * 9000,
        ):
            answer, _ = await raw_exchange(
                process.host,
                process.port,
                f"POST {PATH} HTTP/1.1\r\nHost: receiver\r\n".encode()
                + header
                + b"\r\nContent-Length: 2\r\n\r\n{}",
            )
            head, body = split(answer)
            assert head.split(b" ")[1] == b"400", answer
            assert b"application/json" in head
            assert body["error"] == "malformed_request"
            answers.append(evidence.add("malformed header answer", answer.decode(errors="replace")))
        assert "too long" in answers[1]
        samples = await scrape(process)
        await eventually(lambda: process.log().count('"malformed_request"') >= 2)
        log = process.log()
    assert leaks("\n".join(answers), among=[secrets.password]) == []
    assert leaks(log, among=[secrets.password]) == []
    assert "Traceback" not in log
    assert value(samples, "mailtrap_webhook_requests_total", code="400") == 2
    assert value(samples, "mailtrap_webhook_refused_total", reason="malformed_request") == 2
    lines = [line for line in log_lines(log) if line.get("error") == "malformed_request"]
    assert [(line["status"], line["msg"], line["level"]) for line in lines] == [
        (400, "request", "warning")
    ] * 2


async def test_json_nested_too_deep_is_a_400_and_the_next_batch_is_fine(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with (
        internet_receiver(tmp_path, target_url=target.url) as receiver,
        client() as session,
    ):
        deep = orjson.dumps(delivery_event())[:-1] + b',"x":' + b"[" * 300 + b"]" * 300 + b"}"
        for body in (b'{"events":[' + deep + b"]}", deep + b"\n"):
            status, answer, _ = await signed_post(session, receiver, body)
            assert (status, answer["error"]) == (400, "nesting_too_deep"), answer
        event = delivery_event()
        status, answer, _ = await signed_post(session, receiver, json_body(event))
        assert (status, answer["accepted"]) == (200, 1)
        await eventually(lambda: target.event_ids() == [event["event_id"]])
        await eventually(lambda: '"status":200' in receiver.process.log())  # written out
        assert "internal_error" not in receiver.process.log()


async def test_an_event_id_of_900_kb_is_a_dead_letter_and_no_line_is_long(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with (
        internet_receiver(tmp_path, target_url=target.url) as receiver,
        client() as session,
    ):
        normal, huge = delivery_event(), delivery_event(event_id="i" * 900_000)
        status, answer, _ = await signed_post(session, receiver, json_body(normal, huge))
        assert status == 200
        assert (answer["accepted"], answer["invalid"]) == (1, 1)
        await eventually(lambda: target.event_ids() == [normal["event_id"]])
        await eventually(lambda: '"status":200' in receiver.process.log())
        lines = receiver.process.log().splitlines()
    assert max(len(line) for line in lines) < 4096
    [letter] = orjson.loads(await dlq("list", "--json", "--spool", str(receiver.spool)))
    assert letter["reason"] == "invalid_field"
    assert letter["detail"] == "invalid field: event_id (longer than 256 characters)"
    assert letter["key"].startswith("sha256:")
    assert letter["event"] == huge  # kept whole, never dropped


async def test_more_events_than_a_batch_holds_is_a_413_at_once(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with (
        internet_receiver(tmp_path, target_url=target.url) as receiver,
        client() as session,
    ):
        pid = receiver.process.process.pid
        before = rss(pid)
        body = b'{"events":[' + b",".join([b"{}"] * 100_000) + b"]}"
        status, answer, seconds = await signed_post(session, receiver, body)
        assert (status, answer["error"]) == (413, "too_many_events"), answer
        assert seconds < 5
        assert rss(pid) < before + 64 * MIB
        samples = await scrape(receiver.process)
        assert value(samples, "mailtrap_webhook_refused_total", reason="too_many_events") == 1
        assert value(samples, "mailtrap_webhook_invalid_events_total", reason="not_object") == 0
