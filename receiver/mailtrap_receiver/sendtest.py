"""``mailtrap-receiver send-test``: what Mailtrap's "Run Test" button does, from a shell.

It builds realistic sample events (the fields Mailtrap sends for each event type,
with fresh ``event_id`` and ``message_id`` values so they are never duplicates),
encodes them as JSON (``{"events": [...]}``), JSON Lines or a form body, signs the
body with the first secret of a secret file exactly as Mailtrap does
(`auth.sign`), posts it, and returns the receiver's answer. Wire names come from
`events.preferred_wire_name`, so ``soft_bounce`` goes out as ``soft bounce``.

Without ``--event`` a batch holds one event of each sending type; a form body can
carry only one event, so it holds a delivery. Nested fields (such as
``custom_variables``) are left out of form bodies, which cannot express them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlencode

import aiohttp
import orjson

from .auth import parse_secret_lines, sign
from .events import FAMILIES, EventName, preferred_wire_name

BodyFormat = Literal["json", "jsonl", "form"]
CONTENT_TYPES: Final[dict[BodyFormat, str]] = {
    "json": "application/json",
    "jsonl": "application/jsonl",
    "form": "application/x-www-form-urlencoded",
}
SENDING_EVENTS: Final = tuple(name for name, family in FAMILIES.items() if family == "sending")

# Per event type, the fields Mailtrap adds to the common ones of a sending event.
_EXTRA_FIELDS: Final[dict[str, dict[str, Any]]] = {
    "bounce": {
        "response": "550 5.1.1 The email account that you tried to reach does not exist",
        "response_code": 550,
        "bounce_category": "hard",
    },
    "soft_bounce": {
        "response": "421 4.7.0 Try again later, closing connection",
        "response_code": 421,
        "bounce_category": "unavailable",
    },
    "open": {
        "ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
    },
    "click": {
        "url": "https://example.com/welcome?utm_source=mailtrap",
        "ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
    },
    "suspension": {"reason": "domain_blocked"},
    "reject": {"reason": "unknown_recipient"},
}


def sample_event(name: EventName, *, now: float | None = None) -> dict[str, Any]:
    """One realistic event of a canonical type, as Mailtrap would send it."""
    now = time.time() if now is None else now
    if name == "inbound":
        return {
            "event": preferred_wire_name(name),
            "event_id": str(uuid.uuid4()),
            "inbox_id": 2_048_576,
            "message_id": str(uuid.uuid4()),
            "from": "sender@example.org",
            "to": ["support@example.com"],
            "subject": "Question about my order",
            "timestamp": int(now * 1000),  # inbound events carry milliseconds
        }
    if name == "audit_log":
        return {
            "event": preferred_wire_name(name),
            "description": "User updated their email address",
            "actor": {"type": "user", "id": 81_234, "name": "Jane Admin"},
            "ip_address": "198.51.100.23",
            "timestamp": int(now),
        }
    if name == "unknown":
        return {"event": "future_event_type", "event_id": str(uuid.uuid4()), "timestamp": int(now)}
    return {
        "event": preferred_wire_name(name),
        "message_id": str(uuid.uuid4()),
        "email": "john.doe@example.com",
        "event_id": str(uuid.uuid4()),
        "timestamp": int(now),
        "sending_stream": "transactional",
        "category": "Welcome email",
        "custom_variables": {"user_id": "45982", "batch_id": "PSJ-12"},
        "sending_domain_name": "example.com",
        **_EXTRA_FIELDS.get(name, {}),
    }


def sample_events(
    *, event: EventName | None = None, body_format: BodyFormat = "json", now: float | None = None
) -> list[dict[str, Any]]:
    """The events send-test sends (see the module docstring)."""
    if event is not None:
        return [sample_event(event, now=now)]
    if body_format == "form":
        return [sample_event("delivery", now=now)]
    return [sample_event(name, now=now) for name in SENDING_EVENTS]


def encode_body(events: list[dict[str, Any]], *, body_format: BodyFormat) -> bytes:
    """Events as a request body in one of the formats Mailtrap (and the receiver) use."""
    if body_format == "jsonl":
        return b"".join(orjson.dumps(event) + b"\n" for event in events)
    if body_format == "form":
        scalars = {
            key: value
            for key, value in events[0].items()
            if isinstance(value, str | int | float) and not isinstance(value, bool)
        }
        return urlencode(scalars).encode("ascii")
    return orjson.dumps({"events": events})


def read_signing_secret(path: Path) -> bytes:
    """The current (first) secret of a secret file."""
    secrets = parse_secret_lines(path.read_bytes())
    if not secrets:
        raise ValueError(f"{path} holds no secret")
    return secrets[0]


async def send_test(
    *,
    url: str,
    secret: bytes,
    event: EventName | None = None,
    body_format: BodyFormat = "json",
    request_timeout: float = 10.0,
) -> tuple[int, str]:
    """Send signed sample events to ``url``; the response's status and text."""
    body = encode_body(sample_events(event=event, body_format=body_format), body_format=body_format)
    headers = {
        "Content-Type": CONTENT_TYPES[body_format],
        "Mailtrap-Signature": sign(body, secret=secret),
        "User-Agent": "mailtrap-receiver-send-test",
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout)) as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.text()
