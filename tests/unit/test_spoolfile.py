"""The spool file on a real SQLite file: schema and migrations, the group commit's
de-duplication (across restarts too), outcomes, removed targets, and the dead-letter
operations the ``dlq`` command uses (spoolfile.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from mailtrap_receiver.spoolfile import (
    SCHEMA_VERSION,
    OutcomeRow,
    SpoolError,
    SpoolFile,
    StoreRow,
    connect,
    list_dead_letters,
    migrate,
    oldest_pending,
    open_existing,
    poll_pending,
    purge_dead_letters,
    replay_dead_letters,
    schema_version,
    transaction,
)

WINDOW = 3600.0


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(key: str, *targets: str, name: str = "delivery") -> StoreRow:
    body = orjson.dumps({"event": name, "event_id": key, "timestamp": 1_716_915_293})
    return (key, name, body, 1_716_915_293.0, f"m-{key}", targets or ("a",))


def outcome(
    kind: str,
    target: str,
    event_id: int,
    *,
    attempts: int = 1,
    due: float = 0.0,
    status: int | None = None,
    response: str | None = None,
    reason: str | None = None,
    detail: str = "",
) -> OutcomeRow:
    return (kind, target, event_id, attempts, due, status, None, response, reason, detail)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "spool.db"


@pytest.fixture
def spool(path: Path, clock: Clock) -> Iterator[SpoolFile]:
    file = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW, clock=clock)
    file.open()
    yield file
    file.close()


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
    finally:
        conn.close()


def test_a_new_file_is_created_with_the_whole_schema(spool: SpoolFile, path: Path) -> None:
    conn = connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"events", "pending", "dedup", "dead_letters", "pending_due"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()


def test_migrating_is_idempotent_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    conn = connect(tmp_path / "spool.db")
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SpoolError, match="newer receiver"):
        migrate(conn)
    conn.close()


def test_open_existing_refuses_what_is_not_a_spool(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no spool file"):
        open_existing(tmp_path / "absent.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(SpoolError, match="is it a spool"):
        open_existing(other)


def test_one_write_stores_many_requests_in_one_commit(spool: SpoolFile, path: Path) -> None:
    ids = spool.write([[row("e1"), row("e2", "a", "b")], [row("e3", "b")]]).ids
    assert spool.commits == 1
    assert [len(store) for store in ids] == [2, 1]
    assert all(event_id > 0 for store in ids for event_id in store)
    assert spool.pending_events == 3
    assert spool.depth == {"a": 2, "b": 2}
    assert count(path, "events") == 3
    assert count(path, "pending") == 4


def test_the_first_of_a_key_wins_within_a_group_and_later(spool: SpoolFile) -> None:
    first, second = spool.write([[row("k1"), row("k1")], [row("k1"), row("k2")]]).ids
    assert first[0] > 0
    assert first[1] == 0  # the same request repeated it
    assert second[0] == 0  # another request of the same group
    assert second[1] > 0
    assert spool.write([[row("k2"), row("k3")]]).ids == [[0, second[1] + 1]]


def test_dedup_survives_a_restart_and_ends_with_its_window(
    path: Path, clock: Clock, spool: SpoolFile
) -> None:
    spool.write([[row("kept")]])
    spool.close()
    again = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW, clock=clock)
    again.open()
    try:
        assert again.pending_events == 1  # counted at open
        assert again.write([[row("kept")]]).ids == [[0]]
        clock.now += WINDOW + 1
        assert again.write([[row("kept")]]).ids[0][0] > 0  # remembered no longer
        clock.now += WINDOW + 1
        again.maintain()  # prunes expired keys
        assert count(path, "dedup") == 0
    finally:
        again.close()


def test_outcomes_finish_retry_and_dead_letter(spool: SpoolFile, path: Path, clock: Clock) -> None:
    [[both, only_a, doomed]] = spool.write(
        [[row("both", "a", "b"), row("only-a"), row("doomed")]]
    ).ids
    spool.write(
        [],
        outcomes=[
            outcome("delivered", "a", both),
            outcome("delivered", "a", only_a),
            outcome("retry", "b", both, attempts=2, due=clock.now + 30, status=503),
            outcome(
                "dead",
                "a",
                doomed,
                status=400,
                response='{"error": "bad"}',
                reason="rejected",
                detail="the target refused the event (HTTP 400)",
            ),
        ],
    )
    assert spool.depth == {"a": 0, "b": 1}
    assert spool.pending_events == 1  # "both" still waits for b
    assert count(path, "events") == 1
    conn = connect(path)
    assert conn.execute("SELECT attempts, last_status FROM pending").fetchall() == [(2, 503)]
    [letter] = list_dead_letters(conn)
    assert (letter.target, letter.key, letter.reason, letter.status) == (
        "a",
        "doomed",
        "rejected",
        400,
    )
    assert letter.response == '{"error": "bad"}'
    assert letter.event["event_id"] == "doomed"
    # Not due for 30 s: a poll now finds nothing, and says when to look again.
    assert poll_pending(conn, target="b", now=clock.now, held=[], room=10) == (
        [],
        False,
        clock.now + 30,
    )
    loaded, more, _ = poll_pending(conn, target="b", now=clock.now + 31, held=[], room=10)
    assert [(item[0], item[1], item[6]) for item in loaded] == [(both, "both", 2)]
    assert not more
    conn.close()


def test_polls_skip_what_a_worker_holds_and_say_when_more_is_due(
    spool: SpoolFile, clock: Clock
) -> None:
    [ids] = spool.write([[row(f"e{n}") for n in range(5)]]).ids
    now = clock.now + 1
    loaded, more, _ = poll_pending(spool.conn, target="a", now=now, held=ids[:2], room=2)
    assert [item[0] for item in loaded] == ids[2:4]
    assert more
    loaded, more, _ = poll_pending(spool.conn, target="a", now=now, held=ids[:4], room=5)
    assert [item[0] for item in loaded] == ids[4:]
    assert not more
    assert oldest_pending(spool.conn, targets=["a", "b"]) == {"a": clock.now}


def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    # A deferred foreign key fails at COMMIT, which leaves the transaction open: the
    # connection's next BEGIN would then fail too.
    conn = connect(tmp_path / "fk.db")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        conn.execute("INSERT INTO child VALUES (1)")
    assert not conn.in_transaction
    with transaction(conn):
        conn.execute("INSERT INTO parent VALUES (1)")
    assert conn.execute("SELECT count(*) FROM child").fetchone()[0] == 0
    conn.close()


def test_pending_rows_of_a_removed_target_become_dead_letters(
    path: Path, clock: Clock, spool: SpoolFile
) -> None:
    spool.write([[row("x", "a", "b"), row("y", "b")]])
    spool.close()
    renamed = SpoolFile(path, targets=["a"], dedup_window=WINDOW, clock=clock)
    renamed.open()
    try:
        assert renamed.depth == {"a": 1}
        assert renamed.pending_events == 1  # y no longer waits for anyone
        assert renamed.removed == {"b": 2}  # for the dead-letter metric
        letters = list_dead_letters(renamed.conn)
        assert sorted((letter.key, letter.target, letter.reason) for letter in letters) == [
            ("x", "b", "target_removed"),
            ("y", "b", "target_removed"),
        ]
    finally:
        renamed.close()


def test_invalid_events_are_dead_letters_without_a_target(spool: SpoolFile) -> None:
    spool.write(
        [],
        letters=[
            [
                (
                    None,
                    "sha256:abc",
                    None,
                    "not_object",
                    "event is not a JSON object",
                    b"[1]",
                    None,
                    None,
                    1.0,
                ),
            ]
        ],
    )
    [letter] = list_dead_letters(spool.conn)
    assert (letter.target, letter.reason, letter.event, letter.attempts) == (
        None,
        "not_object",
        [1],
        0,
    )


def test_dead_letters_list_replay_and_purge(path: Path, spool: SpoolFile, clock: Clock) -> None:
    [[one, two, three]] = spool.write([[row("one"), row("two", "b"), row("three")]]).ids
    spool.write(
        [],
        letters=[
            [(None, "bad", None, "missing_field", "missing field: event", b"{}", None, None, 2.0)]
        ],
        outcomes=[
            outcome("dead", "a", one, reason="attempts_exhausted", attempts=20),
            outcome("dead", "b", two, reason="rejected", status=404),
            outcome("dead", "a", three, reason="rejected", status=410),
        ],
    )
    assert spool.pending_events == 0
    conn = open_existing(path)
    assert [letter.key for letter in list_dead_letters(conn)] == ["bad", "one", "two", "three"]
    assert [letter.key for letter in list_dead_letters(conn, target="a")] == ["one", "three"]
    assert [letter.key for letter in list_dead_letters(conn, limit=2)] == ["two", "three"]
    letters = {letter.key: letter for letter in list_dead_letters(conn)}

    assert replay_dead_letters(conn, target="a", ids=[letters["one"].id], now=clock.now) == (1, 0)
    loaded, _, _ = poll_pending(conn, target="a", now=clock.now, held=[], room=10)
    assert [(item[1], item[6]) for item in loaded] == [("one", 0)]  # attempts reset, due now
    assert replay_dead_letters(conn, now=clock.now) == (2, 1)  # "bad" has no target
    assert [letter.key for letter in list_dead_letters(conn)] == ["bad"]
    assert purge_dead_letters(conn) == 1
    assert list_dead_letters(conn) == []
    conn.close()
    # The writer's counters catch up with what another connection added.
    spool.maintain()
    assert spool.depth == {"a": 2, "b": 1}
    assert spool.pending_events == 3


def invalid(key: str) -> tuple[None, str, None, str, str, bytes, None, None, float]:
    return (None, key, None, "missing_field", "missing field: event", b"{}", None, None, 1.0)


@pytest.fixture
def small(path: Path, clock: Clock) -> Iterator[SpoolFile]:
    """A spool that keeps at most 5 dead letters, for an hour."""
    file = SpoolFile(
        path,
        targets=["a", "b"],
        dedup_window=WINDOW,
        max_dead_letters=5,
        dead_letter_retention=3600,
        clock=clock,
    )
    file.open()
    yield file
    file.close()


def test_a_request_s_invalid_events_are_kept_together_or_refused(small: SpoolFile) -> None:
    written = small.write(
        [[row("valid")]],
        letters=[
            [invalid("r1-a"), invalid("r1-b"), invalid("r1-c")],
            [invalid("r2-a"), invalid("r2-b"), invalid("r2-c")],  # does not fit: refused whole
            [invalid("r3-a"), invalid("r3-b")],  # fits after the refusal
        ],
    )
    assert written.refused == [1]
    assert written.ids[0][0] > 0  # the valid event is stored all the same
    assert small.dead_letters == 5
    keys = [letter.key for letter in list_dead_letters(small.conn)]
    assert keys == ["r1-a", "r1-b", "r1-c", "r3-a", "r3-b"]
    assert small.write([], letters=[[invalid("r4")]]).refused == [0]
    assert small.dead_letters == 5


def test_when_full_an_event_given_up_on_stays_pending(small: SpoolFile, clock: Clock) -> None:
    [[kept, doomed]] = small.write([[row("kept"), row("doomed")]]).ids
    small.write([], letters=[[invalid(f"x{n}") for n in range(4)]])
    written = small.write(
        [],
        outcomes=[
            outcome("dead", "a", kept, attempts=20, due=clock.now + 600, reason="rejected"),
            outcome("dead", "a", doomed, attempts=20, due=clock.now + 600, reason="rejected"),
        ],
    )
    # Room for one more: the first becomes a dead letter, the second is held back.
    assert written.held == [doomed]
    assert small.dead_letters == 5
    assert small.depth == {"a": 1, "b": 0}
    rows = small.conn.execute("SELECT event_id, attempts, next_attempt_at FROM pending").fetchall()
    assert rows == [(doomed, 20, clock.now + 600)]
    # Once there is room it can become a dead letter like any other.
    purge_dead_letters(small.conn, ids=[letter.id for letter in list_dead_letters(small.conn)])
    small.maintain()  # recounts what dlq changed from outside
    assert small.dead_letters == 0
    written = small.write([], outcomes=[outcome("dead", "a", doomed, reason="rejected")])
    assert written.held == []
    assert small.dead_letters == 1


def test_dead_letters_older_than_the_retention_are_deleted(
    small: SpoolFile, clock: Clock, path: Path
) -> None:
    small.write([], letters=[[invalid("old-1"), invalid("old-2")]])
    clock.now += 1800
    small.write([], letters=[[invalid("young")]])
    clock.now += 1801  # the first two are past the hour, the third is not
    small.maintain()
    assert [letter.key for letter in list_dead_letters(small.conn)] == ["young"]
    assert (small.dead_letters, small.expired) == (1, 2)
    assert small.state.expired == 2
    small.close()
    again = SpoolFile(path, targets=["a", "b"], dedup_window=WINDOW, clock=clock)
    again.open()
    try:
        assert again.dead_letters == 1  # counted at open
    finally:
        again.close()


def test_a_failed_write_is_reported_until_a_probe_or_write_works(spool: SpoolFile) -> None:
    assert spool.state.unwritable is None
    spool.conn.execute("PRAGMA query_only=ON")  # every write fails, as on a full disk
    with pytest.raises(sqlite3.Error):
        spool.write([[row("refused")]])
    assert spool.unwritable is not None
    assert "readonly" in spool.unwritable
    spool.probe()
    assert spool.state.unwritable is not None
    spool.conn.execute("PRAGMA query_only=OFF")
    spool.probe()
    assert spool.unwritable is None
    assert count(spool.path, "dedup") == 0  # the probe leaves nothing behind
    spool.conn.execute("PRAGMA query_only=ON")
    with pytest.raises(sqlite3.Error):
        spool.write([[row("refused")]])
    spool.conn.execute("PRAGMA query_only=OFF")
    spool.write([[row("taken")]])
    assert spool.unwritable is None
