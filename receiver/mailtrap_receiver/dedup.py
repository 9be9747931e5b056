"""In-memory de-duplication of event keys over a time window.

Mailtrap retries a request it did not see answered with 200, for up to about a day,
so the same ``event_id`` can arrive many times. A sink (see `sinks`) asks
`DedupCache` whether it has seen an event's key (``events.Event.key``) and marks it
seen once the event is safely handed on. Keys are forgotten after ``window`` seconds
(``delivery.dedupWindow``, 25 h by default, longer than Mailtrap's retry span), and
at most ``max_entries`` are kept: past that the least recently used key goes first,
so memory stays bounded whatever the traffic. The clock is injectable so tests can
move time. Ack mode ``delivered`` (`sinks.ForwardingSink`) relies on it alone; in
ack mode ``durable`` the spool keeps the window on disk (`spoolfile`) and a small
`DedupCache` in front of it only answers known duplicates without a write.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

# About 150 bytes per key (a 36-character event_id, its expiry, the ordering
# links), so the default bound costs at most ~150 MB.
DEFAULT_MAX_ENTRIES: Final = 1_000_000


class DedupCache:
    """Keys seen within the last ``window`` seconds, LRU-bounded to ``max_entries``."""

    def __init__(
        self,
        *,
        window: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._window = window
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[key]
            return False
        # A key asked about again is in use: keep it longest under eviction.
        self._expiry.move_to_end(key)
        return True

    def add(self, key: str) -> None:
        """Remember ``key`` for one window from now."""
        now = self._clock()
        expiries = self._expiry
        expiries[key] = now + self._window
        expiries.move_to_end(key)
        # Least recently used first. Keys mostly expire in that order, but a key asked
        # about again moves to the end keeping its expiry, so an expired key can sit
        # behind live ones: it is dropped when `__contains__` finds it expired or when
        # it reaches the front. Stop at the first live key, unless over the bound.
        while expiries:
            oldest, expiry = next(iter(expiries.items()))
            if expiry > now and len(expiries) <= self._max_entries:
                break
            del expiries[oldest]
