"""Waiting for something to become true, without timing assertions.

Tests on a busy 2-core machine must not assert how fast something happens, only
that it happens: `eventually` polls a condition until it holds or a generous
deadline passes, and fails with the condition's description.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 30.0,
    interval: float = 0.01,
) -> None:
    """Return once ``condition()`` (which may be a coroutine function) is true;
    AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within}s: {condition}")
        await asyncio.sleep(interval)
