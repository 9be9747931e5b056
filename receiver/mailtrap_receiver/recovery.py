"""Recovering what is readable from a corrupt spool file, into a fresh one.

A spool is checked whenever its writer process opens it (`spoolfile.SpoolFile.open`:
SQLite's ``PRAGMA quick_check``, which reads every page) and whenever a read or
write fails in a way that may be corruption (`spoolfile.looks_corrupt` runs the
same check then). Found corrupt while running, the writer tells the receiver and
exits: the receiver fails its health probes and is restarted, and the next open
finds the file corrupt. Found corrupt at open, the writer process
(`spoolfile.serve`) calls `recover`, and then opens the fresh file as usual.

`recover` never deletes anything. It moves the corrupt file (and its ``-wal`` and
``-shm``) aside as ``<name>.corrupt-<UTC time>``, creates a fresh spool in its
place, and copies every row it can read: events, their pending deliveries, dead
letters and de-duplication keys. Rows are read in windows of ids; a window that
fails is halved until the rows that cannot be read are single ones, which are
counted. Then:

- an event whose pending rows could not be read gets one for every target that
  wants its type now (``routes``): it may reach a target twice (targets can
  de-duplicate by ``Idempotency-Key``), but is not stuck;
- a pending row whose event could not be read is a delivery lost (counted per
  target): the event's body is gone with its page;
- an event that no target wants any more is not copied;
- de-duplication keys are copied while readable, and every recovered event's key
  is kept; keys on unreadable pages are lost, so a retry of those events from
  Mailtrap may be forwarded again.

The `Recovery` report (what was copied, what could not be read) goes to the
receiver, which logs it, counts it and shows it on ``/healthz``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from .spoolfile import connect, lenient_text, migrate, transaction

# Ids read per query while nothing fails.
WINDOW: Final = 1000

Row = tuple[Any, ...]


@dataclass
class Recovery:
    """What `recover` copied from a corrupt spool, and what it could not read."""

    reason: str
    moved_to: str
    events: int = 0
    events_unreadable: int = 0  # ids whose row could not be read (at most this many)
    events_unwanted: int = 0  # readable, but no target wants them any more
    pending: int = 0
    pending_restored: int = 0  # made for events whose pending rows were unreadable
    pending_unreadable: int = 0
    deliveries_lost: dict[str, int] = field(default_factory=dict)  # per target
    dead_letters: int = 0
    dead_letters_unreadable: int = 0
    dedup: int = 0
    dedup_complete: bool = True

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One sentence for people (``/healthz``, the log)."""
        lost = sum(self.deliveries_lost.values())
        return (
            f"the spool was corrupt ({self.reason}) and was moved to {self.moved_to}; "
            f"recovered {self.events} pending events, {self.dead_letters} dead letters and "
            f"{self.dedup} de-duplication keys; unreadable: up to {self.events_unreadable} "
            f"events, {self.pending_unreadable} pending deliveries "
            f"({lost} deliveries lost with their event), {self.dead_letters_unreadable} "
            "dead letters" + ("" if self.dedup_complete else ", and part of the dedup window")
        )


def _windows(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any], low: int, high: int
) -> tuple[list[Row], list[int]]:
    """Rows of ``sql`` (whose last two parameters bound an id range) from ``low`` to
    ``high``, and the single ids that could not be read."""
    rows: list[Row] = []
    unreadable: list[int] = []
    windows = [(start, min(start + WINDOW - 1, high)) for start in range(low, high + 1, WINDOW)]
    windows.reverse()
    while windows:
        start, end = windows.pop()
        try:
            rows.extend(conn.execute(sql, (*params, start, end)).fetchall())
        except sqlite3.DatabaseError:
            if start == end:
                unreadable.append(start)
                continue
            middle = (start + end) // 2
            windows.append((middle + 1, end))
            windows.append((start, middle))
    return rows, unreadable


def _first(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    with contextlib.suppress(sqlite3.DatabaseError):
        row = conn.execute(sql, params).fetchone()
        if row is not None:
            return row[0]
    return None


def _highest_id(conn: sqlite3.Connection, table: str, *also: str) -> int:
    """The highest id a table may hold, from whatever still reads."""
    hints = [
        _first(conn, "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)),
        _first(conn, f"SELECT max(id) FROM {table}"),  # noqa: S608 - our own table names
        *(_first(conn, sql) for sql in also),
    ]
    return max((int(hint) for hint in hints if isinstance(hint, int | float)), default=0)


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", ""):  # the database last: its WAL goes with it
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{moved}{suffix}")
    return moved


def _open_damaged(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError:
        # Read-only WAL access needs the -shm; a writable connection rebuilds it.
        conn = sqlite3.connect(str(path), isolation_level=None)
    conn.text_factory = lenient_text
    return conn


def _valid_body(body: Any) -> bool:
    try:
        return isinstance(orjson.loads(body), dict)
    except (orjson.JSONDecodeError, TypeError):
        return False


def recover(
    path: str | Path,
    *,
    reason: str,
    targets: Sequence[str],
    routes: Mapping[str, Sequence[str]],
    dedup_window: float,
    clock: Callable[[], float] = time.time,
) -> Recovery:
    """Move the corrupt spool at ``path`` aside and copy what is readable into a
    fresh one (see the module docstring). ``routes`` says which targets want each
    canonical event name now."""
    path = Path(path)
    moved = _move_aside(path)
    report = Recovery(reason=reason, moved_to=str(moved))
    old = _open_damaged(moved)
    new = connect(path)
    now = clock()
    try:
        migrate(new)
        with transaction(new):
            kept = _copy_events(old, new, report, targets=targets, routes=routes, now=now)
            _copy_dead_letters(old, new, report)
            _copy_dedup(old, new, report, now=now, window=dedup_window, kept=kept)
    finally:
        new.close()
        old.close()
    return report


def _copy_events(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    report: Recovery,
    *,
    targets: Sequence[str],
    routes: Mapping[str, Sequence[str]],
    now: float,
) -> list[str]:
    """Events and their pending rows; the keys of the events kept."""
    high = _highest_id(old, "events", "SELECT max(event_id) FROM pending")
    rows, unreadable = _windows(
        old,
        "SELECT id, key, name, body, occurred_at, message_id, received_at FROM events "
        "WHERE id BETWEEN ? AND ?",
        (),
        1,
        high,
    )
    events = {row[0]: row for row in rows if _valid_body(row[3])}
    report.events_unreadable = len(unreadable) + len(rows) - len(events)
    known = set(targets)
    with contextlib.suppress(sqlite3.DatabaseError):
        known |= {row[0] for row in old.execute("SELECT DISTINCT target FROM pending")}
    pending: dict[tuple[str, int], Row] = {}
    for target in sorted(known):
        found, unreadable = _windows(
            old,
            "SELECT target, event_id, attempts, next_attempt_at, last_status, last_error "
            "FROM pending WHERE target = ? AND event_id BETWEEN ? AND ?",
            (target,),
            1,
            high,
        )
        report.pending_unreadable += len(unreadable)
        for row in found:
            if row[1] in events:
                pending[(target, row[1])] = row
            else:
                report.deliveries_lost[target] = report.deliveries_lost.get(target, 0) + 1
        # A row this target may have had: delivered again, if it still wants the event.
        for event_id in unreadable:
            event = events.get(event_id)
            if event is not None and target in routes.get(event[2], ()):
                pending[(target, event_id)] = (target, event_id, 0, now, None, None)
                report.pending_restored += 1
    waiting = {event_id for _, event_id in pending}
    for event_id, event in events.items():
        # An event lives only while a target needs it: its rows were lost unseen.
        if event_id not in waiting:
            for target in routes.get(event[2], ()):
                pending[(target, event_id)] = (target, event_id, 0, now, None, None)
                report.pending_restored += 1
    waiting = {event_id for _, event_id in pending}
    report.pending = len(pending) - report.pending_restored
    kept = [row for event_id, row in sorted(events.items()) if event_id in waiting]
    report.events = len(kept)
    report.events_unwanted = len(events) - len(kept)
    new.executemany(
        "INSERT INTO events (id, key, name, body, occurred_at, message_id, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        kept,
    )
    new.executemany(
        "INSERT INTO pending (target, event_id, attempts, next_attempt_at, last_status, "
        "last_error) VALUES (?, ?, ?, ?, ?, ?)",
        list(pending.values()),
    )
    return [row[1] for row in kept]


def _copy_dead_letters(old: sqlite3.Connection, new: sqlite3.Connection, report: Recovery) -> None:
    letters, unreadable = _windows(
        old,
        "SELECT id, target, key, name, reason, detail, status, response, attempts, body, "
        "occurred_at, message_id, received_at, failed_at FROM dead_letters "
        "WHERE id BETWEEN ? AND ?",
        (),
        1,
        _highest_id(old, "dead_letters"),
    )
    new.executemany(
        "INSERT INTO dead_letters (id, target, key, name, reason, detail, status, response, "
        "attempts, body, occurred_at, message_id, received_at, failed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        letters,
    )
    report.dead_letters = len(letters)
    report.dead_letters_unreadable = len(unreadable)


def _copy_dedup(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    report: Recovery,
    *,
    now: float,
    window: float,
    kept: Sequence[str],
) -> None:
    """Keys still in their window: the whole table if it reads, else through the
    expiry index a minute at a time; and the keys of the events kept, for a whole
    window from now."""
    copied: dict[str, float] = {}
    try:
        copied.update(
            old.execute(
                "SELECT key, expires_at FROM dedup NOT INDEXED WHERE expires_at > ?", (now,)
            ).fetchall()
        )
    except sqlite3.DatabaseError:
        for low in range(int(now), int(now + window) + 61, 60):
            try:
                copied.update(
                    old.execute(
                        "SELECT key, expires_at FROM dedup INDEXED BY dedup_expiry "
                        "WHERE expires_at >= ? AND expires_at < ?",
                        (low, low + 60),
                    ).fetchall()
                )
            except sqlite3.DatabaseError:
                report.dedup_complete = False
    for key in kept:
        copied[key] = max(copied.get(key, 0.0), now + window)
    rows = [(key, expires) for key, expires in copied.items() if isinstance(key, str)]
    new.executemany("INSERT INTO dedup (key, expires_at) VALUES (?, ?)", rows)
    report.dedup = len(rows)
