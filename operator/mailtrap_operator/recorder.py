"""Events on MailtrapWebhooks, aggregated and bounded as kubectl's event recorder does.

`reconciler` says what happened (`EventRecorder.record`); this module decides what
reaches the API server, and sends it through `kubeapi`:

- the first occurrence of an Event (same resource, type, reason and message) is
  POSTed, under a name made here; later ones within `AGGREGATION_WINDOW` of the
  previous PATCH its ``count`` and ``lastTimestamp`` instead of adding another
  (a PATCH that finds the Event gone, expired by the API server, posts it anew);
- each resource gets at most `EVENTS_PER_MINUTE` Event writes a minute (a token
  bucket): occurrences past that are counted, and the next write of that Event
  carries them. Nothing is lost, only batched, so a fight with another writer or a
  throttling API server cannot turn into a stream of Events.

One task per resource writes its Events in the order they happened. A write that
fails transiently (throttled, no answer) is tried again after the server's
Retry-After (or `RETRY_DELAY`), up to `ATTEMPTS` times; one refused, or failing
longer, is logged and left: the API failing is reported elsewhere.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from .kubeapi import ApiError, KubeApi
from .logs import get_logger
from .resources import Owner, OwnerKey

log = get_logger(__name__)

# The same Event again within this many seconds counts on the one already posted.
AGGREGATION_WINDOW: Final = 600.0
# Event writes (POST or PATCH) per resource per minute, and as many at once.
EVENTS_PER_MINUTE: Final = 10
# The API server caps messages at 1 KiB.
MAX_MESSAGE: Final = 1000
# Writes of one Event that fail transiently before it is given up, and the wait
# between them when the server does not say.
ATTEMPTS: Final = 5
RETRY_DELAY: Final = 2.0

SeriesKey = tuple[str, str, str, str]  # (owner uid, type, reason, message)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class _Series:
    """One Event as the API server has it (or will): its occurrences so far."""

    owner: Owner
    event_type: str
    reason: str
    message: str
    name: str
    first: datetime.datetime
    last: datetime.datetime
    last_seen: float  # monotonic
    count: int = 0
    sent: int = 0  # the count the API server has; 0 while not posted
    failures: int = 0  # transient failures in a row


@dataclass
class _Bucket:
    tokens: float
    updated: float

    def take(self, *, now: float, per_minute: int) -> float:
        """Seconds to wait for a token; 0 when one was taken."""
        self.tokens = min(per_minute, self.tokens + (now - self.updated) * per_minute / 60.0)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / per_minute


@dataclass
class _OwnerEvents:
    series: dict[SeriesKey, _Series] = field(default_factory=dict)
    dirty: dict[SeriesKey, _Series] = field(default_factory=dict)  # in order of occurrence
    bucket: _Bucket | None = None
    writing: bool = False


class EventRecorder:
    """See the module docstring."""

    def __init__(
        self,
        api: KubeApi,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime.datetime] = _utcnow,
        window: float = AGGREGATION_WINDOW,
        per_minute: int = EVENTS_PER_MINUTE,
    ) -> None:
        self.api = api
        self.spawn = spawn
        self.clock = clock
        self.wallclock = wallclock
        self.window = window
        self.per_minute = per_minute
        self._owners: dict[OwnerKey, _OwnerEvents] = {}

    def record(self, owner: Owner, event_type: str, reason: str, message: str) -> None:
        """One occurrence; written soon, by the resource's writer task."""
        now, wall = self.clock(), self.wallclock()
        events = self._owners.setdefault(owner.key, _OwnerEvents())
        text = message[:MAX_MESSAGE]
        key = (owner.uid, event_type, reason, text)
        series = events.series.get(key)
        if series is None or now - series.last_seen > self.window:
            self._prune(events, now)
            series = _Series(
                owner=owner,
                event_type=event_type,
                reason=reason,
                message=text,
                name=_event_name(owner),
                first=wall,
                last=wall,
                last_seen=now,
            )
            events.series[key] = series
        series.count += 1
        series.last, series.last_seen = wall, now
        events.dirty[key] = series
        if not events.writing:
            events.writing = True
            self.spawn(self._write(owner.key, events))

    def forget(self, owner: OwnerKey) -> None:
        self._owners.pop(owner, None)

    def _prune(self, events: _OwnerEvents, now: float) -> None:
        for key, series in list(events.series.items()):
            if now - series.last_seen > self.window and key not in events.dirty:
                del events.series[key]

    async def _write(self, owner: OwnerKey, events: _OwnerEvents) -> None:
        try:
            while events.dirty:
                now = self.clock()
                if events.bucket is None:
                    events.bucket = _Bucket(tokens=float(self.per_minute), updated=now)
                token = events.bucket.take(now=now, per_minute=self.per_minute)
                if token > 0:
                    await asyncio.sleep(token)
                    continue
                key = next(iter(events.dirty))
                series = events.dirty.pop(key)
                again = await self._send(series)
                if self._owners.get(owner) is not events:
                    return  # forgotten meanwhile: its resource is gone
                if again is not None:
                    events.dirty.setdefault(key, series)
                    await asyncio.sleep(again)
        finally:
            events.writing = False

    async def _send(self, series: _Series) -> float | None:
        """Write one Event; seconds to wait before trying again, if it is worth it."""
        count, last = series.count, series.last
        owner = series.owner
        try:
            if series.sent and await self.api.patch_event(
                namespace=owner.namespace, name=series.name, count=count, last=last
            ):
                series.sent, series.failures = count, 0
                return None
            if series.sent:  # expired: the occurrences since it was posted start anew
                series.name, series.first = _event_name(owner), last
            await self.api.post_event(
                owner={"namespace": owner.namespace, "name": owner.name, "uid": owner.uid},
                name=series.name,
                event_type=series.event_type,
                reason=series.reason,
                message=series.message,
                count=count,
                first=series.first,
                last=last,
            )
            series.sent, series.failures = count, 0
        except ApiError as error:  # an Event lost is not worth failing anything for
            series.failures += 1
            if error.transient and series.failures < ATTEMPTS:
                return max(error.retry_after or 0.0, RETRY_DELAY)
            series.failures = 0
            if not error.namespace_terminating:
                log.warning("event not written", reason=series.reason, error=str(error))
        return None


def _event_name(owner: Owner) -> str:
    # As kubectl's recorder names them: the object's name and a unique suffix.
    return f"{owner.name}.{uuid.uuid4().hex[:16]}"
