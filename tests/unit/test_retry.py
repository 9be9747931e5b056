"""What a target's answer means, and the backoff between attempts (retry.py)."""

from __future__ import annotations

import random

import pytest

from mailtrap_receiver.retry import (
    backoff,
    backoff_bounds,
    http_date,
    parse_retry_after,
    verdict,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (None, "retry"),  # connection refused, reset, timeout
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (400, "dead"),
        (401, "dead"),
        (403, "dead"),
        (404, "dead"),
        (410, "dead"),
        (422, "dead"),
        (301, "dead"),  # redirects are not followed
        (100, "dead"),
    ],
)
def test_verdicts(status: int | None, expected: str) -> None:
    assert verdict(status) == expected


def test_the_range_doubles_from_the_initial_backoff_up_to_the_maximum() -> None:
    bounds = [backoff_bounds(failures=k, initial=1.0, maximum=10.0) for k in range(1, 7)]
    assert bounds == [(1.0, 2.0), (1.0, 4.0), (1.0, 8.0), (1.0, 10.0), (1.0, 10.0), (1.0, 10.0)]
    # Absurd attempt counts stay finite.
    assert backoff_bounds(failures=10_000, initial=0.5, maximum=600.0) == (0.5, 600.0)
    # A maximum below the initial backoff wins.
    assert backoff_bounds(failures=1, initial=5.0, maximum=2.0) == (2.0, 2.0)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    for failures in (1, 3, 8):
        low, high = backoff_bounds(failures=failures, initial=0.25, maximum=5.0)
        delays = [
            backoff(failures=failures, initial=0.25, maximum=5.0, rng=rng) for _ in range(2000)
        ]
        assert all(low <= delay <= high for delay in delays)
        # Spread, not a fixed step: both ends of the range are reached closely.
        assert min(delays) < low + (high - low) * 0.05
        assert max(delays) > high - (high - low) * 0.05


def test_retry_after_is_a_floor_capped_by_the_maximum() -> None:
    rng = random.Random(1)
    assert backoff(failures=1, initial=1.0, maximum=60.0, retry_after=30.0, rng=rng) == 30.0
    assert backoff(failures=1, initial=1.0, maximum=60.0, retry_after=3600.0, rng=rng) == 60.0
    # Shorter than the jittered delay: the delay stands.
    delay = backoff(failures=4, initial=10.0, maximum=600.0, retry_after=0.5, rng=rng)
    assert 10.0 <= delay <= 160.0


def test_retry_after_seconds_and_http_dates() -> None:
    now = 1_750_000_000.0
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 5 ", now=now) == 5.0
    assert parse_retry_after(http_date(now + 90), now=now) == pytest.approx(90.0)
    assert parse_retry_after(http_date(now - 90), now=now) == 0.0  # already past
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=now) == 0.0
    # Non-ASCII digits are digits to str.isdigit() but not to float().
    for unusable in (None, "", "soon", "-5", "1.5", "\u00b2", "\u0663"):
        assert parse_retry_after(unusable, now=now) is None
