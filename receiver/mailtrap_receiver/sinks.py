"""Where accepted events go: the Sink interface, routing, encoding, and one request to a target.

`app` hands every valid event of a request to a `Sink` and answers Mailtrap from
what `submit` returns or raises. The sink owns de-duplication, because whether an
event counts as "seen" depends on how it is kept: `ForwardingSink` (ack mode
``delivered``) marks an event seen only once every matching target accepted it;
`delivery.SpoolSink` (ack mode ``durable``) de-duplicates inside the SQLite
transaction that stores the event. `delivery.build_delivery` picks one:

.. code-block:: python

    class Sink(Protocol):
        async def start(self) -> None: ...      # app startup (cleanup_ctx)
        async def submit(self, events: Sequence[Event]) -> SubmitResult: ...
        async def close(self) -> None: ...      # app cleanup, after in-flight requests

`submit` returns counts (`SubmitResult`): accepted (new, handed on), duplicates
(seen within the window, or earlier in the same request) and filtered (no target
wants them: outside the top-level ``events`` filter or every target's own). It raises
`SinkUnavailable` when it cannot take the events now (``app`` answers 503, so
Mailtrap retries) and `SinkOverloaded` when it is full (429).

Both sinks share the rest of this module. `Routes` applies the filters once per
canonical event name, at start: top-level ``events`` first, then each target's
``events``; an empty filter means every type, so ``unknown`` events reach the
targets without a filter. A `Payload` is one event as it is forwarded: its original
JSON bytes plus what headers and metrics need, so the spool can keep it without
parsing it again. `encode` builds what a target receives: for format ``mailtrap``
the original event object (a batch as ``{"events": [...]}``), for ``cloudevents``
CloudEvents 1.0 structured JSON (a batch as an array), with ``Idempotency-Key`` and
``X-Mailtrap-Event`` headers and, when the target has a signing secret,
``X-Mailtrap-Receiver-Signature``. `post` sends one request (through `new_session`,
whose connections `egress` guards) and counts it; `log_delivery` writes its one log
line; `Attempt.verdict` says what the answer means.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp
import orjson
import structlog

from . import __version__, egress
from .auth import SecretFile, sign, watch_secret_files
from .config import IPNetwork, ReceiverConfig, TargetConfig
from .dedup import DedupCache
from .events import CANONICAL_EVENTS, Event, EventName
from .logs import MAX_IDS_LOGGED
from .metrics import Metrics
from .retry import Verdict, parse_retry_after, verdict

TARGET_SIGNATURE_HEADER: Final = "X-Mailtrap-Receiver-Signature"
# CloudEvents ``source``: the operator sets this variable on the receiver's Pods to
# the API path of the MailtrapWebhook they serve; a receiver run by hand has none.
CLOUDEVENTS_SOURCE_ENV: Final = "MAILTRAP_CLOUDEVENTS_SOURCE"
DEFAULT_CLOUDEVENTS_SOURCE: Final = "mailtrap-receiver"
# CloudEvents ``type`` of each canonical name: ``io.mailtrap.email.bounce``.
CLOUDEVENTS_TYPE_PREFIX: Final = "io.mailtrap.email."
# Headers the receiver sets itself; a target's configured headers cannot replace them.
RESERVED_HEADERS: Final = frozenset(
    {"content-type", "idempotency-key", "x-mailtrap-event", TARGET_SIGNATURE_HEADER.lower()}
)
# A target's answer is only looked at for its status; reading a little of it lets
# the connection be reused without buffering whatever a target sends back.
_RESPONSE_READ_LIMIT: Final = 64 * 1024
# Longer event keys go out as a hash in Idempotency-Key.
_MAX_PLAIN_KEY: Final = 200
# What a dead letter keeps of a refusing target's answer: enough to see why.
RESPONSE_EXCERPT_CHARS: Final = 1024
# Ack mode ``delivered``: Mailtrap waits for the answer, so a target's hiccup is
# retried a few times at once rather than costing Mailtrap's next retry (minutes).
QUICK_ATTEMPTS: Final = 3
QUICK_BACKOFF: Final = 0.1  # seconds before the first quick retry, doubled after
QUICK_BUDGET: Final = 5.0  # no quick retry starts later than this after the first attempt

log = structlog.get_logger("mailtrap_receiver.sinks")


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What a sink did with the events of one request."""

    accepted: int = 0
    duplicates: int = 0
    filtered: int = 0


class Sink(Protocol):
    """Takes accepted events; see the module docstring."""

    async def start(self) -> None: ...

    async def submit(self, events: Sequence[Event]) -> SubmitResult: ...

    async def close(self) -> None: ...


class SinkUnavailable(Exception):
    """The sink cannot take these events now; Mailtrap should send them again (503)."""


class SinkOverloaded(SinkUnavailable):
    """The sink is full; Mailtrap should slow down and send them again (429)."""


# Not frozen: a frozen dataclass pays a setattr per field on creation, and the
# durable path creates one Payload per event. Treat it as immutable all the same.
@dataclass(slots=True, eq=False)
class Payload:
    """One event as it is forwarded (shared by every target it goes to)."""

    key: str  # de-duplication key (``event_id``), the Idempotency-Key of a single event
    name: EventName
    body: bytes  # the original event object as JSON
    timestamp: float | None  # Unix seconds, normalised (end-to-end lag, CloudEvents time)
    message_id: str | None
    spool_id: int = 0  # its row in the spool; 0 when not spooled

    @classmethod
    def from_event(cls, event: Event) -> Payload:
        """An event not (yet) spooled; the spool builds its payloads from its rows."""
        return cls(
            event.key, event.name, orjson.dumps(event.data), event.timestamp, event.message_id
        )


def target_url(target: TargetConfig, *, namespace: str) -> str:
    """A target's URL: its ``url``, or its Service's in-cluster address."""
    if target.url is not None:
        return target.url
    service = target.service
    if service is None:  # the config model guarantees one of the two
        raise ValueError(f"target {target.name} has neither url nor service")
    return (
        f"{service.scheme}://{service.name}.{service.namespace or namespace}.svc:"
        f"{service.port}{service.path}"
    )


def default_namespace() -> str:
    """The namespace for Service targets without one: the Pod's own (Downward API)."""
    return os.environ.get("POD_NAMESPACE") or "default"


def cloudevents_source() -> str:
    """The CloudEvents ``source`` of forwarded events (see `CLOUDEVENTS_SOURCE_ENV`)."""
    return os.environ.get(CLOUDEVENTS_SOURCE_ENV) or DEFAULT_CLOUDEVENTS_SOURCE


@dataclass(frozen=True, eq=False)
class Route:
    """One target, resolved for sending."""

    name: str
    url: str
    format: str
    batch_size: int
    concurrency: int
    timeout: aiohttp.ClientTimeout
    headers: Mapping[str, str]
    secret: SecretFile | None
    source: str  # CloudEvents ``source``
    limit: asyncio.Semaphore = field(repr=False)

    @classmethod
    def from_config(cls, target: TargetConfig, *, index: int, namespace: str, source: str) -> Route:
        secret = (
            SecretFile(target.signing_secret_file, key=f"targets[{index}].signingSecretFile")
            if target.signing_secret_file is not None
            else None
        )
        return cls(
            name=target.name,
            url=target_url(target, namespace=namespace),
            format=target.format,
            batch_size=target.batch_size,
            concurrency=target.concurrency,
            timeout=aiohttp.ClientTimeout(total=target.timeout),
            headers={
                name: value
                for name, value in target.headers.items()
                if name.lower() not in RESERVED_HEADERS
            },
            secret=secret,
            source=source,
            limit=asyncio.Semaphore(target.concurrency),
        )


class Routes:
    """Which targets receive each canonical event type, decided once at start.

    Without a ``namespace`` or ``source``, the Pod's own (`default_namespace`,
    `cloudevents_source`).
    """

    def __init__(
        self, config: ReceiverConfig, *, namespace: str | None = None, source: str | None = None
    ) -> None:
        namespace = namespace or default_namespace()
        source = source or cloudevents_source()
        self.targets = tuple(
            Route.from_config(target, index=index, namespace=namespace, source=source)
            for index, target in enumerate(config.targets)
        )
        # Addresses no target may be at, whatever its name resolves to (see egress).
        self.denied = tuple(config.denied_target_ranges)
        wanted = set(config.events or CANONICAL_EVENTS)
        self._by_event: dict[str, tuple[Route, ...]] = {
            name: tuple(
                route
                for route, target in zip(self.targets, config.targets, strict=True)
                if name in wanted and (not target.events or name in target.events)
            )
            for name in CANONICAL_EVENTS
        }
        self.names: dict[str, tuple[str, ...]] = {
            name: tuple(route.name for route in routes) for name, routes in self._by_event.items()
        }

    def __getitem__(self, name: EventName) -> tuple[Route, ...]:
        return self._by_event[name]

    def watch_secrets(self, *, interval: float) -> asyncio.Task[None] | None:
        """A task re-reading the targets' signing secret files, if any has one."""
        secrets = [route.secret for route in self.targets if route.secret is not None]
        if not secrets:
            return None
        return asyncio.create_task(watch_secret_files(secrets, interval=interval))


def batch_key(payloads: Sequence[Payload]) -> str:
    """The Idempotency-Key of a request: the event's key, or a hash of a batch's keys.

    A key is the sender's ``event_id``, any string: one that is not plain printable
    ASCII (or is very long) is sent as its hash, so it cannot break or inject headers.
    """
    if len(payloads) == 1:
        key = payloads[0].key
        if len(key) <= _MAX_PLAIN_KEY and key.isascii() and key.isprintable() and " " not in key:
            return key
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    digest = hashlib.sha256(
        "\n".join(p.key for p in payloads).encode("utf-8", "surrogatepass")
    ).hexdigest()
    return "batch:" + digest


def _cloudevent(payload: Payload, *, source: str) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": payload.key,
        "source": source,
        "type": CLOUDEVENTS_TYPE_PREFIX + payload.name,
        "datacontenttype": "application/json",
        # Embedded as stored: the original event, not parsed and serialised again.
        "data": orjson.Fragment(payload.body),
    }
    if payload.timestamp is not None:
        # `events.classify` admits only times a datetime can hold, but a spool written
        # before it did may still hold others; ``time`` is optional, so it is left out
        # rather than failing the whole batch.
        with contextlib.suppress(ValueError, OverflowError, OSError):
            envelope["time"] = datetime.fromtimestamp(payload.timestamp, UTC).isoformat()
    if payload.message_id is not None:
        envelope["subject"] = payload.message_id
    return envelope


def encode(route: Route, payloads: Sequence[Payload]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one request carrying ``payloads`` to ``route``."""
    single = len(payloads) == 1
    if route.format == "cloudevents":
        if single:
            body = orjson.dumps(_cloudevent(payloads[0], source=route.source))
            content_type = "application/cloudevents+json"
        else:
            body = orjson.dumps([_cloudevent(payload, source=route.source) for payload in payloads])
            content_type = "application/cloudevents-batch+json"
    else:
        if single:
            body = payloads[0].body
        else:
            body = b'{"events":[' + b",".join([p.body for p in payloads]) + b"]}"
        content_type = "application/json"
    names = dict.fromkeys(payload.name for payload in payloads)
    headers = {
        **route.headers,
        "Content-Type": content_type,
        "Idempotency-Key": batch_key(payloads),
        # A mixed batch names each type once, in order of first appearance.
        "X-Mailtrap-Event": ",".join(names),
    }
    if route.secret is not None:
        # The first line is the current secret; later lines only help verify.
        headers[TARGET_SIGNATURE_HEADER] = sign(body, secret=route.secret.values[0])
    return body, headers


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one request to a target went."""

    status: int | None  # None: no answer (connection error or timeout)
    error: str | None  # the exception's class name when there was no answer
    retry_after: float | None  # seconds the target asked to wait
    response: str | None  # the start of a non-2xx answer's body
    seconds: float

    @property
    def delivered(self) -> bool:
        return verdict(self.status) == "delivered"

    @property
    def verdict(self) -> Verdict:
        """What the attempt means (`retry.verdict`); one the egress guard refused is
        not worth retrying, as the address will stay denied."""
        return "dead" if self.error == egress.DENIED else verdict(self.status)

    @property
    def outcome(self) -> str:
        """The ``outcome`` label of ``deliveries_total``."""
        if self.status is None:
            return "error"
        return "delivered" if self.delivered else "rejected"


def new_session(denied: Sequence[IPNetwork] = ()) -> aiohttp.ClientSession:
    """The HTTP client both sinks send with; it never connects to a ``denied`` address."""
    return aiohttp.ClientSession(
        headers={"User-Agent": f"mailtrap-receiver/{__version__}"},
        # Per-target limits bound concurrency; the pool should not add one.
        connector=egress.connector(denied, limit=0),
        trust_env=False,
    )


async def post(
    session: aiohttp.ClientSession,
    route: Route,
    payloads: Sequence[Payload],
    *,
    metrics: Metrics,
) -> Attempt:
    """One request carrying ``payloads`` to ``route``, counted in the metrics. Never raises
    for the target's sake (a refusal, a timeout or a reset is an `Attempt`)."""
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    excerpt: str | None = None
    started = time.perf_counter()
    try:
        body, headers = encode(route, payloads)
    except (ValueError, OverflowError, TypeError) as exc:
        # A bug (every accepted event should encode), but it must cost one failed
        # attempt, not an unhandled exception: in ack mode delivered that would be a
        # 500 for the whole request.
        log.exception("encoding events failed", target=route.name, events=len(payloads))
        attempt = Attempt(None, type(exc).__name__, None, None, 0.0)
        metrics.delivery(route.name, attempt.outcome, 0.0)
        return attempt
    try:
        # No redirects: a target that moved is a configuration problem, shown as a
        # dead letter with its answer, not followed with events and signatures.
        async with session.post(
            route.url, data=body, headers=headers, timeout=route.timeout, allow_redirects=False
        ) as response:
            status = response.status
            content = await response.content.read(_RESPONSE_READ_LIMIT)
            if verdict(status) != "delivered":
                excerpt = content[:RESPONSE_EXCERPT_CHARS].decode("utf-8", "replace")
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), now=time.time()
                )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = egress.error_name(exc)
    seconds = time.perf_counter() - started
    attempt = Attempt(status, error, retry_after, excerpt, seconds)
    metrics.delivery(route.name, attempt.outcome, seconds)
    if attempt.delivered:
        now = time.time()
        for payload in payloads:
            if payload.timestamp is not None:
                metrics.lag(route.name, max(0.0, now - payload.timestamp))
    return attempt


def log_delivery(
    route: Route, payloads: Sequence[Payload], result: Attempt, **fields: object
) -> None:
    """The one log line per request to a target (never its body or headers)."""
    head = payloads[:MAX_IDS_LOGGED]
    (log.info if result.delivered else log.warning)(
        "delivery",
        target=route.name,
        outcome=result.outcome,
        status=result.status,
        error=result.error,
        events=len(payloads),
        event_ids=[p.key for p in head],
        message_ids=[p.message_id for p in head if p.message_id is not None],
        duration_ms=round(result.seconds * 1000, 2),
        **fields,
    )


class ForwardingSink:
    """Ack mode ``delivered``: forwards each new event to its targets before answering.

    An event is marked seen only when every matching target accepted it; if any did
    not (after `QUICK_ATTEMPTS` attempts within `QUICK_BUDGET` for answers worth
    retrying), `submit` raises `SinkUnavailable` (so Mailtrap retries), and the
    events that did reach all their targets are already marked, so the retry skips
    them. An event that another request is forwarding right now is waited for, not
    sent twice. Nothing is stored on disk.
    """

    def __init__(
        self,
        *,
        config: ReceiverConfig,
        metrics: Metrics,
        namespace: str | None = None,
        dedup: DedupCache | None = None,
        secret_poll_interval: float = 1.0,
        quick_attempts: int = QUICK_ATTEMPTS,
    ) -> None:
        self._routes = Routes(config, namespace=namespace)
        self._metrics = metrics
        self._seen = dedup or DedupCache(window=config.delivery.dedup_window)
        self._secret_poll_interval = secret_poll_interval
        self._quick_attempts = quick_attempts
        self._in_flight: dict[str, asyncio.Future[bool]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        for route in self._routes.targets:
            metrics.add_target(route.name)

    async def start(self) -> None:
        self._session = new_session(self._routes.denied)
        self._watcher = self._routes.watch_secrets(interval=self._secret_poll_interval)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def submit(self, events: Sequence[Event]) -> SubmitResult:
        duplicates = filtered = 0
        fresh: list[Event] = []
        mine: dict[str, asyncio.Future[bool]] = {}
        others: list[asyncio.Future[bool]] = []
        loop = asyncio.get_running_loop()
        for event in events:
            if not self._routes[event.name]:
                filtered += 1
                continue
            key = event.key
            if key in mine or key in self._seen:
                duplicates += 1
            elif (other := self._in_flight.get(key)) is not None:
                others.append(other)
            else:
                mine[key] = self._in_flight[key] = loop.create_future()
                fresh.append(event)
        failed: set[str] = set(mine)  # until proven delivered, even if cancelled
        try:
            failed = await self._forward(fresh) if fresh else set()
        finally:
            for key, future in mine.items():
                delivered = key not in failed
                if delivered:
                    self._seen.add(key)
                del self._in_flight[key]
                future.set_result(delivered)
        not_delivered = len(failed)
        for other in others:
            # shield: if this request is cancelled, the one forwarding must not be.
            if await asyncio.shield(other):
                duplicates += 1
            else:
                not_delivered += 1
        if not_delivered:
            raise SinkUnavailable(
                f"{not_delivered} of {len(events)} events were not accepted by every target"
            )
        return SubmitResult(accepted=len(fresh), duplicates=duplicates, filtered=filtered)

    async def _forward(self, events: Sequence[Event]) -> set[str]:
        """Send ``events`` to their targets; the keys of those some target did not take."""
        per_route: dict[Route, list[Payload]] = {}
        for event in events:
            payload = Payload.from_event(event)
            for route in self._routes[event.name]:
                per_route.setdefault(route, []).append(payload)
        chunks = [
            (route, batch[start : start + route.batch_size])
            for route, batch in per_route.items()
            for start in range(0, len(batch), route.batch_size)
        ]
        if len(chunks) == 1:
            outcomes = [await self._deliver(*chunks[0])]
        else:
            outcomes = await asyncio.gather(
                *(self._deliver(route, chunk) for route, chunk in chunks)
            )
        return {
            payload.key
            for (_, chunk), delivered in zip(chunks, outcomes, strict=True)
            if not delivered
            for payload in chunk
        }

    async def _deliver(self, route: Route, payloads: Sequence[Payload]) -> bool:
        """Quick attempts to hand ``payloads`` to ``route``; True once it answered 2xx."""
        if self._session is None:
            raise RuntimeError("ForwardingSink.start() was not called")
        started = time.monotonic()
        delay = QUICK_BACKOFF
        for number in range(1, self._quick_attempts + 1):
            async with route.limit:
                attempt = await post(self._session, route, payloads, metrics=self._metrics)
            log_delivery(route, payloads, attempt, attempt=number)
            if attempt.delivered:
                return True
            if attempt.verdict == "dead" or number == self._quick_attempts:
                return False
            # Jittered so requests failing together do not retry together.
            wait = max(delay * random.uniform(0.5, 1.0), attempt.retry_after or 0.0)  # noqa: S311
            if time.monotonic() + wait - started > QUICK_BUDGET:
                return False
            await asyncio.sleep(wait)
            delay *= 2
        return False
