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

`add` raising means the letters were not kept; `app` then answers 503 so Mailtrap
sends the request again. `MemoryDeadLetterStore` is the in-process implementation
of ack mode ``delivered`` (which keeps nothing on disk): bounded, and it logs every
letter it takes and every one it has to evict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

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


def log_dead_letter(letter: DeadLetter) -> None:
    """The warning every store writes for a letter it keeps (never the event itself)."""
    log.warning(
        "dead letter",
        key=letter.key,
        reason=letter.reason,
        detail=letter.detail,
        target=letter.target,
    )


class DeadLetterStore(Protocol):
    """Keeps dead letters; see the module docstring."""

    async def add(self, letters: Sequence[DeadLetter]) -> None: ...

    async def entries(self, *, limit: int = 100) -> list[DeadLetter]: ...


class MemoryDeadLetterStore:
    """The most recent ``max_letters`` dead letters, in process memory."""

    def __init__(self, *, max_letters: int = DEFAULT_MAX_LETTERS) -> None:
        self._letters: deque[DeadLetter] = deque(maxlen=max_letters)

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            if len(self._letters) == self._letters.maxlen:
                evicted = self._letters[0]
                log.warning("dead letter evicted", key=evicted.key, reason=evicted.reason)
            self._letters.append(letter)
            log_dead_letter(letter)

    async def entries(self, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` letters, oldest first."""
        return list(self._letters)[-limit:] if limit > 0 else []
