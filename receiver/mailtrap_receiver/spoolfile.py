"""The spool file: its SQLite schema, every statement run on it, and the process that writes it.

Three users open the file. The spool writer process (`serve`, started by
`spool.Spool` as ``python -m mailtrap_receiver.spoolfile``) is the only writer
while a receiver runs; ``mailtrap-receiver dlq`` (`dlq`) reads and changes dead
letters beside it; unit tests drive `SpoolFile` directly. Nothing here imports the
web stack, so the writer process starts fast and small.

Durability. The file is in WAL mode with ``synchronous=FULL``: a commit is on disk
when it returns. `SpoolFile.write` puts everything the receiver sends in one call
(new events of many requests, delivery outcomes, dead letters) into one transaction
with one fsync: the group commit. De-duplication happens in the same transaction:
a key is accepted only if ``dedup`` does not hold it unexpired (the first of a group
wins), so the state survives restarts and an event is never answered "duplicate" of
something not stored. Expired keys are pruned in small batches when idle.

Why a process of its own. Python's sqlite3 module releases the GIL around every
step of a statement; in the receiver's process each release would have to win the
GIL back from a busy event loop, and those waits, not the disk, set the pace. Here
the writer, a reader (worker polls, metrics, dead-letter listings) and a WAL
checkpointer (so a checkpoint's fsync never delays a commit) are threads of their
own process; the receiver only sends and receives pickled tuples over a socket
pair (both ends are this program, so pickle is safe).

Schema (version `SCHEMA_VERSION` in ``PRAGMA user_version``; `migrate` brings any
older file, or an empty one, up to date, one transaction per version):

- ``events``: one row per accepted event (original JSON, key, canonical name, event
  time in seconds, message id, when received), deleted once no target needs it;
- ``pending``: one row per (target, event) still to deliver, with attempts, next
  attempt time and the last failure; indexed by (target, next_attempt_at) for "what
  is due", and by its key (target, event_id) for "oldest pending";
- ``dedup``: keys seen and when they expire (indexed by expiry for pruning);
- ``dead_letters``: events given up on (target, reason, last status and answer,
  attempts, the event itself) and invalid events (no target).

Damage. Opening the file runs SQLite's integrity check (``PRAGMA quick_check``,
every page read); a damaged file is `SpoolCorrupt`, and the writer process moves
it aside and copies what is readable into a fresh one (`recovery`) before it
opens. A read or write that fails in a way damage could cause runs the same check
(`looks_corrupt`, at most every `CHECK_INTERVAL`); damage found while running
makes the writer tell the receiver and exit, and the receiver's restart recovers.

Dead letters are bounded like pending events (``delivery.maxDeadLetters``, beside
``delivery.maxPendingEvents``) and kept for ``delivery.deadLetterRetention``:
`SpoolFile.maintain` deletes older ones. When the store is full nothing is dropped:
the invalid events of a request that do not fit are refused, together (`write`
reports which requests; the receiver answers 503 so Mailtrap sends them again), and
an event a target gave up on stays pending, to be tried again at the time its
outcome names, instead of becoming a dead letter ("held back").
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import pickle
import queue
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import orjson

SCHEMA_VERSION: Final = 1
# Each version's statements, applied in order from the file's user_version.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,
            name TEXT NOT NULL,
            body BLOB NOT NULL,
            occurred_at REAL,
            message_id TEXT,
            received_at REAL NOT NULL
        )""",
        """CREATE TABLE pending (
            target TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_status INTEGER,
            last_error TEXT,
            PRIMARY KEY (target, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX pending_due ON pending (target, next_attempt_at)",
        """CREATE TABLE dedup (
            key TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX dedup_expiry ON dedup (expires_at)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            target TEXT,
            key TEXT NOT NULL,
            name TEXT,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            status INTEGER,
            response TEXT,
            attempts INTEGER NOT NULL,
            body BLOB NOT NULL,
            occurred_at REAL,
            message_id TEXT,
            received_at REAL NOT NULL,
            failed_at REAL NOT NULL
        )""",
        "CREATE INDEX dead_letters_target ON dead_letters (target, id)",
    ),
)
if len(MIGRATIONS) != SCHEMA_VERSION:  # pragma: no cover - a guard for whoever adds one
    raise AssertionError("every schema version needs its migration")

# How long a connection waits for another's write lock (dlq commands, the writer)
# before giving up. Writers hold it for milliseconds.
BUSY_TIMEOUT: Final = 10.0
# Keys are IN-list parameters; SQLite allows 32766 per statement since 3.32.
_IN_CHUNK: Final = 500
_MAX_PARAMS: Final = 2800
# Background work of the writer when idle, so it never costs a request much.
MAINTENANCE_INTERVAL: Final = 5.0
_PRUNE_BATCH: Final = 2000
_PRUNE_ROUNDS: Final = 5
# Counting a long backlog takes a while, so it is recounted less often then.
_RECOUNT_CHEAP: Final = 50_000
# Defaults of delivery.maxDeadLetters and delivery.deadLetterRetention.
MAX_DEAD_LETTERS: Final = 100_000
DEAD_LETTER_RETENTION: Final = 7 * 24 * 3600.0
_RECOUNT_SLOW_INTERVAL: Final = 60.0
CHECKPOINT_INTERVAL: Final = 0.5
# While writes fail (a full disk), how often the writer tries a small one.
PROBE_INTERVAL: Final = 1.0
# The dedup key a probe writes and deletes again: no event_id starts with a NUL.
_PROBE_KEY: Final = "\x00probe"
# After a checkpoint has copied everything, SQLite reuses the WAL from its start;
# this bounds what the file keeps of its size meanwhile.
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_CACHE_KIB: Final = 32 * 1024

# Rows as the receiver sends them (plain tuples: cheap to pickle).
# A new event: key, canonical name, JSON body, event time, message id, its targets.
StoreRow = tuple[str, str, bytes, float | None, str | None, tuple[str, ...]]
# An invalid event: target (None), key, name, reason, detail, body, event time,
# message id, when received. A request's invalid events are stored together or not.
LetterRow = tuple[str | None, str, str | None, str, str, bytes, float | None, str | None, float]
# A delivery outcome: kind (delivered, retry, dead), target, event id, attempts,
# next attempt time (for a dead one: when to try again if it is held back), status,
# error, answer excerpt, dead-letter reason, detail.
OutcomeRow = tuple[str, str, int, int, float, int | None, str | None, str | None, str | None, str]
# What a poll returns per event: id, key, name, body, event time, message id, attempts.
PendingRow = tuple[int, str, str, bytes, float | None, str | None, int]

T = TypeVar("T")


class SpoolError(Exception):
    """The spool file cannot be used (not a spool, a newer schema, unwritable)."""


class SpoolCorrupt(SpoolError):
    """The spool file is damaged (`recovery.recover` saves what it can)."""


# Primary result codes of failures that say nothing about the file's content.
_TRANSIENT: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_CANTOPEN,
    }
)


def integrity_problem(conn: sqlite3.Connection) -> str | None:
    """What ``PRAGMA quick_check`` (every page read, no index cross-check) finds
    wrong with the file, or None."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as error:
        return str(error)
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else "; ".join(found[:3])


def may_be_corruption(error: sqlite3.Error) -> bool:
    """Whether a failed statement could mean a damaged file: not a busy lock, a full
    disk or a failing device, which the file's content does not cause. A value
    that is not UTF-8 any more (Python's own error, without a code) may be."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    return code is None or (code & 0xFF) not in _TRANSIENT


def looks_corrupt(conn: sqlite3.Connection, error: sqlite3.Error) -> str | None:
    """After ``error``: the damage the integrity check finds, or None."""
    if not may_be_corruption(error):
        return None
    problem = integrity_problem(conn)
    return None if problem is None else f"{error} (quick_check: {problem})"


class Written(NamedTuple):
    """What one `SpoolFile.write` did."""

    ids: list[list[int]]  # per store, the id of each event; 0 for a duplicate
    refused: list[int]  # indexes of the letter groups that did not fit
    held: list[int]  # event ids of dead outcomes held back (kept pending)


def lenient_text(data: bytes) -> str:
    """A TEXT value as str, with replacement characters where it is not UTF-8."""
    return data.decode("utf-8", "replace")


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the spool's settings; transactions are explicit.

    Text that is not UTF-8 any more (a damaged byte inside a row, which the
    integrity check cannot see) reads with replacement characters rather than
    failing every read of its row for ever: the event is still delivered, or
    refused by its target and dead-lettered, never stuck."""
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
    )
    conn.text_factory = lenient_text
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: in WAL mode a commit is fsynced before it returns (NORMAL would not).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
    """One transaction: committed if the block returns, rolled back if it or the
    commit raises."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        # Inside the try: a COMMIT that fails (busy, I/O error) leaves the transaction
        # open, and the connection's next BEGIN would fail for ever after.
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to `SCHEMA_VERSION`, one transaction per version."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"the spool has schema version {version}; this receiver knows up to "
            f"{SCHEMA_VERSION} (was it written by a newer receiver?)"
        )
    while version < SCHEMA_VERSION:
        with transaction(conn):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version={version}")
    return version


def open_existing(path: str | Path) -> sqlite3.Connection:
    """A connection to an existing spool of this schema version (for ``dlq``)."""
    file = Path(path)
    if not file.is_file():
        raise SpoolError(f"no spool file at {file}")
    conn = connect(file)
    version = schema_version(conn)
    if version != SCHEMA_VERSION:
        conn.close()
        raise SpoolError(
            f"{file} has spool schema version {version}; this tool reads version "
            f"{SCHEMA_VERSION}" + (" (is it a spool?)" if version == 0 else "")
        )
    return conn


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(count: int) -> str:
    # Only placeholder lists like this one are ever formatted into SQL text (hence
    # the S608 waivers below); every value is bound as a parameter.
    return ",".join("?" * count)


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``insert`` (``INSERT INTO t (columns)``) of ``rows``, many rows per statement:
    about half the cost per row of executemany, which steps once per row."""
    width = len(rows[0])
    one = f"({_marks(width)})"
    for chunk in _chunks(rows, _MAX_PARAMS // width):
        conn.execute(
            f"{insert} VALUES {','.join([one] * len(chunk))}",
            [value for row in chunk for value in row],
        )


# --- dead letters, shared by the receiver and the dlq commands --------------------------


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A row of ``dead_letters``."""

    id: int
    target: str | None
    key: str
    name: str | None
    reason: str
    detail: str
    status: int | None
    response: str | None
    attempts: int
    event: Any  # the original event, decoded
    occurred_at: float | None
    message_id: str | None
    received_at: float
    failed_at: float

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_LETTER_COLUMNS: Final = (
    "id, target, key, name, reason, detail, status, response, attempts, body, "
    "occurred_at, message_id, received_at, failed_at"
)


def _letter_filter(target: str | None, ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if target is not None:
        clauses.append("target = ?")
        params.append(target)
    if ids is not None:
        clauses.append(f"id IN ({_marks(len(ids))})")
        params.extend(ids)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_dead_letters(
    conn: sqlite3.Connection,
    *,
    target: str | None = None,
    ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[StoredDeadLetter]:
    """Dead letters, oldest first (``limit``: only the newest that many)."""
    where, params = _letter_filter(target, ids)
    sql = f"SELECT {_LETTER_COLUMNS} FROM dead_letters{where} ORDER BY id"  # noqa: S608
    if limit is not None:
        sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"  # noqa: S608
        params.append(limit)
    letters = []
    for row in conn.execute(sql, params):
        (letter_id, target_name, key, name, reason, detail, status, response, attempts) = row[:9]
        body, occurred_at, message_id, received_at, failed_at = row[9:]
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            event = bytes(body).decode("utf-8", "replace")
        letters.append(
            StoredDeadLetter(
                letter_id,
                target_name,
                key,
                name,
                reason,
                detail,
                status,
                response,
                attempts,
                event,
                occurred_at,
                message_id,
                received_at,
                failed_at,
            )
        )
    return letters


def replay_dead_letters(
    conn: sqlite3.Connection,
    *,
    target: str | None = None,
    ids: Sequence[int] | None = None,
    now: float | None = None,
) -> tuple[int, int]:
    """Move dead letters back to pending for their target, attempts reset, due now.

    Returns (replayed, skipped): letters without a target (invalid on receipt) are
    skipped, since no target ever wanted them.
    """
    now = time.time() if now is None else now
    where, params = _letter_filter(target, ids)
    with transaction(conn):
        rows = conn.execute(
            "SELECT id, target, key, name, body, occurred_at, message_id "  # noqa: S608
            f"FROM dead_letters{where} ORDER BY id",
            params,
        ).fetchall()
        replayed = 0
        for letter_id, letter_target, key, name, body, occurred_at, message_id in rows:
            if letter_target is None:
                continue
            # Received now: the oldest-pending age measures waiting since the replay.
            cursor = conn.execute(
                "INSERT INTO events (key, name, body, occurred_at, message_id, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, name or "unknown", body, occurred_at, message_id, now),
            )
            conn.execute(
                "INSERT INTO pending (target, event_id, attempts, next_attempt_at) "
                "VALUES (?, ?, 0, ?)",
                (letter_target, cursor.lastrowid, now),
            )
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
            replayed += 1
    return replayed, len(rows) - replayed


def purge_dead_letters(
    conn: sqlite3.Connection, *, target: str | None = None, ids: Sequence[int] | None = None
) -> int:
    """Delete dead letters; how many went."""
    where, params = _letter_filter(target, ids)
    with transaction(conn):
        deleted = conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount  # noqa: S608
    return int(deleted)


# --- what the delivery workers read -----------------------------------------------------


def poll_pending(
    conn: sqlite3.Connection,
    *,
    target: str,
    now: float,
    held: Sequence[int],
    room: int,
) -> tuple[list[PendingRow], bool, float | None]:
    """Up to ``room`` events due for ``target`` that are not ``held`` already, soonest
    first; whether more are due; and when the next not-yet-due one is.

    The due scan reads the (target, next_attempt_at) index only, so rows a worker
    holds cost no body read.
    """
    skip = set(held)
    limit = len(skip) + room
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT event_id FROM pending WHERE target = ? AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, event_id LIMIT ?",
            (target, now, limit),
        )
    ]
    wanted = [event_id for event_id in ids if event_id not in skip][:room]
    loaded: list[PendingRow] = []
    for chunk in _chunks(wanted):
        loaded.extend(
            conn.execute(
                "SELECT e.id, e.key, e.name, e.body, e.occurred_at, e.message_id, "  # noqa: S608
                "p.attempts FROM pending p JOIN events e ON e.id = p.event_id "
                f"WHERE p.target = ? AND p.event_id IN ({_marks(len(chunk))})",
                (target, *chunk),
            )
        )
    upcoming = conn.execute(
        "SELECT min(next_attempt_at) FROM pending WHERE target = ? AND next_attempt_at > ?",
        (target, now),
    ).fetchone()[0]
    return loaded, len(ids) == limit, upcoming


def oldest_pending(conn: sqlite3.Connection, *, targets: Sequence[str]) -> dict[str, float]:
    """When the oldest event still pending for each target was received."""
    oldest: dict[str, float] = {}
    for target in targets:
        row = conn.execute(
            "SELECT e.received_at FROM events e WHERE e.id = "
            "(SELECT min(event_id) FROM pending WHERE target = ?)",
            (target,),
        ).fetchone()
        if row is not None:
            oldest[target] = float(row[0])
    return oldest


# Reads the receiver may ask the writer process for, by name.
READS: Final[dict[str, Callable[..., Any]]] = {
    "poll_pending": poll_pending,
    "oldest_pending": oldest_pending,
    "dead_letters": list_dead_letters,
}


# --- the writer ---------------------------------------------------------------------


class SpoolFile:
    """The spool file as its one writer sees it.

    ``targets`` are the configured target names: pending rows of any other target (a
    target removed from the config) become dead letters at `open`, counted per target
    in `removed` (the receiver adds them to its dead-letter metric). `write` is the
    group commit; `commits`, `pending_events` (events not yet delivered everywhere),
    `depth` (pending rows per target) and `dead_letters` are kept exact by this
    writer and recounted by `maintain` (``dlq`` changes rows from outside);
    `expired` counts the dead letters retention deleted since `open`. Only `open`
    may take dead letters beyond ``max_dead_letters`` (those of removed targets,
    which could stay nowhere else).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        targets: Sequence[str],
        dedup_window: float,
        max_dead_letters: int = MAX_DEAD_LETTERS,
        dead_letter_retention: float = DEAD_LETTER_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.targets = tuple(targets)
        self._window = dedup_window
        self.max_dead_letters = max_dead_letters
        self._retention = dead_letter_retention
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self.commits = 0
        self.pending_events = 0
        self.depth: dict[str, int] = dict.fromkeys(self.targets, 0)
        self.dead_letters = 0
        self.expired = 0
        self.unwritable: str | None = None
        self.removed: dict[str, int] = {}
        self._last_recount = 0.0
        # An event goes once no configured target has a pending row for it.
        self._target_marks = _marks(len(self.targets))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError("the spool is not open")
        return self._conn

    @property
    def state(self) -> SpoolState:
        return SpoolState(
            self.pending_events,
            dict(self.depth),
            self.commits,
            self.dead_letters,
            self.expired,
            self.unwritable,
        )

    def probe(self) -> None:
        """A write that changes nothing (a row in and out again, committed and
        fsynced): whether the file can be written now, in `unwritable`."""
        conn = self.conn
        try:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO dedup (key, expires_at) VALUES (?, 0)", (_PROBE_KEY,)
                )
                conn.execute("DELETE FROM dedup WHERE key = ?", (_PROBE_KEY,))
        except sqlite3.Error as error:
            self.unwritable = str(error)
            return
        self.unwritable = None

    def open(self) -> None:
        """Check, create or migrate the file, dead-letter removed targets, count what
        is pending. `SpoolCorrupt` when the file is damaged."""
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            problem = integrity_problem(conn)
            if problem is not None:
                raise SpoolCorrupt(problem)
            migrate(conn)
            # Checkpoints run on a connection of their own, never in a commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._dead_letter_removed_targets(conn)
            self._recount(conn)
            self._conn = conn
        except SpoolCorrupt:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as error:
            if conn is not None:
                conn.close()
            if may_be_corruption(error):
                raise SpoolCorrupt(str(error)) from error
            raise SpoolError(f"cannot open the spool {self.path}: {error}") from error
        except OSError as error:
            raise SpoolError(f"cannot create the spool {self.path}: {error.strerror}") from error

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                # Fold the WAL into the file, so a restart or a copy starts clean.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    def write(
        self,
        stores: Sequence[Sequence[StoreRow]],
        letters: Sequence[Sequence[LetterRow]] = (),
        outcomes: Sequence[OutcomeRow] = (),
    ) -> Written:
        """One transaction (one fsync) for all of it: new events (each store a
        request's), invalid events (each group a request's: stored whole or refused
        whole when the dead letters would pass the maximum) and delivery outcomes
        (a dead one is held back, kept pending, when the dead letters are full).
        Raises `sqlite3.Error` with nothing written (and says why in `unwritable`
        until a write or `probe` succeeds)."""
        try:
            written = self._write(stores, letters, outcomes)
        except sqlite3.Error as error:
            self.unwritable = str(error)
            raise
        self.unwritable = None
        return written

    def _write(
        self,
        stores: Sequence[Sequence[StoreRow]],
        letters: Sequence[Sequence[LetterRow]],
        outcomes: Sequence[OutcomeRow],
    ) -> Written:
        conn = self.conn
        now = self._clock()
        depth = dict(self.depth)
        room = self.max_dead_letters - self.dead_letters
        refused: list[int] = []
        kept: list[tuple[Any, ...]] = []
        for index, group in enumerate(letters):
            if len(group) > room:
                refused.append(index)
            else:
                room -= len(group)
                kept.extend((*letter, now) for letter in group)
        with transaction(conn):
            ids, added = self._insert_events(conn, stores, now, depth)
            if kept:
                conn.executemany(
                    "INSERT INTO dead_letters (target, key, name, reason, detail, attempts, "
                    "body, occurred_at, message_id, received_at, failed_at) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                    kept,
                )
            removed, held, lettered = self._apply_outcomes(conn, outcomes, now, depth, room)
        self.commits += 1
        self.pending_events += added - removed
        self.depth = depth
        self.dead_letters += len(kept) + lettered
        return Written(ids, refused, held)

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        stores: Sequence[Sequence[StoreRow]],
        now: float,
        depth: dict[str, int],
    ) -> tuple[list[list[int]], int]:
        ids: list[list[int]] = [[0] * len(rows) for rows in stores]
        first: dict[str, tuple[int, int]] = {}  # key -> (store, row) of its first arrival
        for store_index, rows in enumerate(stores):
            for row_index, row in enumerate(rows):
                first.setdefault(row[0], (store_index, row_index))
        if not first:
            return ids, 0
        keys = list(first)
        seen: set[str] = set()
        for chunk in _chunks(keys):
            seen.update(
                row[0]
                for row in conn.execute(
                    f"SELECT key FROM dedup WHERE key IN ({_marks(len(chunk))}) "  # noqa: S608
                    "AND expires_at > ?",
                    (*chunk, now),
                )
            )
        # Ids are given here, so the receiver learns them without a read back.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        next_id = (row[0] if row is not None else 0) + 1
        events: list[tuple[Any, ...]] = []
        pending: list[tuple[str, int, float]] = []
        expires = now + self._window
        for key in keys:
            if key in seen:
                continue
            store_index, row_index = first[key]
            _, name, body, occurred_at, message_id, targets = stores[store_index][row_index]
            events.append((next_id, key, name, body, occurred_at, message_id, now))
            for target in targets:
                pending.append((target, next_id, now))
                depth[target] = depth.get(target, 0) + 1
            ids[store_index][row_index] = next_id
            next_id += 1
        if events:
            _insert_rows(
                conn,
                "INSERT INTO events (id, key, name, body, occurred_at, message_id, received_at)",
                events,
            )
            _insert_rows(conn, "INSERT INTO pending (target, event_id, next_attempt_at)", pending)
            _insert_rows(
                conn,
                "INSERT OR REPLACE INTO dedup (key, expires_at)",
                [(event[1], expires) for event in events],
            )
        return ids, len(events)

    def _apply_outcomes(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[OutcomeRow],
        now: float,
        depth: dict[str, int],
        room: int,
    ) -> tuple[int, list[int], int]:
        """Record outcomes, with ``room`` for that many dead letters; the number of
        events no target needs any more, the event ids of dead outcomes held back,
        and the number of dead letters made."""
        if not outcomes:
            return 0, [], 0
        finished: list[tuple[str, int]] = []
        retries: list[tuple[Any, ...]] = []
        dead: list[tuple[Any, ...]] = []
        held: list[int] = []
        for (
            kind,
            target,
            event_id,
            attempts,
            due,
            status,
            error,
            response,
            reason,
            detail,
        ) in outcomes:
            if kind == "dead" and len(dead) >= room:
                # No room for it: it stays pending and is tried again later.
                held.append(event_id)
                kind = "retry"
            if kind == "retry":
                retries.append((attempts, due, status, error, target, event_id))
                continue
            finished.append((target, event_id))
            if kind == "dead":
                dead.append((target, reason, detail, status, response, attempts, now, event_id))
        if retries:
            conn.executemany(
                "UPDATE pending SET attempts = ?, next_attempt_at = ?, last_status = ?, "
                "last_error = ? WHERE target = ? AND event_id = ?",
                retries,
            )
        if dead:
            conn.executemany(
                "INSERT INTO dead_letters (target, key, name, reason, detail, status, response, "
                "attempts, body, occurred_at, message_id, received_at, failed_at) "
                "SELECT ?, key, name, ?, ?, ?, ?, ?, body, occurred_at, message_id, "
                "received_at, ? FROM events WHERE id = ?",
                dead,
            )
        if not finished:
            return 0, held, len(dead)
        by_target: dict[str, list[int]] = {}
        for target, event_id in finished:
            by_target.setdefault(target, []).append(event_id)
        gone = 0
        for target, event_ids in by_target.items():
            depth[target] = depth.get(target, 0) - len(event_ids)
            for chunk in _chunks(event_ids):
                gone += conn.execute(
                    f"DELETE FROM pending WHERE target = ? AND event_id IN ({_marks(len(chunk))})",  # noqa: S608
                    (target, *chunk),
                ).rowcount
        if gone != len(finished):
            # A row already gone (recorded twice): recount rather than drift.
            depth.update(self._count_pending(conn))
        removed = 0
        for chunk in _chunks(sorted({event_id for _, event_id in finished})):
            removed += conn.execute(
                f"DELETE FROM events WHERE id IN ({_marks(len(chunk))}) AND NOT EXISTS "  # noqa: S608
                f"(SELECT 1 FROM pending WHERE target IN ({self._target_marks}) "
                "AND event_id = events.id)",
                (*chunk, *self.targets),
            ).rowcount
        return removed, held, len(dead)

    def maintain(self) -> None:
        """Prune expired keys and dead letters past their retention, a batch at a
        time; recount what is pending."""
        conn = self.conn
        for _ in range(_PRUNE_ROUNDS):
            with transaction(conn):
                deleted = conn.execute(
                    "DELETE FROM dedup WHERE key IN (SELECT key FROM dedup "
                    "WHERE expires_at <= ? LIMIT ?)",
                    (self._clock(), _PRUNE_BATCH),
                ).rowcount
            if deleted < _PRUNE_BATCH:
                break
        for _ in range(_PRUNE_ROUNDS):
            if self._expire_dead_letters(conn) < _PRUNE_BATCH:
                break
        since = time.monotonic() - self._last_recount
        if self.pending_events < _RECOUNT_CHEAP or since > _RECOUNT_SLOW_INTERVAL:
            self._recount(conn)

    def _expire_dead_letters(self, conn: sqlite3.Connection) -> int:
        """Delete up to a batch of dead letters older than the retention; how many.

        Letters are numbered as they fail, so the oldest come first by id and the
        scan stops at the first one still kept (no index on the failure time)."""
        cutoff = self._clock() - self._retention
        with transaction(conn):
            rows = conn.execute(
                "SELECT id, failed_at FROM dead_letters ORDER BY id LIMIT ?", (_PRUNE_BATCH,)
            ).fetchall()
            expired = [letter_id for letter_id, _ in takewhile(lambda r: r[1] <= cutoff, rows)]
            for chunk in _chunks(expired):
                conn.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({_marks(len(chunk))})",  # noqa: S608
                    chunk,
                )
        self.expired += len(expired)
        self.dead_letters -= len(expired)
        return len(expired)

    def _count_pending(self, conn: sqlite3.Connection) -> dict[str, int]:
        counts = dict.fromkeys(self.targets, 0)
        for target, count in conn.execute("SELECT target, count(*) FROM pending GROUP BY target"):
            if target in counts:
                counts[target] = count
        return counts

    def _recount(self, conn: sqlite3.Connection) -> None:
        self._last_recount = time.monotonic()
        self.depth = self._count_pending(conn)
        self.pending_events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        self.dead_letters = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def _dead_letter_removed_targets(self, conn: sqlite3.Connection) -> None:
        """Pending rows of targets no longer configured become dead letters."""
        targets = [row[0] for row in conn.execute("SELECT DISTINCT target FROM pending")]
        removed = [target for target in targets if target not in self.targets]
        if not removed:
            return
        now = self._clock()
        with transaction(conn):
            for target in removed:
                self.removed[target] = conn.execute(
                    "INSERT INTO dead_letters (target, key, name, reason, detail, status, "
                    "attempts, body, occurred_at, message_id, received_at, failed_at) "
                    "SELECT p.target, e.key, e.name, 'target_removed', "
                    "'the target is no longer in the config', p.last_status, p.attempts, "
                    "e.body, e.occurred_at, e.message_id, e.received_at, ? "
                    "FROM pending p JOIN events e ON e.id = p.event_id WHERE p.target = ?",
                    (now, target),
                ).rowcount
                conn.execute("DELETE FROM pending WHERE target = ?", (target,))
                print(
                    f"spool: pending events of removed target {target!r} are dead letters now",
                    file=sys.stderr,
                )
            conn.execute(
                "DELETE FROM events WHERE NOT EXISTS "
                "(SELECT 1 FROM pending WHERE pending.event_id = events.id)"
            )


# --- the writer process ---------------------------------------------------------------
#
# Frames on the socket: a 4-byte big-endian length, then a pickled tuple.
# Receiver -> writer:  ("write", seq, stores, letter_groups, outcomes)
#                      ("read", seq, name, kwargs)
#                      ("stop",)
# Writer -> receiver:  ("ready", state, removed, recovered)  once open (recovered: a
#                                                        corrupt file's report, or None)
#                      ("corrupt", message)             found damaged while running; exits
#                      ("failed", message)              could not open; exits
#                      ("written", seq, written, error, state)
#                      ("read", seq, result, error)
#                      ("state", state)                 after maintenance or a probe changed it


class SpoolState(NamedTuple):
    """What the writer last counted, sent with each answer."""

    pending_events: int
    depth: dict[str, int]
    commits: int
    dead_letters: int
    expired: int  # dead letters deleted by retention since the writer started
    unwritable: str | None  # why the last write failed; None once one succeeds


@dataclass(frozen=True)
class WriterSettings:
    """What `spool.Spool` starts the writer process with (JSON on its command line)."""

    path: str
    targets: tuple[str, ...]
    dedup_window: float
    max_dead_letters: int = MAX_DEAD_LETTERS
    dead_letter_retention: float = DEAD_LETTER_RETENTION
    # Which targets want each canonical event name: what recovering a corrupt file
    # needs to give an event back the deliveries it lost.
    routes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def encode(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def decode(cls, text: str) -> WriterSettings:
        data = orjson.loads(text)
        routes = {name: tuple(targets) for name, targets in data.get("routes", {}).items()}
        return cls(**{**data, "targets": tuple(data["targets"]), "routes": routes})

    def spool_file(self) -> SpoolFile:
        return SpoolFile(
            self.path,
            targets=self.targets,
            dedup_window=self.dedup_window,
            max_dead_letters=self.max_dead_letters,
            dead_letter_retention=self.dead_letter_retention,
        )


FRAME_HEADER: Final = struct.Struct(">I")
# The writer process's exit status when one of its threads failed, and when it found
# the file damaged while running.
EXIT_THREAD_FAILED: Final = 70
EXIT_CORRUPT: Final = 71
# A failed read or write is followed by an integrity check (which reads the whole
# file) at most this often.
CHECK_INTERVAL: Final = 60.0


def encode_frame(message: object) -> bytes:
    """One frame (see above); `spool.Spool` writes these too, from the event loop."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, message: object, lock: threading.Lock | None = None) -> None:
    frame = encode_frame(message)
    if lock is None:
        sock.sendall(frame)
    else:
        with lock:
            sock.sendall(frame)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> Any:
    """The next message, or None at end of stream."""
    header = _recv_exactly(sock, FRAME_HEADER.size)
    if header is None:
        return None
    data = _recv_exactly(sock, FRAME_HEADER.unpack(header)[0])
    # Both ends of this socket pair are this program (see the module docstring).
    return None if data is None else pickle.loads(data)  # noqa: S301


def _die_with_parent() -> None:
    # The receiver killed with SIGKILL gives no chance to stop its writer; Linux
    # does it, so a restarted receiver never finds an old writer on the file.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _or_exit(work: Callable[[], None]) -> Callable[[], None]:
    """``work`` for a thread of the writer process; if it raises, the process exits.

    A thread that died alone would leave the receiver waiting for ever for answers
    only it sends. Exiting closes the socket: the receiver then fails every waiting
    request and its liveness probe (`spool.Spool`), and the restart opens the file
    again. Committed transactions are safe in the WAL; an open one is rolled back.
    """

    def run() -> None:
        try:
            work()
        except BaseException:
            print(f"spool: {threading.current_thread().name} failed; exiting", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(EXIT_THREAD_FAILED)

    return run


def serve(sock: socket.socket, settings: WriterSettings) -> int:
    """Run the writer process on ``sock`` until told to stop or the receiver is gone."""
    lock = threading.Lock()
    path = settings.path
    spool = settings.spool_file()
    recovered: dict[str, Any] | None = None
    try:
        try:
            spool.open()
        except SpoolCorrupt as corrupt:
            # Its own module, loaded only when a file is found damaged.
            from .recovery import recover

            report = recover(
                path,
                reason=str(corrupt),
                targets=settings.targets,
                routes=settings.routes,
                dedup_window=settings.dedup_window,
            )
            print(f"spool: {report.summary()}", file=sys.stderr)
            recovered = report.as_json()
            spool.open()
    except (SpoolError, sqlite3.Error, OSError) as error:
        send_frame(sock, ("failed", str(error)))
        return 1
    send_frame(sock, ("ready", spool.state, spool.removed, recovered))

    writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
    reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stopping = threading.Event()

    def answer(message: tuple[Any, ...]) -> None:
        # The receiver gone, there is nobody to tell, but queued writes still commit;
        # the loop below sees the closed socket too and stops everything.
        with contextlib.suppress(OSError):
            send_frame(sock, message, lock)

    checked = [0.0]

    def check(conn: sqlite3.Connection, error: sqlite3.Error) -> None:
        """After a failed statement: if the file is damaged, say so and exit (the
        receiver restarts, and opening the file again recovers what is readable)."""
        if time.monotonic() - checked[0] < CHECK_INTERVAL or not may_be_corruption(error):
            return
        checked[0] = time.monotonic()
        problem = looks_corrupt(conn, error)
        if problem is not None:
            print(f"spool: the file is damaged: {problem}", file=sys.stderr)
            answer(("corrupt", problem))
            sys.stderr.flush()
            os._exit(EXIT_CORRUPT)

    def writer() -> None:
        maintained = time.monotonic()
        while True:
            # While writes fail, a probe every PROBE_INTERVAL finds when they work again.
            wait = MAINTENANCE_INTERVAL if spool.unwritable is None else PROBE_INTERVAL
            try:
                message = writes.get(timeout=wait)
            except queue.Empty:
                message = None
            if message is not None and message[0] == "stop":
                return
            before = spool.state
            if message is not None:
                _, seq, stores, letters, outcomes = message
                written: Written | None = None
                error: str | None = None
                try:
                    written = spool.write(stores, letters, outcomes)
                except sqlite3.Error as failure:
                    check(spool.conn, failure)
                    error = str(failure)
                except Exception as failure:
                    # A bug, not the disk: still answered, so the requests fail (503)
                    # instead of waiting for ever.
                    traceback.print_exc()
                    error = f"{type(failure).__name__}: {failure}"
                answer(("written", seq, written, error, spool.state))
                before = spool.state
            if message is None or time.monotonic() - maintained > MAINTENANCE_INTERVAL:
                maintained = time.monotonic()
                try:
                    if message is None:
                        # Idle: one small write, so a full disk is found before a
                        # request needs it (and found gone again).
                        spool.probe()
                    if spool.unwritable is None:
                        spool.maintain()
                except sqlite3.Error as failure:
                    check(spool.conn, failure)
                    print(f"spool: maintenance failed: {failure}", file=sys.stderr)
                except Exception:
                    print("spool: maintenance failed:", file=sys.stderr)
                    traceback.print_exc()
                if spool.state != before:
                    answer(("state", spool.state))

    def reader() -> None:
        conn = connect(path)
        try:
            while (message := reads.get()) is not None:
                _, seq, name, kwargs = message
                try:
                    with transaction(conn, write=False):  # one snapshot per read
                        result = READS[name](conn, **kwargs)
                except sqlite3.Error as failure:
                    check(conn, failure)
                    answer(("read", seq, None, str(failure)))
                    continue
                except Exception as failure:
                    traceback.print_exc()  # a bug, not the disk
                    answer(("read", seq, None, f"{type(failure).__name__}: {failure}"))
                    continue
                answer(("read", seq, result, None))
        finally:
            conn.close()

    def checkpointer() -> None:
        conn = connect(path)
        try:
            while not stopping.wait(CHECKPOINT_INTERVAL):
                # PASSIVE never waits for the writer; it copies what it can.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()

    threads = [
        threading.Thread(target=_or_exit(writer), name="spool-writer"),
        threading.Thread(target=_or_exit(reader), name="spool-reader"),
        threading.Thread(target=_or_exit(checkpointer), name="spool-checkpointer"),
    ]
    for thread in threads:
        thread.start()
    try:
        while (message := recv_frame(sock)) is not None:
            if message[0] == "write":
                writes.put(message)
            elif message[0] == "read":
                reads.put(message)
            elif message[0] == "stop":
                break
    except OSError:
        pass  # the receiver is gone: finish what was queued
    finally:
        writes.put(("stop",))
        reads.put(None)
        threads[0].join()
        threads[1].join()
        stopping.set()
        threads[2].join()
        spool.close()
        with contextlib.suppress(OSError):
            send_frame(sock, ("stopped", spool.pending_events), lock)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mailtrap_receiver.spoolfile FD SETTINGS`` (`WriterSettings` as JSON)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    # The receiver handles SIGTERM; the writer stops when the receiver says so.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        return serve(sock, WriterSettings.decode(args[1]))
    finally:
        sock.close()


if __name__ == "__main__":
    # Run from the module under its own name, not as __main__: classes in pickled
    # replies (StoredDeadLetter) must be importable by the receiver.
    from mailtrap_receiver.spoolfile import main as run_writer

    sys.exit(run_writer())
