"""How many requests one Mailtrap account may still make: a shared token bucket.

Mailtrap allows 150 API requests per 10 seconds per API token and answers 429 past
that (its rate-limit page; every answer carries ``X-Ratelimit-Limit`` and
``X-Ratelimit-Remaining``). Every `client.MailtrapClient` of one account draws from
one `RequestBudget`, handed out by `Budgets`, so that many resources of one account
(their creates, patches and the periodic drift check) stay under that limit
together. A bucket of ``burst`` requests refilled at ``rate`` per second lets at
most ``burst + rate * 10`` requests out in any 10 seconds, whenever they start:
the defaults, 25 and 10/s, make that 125, leaving room for people and scripts
using the same token. `client` tells the bucket what Mailtrap said: it never holds
more than the remaining count, and a 429's ``Retry-After`` (or a remaining count of
0) pauses it. A caller that would rather skip than wait (the drift check) uses
`try_take`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from .errors import RateLimited

LIMIT: Final = 150  # Mailtrap's documented limit per WINDOW, per API token
WINDOW: Final = 10.0
DEFAULT_BURST: Final = 25
DEFAULT_RATE: Final = 10.0  # requests per second once the burst is spent


class RequestBudget:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second.
    ``window`` is Mailtrap's: how long to pause when it says nothing remains."""

    def __init__(
        self,
        *,
        burst: int = DEFAULT_BURST,
        rate: float = DEFAULT_RATE,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or rate <= 0 or window <= 0:
            raise ValueError("a request budget needs a burst of at least 1, a rate and a window")
        self.burst = burst
        self.rate = rate
        self.window = window
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._queue = asyncio.Lock()  # waiters are served in arrival order

    def _refill(self) -> float:
        now = self._clock()
        start = max(self._updated, self._paused_until)
        if now > start:
            self._tokens = min(float(self.burst), self._tokens + (now - start) * self.rate)
        self._updated = max(now, self._updated)
        return now

    def available(self) -> int:
        """Requests that could go out right now."""
        now = self._refill()
        return 0 if now < self._paused_until else int(self._tokens)

    def wait_time(self) -> float:
        """Seconds until one request may go out."""
        now = self._refill()
        pause = max(0.0, self._paused_until - now)
        return pause + max(0.0, 1.0 - self._tokens) / self.rate

    def try_take(self) -> bool:
        """Take one request if one is available now; never waits."""
        if self.wait_time() > 0:
            return False
        self._tokens -= 1.0
        return True

    async def take(self, *, max_wait: float) -> None:
        """Take one request, waiting up to ``max_wait`` seconds for it; `RateLimited`
        (with how long it would take) instead of a longer wait."""
        async with self._queue:
            wait = self.wait_time()
            if wait > max_wait:
                raise RateLimited(
                    "the request budget of this Mailtrap account is used up",
                    status=None,
                    retry_after=wait,
                )
            if wait > 0:
                await asyncio.sleep(wait)
                self._refill()
            self._tokens -= 1.0

    def pause(self, seconds: float) -> None:
        """No requests for ``seconds`` (Mailtrap said to wait), then refill from empty."""
        now = self._refill()
        self._tokens = 0.0
        self._paused_until = max(self._paused_until, now + max(0.0, seconds))

    def observe(self, *, remaining: int | None, retry_after: float | None) -> None:
        """What an answer said about the account's rate limit."""
        if retry_after is not None:
            self.pause(retry_after)
        elif remaining is not None:
            if remaining <= 0:
                # Mailtrap does not say when its window ends: assume a whole one.
                self.pause(self.window)
            else:
                self._refill()
                self._tokens = min(self._tokens, float(remaining))


class Budgets:
    """One `RequestBudget` per account (API base URL and account id), made on demand."""

    def __init__(
        self, *, burst: int = DEFAULT_BURST, rate: float = DEFAULT_RATE, window: float = WINDOW
    ) -> None:
        self._burst, self._rate, self._window = burst, rate, window
        self._budgets: dict[tuple[str, int], RequestBudget] = {}

    def for_account(self, api_url: str, account_id: int) -> RequestBudget:
        key = (api_url.rstrip("/"), account_id)
        budget = self._budgets.get(key)
        if budget is None:
            budget = RequestBudget(burst=self._burst, rate=self._rate, window=self._window)
            self._budgets[key] = budget
        return budget
