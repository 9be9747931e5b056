"""Dead letters are bounded, kept for a while and logged per request, and a full store
loses nothing (issue 10, receiver item 8), against real receiver processes.

Before the fix a signed body of 100,000 ``{}`` stalled the event loop 2.6 s, raised
the RSS from 92 to 510 MiB and wrote 100,000 WARN lines, and dead letters had no cap
or retention at all.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import fixtures
from tests.helpers.hostile import InternetReceiver, client, internet_receiver, signed_post
from tests.helpers.processes import dlq, scrape
from tests.helpers.processes import sample_value as value
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import delivery_event, json_body

pytestmark = pytest.mark.integration

target = fixtures.target


async def stored_letters(receiver: InternetReceiver) -> list[dict[str, object]]:
    letters: list[dict[str, object]] = orjson.loads(
        await dlq("list", "--json", "--spool", str(receiver.spool))
    )
    return letters


async def test_a_thousand_invalid_events_are_one_log_line(
    tmp_path: Path, target: RecordingTarget
) -> None:
    async with internet_receiver(tmp_path, target_url=target.url) as receiver, client() as http:
        body = b'{"events":[' + b",".join([b"{}"] * 1000) + b"]}"
        started = time.monotonic()
        status, answer, _ = await signed_post(http, receiver, body)
        assert (status, answer["invalid"]) == (200, 1000), answer
        assert time.monotonic() - started < 5
        await eventually(lambda: '"msg":"request"' in receiver.process.log())
        lines = [
            orjson.loads(line)
            for line in receiver.process.log().splitlines()
            if '"dead letters"' in line
        ]
        assert len(lines) == 1
        assert (lines[0]["count"], lines[0]["reasons"]) == (1000, {"missing_field": 1000})
        assert len(lines[0]["keys"]) == 5
        assert len(await stored_letters(receiver)) == 1000


async def test_a_full_store_answers_503_and_loses_nothing(
    tmp_path: Path, target: RecordingTarget
) -> None:
    settings = {"delivery": {"maxDeadLetters": 5}}
    async with (
        internet_receiver(tmp_path, target_url=target.url, settings=settings) as receiver,
        client() as http,
    ):
        first, second = delivery_event(), delivery_event()
        status, answer, _ = await signed_post(http, receiver, json_body(first, {}, {}, {}))
        assert (status, answer["invalid"]) == (200, 3)
        retried = json_body(second, {"n": 1}, {"n": 2}, {"n": 3})
        status, answer, _ = await signed_post(http, receiver, retried)
        assert (status, answer["error"]) == (503, "dead_letters_full"), answer
        # Its valid event was stored all the same, and is delivered.
        await eventually(
            lambda: sorted(target.event_ids()) == sorted([first["event_id"], second["event_id"]])
        )
        assert len(await stored_letters(receiver)) == 3
        samples = await scrape(receiver.process)
        assert value(samples, "mailtrap_webhook_refused_total", reason="dead_letters_full") == 1
        assert value(samples, "mailtrap_webhook_dead_letters_stored") == 3
        # Room again (an operator purged): Mailtrap's retry brings the letters in.
        assert "purged 3" in await dlq("purge", "--spool", str(receiver.spool))

        async def retry_taken() -> bool:
            status, answer, _ = await signed_post(http, receiver, retried)
            return status == 200 and answer == {
                "accepted": 0,
                "duplicates": 1,
                "invalid": 3,
                "filtered": 0,
            }

        # The writer recounts what dlq changed within its maintenance interval.
        await eventually(retry_taken, within=30, interval=1.0)
        assert sorted(letter["event"]["n"] for letter in await stored_letters(receiver)) == [
            1,
            2,
            3,
        ]


async def test_dead_letters_expire_after_their_retention(
    tmp_path: Path, target: RecordingTarget
) -> None:
    settings = {"delivery": {"deadLetterRetention": "1s"}}
    async with (
        internet_receiver(tmp_path, target_url=target.url, settings=settings) as receiver,
        client() as http,
    ):
        status, answer, _ = await signed_post(http, receiver, json_body({}, {}, {}))
        assert (status, answer["invalid"]) == (200, 3)

        async def expired() -> bool:
            samples = await scrape(receiver.process)
            return value(samples, "mailtrap_webhook_dead_letters_expired_total") == 3

        await eventually(expired, within=60, interval=0.5)
        assert await stored_letters(receiver) == []
        await eventually(lambda: '"dead letters expired"' in receiver.process.log())
