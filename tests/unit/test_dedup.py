"""The de-duplication window and its memory bound (dedup.py), on a clock tests move."""

from __future__ import annotations

import pytest

from mailtrap_receiver.dedup import DedupCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_seen_within_the_window_and_forgotten_after() -> None:
    clock = Clock()
    cache = DedupCache(window=90_000, clock=clock)
    assert "e-1" not in cache
    cache.add("e-1")
    assert "e-1" in cache
    clock.now += 89_999
    assert "e-1" in cache
    clock.now += 1
    assert "e-1" not in cache
    assert len(cache) == 0


def test_a_duplicate_does_not_extend_the_window() -> None:
    clock = Clock()
    cache = DedupCache(window=100, clock=clock)
    cache.add("e-1")
    for _ in range(5):
        clock.now += 30
        "e-1" in cache  # noqa: B015 - asking is what is under test
    assert "e-1" not in cache  # 150 s after it was added


def test_expired_keys_are_dropped_as_new_ones_arrive() -> None:
    clock = Clock()
    cache = DedupCache(window=10, clock=clock)
    for number in range(100):
        cache.add(f"old-{number}")
    clock.now += 11
    cache.add("new")
    assert len(cache) == 1


def test_an_expired_key_behind_a_live_one_is_never_seen() -> None:
    # A key asked about moves to the end with its old expiry, so an expired key can
    # sit behind live ones that adding does not prune past; a lookup drops it.
    clock = Clock()
    cache = DedupCache(window=10, clock=clock)
    cache.add("early")
    clock.now += 5
    cache.add("later")
    assert "early" in cache  # now last in line, expiring first
    clock.now += 6
    cache.add("new")
    assert len(cache) == 3  # "later" is live at the front: the pruning stopped there
    assert "early" not in cache
    assert len(cache) == 2


def test_the_least_recently_used_key_is_evicted_at_the_bound() -> None:
    cache = DedupCache(window=3600, max_entries=3, clock=Clock())
    for key in ("a", "b", "c"):
        cache.add(key)
    assert "a" in cache  # a is now the most recently used
    cache.add("d")
    assert len(cache) == 3
    assert "b" not in cache
    assert all(key in cache for key in ("a", "c", "d"))


def test_memory_stays_bounded() -> None:
    cache = DedupCache(window=3600, max_entries=50, clock=Clock())
    for number in range(10_000):
        cache.add(str(number))
    assert len(cache) == 50
    assert "9999" in cache
    assert "0" not in cache


def test_only_strings_are_keys() -> None:
    cache = DedupCache(window=10)
    assert 5 not in cache


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        DedupCache(window=10, max_entries=0)
