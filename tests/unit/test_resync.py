"""One re-list (resync.py) on FakeApi: what the watches missed is found and repaired.

tests/faults runs the loop for real: an API server killed and restarted, and the
repairs timed.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

import pytest

from mailtrap_operator.metrics import OperatorMetrics
from mailtrap_operator.reconciler import ChildRef, Lookups, Reconciler
from mailtrap_operator.resources import Owner, OwnerKey
from mailtrap_operator.resync import Resync
from mailtrap_operator.settings import Settings
from tests.helpers.fakeapi import FakeApi, secret_body
from tests.helpers.waiting import eventually

NAMESPACE, NAME = "mail", "hooks"
CHILD = f"{NAME}-receiver"
SPEC = {
    "signingSecretRef": {"name": "signing"},
    "replicas": 1,
    "targets": [{"name": "a", "url": "http://a.example/"}],
}
OWNER = Owner(namespace=NAMESPACE, name=NAME, uid="uid-owner", generation=1, spec=SPEC)


class World:
    """FakeApi, a reconciler that reconciled OWNER, and kopf's children index."""

    def __init__(self) -> None:
        self.api = FakeApi(NAMESPACE)
        self.api.secrets["signing"] = secret_body("signing", {"signing-secret": "x"})
        self.api.objects[("MailtrapWebhook", NAME)] = {
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": OWNER.uid, "generation": 1},
            "spec": copy.deepcopy(SPEC),
        }
        self.reconciler = Reconciler(
            settings=Settings(),
            api=self.api,  # type: ignore[arg-type]
            metrics=OperatorMetrics(),
        )
        self.owners: dict[OwnerKey, Owner] = {OWNER.key: OWNER}
        self.index: list[ChildRef] = []
        self.reconciler.bind(Lookups(self.owners.get, lambda key: list(self.index)))
        self.resync = Resync(
            reconciler=self.reconciler, settings=Settings(), indexed=lambda: list(self.index)
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    found = World()
    assert (
        await found.reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    )
    yield found
    await found.reconciler.close()


async def test_children_deleted_unseen_are_put_back(world: World) -> None:
    api = world.api
    gone = api.remove("Deployment", CHILD)
    api.remove("ConfigMap", CHILD)
    world.index.append(ChildRef("Deployment", CHILD, gone["metadata"]["uid"], OWNER.uid))
    api.writes.clear()
    await world.resync.once("recovery")
    await eventually(lambda: len(api.writes) == 2, within=3)
    assert sorted(api.writes) == [("create", "ConfigMap", CHILD), ("create", "Deployment", CHILD)]
    # kopf's index still holds the deleted Deployment: no longer trusted as ours.
    assert world.reconciler.stale_children == {gone["metadata"]["uid"]}
    assert world.reconciler.metrics.resyncs.labels(trigger="recovery")._value.get() == 1


async def test_nothing_is_written_when_nothing_changed(world: World) -> None:
    api = world.api
    api.writes.clear()
    written = api.status_writes
    await world.resync.once("period")
    await asyncio.sleep(0.1)
    assert api.writes == []
    assert api.status_writes == written


async def test_a_status_the_api_server_lost_is_written_again(world: World) -> None:
    api = world.api
    wanted = copy.deepcopy(api.status)
    api.status["observedGeneration"] = 0  # as if a write had been lost
    api.status["readyReplicas"] = 5
    await world.resync.once("period")
    assert api.status == wanted


async def test_a_changed_child_is_repaired_and_a_gone_owner_forgotten(world: World) -> None:
    api = world.api
    api.edit("Service", CHILD)
    api.writes.clear()
    await world.resync.once("period")
    await eventually(lambda: api.writes == [("apply", "Service", CHILD)], within=3)
    del api.objects[("MailtrapWebhook", NAME)]
    await world.resync.once("period")
    assert world.reconciler.ledger.known_owner(OWNER.key) is None


async def test_a_suspended_resource_is_left_alone(world: World) -> None:
    api = world.api
    api.objects[("MailtrapWebhook", NAME)]["spec"]["suspend"] = True
    api.remove("ConfigMap", CHILD)
    api.writes.clear()
    await world.resync.once("period")
    await asyncio.sleep(0.1)
    assert api.writes == []


async def test_the_api_answering_again_starts_the_recovery_re_lists(world: World) -> None:
    loop = asyncio.get_running_loop()
    world.reconciler.start(world.resync.run())
    await asyncio.sleep(0)
    api = world.api
    api.remove("ConfigMap", CHILD)
    api.writes.clear()
    api.connectivity.observe(0)  # a request got no answer
    api.connectivity.observe(200)  # and the next one did
    started = loop.time()
    await eventually(lambda: ("create", "ConfigMap", CHILD) in api.writes, within=10)
    assert loop.time() - started < 5  # the first recovery re-list, not the 5-minute period
