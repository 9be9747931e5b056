"""Damaging a spool file on purpose, as a failing disk or a torn write would.

`damage_page` overwrites one page that belongs to a table or index of a closed
spool file (found through SQLite's ``dbstat`` table) with random bytes, and says
which. Used by the recovery tests (unit and ``tests/security``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def pages_of(path: Path, name: str, pagetype: str | None = None) -> list[int]:
    """Page numbers of table or index ``name`` (``pagetype``: leaf, internal, overflow)."""
    conn = sqlite3.connect(path)
    try:
        query = "SELECT pageno FROM dbstat WHERE name = ?"
        params: list[str] = [name]
        if pagetype is not None:
            query += " AND pagetype = ?"
            params.append(pagetype)
        return [row[0] for row in conn.execute(query + " ORDER BY pageno", params)]
    finally:
        conn.close()


def damage_page(path: Path, name: str, pagetype: str = "leaf", *, which: float = 0.5) -> int:
    """Overwrite a page of ``name`` (the one ``which`` of the way through its pages)
    with random bytes; the page number. The file must be closed and checkpointed."""
    pages = pages_of(path, name, pagetype)
    if not pages:
        raise AssertionError(f"{name} has no {pagetype} page")
    victim = pages[min(len(pages) - 1, int(len(pages) * which))]
    conn = sqlite3.connect(path)
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    with path.open("r+b") as file:
        file.seek((victim - 1) * size)
        file.write(os.urandom(size))
    return victim
