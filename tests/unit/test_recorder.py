"""Events aggregated and bounded as kubectl's recorder does (recorder.py), on FakeApi."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from mailtrap_operator.kubeapi import ApiError
from mailtrap_operator.recorder import EventRecorder
from mailtrap_operator.resources import Owner
from tests.helpers.fakeapi import FakeApi
from tests.helpers.waiting import eventually

OWNER = Owner(namespace="mail", name="hooks", uid="uid-owner", generation=1, spec={})
OTHER = Owner(namespace="mail", name="other", uid="uid-other", generation=1, spec={})


class Tasks:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.add(asyncio.get_running_loop().create_task(coro))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    found = Tasks()
    yield found
    await found.close()


def recorder(api: FakeApi, tasks: Tasks, **kwargs: Any) -> EventRecorder:
    return EventRecorder(
        api,  # type: ignore[arg-type]
        spawn=tasks.spawn,
        wallclock=lambda: datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
        **kwargs,
    )


async def test_the_same_event_again_counts_on_the_one_posted(tasks: Tasks) -> None:
    api = FakeApi("mail")
    events = recorder(api, tasks)
    for _ in range(3):
        events.record(OWNER, "Normal", "Restored", "Deployment x was deleted; put it back.")
        await asyncio.sleep(0.02)
    events.record(OWNER, "Warning", "ChildConflict", "taken")
    await eventually(lambda: len(api.event_counts) == 2, within=3)
    await eventually(lambda: sorted(api.event_counts.values()) == [1, 3], within=3)
    assert api.events == [
        ("Restored", "Deployment x was deleted; put it back."),
        ("ChildConflict", "taken"),
    ]


async def test_events_per_resource_are_bounded_and_nothing_is_lost(tasks: Tasks) -> None:
    api = FakeApi("mail")
    events = recorder(api, tasks, per_minute=3)
    for index in range(20):
        events.record(OWNER, "Normal", "Restored", f"message {index % 5}")
    events.record(OTHER, "Normal", "Applied", "another resource has its own budget")
    await eventually(lambda: len(api.events) == 4, within=3)
    await asyncio.sleep(0.2)
    posted = [message for reason, message in api.events if reason == "Restored"]
    assert posted == ["message 0", "message 1", "message 2"]  # the burst, then the bound
    assert ("Applied", "another resource has its own budget") in api.events


async def test_an_expired_event_is_posted_anew(tasks: Tasks) -> None:
    api = FakeApi("mail")
    events = recorder(api, tasks)
    events.record(OWNER, "Normal", "Restored", "again")
    await eventually(lambda: len(api.events) == 1, within=3)
    api.event_counts.clear()  # the API server expired it
    events.record(OWNER, "Normal", "Restored", "again")
    await eventually(lambda: len(api.events) == 2, within=3)
    assert list(api.event_counts.values()) == [2]


async def test_an_event_that_cannot_be_written_is_dropped_and_forgotten_owners_too(
    tasks: Tasks,
) -> None:
    api = FakeApi("mail")
    events = recorder(api, tasks)
    api.down = True
    events.record(OWNER, "Normal", "Restored", "lost")
    await asyncio.sleep(0.05)
    api.down = False
    events.forget(OWNER.key)
    events.record(OWNER, "Normal", "Restored", "lost")
    await eventually(lambda: api.events == [("Restored", "lost")], within=3)
    assert list(api.event_counts.values()) == [1]  # a new series: the old one was forgotten


async def test_a_throttled_write_is_tried_again(
    tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi("mail")
    post = api.post_event
    refusals = [2]

    async def throttled(**kwargs: Any) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise ApiError(429, "TooManyRequests", "slow down", retry_after=0.0)
        await post(**kwargs)

    monkeypatch.setattr(api, "post_event", throttled)
    monkeypatch.setattr("mailtrap_operator.recorder.RETRY_DELAY", 0.01)
    recorder(api, tasks).record(OWNER, "Normal", "Applied", "applied")
    await eventually(lambda: api.events == [("Applied", "applied")], within=3)
