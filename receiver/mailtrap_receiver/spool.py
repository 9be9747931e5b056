"""The receiver's side of the durable spool: the writer process, group commit, reads.

`delivery.SpoolSink` (ack mode ``durable``) acknowledges a request only after
`Spool.store` says its events are committed, and its workers record delivery
outcomes and read due events through the same `Spool`. The file itself, its SQL
and the writer process are `spoolfile`'s.

`Spool.open` starts the writer process (``python -m mailtrap_receiver.spoolfile``,
connected by a socket pair, killed by Linux if this process dies) and waits until
it has opened, migrated and counted the file. From then on the event loop never
waits for the disk: `store` queues a request's events and returns a future. The
group commit happens here: at most one write is with the writer process at a time,
and everything queued while it runs (new events of any number of requests,
outcomes, dead letters) goes in the next one, one transaction and one fsync. When
it is committed, ``on_commit`` runs with the new events (as `sinks.Payload`, with
their spool ids) and the outcomes, and then the requests' futures resolve.

If the writer process exits (it does when one of its threads fails), or handling
its answers here raises, every waiting request fails (503), `failure` says why,
and ``on_failure`` is told (the receiver then fails its liveness probe, so the
container restarts and the spool, on its volume, is opened again). The writer
exits so, after telling why, when it finds the file damaged (`corrupt`); opening it
again then moves it aside and recovers what is readable (`recovery`, reported in
`recovered`). While the file
cannot be written (a full disk: each write fails, and the writer probes with a
small write when idle), `unwritable` says why, and the receiver fails its
readiness probe until a write works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import orjson
import structlog

from .deadletters import DeadLetter, DeadLettersFull
from .events import Event, EventName, timestamp_seconds
from .sinks import Payload, SinkUnavailable
from .spoolfile import (
    DEAD_LETTER_RETENTION,
    FRAME_HEADER,
    MAX_DEAD_LETTERS,
    LetterRow,
    OutcomeRow,
    SpoolError,
    SpoolState,
    StoreRow,
    WriterSettings,
    Written,
    encode_frame,
)

# A write waits this long for more requests to join it: fewer, larger transactions
# (each costs two system calls here, a transaction and an fsync there) for a little
# latency. Under load requests queue during the previous write anyway.
GROUP_WINDOW: Final = 0.0005
# A second write may wait at the writer while the first commits, so the writer is
# not idle while this process handles an answer and prepares the next write.
MAX_WRITES_IN_FLIGHT: Final = 2
# How long closing waits for the writer to commit, checkpoint and exit.
CLOSE_TIMEOUT: Final = 30.0

DeadReason = Literal["attempts_exhausted", "rejected", "egress_denied"]

log = structlog.get_logger("mailtrap_receiver.spool")

__all__ = [
    "CommitListener",
    "Outcome",
    "Spool",
    "SpoolError",
    "SpoolWriteFailed",
    "StoreResult",
    "StoredEntry",
]


class SpoolWriteFailed(SinkUnavailable):
    """The spool could not store the events (disk full, I/O error, writer gone): the
    request gets 503 so Mailtrap sends them again."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What the spool did with one request's events."""

    accepted: int
    duplicates: int


@dataclass(slots=True, eq=False)  # one per event and target: not frozen, see Payload
class Outcome:
    """What happened to one event for one target; the writer records it.

    ``delivered``: the row goes. ``retry``: ``attempts`` and ``next_attempt_at`` are
    stored with the failure. ``dead``: the event becomes a dead letter (``reason``),
    unless the dead letters are full: then the writer holds it back, it stays pending
    until ``next_attempt_at``, and its commit turns it into a ``retry`` (``held``).
    """

    kind: Literal["delivered", "retry", "dead"]
    target: str
    payload: Payload
    attempts: int
    next_attempt_at: float = 0.0
    status: int | None = None
    error: str | None = None
    response: str | None = None
    reason: DeadReason | None = None
    detail: str = ""
    held: bool = False

    def row(self) -> OutcomeRow:
        return (
            self.kind,
            self.target,
            self.payload.spool_id,
            self.attempts,
            self.next_attempt_at,
            self.status,
            self.error,
            self.response,
            self.reason,
            self.detail,
        )


# A stored event and the targets it waits for, as handed to the delivery workers.
StoredEntry = tuple[Payload, tuple[str, ...]]
CommitListener = Callable[[list[StoredEntry], list[Outcome]], None]


@dataclass
class _Write:
    """What one write to the writer process carries."""

    stores: list[tuple[list[StoreRow], asyncio.Future[StoreResult]]] = field(default_factory=list)
    letters: list[tuple[list[LetterRow], asyncio.Future[None]]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stores or self.letters or self.outcomes)

    def fail(self, failure: Exception) -> None:
        """Fail every request still waiting for this write."""
        waiting: list[asyncio.Future[Any]] = [future for _, future in self.stores]
        waiting.extend(future for _, future in self.letters)
        for future in waiting:
            if not future.done():
                future.set_exception(failure)


def letter_row(letter: DeadLetter) -> LetterRow:
    """A dead letter from `app` (an invalid event) as the writer stores it."""
    data = letter.event
    fields = data if isinstance(data, dict) else {}
    name = fields.get("event")
    message_id = fields.get("message_id")
    return (
        letter.target,
        letter.key,
        name if isinstance(name, str) else None,
        letter.reason,
        letter.detail,
        orjson.dumps(data, default=str),
        timestamp_seconds(fields.get("timestamp")),
        None if message_id is None else str(message_id),
        letter.received_at,
    )


class Spool:
    """The spool of a running receiver (see the module docstring)."""

    def __init__(
        self,
        *,
        path: str | Path,
        targets: Sequence[str],
        dedup_window: float,
        on_commit: CommitListener,
        on_failure: Callable[[str], None] | None = None,
        max_dead_letters: int = MAX_DEAD_LETTERS,
        dead_letter_retention: float = DEAD_LETTER_RETENTION,
        routes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self._targets = tuple(targets)
        self._settings = WriterSettings(
            path=str(self.path),
            targets=self._targets,
            dedup_window=dedup_window,
            max_dead_letters=max_dead_letters,
            dead_letter_retention=dead_letter_retention,
            routes={name: tuple(names) for name, names in (routes or {}).items()},
        )
        self.max_dead_letters = max_dead_letters
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._queued = _Write()
        # Writes sent and not yet answered, oldest first (the writer answers in order).
        self._in_flight: deque[_Write] = deque()
        self._scheduled: asyncio.TimerHandle | None = None
        self._reads: dict[int, asyncio.Future[Any]] = {}
        self._seq = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stream: asyncio.StreamWriter | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.failure: str | None = None
        # As the writer last reported them.
        self.commits = 0
        self.pending_events = 0
        self.depth: dict[str, int] = dict.fromkeys(self._targets, 0)
        self.dead_letters = 0
        self.expired = 0
        # Why the writer's last write failed (a full disk, say); None once one works.
        self.unwritable: str | None = None
        # Dead letters made at open of the pending events of targets no longer
        # configured, per target.
        self.removed: dict[str, int] = {}
        # The report of a corrupt file recovered at open (`recovery.Recovery`), and
        # the damage the writer found while running (it then exits).
        self.recovered: dict[str, Any] | None = None
        self.corrupt: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the writer process; raise `SpoolError` if it cannot open the file."""
        ours, theirs = socket.socketpair()
        try:
            # Started from the event loop's thread: the writer's "die with parent"
            # follows the thread that forked it.
            self._process = subprocess.Popen(  # noqa: ASYNC220 - a fork, it does not wait
                [
                    sys.executable,
                    "-m",
                    "mailtrap_receiver.spoolfile",
                    str(theirs.fileno()),
                    self._settings.encode(),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, self._stream = await asyncio.open_unix_connection(sock=ours)
        try:
            first = await self._read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            first = ("failed", "the spool writer process exited while opening")
        if first[0] != "ready":
            await self._reap()
            raise SpoolError(first[1])
        _, state, self.removed, self.recovered = first
        self._apply(state)
        self._receiver = asyncio.create_task(self._receive(reader), name="spool-receiver")
        log.info(
            "spool open",
            path=str(self.path),
            pending_events=self.pending_events,
            pending=dict(self.depth),
        )

    async def close(self) -> None:
        """Write what is queued, stop the writer process (it checkpoints the WAL)."""
        if self._stream is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while self._queued or self._in_flight:
                    if self.failure is not None:
                        break
                    self._idle.clear()
                    await self._idle.wait()
        self._closing = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._send(("stop",))
        if self._receiver is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(self._receiver)
            self._receiver.cancel()
        self._stream.close()
        await self._reap()
        log.info(
            "spool closed",
            path=str(self.path),
            pending_events=self.pending_events,
            commits=self.commits,
        )

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), CLOSE_TIMEOUT)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    # -- writes ------------------------------------------------------------------------

    def store(
        self, entries: Sequence[tuple[Event, tuple[str, ...]]]
    ) -> asyncio.Future[StoreResult]:
        """Queue events (each with its targets) for the next commit; the future says
        how many were new once they are on disk."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(SpoolWriteFailed(self.failure))
            return future
        rows: list[StoreRow] = [
            (
                event.key,
                event.name,
                orjson.dumps(event.data),
                event.timestamp,
                event.message_id,
                targets,
            )
            for event, targets in entries
        ]
        self._queued.stores.append((rows, future))
        self._kick()
        return future

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> asyncio.Future[None]:
        """Queue one request's invalid events, to be stored together; the future
        fails with `deadletters.DeadLettersFull` when they do not fit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(SpoolWriteFailed(self.failure))
            return future
        if self.dead_letters + len(letters) > self.max_dead_letters:
            # Full as the writer last counted: no need to ask it (it checks again).
            future.set_exception(self._full(len(letters)))
            return future
        self._queued.letters.append(([letter_row(letter) for letter in letters], future))
        self._kick()
        return future

    def _full(self, count: int) -> DeadLettersFull:
        return DeadLettersFull(
            f"the dead-letter store holds {self.dead_letters} of "
            f"{self.max_dead_letters} (delivery.maxDeadLetters); "
            f"{count} invalid events do not fit"
        )

    def record(self, outcomes: list[Outcome]) -> None:
        """Queue delivery outcomes for the next commit (``on_commit`` reports it)."""
        if self.failure is None:
            self._queued.outcomes.extend(outcomes)
            self._kick()

    def _kick(self) -> None:
        if (
            len(self._in_flight) < MAX_WRITES_IN_FLIGHT
            and self._scheduled is None
            and not self._closing
            and self._stream is not None
        ):
            self._scheduled = asyncio.get_running_loop().call_later(GROUP_WINDOW, self._write)

    def _write(self) -> None:
        self._scheduled = None
        if len(self._in_flight) >= MAX_WRITES_IN_FLIGHT or not self._queued:
            return
        batch, self._queued = self._queued, _Write()
        self._in_flight.append(batch)
        self._seq += 1
        try:
            self._send(
                (
                    "write",
                    self._seq,
                    [rows for rows, _ in batch.stores],
                    [rows for rows, _ in batch.letters],
                    [outcome.row() for outcome in batch.outcomes],
                )
            )
        except Exception as error:
            # Run by the event loop's timer, where an exception would only be logged
            # and the batch's requests would wait for an answer that never comes.
            log.exception("sending a write to the spool writer failed")
            self._fail(f"the spool receiver failed: {type(error).__name__}: {error}")

    def _apply(self, state: SpoolState) -> None:
        (
            self.pending_events,
            self.depth,
            self.commits,
            self.dead_letters,
            self.expired,
            unwritable,
        ) = state
        if unwritable != self.unwritable:
            if unwritable is None:
                log.info("spool writable again", path=str(self.path))
            else:
                log.error("spool cannot write", path=str(self.path), error=unwritable)
        self.unwritable = unwritable

    def _written(self, message: tuple[Any, ...]) -> None:
        _, _, written, error, state = message
        if not self._in_flight:  # pragma: no cover - the writer answers only what it was sent
            return
        batch = self._in_flight.popleft()
        self._apply(state)
        try:
            self._settle(batch, written, error)
        except BaseException:
            # Back in flight, so that `_fail` fails the requests still waiting for it.
            self._in_flight.appendleft(batch)
            raise
        if self._queued and not self._closing:
            self._kick()
        else:
            self._idle.set()

    def _settle(self, batch: _Write, written: Written | None, error: str | None) -> None:
        """Answer one write's requests and hand its events and outcomes on."""
        if error is not None or written is None:
            log.error("spool write failed", error=error, requests=len(batch.stores))
            batch.fail(SpoolWriteFailed(f"the spool cannot store events: {error}"))
            # Outcomes are worth another try with the next write.
            self._queued.outcomes[:0] = batch.outcomes
        else:
            if written.held:
                held = set(written.held)
                for outcome in batch.outcomes:
                    if outcome.kind == "dead" and outcome.payload.spool_id in held:
                        outcome.kind, outcome.held = "retry", True
            stored: list[StoredEntry] = []
            results = []
            for (rows, _), row_ids in zip(batch.stores, written.ids, strict=True):
                accepted = 0
                for (key, name, body, occurred_at, message_id, targets), spool_id in zip(
                    rows, row_ids, strict=True
                ):
                    if spool_id:
                        accepted += 1
                        payload = Payload(
                            key, cast(EventName, name), body, occurred_at, message_id, spool_id
                        )
                        stored.append((payload, targets))
                results.append(StoreResult(accepted, len(rows) - accepted))
            # Workers first: a request answered after this finds its events queued.
            self._on_commit(stored, batch.outcomes)
            for (_, future), result in zip(batch.stores, results, strict=True):
                if not future.done():
                    future.set_result(result)
            refused = set(written.refused)
            for index, (letter_rows, letter_future) in enumerate(batch.letters):
                if letter_future.done():
                    continue
                if index in refused:
                    letter_future.set_exception(self._full(len(letter_rows)))
                else:
                    letter_future.set_result(None)

    # -- reads -------------------------------------------------------------------------

    async def read(self, name: str, **kwargs: Any) -> Any:
        """One of `spoolfile.READS`, run by the writer process on its reader thread."""
        if self.failure is not None:
            raise SpoolError(self.failure)
        self._seq += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reads[self._seq] = future
        self._send(("read", self._seq, name, kwargs))
        return await future

    # -- the socket --------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._stream is None:
            raise SpoolError("the spool is not open")
        self._stream.write(encode_frame(message))

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
        (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
        # The writer process is this program (see spoolfile's docstring).
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))  # noqa: S301
        return message

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await self._read_frame(reader)
                kind = message[0]
                if kind == "written":
                    self._written(message)
                elif kind == "read":
                    _, seq, result, error = message
                    future = self._reads.pop(seq, None)
                    if future is not None and not future.done():
                        if error is None:
                            future.set_result(result)
                        else:
                            future.set_exception(SpoolError(error))
                elif kind == "state":
                    self._apply(message[1])
                elif kind == "corrupt":
                    self.corrupt = message[1]
                    self._fail(
                        f"the spool is corrupt ({self.corrupt}); restarting the receiver "
                        "moves it aside and recovers what is readable"
                    )
                    return
                elif kind == "stopped":
                    self.pending_events = message[1]
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as error:
            # A bug here (an answer that cannot be read or handled) would otherwise end
            # this task quietly, and every request would wait for ever for its commit.
            log.exception("handling the spool writer's answer failed")
            self._fail(f"the spool receiver failed: {type(error).__name__}: {error}")
            return
        if not self._closing:
            self._fail("the spool writer process exited unexpectedly")

    def _fail(self, reason: str) -> None:
        if self.failure is not None:  # the first reason is the one that tells
            return
        self.failure = reason
        log.error("spool failed", reason=reason)
        failure = SpoolWriteFailed(reason)
        for batch in (self._queued, *self._in_flight):
            batch.fail(failure)
        for future in self._reads.values():
            if not future.done():
                future.set_exception(SpoolError(reason))
        self._reads.clear()
        self._queued = _Write()
        self._in_flight.clear()
        self._idle.set()
        if self._on_failure is not None:
            self._on_failure(reason)
