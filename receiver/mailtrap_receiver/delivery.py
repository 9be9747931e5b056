"""Ack mode ``durable``: store first (`spool`), answer, then deliver with retries.

`build_delivery` is what `app` calls to get its sink and dead-letter store: in
mode ``delivered`` the stateless `sinks.ForwardingSink` and an in-memory store, in
mode ``durable`` (the default) a `SpoolSink` and its `SpoolDeadLetterStore`.

`SpoolSink.submit` drops events no target wants and keys a small in-memory LRU
already knows, and queues the rest to the spool's writer; it returns once they are
committed (fsynced), so a 200 means "on disk". It answers 429 (`SinkOverloaded`)
while ``delivery.maxPendingEvents`` events or more wait, and 503 when the spool
cannot write.

One `TargetWorker` per target delivers. After each commit the writer hands it the
new events in memory (no read on the hot path); it sends up to ``batchSize`` events
per request and at most ``concurrency`` requests at once, and records each outcome
through the writer, batched with everything else. A partial batch waits while a
request to the target is out, and (``batchSize`` > 1) up to `LINGER` for company,
so batches fill under load without delaying a quiet target's events noticeably.
A retry is not kept in memory: its row carries the next attempt time, and the
worker reads due rows back from the spool when they are due. It also reads the
spool at start (what was pending before a restart), when it had to turn events away
because its memory share was full, and about once a second (``dlq replay`` from
another process), so the database stays the truth and memory only a fast path.
Workers share nothing but the event loop, so a target that fails or hangs delays
no other.

Graceful shutdown: `server` stops taking requests and waits for those in flight;
then `SpoolSink.close` lets the workers deliver what is due until the grace period
(`admin.Lifecycle.stop_deadline`) is nearly over, stops them (an interrupted
request's events stay pending and are sent again after a restart), and closes the
spool cleanly.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

import aiohttp
import structlog

from . import egress
from .admin import Lifecycle
from .config import ReceiverConfig, RetryPolicy
from .deadletters import DeadLetter, DeadLetterStore, MemoryDeadLetterStore, log_dead_letters
from .dedup import DedupCache
from .events import Event, EventName
from .metrics import Metrics
from .recovery import Recovery
from .retry import backoff
from .sinks import (
    Attempt,
    ForwardingSink,
    Payload,
    Route,
    Routes,
    Sink,
    SinkOverloaded,
    SubmitResult,
    log_delivery,
    new_session,
    post,
)
from .spool import DeadReason, Outcome, Spool, SpoolError, StoredEntry
from .spoolfile import PendingRow, StoredDeadLetter

# How often an idle worker looks at the spool for rows it does not hold.
POLL_INTERVAL: Final = 1.0
# How often queue depth and oldest pending age are refreshed.
METRICS_INTERVAL: Final = 1.0
# Keys the in-memory LRU keeps in front of the spool's dedup table.
LRU_ENTRIES: Final = 100_000
# A worker's share of events held in memory: enough to keep every request slot
# busy several times over, bounded so that a long outage costs disk, not memory.
MEMORY_MIN: Final = 10_000
MEMORY_MAX: Final = 50_000
# A target with batchSize > 1 gets a partial batch only after its first event has
# waited this long for others (when nothing is in flight to it already).
LINGER: Final = 0.01
# What closing needs after the workers stop (the last commit, a checkpoint).
CLOSE_MARGIN: Final = 1.0

log = structlog.get_logger("mailtrap_receiver.delivery")


@dataclass(slots=True, eq=False)
class Job:
    """An event a worker holds for its target, and the attempts made so far."""

    payload: Payload
    attempts: int


class TargetWorker:
    """Delivers one target's pending events (see the module docstring)."""

    def __init__(
        self,
        *,
        route: Route,
        policy: RetryPolicy,
        spool: Spool,
        metrics: Metrics,
        session: Callable[[], aiohttp.ClientSession],
        poll_interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.route = route
        self.policy = policy
        self._spool = spool
        self._metrics = metrics
        self._session = session
        self._poll_interval = poll_interval
        self._clock = clock
        self._rng = rng
        self._memory_limit = min(
            MEMORY_MAX, max(MEMORY_MIN, 8 * route.concurrency * route.batch_size)
        )
        self._ready: deque[Job] = deque()
        self._ready_since = 0.0  # monotonic: when the oldest ready event became ready
        # Spool ids held in memory: ready, being sent, or waiting for their outcome's
        # commit. A poll skips them, so no event is sent twice at once.
        self._held: set[int] = set()
        self._polling = False
        self._released_while_polling: list[int] = []
        # The spool may hold due rows that memory does not: true at start.
        self._backlog = True
        # Wall-clock times: the next look at the spool, and the earliest retry the
        # spool holds (from the last poll and the retries recorded since).
        self._next_poll = 0.0
        self._upcoming = math.inf
        self._upcoming_while_polling = math.inf
        self._sending = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- called on commit (event loop) -------------------------------------------------

    def offer(self, payload: Payload) -> None:
        """A newly stored event for this target."""
        if len(self._held) >= self._memory_limit:
            self._backlog = True  # it is in the spool; a poll will find it
            return
        self._held.add(payload.spool_id)
        if not self._ready:
            self._ready_since = time.monotonic()
        self._ready.append(Job(payload, 0))
        self._wake.set()

    def recorded(self, outcome: Outcome) -> None:
        """An outcome of this worker is committed: the event leaves memory."""
        if outcome.kind == "retry":
            due = outcome.next_attempt_at
            self._upcoming = min(self._upcoming, due)
            self._upcoming_while_polling = min(self._upcoming_while_polling, due)
            self._next_poll = min(self._next_poll, due)
        if self._polling:
            # The poll in flight may have read the row before this commit.
            self._released_while_polling.append(outcome.payload.spool_id)
        else:
            self._held.discard(outcome.payload.spool_id)
            self._wake.set()

    # -- the worker's loop ---------------------------------------------------------------

    def idle(self, *, until: float) -> bool:
        """Nothing to send before ``until`` (wall clock), as far as memory knows."""
        return (
            not self._ready
            and self._sending == 0
            and not self._backlog
            and not self._held
            and self._upcoming > until
        )

    async def run(self) -> None:
        route = self.route
        while True:
            lingering = 0.0
            while self._ready and self._sending < route.concurrency:
                if len(self._ready) < route.batch_size:
                    # A partial batch waits while a request to the target is out
                    # (events gather into full ones under load), and, for a target
                    # that wants batches, a moment for company when it is idle.
                    if self._sending:
                        break
                    lingering = self._ready_since + LINGER - time.monotonic()
                    if route.batch_size > 1 and lingering > 0:
                        break
                    lingering = 0.0
                count = min(route.batch_size, len(self._ready))
                batch = [self._ready.popleft() for _ in range(count)]
                self._ready_since = time.monotonic()
                self._sending += 1
                task = asyncio.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            now = self._clock()
            room = self._memory_limit - len(self._held)
            wants_more = len(self._ready) < route.batch_size * route.concurrency
            due = now >= self._next_poll or (self._backlog and not self._ready)
            if room > 0 and wants_more and due:
                await self._poll(now, room)
                continue
            self._wake.clear()
            wait = min(max(self._next_poll - now, 0.0), self._poll_interval)
            if lingering > 0:
                wait = min(wait, lingering)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop sending; interrupted requests leave their events pending."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, now: float, room: int) -> None:
        target = self.route.name
        self._polling = True
        self._upcoming_while_polling = math.inf
        loaded: list[PendingRow]
        upcoming: float | None
        try:
            loaded, more, upcoming = await self._spool.read(
                "poll_pending", target=target, now=now, held=list(self._held), room=room
            )
        except SpoolError as error:
            # Look again at the next interval, not at once: a broken spool must not
            # turn this loop into a busy one.
            log.error("reading the spool failed", target=target, error=str(error))
            loaded, more, upcoming = [], False, now + self._poll_interval
        finally:
            self._polling = False
            for spool_id in self._released_while_polling:
                self._held.discard(spool_id)
            self._released_while_polling.clear()
        held = self._held
        if loaded and not self._ready:
            self._ready_since = time.monotonic()
        for spool_id, key, name, body, occurred_at, message_id, attempts in loaded:
            if spool_id not in held:
                held.add(spool_id)
                payload = Payload(
                    key, cast(EventName, name), body, occurred_at, message_id, spool_id
                )
                self._ready.append(Job(payload, attempts))
        # A full page that loaded nothing new (rows without their event, which no
        # transaction leaves) must not turn into a busy loop of polls.
        self._backlog = more and bool(loaded)
        self._upcoming = min(
            math.inf if upcoming is None else upcoming, self._upcoming_while_polling
        )
        self._next_poll = min(now + self._poll_interval, self._upcoming)

    async def _send(self, jobs: list[Job]) -> None:
        route = self.route
        payloads = [job.payload for job in jobs]
        try:
            try:
                attempt = await post(self._session(), route, payloads, metrics=self._metrics)
            except Exception as error:
                # A bug must not strand these events in memory: retry them as if
                # the target had not answered.
                log.exception("delivery failed unexpectedly", target=route.name)
                attempt = Attempt(None, type(error).__name__, None, None, 0.0)
            outcomes = self._judge(jobs, attempt)
            self._spool.record(outcomes)
            self._log(payloads, attempt, outcomes)
        finally:
            self._sending -= 1
            self._wake.set()

    def _judge(self, jobs: list[Job], attempt: Attempt) -> list[Outcome]:
        target = self.route.name
        kind = attempt.verdict
        if kind == "delivered":
            return [Outcome("delivered", target, job.payload, job.attempts + 1) for job in jobs]
        answer = f"HTTP {attempt.status}" if attempt.status is not None else attempt.error
        policy = self.policy
        now = self._clock()
        # When a dead outcome is held back (the dead letters are full), its event is
        # tried again at the longest backoff.
        held_until = now + policy.max_backoff
        if kind == "dead":
            reason: DeadReason = "rejected"
            detail = f"the target refused the event ({answer})"
            if attempt.error == egress.DENIED:
                reason = "egress_denied"
                detail = "the target's address is one the operator denies (deniedTargetRanges)"
            return [
                Outcome(
                    "dead",
                    target,
                    job.payload,
                    job.attempts + 1,
                    next_attempt_at=held_until,
                    status=attempt.status,
                    error=attempt.error,
                    response=attempt.response,
                    reason=reason,
                    detail=detail,
                )
                for job in jobs
            ]
        outcomes = []
        for job in jobs:
            attempts = job.attempts + 1
            if attempts >= policy.max_attempts:
                outcomes.append(
                    Outcome(
                        "dead",
                        target,
                        job.payload,
                        attempts,
                        next_attempt_at=held_until,
                        status=attempt.status,
                        error=attempt.error,
                        response=attempt.response,
                        reason="attempts_exhausted",
                        detail=f"no success in {attempts} attempts; the last: {answer}",
                    )
                )
                continue
            delay = backoff(
                failures=attempts,
                initial=policy.initial_backoff,
                maximum=policy.max_backoff,
                retry_after=attempt.retry_after,
                rng=self._rng,
            )
            outcomes.append(
                Outcome(
                    "retry",
                    target,
                    job.payload,
                    attempts,
                    next_attempt_at=now + delay,
                    status=attempt.status,
                    error=attempt.error,
                )
            )
        return outcomes

    def _log(self, payloads: list[Payload], attempt: Attempt, outcomes: list[Outcome]) -> None:
        retries = [o for o in outcomes if o.kind == "retry"]
        dead = [o for o in outcomes if o.kind == "dead"]
        fields: dict[str, object] = {"attempt": max(o.attempts for o in outcomes)}
        if retries:
            fields["retry_in_s"] = round(min(o.next_attempt_at for o in retries) - self._clock(), 3)
        if dead:
            fields["dead_lettered"] = len(dead)
            fields["reason"] = dead[0].reason
        log_delivery(self.route, payloads, attempt, **fields)


class SpoolDeadLetterStore:
    """Dead letters in the spool (`DeadLetterStore`): invalid events, and events no
    target took, listed and replayed with ``mailtrap-receiver dlq``."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        await self._spool.add_dead_letters(letters)
        log_dead_letters(letters)

    async def entries(self, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` letters, oldest first."""
        if limit <= 0:
            return []
        rows: list[StoredDeadLetter] = await self._spool.read("dead_letters", limit=limit)
        return [
            DeadLetter(
                key=row.key,
                reason=row.reason,
                detail=row.detail,
                event=row.event,
                received_at=row.received_at,
                target=row.target,
            )
            for row in rows
        ]


class SpoolSink:
    """Ack mode ``durable`` (see the module docstring)."""

    def __init__(
        self,
        *,
        config: ReceiverConfig,
        metrics: Metrics,
        lifecycle: Lifecycle | None = None,
        namespace: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        secret_poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._routes = Routes(config, namespace=namespace)
        self._targets_of = self._routes.names
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._max_pending = config.delivery.max_pending_events
        self._secret_poll_interval = secret_poll_interval
        self._seen = DedupCache(window=config.delivery.dedup_window, max_entries=LRU_ENTRIES)
        self.spool = Spool(
            path=config.delivery.spool_path,
            targets=[route.name for route in self._routes.targets],
            dedup_window=config.delivery.dedup_window,
            on_commit=self._committed,
            on_failure=self._failed,
            max_dead_letters=config.delivery.max_dead_letters,
            dead_letter_retention=config.delivery.dead_letter_retention,
            routes=self._targets_of,
        )
        self._expired = 0
        self.dead_letters = SpoolDeadLetterStore(self.spool)
        self._session: aiohttp.ClientSession | None = None
        self.workers = {
            route.name: TargetWorker(
                route=route,
                policy=target.effective_retry(config.delivery.retry),
                spool=self.spool,
                metrics=metrics,
                session=self._require_session,
                poll_interval=poll_interval,
                clock=clock,
            )
            for route, target in zip(self._routes.targets, config.targets, strict=True)
        }
        self._tasks: list[asyncio.Task[None]] = []
        for route in self._routes.targets:
            metrics.add_target(route.name)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("SpoolSink.start() was not called")
        return self._session

    async def start(self) -> None:
        await self.spool.open()
        recovered = self.spool.recovered
        if recovered is not None:
            summary = Recovery(**recovered).summary()
            self._metrics.spool_corruptions_total.inc()
            log.error("spool recovered from corruption", **recovered)
            if self._lifecycle is not None:
                self._lifecycle.warnings.append(summary)
        self._expired = self.spool.expired
        self._metrics.dead_letters_stored.set_function(lambda: self.spool.dead_letters)
        self._metrics.store_writable.set_function(lambda: self.spool.unwritable is None)
        if self._lifecycle is not None:
            self._lifecycle.checks.append(self._cannot_write)
        for target, count in self.spool.removed.items():
            self._metrics.dead_letter(target, "target_removed", count)
        self._session = new_session(self._routes.denied)
        self._tasks = [
            asyncio.create_task(worker.run(), name=f"deliver-{name}")
            for name, worker in self.workers.items()
        ]
        self._tasks.append(asyncio.create_task(self._refresh_metrics(), name="queue-metrics"))
        watcher = self._routes.watch_secrets(interval=self._secret_poll_interval)
        if watcher is not None:
            self._tasks.append(watcher)

    async def submit(self, events: Sequence[Event]) -> SubmitResult:
        targets_of = self._targets_of
        seen = self._seen
        entries: list[tuple[Event, tuple[str, ...]]] = []
        duplicates = filtered = 0
        for event in events:
            targets = targets_of[event.name]
            if not targets:
                filtered += 1
            elif event.key in seen:
                duplicates += 1
            else:
                entries.append((event, targets))
        if not entries:
            return SubmitResult(duplicates=duplicates, filtered=filtered)
        if self.spool.pending_events >= self._max_pending:
            raise SinkOverloaded(
                f"{self.spool.pending_events} events wait for delivery "
                f"(delivery.maxPendingEvents is {self._max_pending})"
            )
        stored = await self.spool.store(entries)
        return SubmitResult(
            accepted=stored.accepted,
            duplicates=duplicates + stored.duplicates,
            filtered=filtered,
        )

    def _cannot_write(self) -> str | None:
        unwritable = self.spool.unwritable
        return None if unwritable is None else f"the spool cannot write: {unwritable}"

    def _failed(self, reason: str) -> None:
        if self.spool.corrupt is not None:
            self._metrics.spool_corruptions_total.inc()
        if self._lifecycle is not None:
            self._lifecycle.failure = reason

    def _committed(self, stored: list[StoredEntry], outcomes: list[Outcome]) -> None:
        seen = self._seen
        workers = self.workers
        for payload, targets in stored:
            seen.add(payload.key)
            for target in targets:
                workers[target].offer(payload)
        metrics = self._metrics
        held: dict[str, int] = {}
        for outcome in outcomes:
            workers[outcome.target].recorded(outcome)
            if outcome.kind == "dead" and outcome.reason is not None:
                metrics.dead_letter(outcome.target, outcome.reason)
            elif outcome.held:
                held[outcome.target] = held.get(outcome.target, 0) + 1
        for target, count in held.items():
            metrics.dead_letters_held(target, count)
        if held:
            log.warning(
                "dead-letter store full: events given up on stay pending",
                held=held,
                dead_letters=self.spool.dead_letters,
                max_dead_letters=self.spool.max_dead_letters,
            )

    async def _refresh_metrics(self) -> None:
        names = list(self.workers)
        while True:
            oldest: dict[str, float]
            try:
                oldest = await self.spool.read("oldest_pending", targets=names)
            except SpoolError as error:
                log.warning("reading queue metrics failed", error=str(error))
                oldest = {}
            now = time.time()
            depth = self.spool.depth
            expired = self.spool.expired - self._expired
            if expired > 0:
                self._metrics.dead_letters_expired(expired)
                log.info("dead letters expired", count=expired, kept=self.spool.dead_letters)
            self._expired = self.spool.expired
            for name in names:
                received = oldest.get(name)
                self._metrics.pending(
                    name,
                    depth=depth.get(name, 0),
                    oldest_age=0.0 if received is None else max(0.0, now - received),
                )
            await asyncio.sleep(METRICS_INTERVAL)

    async def close(self) -> None:
        await self._drain()
        workers = list(self.workers.values())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(worker.stop() for worker in workers))
        await self.spool.close()
        if self._session is not None:
            await self._session.close()

    async def _drain(self) -> None:
        """Keep delivering what is due until the shutdown deadline is near."""
        deadline = None if self._lifecycle is None else self._lifecycle.stop_deadline
        if deadline is None:
            return
        until = deadline - min(CLOSE_MARGIN, (deadline - time.monotonic()) / 5)
        wall_until = time.time() + (until - time.monotonic())
        started = time.monotonic()
        while time.monotonic() < until:
            if all(worker.idle(until=wall_until) for worker in self.workers.values()):
                break
            await asyncio.sleep(0.05)
        left = {name: depth for name, depth in self.spool.depth.items() if depth}
        log.info(
            "delivery drained" if not left else "delivery stopped at the deadline",
            seconds=round(time.monotonic() - started, 3),
            pending=left,
        )


def build_delivery(
    *, config: ReceiverConfig, metrics: Metrics, lifecycle: Lifecycle | None = None
) -> tuple[Sink, DeadLetterStore]:
    """The sink and dead-letter store ``delivery.ack`` asks for."""
    if config.delivery.ack == "delivered":
        return ForwardingSink(config=config, metrics=metrics), MemoryDeadLetterStore()
    sink = SpoolSink(config=config, metrics=metrics, lifecycle=lifecycle)
    return sink, sink.dead_letters
