"""Where events go that cannot be delivered: the dead-letter store.

Nothing the receiver acknowledged is dropped silently. `app` adds every invalid
event of an otherwise valid request (with `events.Invalid`'s reason). The store is
a small Protocol: in ack mode ``durable`` it is `delivery.SpoolDeadLetterStore`, in
the SQLite spool beside the events no target took (which the delivery workers write
there themselves), listed and replayed with ``mailtrap-receiver dlq``:

.. code-block:: python

    class DeadLetterStore(Protocol):
        async def add(self, letters: Sequence[DeadLetter]) -> None: ...
        async def entries(self, *, limit: int = 100) -> list[DeadLetter]: ...

`add` takes the invalid events of one request, kept together or not at all; raising
means they were not kept (`DeadLettersFull` when the store holds its maximum,
``delivery.maxDeadLetters``), and `app` then answers 503 so Mailtrap sends the
request again. `MemoryDeadLetterStore` is the in-process implementation of ack mode
``delivered`` (which keeps nothing on disk): the newest `DEFAULT_MAX_LETTERS`,
evicting the oldest. Either store writes one log line per request
(`log_dead_letters`), never one per letter: a request may hold a thousand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from .logs import MAX_IDS_LOGGED

DEFAULT_MAX_LETTERS: Final = 10_000

log = structlog.get_logger("mailtrap_receiver.deadletters")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that will not be delivered, and why."""

    key: str  # the event's de-duplication key, so a store can keep one letter per event
    reason: str  # a bounded code: the metric label
    detail: str  # for people
    event: object  # the original object as received
    received_at: float  # Unix seconds
    target: str | None = None  # None: refused on receipt, before any target


class DeadLettersFull(Exception):
    """The store holds its maximum: these letters were not kept."""


def log_dead_letters(letters: Sequence[DeadLetter], *, evicted: int = 0) -> None:
    """The one warning a store writes for the letters of a request it keeps: how many,
    why, and the keys and details of the first few (never the events themselves)."""
    reasons: dict[str, int] = {}
    for letter in letters:
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    head = letters[:MAX_IDS_LOGGED]
    fields: dict[str, object] = {
        "count": len(letters),
        "reasons": reasons,
        "keys": [letter.key for letter in head],
        "details": sorted({letter.detail for letter in head}),
    }
    if evicted:
        fields["evicted"] = evicted
    log.warning("dead letters", **fields)


class DeadLetterStore(Protocol):
    """Keeps dead letters; see the module docstring."""

    async def add(self, letters: Sequence[DeadLetter]) -> None: ...

    async def entries(self, *, limit: int = 100) -> list[DeadLetter]: ...


class MemoryDeadLetterStore:
    """The most recent ``max_letters`` dead letters, in process memory."""

    def __init__(self, *, max_letters: int = DEFAULT_MAX_LETTERS) -> None:
        self._letters: deque[DeadLetter] = deque(maxlen=max_letters)

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        room = (self._letters.maxlen or 0) - len(self._letters)
        self._letters.extend(letters)
        log_dead_letters(letters, evicted=max(0, len(letters) - room))

    async def entries(self, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` letters, oldest first."""
        return list(self._letters)[-limit:] if limit > 0 else []
