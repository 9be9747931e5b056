"""``mailtrap-receiver dlq list|replay|purge``: the dead letters of a spool file.

`cli` parses the command line and calls `run`. Each command opens the spool file
itself (`spoolfile.open_existing`: it must exist and have this version's schema) with
its own short transactions, so it is safe while a receiver serves from the same
file: SQLite's WAL lets it read beside the server, and its writes wait (up to
`spoolfile.BUSY_TIMEOUT`) for the server's, which take milliseconds.

- ``list`` prints a table (or ``--json``: an array with every field and the event);
- ``replay`` moves letters back to pending for their target, attempts reset, due
  now; a running receiver picks them up within about a second, a stopped one when
  it starts. Invalid events (no target) are skipped;
- ``purge`` deletes letters.

``replay`` and ``purge`` make room in a store that holds ``delivery.maxDeadLetters``;
a running receiver recounts within `spoolfile.MAINTENANCE_INTERVAL` and takes dead
letters again from then on.

``--target NAME`` and ``--id N`` (repeatable) narrow each command.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

from .spoolfile import (
    SpoolError,
    StoredDeadLetter,
    list_dead_letters,
    open_existing,
    purge_dead_letters,
    replay_dead_letters,
)

EXIT_FAILED: Final = 1
_COLUMNS: Final = ("ID", "TARGET", "REASON", "ATTEMPTS", "STATUS", "FAILED AT", "EVENT", "KEY")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(letter: StoredDeadLetter) -> tuple[str, ...]:
    return (
        str(letter.id),
        letter.target or "-",
        letter.reason,
        str(letter.attempts),
        "-" if letter.status is None else str(letter.status),
        _when(letter.failed_at),
        letter.name or "-",
        letter.key,
    )


def print_table(letters: Sequence[StoredDeadLetter], *, out: TextIO) -> None:
    """One line per letter, then each letter's detail, for people."""
    rows = [_COLUMNS, *(_row(letter) for letter in letters)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    for letter in letters:
        answer = f"; answer: {letter.response!r}" if letter.response else ""
        print(f"#{letter.id}: {letter.detail}{answer}", file=out)
    print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}", file=out)


def run(
    *,
    command: str,
    spool: str,
    target: str | None,
    ids: Sequence[int] | None,
    as_json: bool = False,
    limit: int | None = None,
    out: TextIO | None = None,
) -> int:
    """One ``dlq`` command; the process exit code."""
    out = sys.stdout if out is None else out
    try:
        conn = open_existing(spool)
    except (SpoolError, sqlite3.Error) as error:
        print(f"mailtrap-receiver dlq: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if command == "list":
            letters = list_dead_letters(conn, target=target, ids=ids, limit=limit)
            if as_json:
                out.write(
                    orjson.dumps(
                        [letter.as_json() for letter in letters], option=orjson.OPT_INDENT_2
                    ).decode()
                    + "\n"
                )
            else:
                print_table(letters, out=out)
        elif command == "replay":
            replayed, skipped = replay_dead_letters(conn, target=target, ids=ids)
            note = f" ({skipped} invalid events skipped: no target wants them)" if skipped else ""
            print(f"replayed {replayed} dead letters{note}", file=out)
        elif command == "purge":
            purged = purge_dead_letters(conn, target=target, ids=ids)
            print(f"purged {purged} dead letters", file=out)
        else:
            raise ValueError(f"unknown dlq command {command!r}")
    except sqlite3.Error as error:
        print(f"mailtrap-receiver dlq: {spool}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        conn.close()
    return 0
