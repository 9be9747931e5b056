"""When to try a delivery again, and how long to wait: pure functions, no I/O.

The delivery workers (`delivery`) and the quick retries of ``delivered`` mode
(`sinks.ForwardingSink`) ask `verdict` what a target's answer means, and the
workers ask `backoff` how long to wait before the next attempt:

- 2xx is delivered;
- no answer (connection error, timeout), 408, 429 and 5xx are worth retrying;
- anything else (other 4xx, 3xx, 1xx) will not change by retrying: the events go
  to the dead-letter store at once, with the answer recorded.

The wait before retry ``k`` (after ``k`` failed attempts) is random, uniformly
between ``initialBackoff`` and ``min(maxBackoff, initialBackoff * 2**k)`` (full
jitter above a floor, so many events failing together spread out, and no retry
comes sooner than ``initialBackoff``). A target's ``Retry-After`` (seconds or an
HTTP date) is honoured as a lower bound, capped by ``maxBackoff``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

Verdict = Literal["delivered", "retry", "dead"]

RETRYABLE_STATUSES: Final = frozenset({408, 429})
# Doubling stops mattering long before this; it keeps 2**k finite for any attempt count.
_MAX_EXPONENT: Final = 62


def verdict(status: int | None) -> Verdict:
    """What a target's answer means; ``None`` is no answer at all."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in RETRYABLE_STATUSES:
        return "retry"
    return "dead"


def backoff_bounds(*, failures: int, initial: float, maximum: float) -> tuple[float, float]:
    """The range the wait after ``failures`` failed attempts is drawn from."""
    floor = min(initial, maximum)
    ceiling = min(maximum, initial * 2 ** min(max(failures, 1), _MAX_EXPONENT))
    return floor, max(floor, ceiling)


def backoff(
    *,
    failures: int,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next attempt (see the module docstring)."""
    low, high = backoff_bounds(failures=failures, initial=initial, maximum=maximum)
    delay = (rng or _rng).uniform(low, high)
    if retry_after is not None:
        delay = max(delay, min(retry_after, maximum))
    return delay


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date);
    ``None`` when absent or unreadable. ``now`` is Unix seconds."""
    if value is None:
        return None
    text = value.strip()
    # isdigit() alone also admits digits float() refuses, such as superscripts.
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms parse naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def http_date(timestamp: float) -> str:
    """An HTTP date (IMF-fixdate), for tests and targets that send ``Retry-After``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


# Module-level so each call does not build a generator; jitter needs no crypto strength.
_rng = random.Random()  # noqa: S311
