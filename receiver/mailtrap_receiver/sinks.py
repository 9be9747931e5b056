"""Where accepted events go: the Sink interface, routing to targets, and forwarding.

`app` hands every valid event of a request to a `Sink` and answers Mailtrap from
what `submit` returns or raises. The sink owns de-duplication, because whether an
event counts as "seen" depends on how it is kept: the forwarding sink here marks an
event seen only once every matching target accepted it, and the durable spool of
the next stage will de-duplicate inside the same SQLite transaction that stores the
event. The interface is small so that spool replaces `ForwardingSink` through
`build_delivery` alone, without `app` changing:

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

`Routes` applies the filters once per canonical event name, at start: top-level
``events`` first, then each target's ``events``; an empty filter means every type,
so ``unknown`` events reach the targets without a filter. `encode` builds what a
target receives: for format ``mailtrap`` the original event object (a batch as
``{"events": [...]}``), for ``cloudevents`` CloudEvents 1.0 structured JSON (a batch
as an array), with ``Idempotency-Key`` and ``X-Mailtrap-Event`` headers and, when
the target has a signing secret, ``X-Mailtrap-Receiver-Signature``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp
import orjson
import structlog

from . import __version__
from .auth import SecretFile, sign, watch_secret_files
from .config import ReceiverConfig, TargetConfig
from .deadletters import DeadLetterStore, MemoryDeadLetterStore
from .dedup import DedupCache
from .events import CANONICAL_EVENTS, Event, EventName
from .logs import MAX_IDS_LOGGED
from .metrics import Metrics

TARGET_SIGNATURE_HEADER: Final = "X-Mailtrap-Receiver-Signature"
CLOUDEVENTS_SOURCE: Final = "mailtrap-receiver"
# Headers the receiver sets itself; a target's configured headers cannot replace them.
RESERVED_HEADERS: Final = frozenset(
    {"content-type", "idempotency-key", "x-mailtrap-event", TARGET_SIGNATURE_HEADER.lower()}
)
# A target's answer is only looked at for its status; reading a little of it lets
# the connection be reused without buffering whatever a target sends back.
_RESPONSE_READ_LIMIT: Final = 64 * 1024

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


@dataclass(frozen=True, eq=False)
class Route:
    """One target, resolved for sending."""

    name: str
    url: str
    format: str
    batch_size: int
    timeout: aiohttp.ClientTimeout
    headers: Mapping[str, str]
    secret: SecretFile | None
    limit: asyncio.Semaphore = field(repr=False)

    @classmethod
    def from_config(cls, target: TargetConfig, *, index: int, namespace: str) -> Route:
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
            timeout=aiohttp.ClientTimeout(total=target.timeout),
            headers={
                name: value
                for name, value in target.headers.items()
                if name.lower() not in RESERVED_HEADERS
            },
            secret=secret,
            limit=asyncio.Semaphore(target.concurrency),
        )


class Routes:
    """Which targets receive each canonical event type, decided once at start."""

    def __init__(self, config: ReceiverConfig, *, namespace: str) -> None:
        self.targets = tuple(
            Route.from_config(target, index=index, namespace=namespace)
            for index, target in enumerate(config.targets)
        )
        wanted = set(config.events or CANONICAL_EVENTS)
        self._by_event: dict[str, tuple[Route, ...]] = {
            name: tuple(
                route
                for route, target in zip(self.targets, config.targets, strict=True)
                if name in wanted and (not target.events or name in target.events)
            )
            for name in CANONICAL_EVENTS
        }

    def __getitem__(self, name: EventName) -> tuple[Route, ...]:
        return self._by_event[name]


def _batch_key(events: Sequence[Event]) -> str:
    if len(events) == 1:
        return events[0].key
    return "batch:" + hashlib.sha256("\n".join(e.key for e in events).encode()).hexdigest()


def _cloudevent(event: Event) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.key,
        "source": CLOUDEVENTS_SOURCE,
        "type": f"io.mailtrap.{event.name}",
        "datacontenttype": "application/json",
        "data": event.data,
    }
    timestamp = event.timestamp
    if timestamp is not None:
        envelope["time"] = datetime.fromtimestamp(timestamp, UTC).isoformat()
    message_id = event.message_id
    if message_id is not None:
        envelope["subject"] = message_id
    return envelope


def encode(route: Route, events: Sequence[Event]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one request carrying ``events`` to ``route``."""
    single = len(events) == 1
    if route.format == "cloudevents":
        if single:
            body = orjson.dumps(_cloudevent(events[0]))
            content_type = "application/cloudevents+json"
        else:
            body = orjson.dumps([_cloudevent(event) for event in events])
            content_type = "application/cloudevents-batch+json"
    else:
        data = events[0].data if single else {"events": [event.data for event in events]}
        body = orjson.dumps(data)
        content_type = "application/json"
    names = dict.fromkeys(event.name for event in events)
    headers = {
        **route.headers,
        "Content-Type": content_type,
        "Idempotency-Key": _batch_key(events),
        "X-Mailtrap-Event": ",".join(names),
    }
    if route.secret is not None:
        # The first line is the current secret; later lines only help verify.
        headers[TARGET_SIGNATURE_HEADER] = sign(body, secret=route.secret.values[0])
    return body, headers


class ForwardingSink:
    """Forwards each new event to its targets before answering: ack means delivered.

    An event is marked seen only when every matching target accepted it; if any did
    not, `submit` raises `SinkUnavailable` (so Mailtrap retries), and the events that
    did reach all their targets are already marked, so the retry skips them. An event
    that another request is forwarding right now is waited for, not sent twice.
    """

    def __init__(
        self,
        *,
        config: ReceiverConfig,
        metrics: Metrics,
        namespace: str | None = None,
        dedup: DedupCache | None = None,
        secret_poll_interval: float = 1.0,
    ) -> None:
        self._routes = Routes(config, namespace=namespace or default_namespace())
        self._metrics = metrics
        self._seen = dedup or DedupCache(window=config.delivery.dedup_window)
        self._secret_poll_interval = secret_poll_interval
        self._in_flight: dict[str, asyncio.Future[bool]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        for route in self._routes.targets:
            metrics.add_target(route.name)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"mailtrap-receiver/{__version__}"},
            # Per-target semaphores bound concurrency; the pool should not add a limit.
            connector=aiohttp.TCPConnector(limit=0),
            trust_env=False,
        )
        secrets = [route.secret for route in self._routes.targets if route.secret is not None]
        if secrets:
            self._watcher = asyncio.create_task(
                watch_secret_files(secrets, interval=self._secret_poll_interval)
            )

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
        per_route: dict[Route, list[Event]] = {}
        for event in events:
            for route in self._routes[event.name]:
                per_route.setdefault(route, []).append(event)
        chunks = [
            (route, batch[start : start + route.batch_size])
            for route, batch in per_route.items()
            for start in range(0, len(batch), route.batch_size)
        ]
        if len(chunks) == 1:
            outcomes = [await self._post(*chunks[0])]
        else:
            outcomes = await asyncio.gather(*(self._post(route, chunk) for route, chunk in chunks))
        return {
            event.key
            for (_, chunk), delivered in zip(chunks, outcomes, strict=True)
            if not delivered
            for event in chunk
        }

    async def _post(self, route: Route, events: Sequence[Event]) -> bool:
        """One request to one target; True when it answered 2xx. Never raises."""
        if self._session is None:
            raise RuntimeError("ForwardingSink.start() was not called")
        body, headers = encode(route, events)
        status: int | None = None
        error: str | None = None
        async with route.limit:
            started = time.perf_counter()
            try:
                async with self._session.post(
                    route.url, data=body, headers=headers, timeout=route.timeout
                ) as response:
                    status = response.status
                    await response.content.read(_RESPONSE_READ_LIMIT)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            seconds = time.perf_counter() - started
        delivered = status is not None and 200 <= status < 300
        outcome = "delivered" if delivered else ("rejected" if status is not None else "error")
        self._metrics.delivery(route.name, outcome, seconds)
        if delivered:
            now = time.time()
            for event in events:
                timestamp = event.timestamp
                if timestamp is not None:
                    self._metrics.lag(route.name, max(0.0, now - timestamp))
        (log.info if delivered else log.warning)(
            "delivery",
            target=route.name,
            outcome=outcome,
            status=status,
            error=error,
            events=len(events),
            event_ids=[event.key for event in events[:MAX_IDS_LOGGED]],
            duration_ms=round(seconds * 1000, 2),
        )
        return delivered


def build_delivery(*, config: ReceiverConfig, metrics: Metrics) -> tuple[Sink, DeadLetterStore]:
    """The sink and dead-letter store the config asks for."""
    if config.delivery.ack == "durable":
        # The durable spool is the next stage; until then both modes forward before
        # answering, which loses nothing (a failed target means a 503 and a retry).
        log.warning("delivery.ack durable is not available yet; acknowledging after delivery")
    return ForwardingSink(config=config, metrics=metrics), MemoryDeadLetterStore()
