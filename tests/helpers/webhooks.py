"""Building webhook requests as Mailtrap sends them: events, bodies and signatures.

Shared by the unit tests (through tests/unit/conftest.py) and the integration tests
that post to a real receiver process (`post_signed`).
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson

from mailtrap_receiver.auth import sign
from mailtrap_receiver.events import Event, classify

SECRET = b"whsec_unit_test_secret"
OTHER_SECRET = b"whsec_rotated_in_secret"


def delivery_event(**fields: Any) -> dict[str, Any]:
    """A valid sending event with a fresh event_id; ``fields`` override or add."""
    return {
        "event": "delivery",
        "timestamp": 1_716_915_293,
        "message_id": str(uuid.uuid4()),
        "email": "john.doe@example.com",
        "event_id": str(uuid.uuid4()),
        "sending_stream": "transactional",
        **fields,
    }


def classified_event(**fields: Any) -> Event:
    """`delivery_event` as the receiver accepted it (``fields`` must keep it valid)."""
    result = classify(delivery_event(**fields))
    assert isinstance(result, Event), result
    return result


def json_body(*events: dict[str, Any]) -> bytes:
    """Mailtrap's JSON format: ``{"events": [...]}``."""
    return orjson.dumps({"events": list(events)})


def jsonl_body(*events: dict[str, Any]) -> bytes:
    """JSON Lines: one event per line."""
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def signed_headers(
    body: bytes, *, secret: bytes = SECRET, content_type: str | None = "application/json"
) -> dict[str, str]:
    """Headers of a request Mailtrap signed with ``secret``."""
    headers = {"Mailtrap-Signature": sign(body, secret=secret)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


async def post_signed(
    session: aiohttp.ClientSession, url: str, *events: dict[str, Any]
) -> tuple[int, Any]:
    """POST ``events`` as Mailtrap's signed JSON batch; the status and decoded answer.
    (Give the session a timeout; aiohttp's default is five minutes.)"""
    body = json_body(*events)
    async with session.post(url, data=body, headers=signed_headers(body)) as response:
        return response.status, orjson.loads(await response.read())
