"""A damaged spool file is found at open, moved aside, and what is readable is
copied into a fresh one, with a report of what was not (recovery.py, and the
integrity checks of spoolfile.py), on real SQLite files damaged on purpose."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from mailtrap_receiver.recovery import Recovery, recover
from mailtrap_receiver.spoolfile import (
    LetterRow,
    PendingRow,
    SpoolCorrupt,
    SpoolFile,
    StoreRow,
    list_dead_letters,
    looks_corrupt,
    may_be_corruption,
    poll_pending,
)
from tests.helpers.spools import damage_page

ROUTES = {"delivery": ("a", "b"), "bounce": ("a",)}
WINDOW = 3600.0


def row(key: str, *, pad: int = 300) -> StoreRow:
    body = orjson.dumps({"event": "delivery", "event_id": key, "padding": "p" * pad})
    return (key, "delivery", body, 1_716_915_293.0, f"m-{key}", ("a", "b"))


def letter(key: str, *, pad: int = 0) -> LetterRow:
    body = b"{}" + b" " * pad
    return (None, key, None, "missing_field", "missing field: event", body, None, None, 1.0)


def filled(path: Path, *, events: int = 400, pad: int = 300) -> list[int]:
    """A closed spool with ``events`` events pending for a and b, and three dead letters."""
    spool = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW)
    spool.open()
    [ids] = spool.write([[row(f"e{n}", pad=pad) for n in range(events)]]).ids
    spool.write([], letters=[[letter(f"bad{n}") for n in range(3)]])
    spool.close()  # checkpoints: everything is in the database file
    return ids


def recovered(path: Path) -> Recovery:
    spool = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW)
    with pytest.raises(SpoolCorrupt) as found:
        spool.open()
    reason = str(found.value)
    return recover(path, reason=reason, targets=["a", "b"], routes=ROUTES, dedup_window=WINDOW)


def reopened(path: Path) -> SpoolFile:
    spool = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW)
    spool.open()
    return spool


def due(spool: SpoolFile, target: str) -> list[PendingRow]:
    """Every pending row of ``target``, as a delivery worker's poll reads them."""
    loaded, _, _ = poll_pending(spool.conn, target=target, now=2e9, held=[], room=1000)
    return loaded


def test_an_intact_spool_opens_as_always(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    filled(path)
    spool = reopened(path)
    assert spool.pending_events == 400
    spool.close()


def test_a_damaged_events_page_is_found_and_the_rest_recovered(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    ids = filled(path)
    damage_page(path, "events")
    report = recovered(path)
    assert Path(report.moved_to).exists()  # kept for a post-mortem, never deleted
    assert Path(report.moved_to).name.startswith("spool.db.corrupt-")
    assert 0 < report.events_unreadable < 40  # one page of ~12 events
    assert report.events + report.events_unreadable >= len(ids)
    # Their pending rows were read, their bodies not: those deliveries are lost.
    assert report.deliveries_lost == {"a": report.events_unreadable, "b": report.events_unreadable}
    assert report.dead_letters == 3
    assert "recovered" in report.summary()
    spool = reopened(path)
    try:
        assert spool.pending_events == report.events
        assert spool.depth == {"a": report.events, "b": report.events}
        loaded = due(spool, "a")
        assert {item[0] for item in loaded} <= set(ids)
        assert len(loaded) == report.events
        # A recovered event is still a duplicate when Mailtrap sends it again.
        key = loaded[0][1]
        assert spool.write([[row(key)]]).ids == [[0]]
    finally:
        spool.close()


def test_an_event_whose_pending_rows_are_gone_is_delivered_again(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    ids = filled(path)
    damage_page(path, "pending")
    report = recovered(path)
    assert report.pending_unreadable > 0
    assert report.pending_restored > 0
    assert report.events == len(ids)  # every event kept: none is stuck or lost
    spool = reopened(path)
    try:
        for target in ("a", "b"):
            assert sorted(item[0] for item in due(spool, target)) == sorted(ids)
    finally:
        spool.close()


def test_a_damaged_overflow_page_loses_only_its_event(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    ids = filled(path, events=50, pad=6000)  # bodies larger than a page
    damage_page(path, "events", "overflow")
    report = recovered(path)
    assert 1 <= report.events_unreadable <= 2
    assert report.events == len(ids) - report.events_unreadable


def test_a_damaged_dead_letters_page_keeps_the_other_letters(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SpoolFile(path, targets=["a"], dedup_window=WINDOW)
    spool.open()
    spool.write([], letters=[[letter(f"bad{n}", pad=300) for n in range(300)]])
    spool.close()
    damage_page(path, "dead_letters")
    report = recovered(path)
    assert 0 < report.dead_letters_unreadable < 40
    assert report.dead_letters + report.dead_letters_unreadable == 300
    again = reopened(path)
    try:
        assert len(list_dead_letters(again.conn)) == report.dead_letters
        assert again.dead_letters == report.dead_letters
    finally:
        again.close()


def test_what_is_not_a_spool_at_all_is_moved_aside_too(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database, but something someone may want" * 100)
    report = recovered(path)
    assert Path(report.moved_to).read_bytes().startswith(b"this is not a database")
    assert report.events == 0
    reopened(path).close()


def test_corruption_is_told_from_a_busy_or_full_disk(tmp_path: Path) -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert not may_be_corruption(busy)
    assert not may_be_corruption(full)
    decode = sqlite3.OperationalError("Could not decode to UTF-8 column 'key'")
    assert may_be_corruption(decode)
    path = tmp_path / "spool.db"
    filled(path)
    conn = sqlite3.connect(path)
    assert looks_corrupt(conn, decode) is None  # the check finds the file fine
    conn.close()
    damage_page(path, "events")
    conn = sqlite3.connect(path)
    problem = looks_corrupt(conn, decode)
    conn.close()
    assert problem is not None
    assert "quick_check" in problem
