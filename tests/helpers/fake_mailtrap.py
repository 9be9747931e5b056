"""A faithful fake of Mailtrap: its Webhooks API, and Mailtrap as the sender of webhooks.

Mailtrap cannot be reached from tests, so this stands in for it on 127.0.0.1. Tests
run `FakeMailtrap` in their own event loop; ``hack/fake_mailtrap.py`` runs it as a
process (``--port N --account-id ID --token-file F``, until SIGTERM), and
`FakeMailtrapProcess` starts that process for tests that need one. Everything below
follows Mailtrap's published OpenAPI spec and the responses its SDKs recorded
against the real API; where those are silent, the choice made is named.

The API (``/api/accounts/{account_id}/webhooks[/{id}]``):

- ``Authorization: Bearer <token>`` (or ``Api-Token: <token>``); a token not in the
  token file gets 401 ``{"error":"Incorrect API token"}`` with
  ``WWW-Authenticate: Token realm="Application"``; a valid token on another account
  id gets 403 ``{"errors":"Account access forbidden"}``.
- ``POST`` (``{"webhook": {...}}``) answers 200 ``{"data": {"signing_secret": ...,
  "id": ...}}``: the only answer with the secret (32 hex digits). ``GET`` lists or
  reads one, ``PATCH`` changes ``url``, ``active``, ``payload_format``,
  ``event_types`` and ``inbound_inbox_id``, ``DELETE`` answers 200 with the deleted
  webhook. Unknown ids: 404 ``{"error":"Not Found"}``. A body that is not JSON or has
  no ``webhook`` object: 400 ``{"error":"Bad Request"}``.
- Validation (422 ``{"errors": {"field": ["message", ...]}}``, fields in the order
  Mailtrap's recorded answer has them): ``url`` blank (``can't be blank``, ``is
  invalid``) or not http(s) (``is invalid``); ``webhook_type``, ``payload_format``,
  ``sending_stream`` and each of ``event_types`` outside their enums (``is invalid.
  Allowed values: ...``, the wording of Mailtrap's spec); ``email_sending`` needs
  ``sending_stream`` and ``event_types``, ``campaigns`` needs ``event_types``;
  ``sending_stream`` outside ``email_sending``, ``domain_id`` outside
  ``email_sending``/``campaigns``, ``inbound_inbox_id`` outside
  ``inbound_receiving`` and ``event_types`` on the other types: ``must be blank``.
  Chosen where Mailtrap is silent: loopback URLs and any port are accepted (real
  Mailtrap delivers only to ports 80 and 443), and a ``PATCH`` of a field that
  cannot change (``webhook_type``, ``sending_stream``, ``domain_id``) is ignored the
  way a Rails API drops unpermitted parameters: 200, field unchanged. So a client
  that relies on such a PATCH sees nothing change, as it would at Mailtrap.
- Rate limit: ``rate_limit`` requests (150) per ``rate_window`` seconds (10) per
  presented token, counted for every request (a 401 too, as recorded). Every answer
  carries ``X-Ratelimit-Limit`` and ``X-Ratelimit-Remaining``; past the limit, 429
  ``{"errors":"Rate limit exceeded"}`` with ``Retry-After`` (whole seconds until the
  window ends; Mailtrap's spec names no header, so this one is our choice).

The sender: `emit` makes realistic events (`mailtrap_receiver.sendtest.sample_event`,
the receiver's own samples) and hands each to every ACTIVE webhook that subscribes
to it: ``email_sending`` by event type and sending stream (and domain, when both
name one), ``campaigns`` by event type, ``inbound_receiving`` the inbound events (of
its inbox, when it names one), ``audit_log`` the audit-log events. Each webhook gets
its batch (up to 500 events) in its payload format (``json``: ``{"events": [...]}``;
``jsonlines``: one per line, ``application/jsonl``), signed with its secret
(HMAC-SHA256 hex of the body in ``Mailtrap-Signature``). Only a 200 acknowledges a
batch, as Mailtrap's docs say; anything else, or no answer, is retried per
`SenderPolicy` (Mailtrap: 40 retries every 5 minutes; tests pass a fast one). Each
attempt reads the webhook again, so a UI edit or a deletion applies to retries; a
batch whose webhook is gone or disabled is abandoned, and one that fails every
attempt pauses its webhook (``active: false``), as Mailtrap does.

What tests read: `webhooks` (with secrets), `api_calls` (method, path, status, the
request body, never the token; a dropped connection is none), `attempts` (every POST
made, its body and answer), `emitted` (each event, the webhooks it was for, which
acknowledged it), `lost` (events no webhook acknowledged: no subscriber, or every
attempt failed), `unrouted` (those with no subscriber), `rejected` (attempts answered
with another status than 200).

What tests change: `ui_edit` (``active``, ``url``, ``event_types``,
``payload_format``: what someone does in Mailtrap's UI), `ui_delete`,
`ui_reset_secret` (the old secret stops at once, as the docs say), and `faults`:
``api_status`` (answer every API request with that 5xx), ``api_drop`` (close the
connection without an answer), ``api_delay`` (seconds before answering, for
timeouts), ``rate_limited`` (the next N API requests get 429, with ``retry_after``).

The same over HTTP, for a fake in another process (``/_fake``, not rate limited and
not subject to faults; JSON in and out):

- ``GET /_fake/state``: `snapshot` (webhooks with secrets, attempts, lost, ...);
- ``POST /_fake/emit`` ``{"events": ["delivery"], "count": 1, "sending_stream":
  "transactional", "wait": true}``: `emit` (then `drain` when ``wait``); answers the
  event ids;
- ``POST /_fake/sender`` ``{"interval": 0.5, "events": [...], "count": 1}`` starts a
  steady sender (`start_sender`), ``DELETE /_fake/sender`` stops it;
- ``PATCH /_fake/webhooks/{id}`` (UI edit), ``DELETE /_fake/webhooks/{id}`` (UI
  delete), ``POST /_fake/webhooks/{id}/reset-secret``;
- ``PUT /_fake/faults`` ``{"api_status": 503, "api_drop": false, "api_delay": 0,
  "rate_limited": 0, "retry_after": 1}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from mailtrap_operator.mailtrap.models import (
    EVENT_TYPES,
    PATCHABLE_FIELDS,
    PAYLOAD_FORMATS,
    SENDING_STREAMS,
    WEBHOOK_TYPES,
)
from mailtrap_receiver.auth import sign
from mailtrap_receiver.events import FAMILIES, EventName
from mailtrap_receiver.sendtest import CONTENT_TYPES, BodyFormat, encode_body, sample_event
from tests.helpers.children import die_with_parent, free_port, stop_process

REPO: Final = Path(__file__).resolve().parents[2]
BATCH_LIMIT: Final = 500  # events per request, as Mailtrap batches them
JSON_TYPE: Final = "application/json; charset=utf-8"
# Which webhook type receives which family of events.
_FAMILY_OF_TYPE: Final = {
    "email_sending": "sending",
    "campaigns": "sending",
    "inbound_receiving": "inbound",
    "audit_log": "audit_log",
}
_EVENTS_REQUIRED: Final = ("email_sending", "campaigns")
_DOMAIN_TYPES: Final = ("email_sending", "campaigns")
_FIELDS: Final = web.RequestKey("fields", object)  # a request's body, for `api_calls`


@dataclass
class StoredWebhook:
    """One webhook as the fake keeps it (the signing secret included)."""

    id: int
    url: str
    active: bool
    webhook_type: str
    payload_format: str
    sending_stream: str | None
    domain_id: int | None
    inbound_inbox_id: int | None
    event_types: list[str]
    signing_secret: str

    def data(self) -> dict[str, Any]:
        """The object as Mailtrap answers it (no secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "active": self.active,
            "webhook_type": self.webhook_type,
            "payload_format": self.payload_format,
            "sending_stream": self.sending_stream,
            "domain_id": self.domain_id,
            "inbound_inbox_id": self.inbound_inbox_id,
            "event_types": list(self.event_types),
        }


@dataclass(frozen=True)
class ApiCall:
    """One request to the API and the status it got (the body as sent, never a token)."""

    method: str
    path: str
    status: int
    body: Any = None


@dataclass(frozen=True)
class Attempt:
    """One POST of a batch to a webhook's URL, and what came of it."""

    webhook_id: int
    url: str
    attempt: int
    status: int | None  # None: no answer (refused, reset, timed out)
    error: str | None
    event_ids: tuple[str, ...]
    content_type: str
    body: bytes
    signature: str

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class Emitted:
    """One event the sender made: for which webhooks, and which acknowledged it."""

    event: dict[str, Any]
    targets: tuple[int, ...]
    acknowledged_by: set[int] = field(default_factory=set)


@dataclass
class SenderPolicy:
    """How the sender retries. Mailtrap: 40 retries, every 5 minutes, 30 s timeout."""

    attempts: int = 41
    delay: float = 300.0
    factor: float = 1.0  # > 1 for exponential backoff
    max_delay: float = 3600.0
    timeout: float = 30.0
    pause_on_failure: bool = True

    def delay_after(self, attempt: int) -> float:
        return min(self.max_delay, self.delay * self.factor ** (attempt - 1))


@dataclass
class Faults:
    """What the API does wrong on purpose (see the module docstring)."""

    api_status: int | None = None
    api_drop: bool = False
    api_delay: float = 0.0
    rate_limited: int = 0
    retry_after: int = 1


class _Invalid(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("invalid")
        self.errors = errors


class _BadRequest(Exception):
    pass


def _allowed(values: Iterable[str]) -> str:
    return f"is invalid. Allowed values: {', '.join(values)}."


def _valid_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type=None,
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )  # fmt: skip


class FakeMailtrap:
    """Mailtrap's Webhooks API for one account, and Mailtrap's sender (module docstring)."""

    def __init__(
        self,
        *,
        account_id: int,
        tokens: Iterable[str],
        rate_limit: int = 150,
        rate_window: float = 10.0,
        sender: SenderPolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        first_id: int = 3080,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the fake Mailtrap listens on loopback only")
        self.account_id = account_id
        self.tokens = {token.strip() for token in tokens if token.strip()}
        if not self.tokens:
            raise ValueError("the fake Mailtrap needs at least one API token")
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.sender = sender or SenderPolicy()
        self.host = host
        self.port = port
        self.faults = Faults()
        self.webhooks: dict[int, StoredWebhook] = {}
        self.api_calls: list[ApiCall] = []
        self.attempts: list[Attempt] = []
        self.emitted: dict[str, Emitted] = {}
        self._next_id = first_id
        self._windows: dict[str, tuple[float, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._steady: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base URL (what ``MAILTRAP_API_URL`` is set to)."""
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        """One token the fake accepts (the first, in sorted order)."""
        return sorted(self.tokens)[0]

    async def start(self) -> FakeMailtrap:
        app = web.Application(middlewares=[self._api_gate])
        base = "/api/accounts/{account_id}/webhooks"
        app.router.add_route("GET", base, self._list)
        app.router.add_route("POST", base, self._create)
        app.router.add_route("GET", base + "/{webhook_id}", self._get)
        app.router.add_route("PATCH", base + "/{webhook_id}", self._patch)
        app.router.add_route("DELETE", base + "/{webhook_id}", self._delete)
        app.router.add_route("GET", "/_fake/state", self._control_state)
        app.router.add_route("POST", "/_fake/emit", self._control_emit)
        app.router.add_route("POST", "/_fake/sender", self._control_sender_start)
        app.router.add_route("DELETE", "/_fake/sender", self._control_sender_stop)
        app.router.add_route("PATCH", "/_fake/webhooks/{webhook_id}", self._control_edit)
        app.router.add_route("DELETE", "/_fake/webhooks/{webhook_id}", self._control_delete)
        app.router.add_route(
            "POST", "/_fake/webhooks/{webhook_id}/reset-secret", self._control_reset
        )
        app.router.add_route("PUT", "/_fake/faults", self._control_faults)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        await self.stop_sender()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeMailtrap:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- the API --------------------------------------------------------------------

    @web.middleware
    async def _api_gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Faults, the rate limit and authentication, before any API route."""
        if request.path.startswith("/_fake/"):
            return await handler(request)
        faults = self.faults
        if faults.api_delay:
            await asyncio.sleep(faults.api_delay)
        if faults.api_drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if faults.api_status is not None:
            status = faults.api_status
            self._record(request, status, None)
            return web.Response(
                status=status,
                text=f"<html><body><h1>{status} Server Error</h1></body></html>",
                content_type="text/html",
            )
        token = self._presented_token(request)
        count, window_end = self._count(token)
        remaining = max(0, self.rate_limit - count)
        headers = {"X-Ratelimit-Limit": str(self.rate_limit)}
        forced = faults.rate_limited > 0
        if forced or count > self.rate_limit:
            if forced:
                faults.rate_limited -= 1
            wait = faults.retry_after if forced else math.ceil(window_end - time.monotonic())
            headers.update({"X-Ratelimit-Remaining": "0", "Retry-After": str(max(1, wait))})
            self._record(request, 429, None)
            return _json(429, {"errors": "Rate limit exceeded"}, headers)
        headers["X-Ratelimit-Remaining"] = str(remaining)
        response = await self._authorised(request, token, handler)
        response.headers.update(headers)
        return response

    async def _authorised(
        self, request: web.Request, token: str, handler: Any
    ) -> web.StreamResponse:
        if token not in self.tokens:
            self._record(request, 401, None)
            return _json(
                401,
                {"error": "Incorrect API token"},
                {"WWW-Authenticate": 'Token realm="Application"'},
            )
        if request.match_info.get("account_id") != str(self.account_id):
            status, body = (
                (403, {"errors": "Account access forbidden"})
                if request.match_info.get("account_id")
                else (404, {"error": "Not Found"})
            )
            self._record(request, status, None)
            return _json(status, body)
        try:
            response: web.StreamResponse = await handler(request)
        except _BadRequest:
            response = _json(400, {"error": "Bad Request"})
        except _Invalid as invalid:
            response = _json(422, {"errors": invalid.errors})
        except web.HTTPNotFound:
            response = _json(404, {"error": "Not Found"})
        self._record(request, response.status, request.get(_FIELDS))
        return response

    @staticmethod
    def _presented_token(request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.headers.get("Api-Token", "").strip()

    def _count(self, token: str) -> tuple[int, float]:
        """Count one request for ``token``: the count in its window and when that ends."""
        now = time.monotonic()
        start, count = self._windows.get(token, (now, 0))
        if now - start >= self.rate_window:
            start, count = now, 0
        self._windows[token] = (start, count + 1)
        return count + 1, start + self.rate_window

    def _record(self, request: web.Request, status: int, body: Any) -> None:
        self.api_calls.append(ApiCall(request.method, request.path, status, body))

    @staticmethod
    async def _webhook_fields(request: web.Request) -> dict[str, Any]:
        """The ``webhook`` object of the body (kept on the request for `api_calls`)."""
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _BadRequest from None
        request[_FIELDS] = data
        fields = data.get("webhook") if isinstance(data, dict) else None
        if not isinstance(fields, dict) or not fields:
            raise _BadRequest
        return fields

    def _find(self, request: web.Request) -> StoredWebhook:
        text = request.match_info["webhook_id"]
        webhook = self.webhooks.get(int(text)) if text.isdigit() else None
        if webhook is None:
            raise web.HTTPNotFound
        return webhook

    async def _list(self, request: web.Request) -> web.Response:
        return _json(200, {"data": [hook.data() for hook in self.webhooks.values()]})

    async def _get(self, request: web.Request) -> web.Response:
        return _json(200, {"data": self._find(request).data()})

    async def _create(self, request: web.Request) -> web.Response:
        webhook = self.create(await self._webhook_fields(request))
        return _json(200, {"data": {"signing_secret": webhook.signing_secret, **webhook.data()}})

    async def _patch(self, request: web.Request) -> web.Response:
        webhook = self._find(request)
        self._apply(webhook, await self._webhook_fields(request))
        return _json(200, {"data": webhook.data()})

    async def _delete(self, request: web.Request) -> web.Response:
        webhook = self._find(request)
        del self.webhooks[webhook.id]
        return _json(200, {"data": webhook.data()})

    # --- validation -------------------------------------------------------------------

    def create(self, fields: Mapping[str, Any]) -> StoredWebhook:
        """Validate and store a new webhook (what ``POST`` does); `_Invalid` on 422."""
        errors: dict[str, list[str]] = {}

        def add(name: str, message: str) -> None:
            errors.setdefault(name, []).append(message)

        url = fields.get("url")
        if url is None or (isinstance(url, str) and not url.strip()):
            add("url", "can't be blank")
            add("url", "is invalid")
        elif not _valid_url(url):
            add("url", "is invalid")
        kind = fields.get("webhook_type")
        if kind in (None, ""):
            add("webhook_type", "can't be blank")
        elif kind not in WEBHOOK_TYPES:
            add("webhook_type", _allowed(WEBHOOK_TYPES))
        active = fields.get("active", True)
        if not isinstance(active, bool):
            add("active", "is invalid")
        payload_format = fields.get("payload_format", "json")
        if payload_format not in PAYLOAD_FORMATS:
            add("payload_format", _allowed(PAYLOAD_FORMATS))
        events = fields.get("event_types")
        self._check_events(kind, events, add)
        stream = fields.get("sending_stream")
        if kind == "email_sending" and stream in (None, ""):
            add("sending_stream", "can't be blank")
        elif stream is not None and kind != "email_sending":
            add("sending_stream", "must be blank")
        elif stream is not None and stream not in SENDING_STREAMS:
            add("sending_stream", _allowed(SENDING_STREAMS))
        domain_id = fields.get("domain_id")
        if domain_id is not None and kind not in _DOMAIN_TYPES:
            add("domain_id", "must be blank")
        elif domain_id is not None and not _is_id(domain_id):
            add("domain_id", "is invalid")
        self._check_inbox(kind, fields.get("inbound_inbox_id"), add)
        if errors:
            raise _Invalid(errors)
        webhook = StoredWebhook(
            id=self._next_id,
            url=str(url).strip(),
            active=bool(active),
            webhook_type=str(kind),
            payload_format=str(payload_format),
            sending_stream=stream,
            domain_id=domain_id,
            inbound_inbox_id=fields.get("inbound_inbox_id"),
            event_types=list(events or []),
            signing_secret=secrets.token_hex(16),
        )
        self._next_id += 1
        self.webhooks[webhook.id] = webhook
        return webhook

    @staticmethod
    def _check_events(kind: object, events: object, add: Any) -> None:
        if kind in _EVENTS_REQUIRED:
            if events is None or events == []:
                add("event_types", "can't be blank")
            elif not isinstance(events, list) or not all(
                isinstance(name, str) and name in EVENT_TYPES for name in events
            ):
                add("event_types", _allowed(EVENT_TYPES))
        elif events not in (None, []):
            add("event_types", "must be blank")

    @staticmethod
    def _check_inbox(kind: object, inbox: object, add: Any) -> None:
        if inbox is not None and kind != "inbound_receiving":
            add("inbound_inbox_id", "must be blank")
        elif inbox is not None and not _is_id(inbox):
            add("inbound_inbox_id", "is invalid")

    def _apply(self, webhook: StoredWebhook, fields: Mapping[str, Any]) -> None:
        """A PATCH: validate and apply the permitted fields, ignore the others."""
        given = {name: fields[name] for name in PATCHABLE_FIELDS if name in fields}
        errors: dict[str, list[str]] = {}

        def add(name: str, message: str) -> None:
            errors.setdefault(name, []).append(message)

        if "url" in given:
            url = given["url"]
            if url is None or (isinstance(url, str) and not url.strip()):
                add("url", "can't be blank")
            if not _valid_url(url):
                add("url", "is invalid")
        if "active" in given and not isinstance(given["active"], bool):
            add("active", "is invalid")
        if "payload_format" in given and given["payload_format"] not in PAYLOAD_FORMATS:
            add("payload_format", _allowed(PAYLOAD_FORMATS))
        if "event_types" in given:
            self._check_events(webhook.webhook_type, given["event_types"], add)
        if "inbound_inbox_id" in given:
            self._check_inbox(webhook.webhook_type, given["inbound_inbox_id"], add)
        if errors:
            raise _Invalid(errors)
        for name, value in given.items():
            if name == "url":
                value = value.strip()
            elif name == "event_types":
                value = list(value or [])
            setattr(webhook, name, value)

    # --- what someone does in Mailtrap's UI -----------------------------------------

    def ui_edit(self, webhook_id: int, **fields: Any) -> StoredWebhook:
        """Change ``active``, ``url``, ``event_types`` or ``payload_format`` by hand."""
        unknown = set(fields) - {"active", "url", "event_types", "payload_format"}
        if unknown:
            raise ValueError(f"the UI does not edit {sorted(unknown)}")
        webhook = self.webhooks[webhook_id]
        self._apply(webhook, fields)
        return webhook

    def ui_delete(self, webhook_id: int) -> None:
        del self.webhooks[webhook_id]

    def ui_reset_secret(self, webhook_id: int) -> str:
        """A new signing secret; the old one stops at once."""
        webhook = self.webhooks[webhook_id]
        webhook.signing_secret = secrets.token_hex(16)
        return webhook.signing_secret

    # --- the sender ---------------------------------------------------------------

    def _subscribers(self, event: Mapping[str, Any], name: EventName) -> tuple[int, ...]:
        family = FAMILIES[name]
        found = []
        for hook in self.webhooks.values():
            if not hook.active or _FAMILY_OF_TYPE.get(hook.webhook_type) != family:
                continue
            if family == "sending" and name not in hook.event_types:
                continue
            if hook.webhook_type == "email_sending" and (
                hook.sending_stream != event.get("sending_stream")
            ):
                continue
            domain = event.get("_domain_id")
            if domain is not None and hook.domain_id not in (None, domain):
                continue
            inbox = event.get("inbox_id")
            if family == "inbound" and hook.inbound_inbox_id not in (None, inbox):
                continue
            found.append(hook.id)
        return tuple(found)

    async def emit(
        self,
        names: Sequence[EventName] = ("delivery",),
        count: int = 1,
        *,
        sending_stream: str = "transactional",
        domain_id: int | None = None,
        inbox_id: int | None = None,
    ) -> list[str]:
        """Make ``count`` events of each name and start delivering them to every
        active webhook that subscribes; the event ids (`drain` waits for delivery)."""
        batches: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        made = []
        for _ in range(count):
            for name in names:
                event = sample_event(name)
                if FAMILIES[name] == "sending":
                    event["sending_stream"] = sending_stream
                if name == "inbound" and inbox_id is not None:
                    event["inbox_id"] = inbox_id
                targets = self._subscribers({**event, "_domain_id": domain_id}, name)
                key = str(event.get("event_id") or f"audit-{secrets.token_hex(8)}")
                self.emitted[key] = Emitted(event, targets)
                made.append(key)
                for webhook_id in targets:
                    batches.setdefault(webhook_id, []).append((key, event))
        for webhook_id, events in batches.items():
            for start in range(0, len(events), BATCH_LIMIT):
                chunk = events[start : start + BATCH_LIMIT]
                task = asyncio.create_task(self._deliver(webhook_id, chunk))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return made

    async def drain(self) -> None:
        """Wait until every batch is acknowledged, abandoned or out of attempts (give
        it a deadline: ``async with asyncio.timeout(...)``)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(self, webhook_id: int, batch: list[tuple[str, dict[str, Any]]]) -> None:
        policy = self.sender
        keys = tuple(key for key, _ in batch)
        events = [event for _, event in batch]
        for attempt in range(1, policy.attempts + 1):
            hook = self.webhooks.get(webhook_id)
            if hook is None or not hook.active:
                return  # deleted or disabled meanwhile: Mailtrap drops the batch
            body_format: BodyFormat = "jsonl" if hook.payload_format == "jsonlines" else "json"
            body = encode_body(events, body_format=body_format)
            signature = sign(body, secret=hook.signing_secret.encode())
            status, error = await self._post(hook.url, body, body_format, signature)
            self.attempts.append(
                Attempt(
                    webhook_id, hook.url, attempt, status, error, keys,
                    CONTENT_TYPES[body_format], body, signature,
                )
            )  # fmt: skip
            if status == 200:
                for key in keys:
                    self.emitted[key].acknowledged_by.add(webhook_id)
                return
            if attempt < policy.attempts:
                await asyncio.sleep(policy.delay_after(attempt))
        hook = self.webhooks.get(webhook_id)
        if hook is not None and policy.pause_on_failure:
            hook.active = False

    async def _post(
        self, url: str, body: bytes, body_format: BodyFormat, signature: str
    ) -> tuple[int | None, str | None]:
        assert self._session is not None, "start the fake first"
        headers = {
            "Content-Type": CONTENT_TYPES[body_format],
            "Mailtrap-Signature": signature,
            "User-Agent": "fake-mailtrap-sender",
        }
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.sender.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, f"{type(error).__name__}: {error}"

    def start_sender(
        self,
        *,
        interval: float,
        names: Sequence[EventName] = ("delivery",),
        count: int = 1,
        sending_stream: str = "transactional",
    ) -> None:
        """Emit ``count`` events of each name every ``interval`` seconds until
        `stop_sender`: Mailtrap sending throughout a test."""
        if self._steady is not None:
            raise RuntimeError("the steady sender is already running")

        async def steady() -> None:
            while True:
                await self.emit(names, count, sending_stream=sending_stream)
                await asyncio.sleep(interval)

        self._steady = asyncio.create_task(steady())

    async def stop_sender(self) -> None:
        if self._steady is not None:
            self._steady.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._steady
            self._steady = None

    # --- what tests read ------------------------------------------------------------

    def lost(self) -> list[str]:
        """Emitted events no webhook acknowledged (call `drain` first): those no
        webhook subscribed to when they happened (`unrouted`) and those whose every
        delivery failed."""
        return [key for key, item in self.emitted.items() if not item.acknowledged_by]

    def unrouted(self) -> list[str]:
        """Emitted events that no active webhook subscribed to."""
        return [key for key, item in self.emitted.items() if not item.targets]

    def rejected(self) -> list[Attempt]:
        """Attempts answered with another status than 200."""
        return [item for item in self.attempts if item.status is not None and not item.accepted]

    def acknowledged(self, webhook_id: int) -> set[str]:
        return {key for key, item in self.emitted.items() if webhook_id in item.acknowledged_by}

    def snapshot(self) -> dict[str, Any]:
        """Everything a test in another process may want to read (with secrets)."""
        return {
            "account_id": self.account_id,
            "webhooks": [
                {**hook.data(), "signing_secret": hook.signing_secret}
                for hook in self.webhooks.values()
            ],
            "api_calls": [asdict(call) for call in self.api_calls],
            "attempts": [
                {
                    "webhook_id": item.webhook_id,
                    "url": item.url,
                    "attempt": item.attempt,
                    "status": item.status,
                    "error": item.error,
                    "event_ids": list(item.event_ids),
                    "content_type": item.content_type,
                }
                for item in self.attempts
            ],
            "emitted": len(self.emitted),
            "pending_batches": len(self._tasks),
            "lost": self.lost(),
            "rejected": len(self.rejected()),
        }

    # --- the control API (/_fake) ---------------------------------------------------

    @staticmethod
    async def _control_body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        data = orjson.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="a JSON object, please")
        return data

    async def _control_state(self, request: web.Request) -> web.Response:
        return _json(200, self.snapshot())

    async def _control_emit(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        ids = await self.emit(
            tuple(body.get("events") or ("delivery",)),
            int(body.get("count", 1)),
            sending_stream=str(body.get("sending_stream", "transactional")),
            domain_id=body.get("domain_id"),
            inbox_id=body.get("inbox_id"),
        )
        if body.get("wait", True):
            async with asyncio.timeout(float(body.get("timeout", 60))):
                await self.drain()
        lost = set(self.lost())
        return _json(200, {"event_ids": ids, "lost": [key for key in ids if key in lost]})

    async def _control_sender_start(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        self.start_sender(
            interval=float(body.get("interval", 1.0)),
            names=tuple(body.get("events") or ("delivery",)),
            count=int(body.get("count", 1)),
            sending_stream=str(body.get("sending_stream", "transactional")),
        )
        return _json(200, {"sending": True})

    async def _control_sender_stop(self, request: web.Request) -> web.Response:
        await self.stop_sender()
        return _json(200, {"sending": False})

    def _control_find(self, request: web.Request) -> int:
        text = request.match_info["webhook_id"]
        if not text.isdigit() or int(text) not in self.webhooks:
            raise web.HTTPNotFound(text="no such webhook")
        return int(text)

    async def _control_edit(self, request: web.Request) -> web.Response:
        webhook_id = self._control_find(request)
        try:
            webhook = self.ui_edit(webhook_id, **await self._control_body(request))
        except _Invalid as invalid:
            return _json(422, {"errors": invalid.errors})
        except ValueError as error:
            return _json(400, {"error": str(error)})
        return _json(200, {"data": webhook.data()})

    async def _control_delete(self, request: web.Request) -> web.Response:
        self.ui_delete(self._control_find(request))
        return _json(200, {"deleted": True})

    async def _control_reset(self, request: web.Request) -> web.Response:
        return _json(200, {"signing_secret": self.ui_reset_secret(self._control_find(request))})

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        known = set(Faults.__dataclass_fields__)
        unknown = set(body) - known
        if unknown:
            return _json(400, {"error": f"unknown faults: {sorted(unknown)}"})
        for name, value in body.items():
            setattr(self.faults, name, value)
        return _json(200, asdict(self.faults))


# --- the fake as its own process (hack/fake_mailtrap.py) ------------------------------


@dataclass
class FakeMailtrapProcess:
    """``hack/fake_mailtrap.py`` running; `control` talks to its ``/_fake`` API."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, method: str, path: str, body: Any = None, *, timeout: float = 120) -> Any:
        """A request to ``/_fake/<path>``; the decoded answer (HTTPError on 4xx/5xx)."""
        request = urllib.request.Request(  # noqa: S310 - loopback, our own fake
            f"{self.url}/_fake/{path.lstrip('/')}",
            data=None if body is None else orjson.dumps(body),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return orjson.loads(response.read())

    def stop(self) -> int:
        return stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_fake_mailtrap(
    *,
    account_id: int,
    token_file: Path,
    log_path: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 60.0,
) -> FakeMailtrapProcess:
    """Start ``hack/fake_mailtrap.py`` and wait until it answers; raise with its log if not."""
    port = free_port() if port is None else port
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable, str(REPO / "hack" / "fake_mailtrap.py"), "--port", str(port),
            "--account-id", str(account_id), "--token-file", str(token_file), *extra_args,
        ],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    log.close()
    fake = FakeMailtrapProcess(process, port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the fake Mailtrap exited ({process.returncode}):\n{fake.log()}")
        with contextlib.suppress(OSError):
            fake.control("GET", "state", timeout=2)
            return fake
        time.sleep(0.1)
    fake.stop()
    raise RuntimeError(f"the fake Mailtrap did not answer within {ready_timeout} s:\n{fake.log()}")


@contextlib.contextmanager
def running_fake_mailtrap(**kwargs: Any) -> Iterator[FakeMailtrapProcess]:
    """`start_fake_mailtrap`, always stopped on the way out."""
    fake = start_fake_mailtrap(**kwargs)
    try:
        yield fake
    finally:
        fake.stop()
