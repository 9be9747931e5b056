"""The real receiver process on loopback: signed requests over real HTTP reach a real
target exactly as sent, /metrics counts them, send-test works against it, and
SIGTERM lets in-flight requests finish before a clean exit."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from tests.helpers.processes import ReceiverProcess, http_status, scrape
from tests.helpers.processes import sample_value as value
from tests.helpers.targets import RecordingTarget
from tests.helpers.waiting import eventually
from tests.helpers.webhooks import (
    OTHER_SECRET,
    delivery_event,
    json_body,
    jsonl_body,
    signed_headers,
)

pytestmark = pytest.mark.integration


async def post(
    receiver: ReceiverProcess, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(receiver.url(), data=body, headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def test_signed_requests_reach_the_target_and_are_counted(
    receiver: ReceiverProcess, target: RecordingTarget
) -> None:
    single = delivery_event(event="bounce")
    batch = [delivery_event(event="soft bounce"), delivery_event(event="spam")]
    lines = [delivery_event(event="open"), delivery_event(event="click")]
    form = {
        "event": "unsubscribe",
        "event_id": "form-event-1",
        "message_id": "m-form",
        "email": "jane@example.com",
        "timestamp": 1716915293,
    }

    body = orjson.dumps(single)
    assert (await post(receiver, body, signed_headers(body)))[0] == 200
    body = json_body(*batch)
    assert (await post(receiver, body, signed_headers(body)))[1]["accepted"] == 2
    body = jsonl_body(*lines)
    assert (await post(receiver, body, signed_headers(body, content_type="application/jsonl")))[1][
        "accepted"
    ] == 2
    body = urlencode(form).encode()
    assert (
        await post(
            receiver, body, signed_headers(body, content_type="application/x-www-form-urlencoded")
        )
    )[1]["accepted"] == 1
    body = json_body(single)
    status, answer = await post(receiver, body, signed_headers(body))
    assert (status, answer) == (200, {"accepted": 0, "duplicates": 1, "invalid": 0, "filtered": 0})
    body = json_body(delivery_event())
    status, answer = await post(receiver, body, signed_headers(body, secret=OTHER_SECRET))
    assert status == 401
    assert answer["error"] == "signature_invalid"

    # Exactly what the target received: each original object once, with its headers.
    expected = {e["event_id"]: e for e in [single, *batch, *lines, form]}
    received = {item.json()["event_id"]: item for item in target.received}
    assert len(target.received) == len(expected)
    assert {key: item.json() for key, item in received.items()} == expected
    names = {key: item.headers["X-Mailtrap-Event"] for key, item in received.items()}
    assert names == {
        single["event_id"]: "bounce",
        batch[0]["event_id"]: "soft_bounce",
        batch[1]["event_id"]: "spam_complaint",
        lines[0]["event_id"]: "open",
        lines[1]["event_id"]: "click",
        "form-event-1": "unsubscribe",
    }
    assert all(item.headers["Idempotency-Key"] == key for key, item in received.items())

    samples = await scrape(receiver)
    requests = "mailtrap_webhook_requests_total"
    assert value(samples, requests, code="200") == 5
    assert value(samples, requests, code="401") == 1
    received_total = "mailtrap_webhook_events_received_total"
    for name, count in [("bounce", 2), ("soft_bounce", 1), ("spam_complaint", 1), ("open", 1)]:
        assert value(samples, received_total, event=name) == count, name
    assert value(samples, "mailtrap_webhook_duplicates_total") == 1
    assert value(samples, "mailtrap_webhook_auth_failures_total", reason="signature_invalid") == 1
    deliveries = "mailtrap_webhook_deliveries_total"
    assert value(samples, deliveries, target="app", outcome="delivered") == 6
    assert value(samples, "mailtrap_webhook_request_duration_seconds_count") == 6


async def test_one_json_log_line_per_request(
    receiver: ReceiverProcess, target: RecordingTarget
) -> None:
    event = delivery_event()
    body = json_body(event)
    headers = signed_headers(body)
    assert (await post(receiver, body, headers))[0] == 200
    await eventually(lambda: '"msg":"request"' in receiver.log())
    lines = [orjson.loads(line) for line in receiver.log().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["msg"] == "request"]
    assert len(requests) == 1
    assert requests[0]["status"] == 200
    assert requests[0]["event_ids"] == [event["event_id"]]
    assert requests[0]["message_ids"] == [event["message_id"]]
    assert headers["Mailtrap-Signature"] not in receiver.log()


async def run_send_test(
    receiver: ReceiverProcess, secret_file: Path, *args: str
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailtrap_receiver",
        "send-test",
        "--url",
        receiver.url(),
        "--secret-file",
        str(secret_file),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def test_send_test_against_the_running_receiver(
    receiver: ReceiverProcess, target: RecordingTarget, secret_file: Path
) -> None:
    code, output = await run_send_test(receiver, secret_file)
    assert code == 0, output
    assert output.startswith("HTTP 200")
    assert orjson.loads(output.splitlines()[1])["accepted"] == 9
    names = {item.headers["X-Mailtrap-Event"] for item in target.received}
    assert names == {
        "delivery",
        "bounce",
        "soft_bounce",
        "open",
        "click",
        "unsubscribe",
        "spam_complaint",
        "suspension",
        "reject",
    }
    for args, name in [
        (("--format", "jsonl", "--event", "inbound"), "inbound"),
        (
            (
                "--format",
                "form",
            ),
            "delivery",
        ),
    ]:
        code, output = await run_send_test(receiver, secret_file, *args)
        assert code == 0, output
        assert target.received[-1].headers["X-Mailtrap-Event"] == name


async def test_send_test_reports_a_refusal(receiver: ReceiverProcess, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_bytes(OTHER_SECRET)
    code, output = await run_send_test(receiver, wrong)
    assert code == 1
    assert output.startswith("HTTP 401")
    assert "signature_invalid" in output


async def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(
    receiver: ReceiverProcess, target: RecordingTarget
) -> None:
    target.hold()
    body = json_body(delivery_event())
    in_flight = asyncio.create_task(post(receiver, body, signed_headers(body)))
    await eventually(lambda: bool(target.received))
    receiver.process.send_signal(signal.SIGTERM)

    async def not_ready() -> bool:
        return await asyncio.to_thread(http_status, receiver.admin_url + "/readyz") == 503

    await eventually(not_ready)
    assert receiver.process.poll() is None  # still finishing the request
    target.release()
    status, answer = await in_flight
    assert (status, answer["accepted"]) == (200, 1)
    code = await asyncio.to_thread(receiver.process.wait, 60)
    assert code == 0, receiver.log()
    assert '"msg":"stopped"' in receiver.log()
