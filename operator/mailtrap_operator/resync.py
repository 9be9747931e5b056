"""The periodic re-list of every child, and the re-lists after an API outage.

Watches tell the operator what changes while they are connected; nothing tells it
what changed while they were not (an API server restart, a network split, a
watch resumed from a fresh list after its history expired). So every
``--resync-period`` (jittered by `JITTER`), and a few times soon after the API
server answers again (`RECOVERY_RESYNCS` seconds after `kubeapi.Connectivity`
hears it), `Resync.once`:

- lists the MailtrapWebhooks, and each watched kind of child with the managed-by
  label selector (cluster-wide, or per watched namespace; paginated): a handful
  of LISTs, whatever the number of resources, and nothing per resource;
- compares each child the ledger says this process applied with what the list
  found (`ledger.drift`, as for watch events: missing, or with a field we set
  changed) and hands what differs to the reconciler, which repairs that child,
  with the same backoff as for watched drift (`contest`);
- hands over every receiver Deployment's state too, so readiness is refreshed
  even if its events were missed, has a status written again where the API
  server's is not the one the operator last built (a write that was lost), and
  has a reconcile that failed retried if nothing else is retrying it;
- forgets owners that no longer exist, and tells the reconciler which children
  kopf's index still holds that the list did not find (deleted while the watch
  was down), so that they are not trusted as ours.

Suspended resources, and resources this process has not reconciled (a standby
replica, or one not reached yet) are left alone. ServiceMonitors are not listed:
the operator may not list them (it only reads its own by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from typing import Final

from . import builders
from .kubeapi import ApiError
from .ledger import ChildKey, ChildState, drift
from .logs import get_logger
from .reconciler import ChildRef, Reconciler
from .resources import (
    DEPLOYMENT,
    MAILTRAP_WEBHOOK,
    MANAGED_BY_SELECTOR,
    WATCHED_CHILD_KINDS,
    Owner,
    OwnerKey,
)
from .settings import Settings

log = get_logger(__name__)

# Seconds after the API server answers again at which to re-list: at once (what was
# deleted during the outage), and twice more, since watches resume within seconds
# and what changed before they did is seen only by a list.
RECOVERY_RESYNCS: Final = (2.0, 10.0, 30.0)
# The period varies by this fraction either way, so that replicas and restarts
# do not line up their re-lists.
JITTER: Final = 0.1


class Resync:
    """See the module docstring; `run` is the loop, `once` one re-list."""

    def __init__(
        self,
        *,
        reconciler: Reconciler,
        settings: Settings,
        indexed: Callable[[], Iterable[ChildRef]],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.settings = settings
        self.indexed = indexed  # every child kopf's children index holds
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter needs no crypto strength
        self._recovered = asyncio.Event()

    def recovered(self, outage: float) -> None:
        """`kubeapi.Connectivity` listener: the API server answers again."""
        self._recovered.set()

    async def run(self) -> None:
        self.reconciler.api.connectivity.add_listener(self.recovered)
        next_period = self.clock() + self._period()
        recovery: list[float] = []
        while True:
            timeout = max(0.0, min([next_period, *recovery]) - self.clock())
            # Not wait_for: on Python 3.11 it loses a cancellation that comes as the
            # event is set, and the operator would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._recovered.wait()
            now = self.clock()
            if self._recovered.is_set():
                self._recovered.clear()
                recovery = [now + delay for delay in RECOVERY_RESYNCS]
                continue
            if recovery and recovery[0] <= now:
                recovery.pop(0)
                trigger = "recovery"
            elif next_period <= now:
                next_period = now + self._period()
                trigger = "period"
            else:
                continue
            try:
                await self.once(trigger)
            except ApiError as error:  # the API failing ends in a recovery re-list
                log.warning("resync failed", trigger=trigger, error=str(error))
            except Exception:  # the next one may well work: never stop the loop
                log.exception("resync failed", trigger=trigger)

    def _period(self) -> float:
        return self.settings.resync_period * self.rng.uniform(1 - JITTER, 1 + JITTER)

    async def once(self, trigger: str) -> None:
        started = self.clock()
        reconciler = self.reconciler
        ledger = reconciler.ledger
        # What was known before listing: only that can be judged by the lists.
        records = {key: record.uid for key, record in ledger.known_owners()}
        indexed = list(self.indexed())
        owners: dict[OwnerKey, Owner] = {}
        live: dict[ChildKey, ChildState] = {}
        versions: dict[str, str] = {}
        for namespace in self.settings.namespaces or (None,):
            items, _ = await reconciler.api.list_objects(kind=MAILTRAP_WEBHOOK, namespace=namespace)
            for item in items:
                owner = Owner.from_body(item)
                owners[owner.key] = owner
            for kind in WATCHED_CHILD_KINDS:
                items, version = await reconciler.api.list_objects(
                    kind=kind, namespace=namespace, label_selector=MANAGED_BY_SELECTOR
                )
                versions[kind.kind] = version
                for item in items:
                    state = ChildState.from_body(kind=kind.kind, body=item, deleted=False)
                    live[state.key] = state

        for key, uid in records.items():
            listed = owners.get(key)
            if (listed is None or listed.uid != uid) and ledger.known_owner(key, uid=uid):
                reconciler.forget_owner(key)

        drifted = 0
        for key, owner in owners.items():
            if owner.deleting or builders.suspended(owner):
                continue
            if ledger.known_owner(key, uid=owner.uid) is None:
                continue
            states = []
            for child in ledger.children_of(key):
                applied = ledger.applied(child)
                if applied is None or child[0] not in versions:
                    continue
                state = live.get(child) or ChildState.gone(
                    applied=applied, key=child, resource_version=versions[child[0]]
                )
                differs = drift(applied=applied, state=state) is not None
                drifted += differs
                if differs or (child[0] == DEPLOYMENT.kind and not state.deleted):
                    states.append(state)
            reconciler.observe_states(key, states)
            reconciler.catch_up(owner)
            await reconciler.ensure_status(owner=owner)

        found = {state.uid for state in live.values()}
        reconciler.stale_children = frozenset(
            child.uid for child in indexed if child.kind in versions and child.uid not in found
        )
        reconciler.metrics.resyncs.labels(trigger=trigger).inc()
        log.info(
            "resynced",
            trigger=trigger,
            resources=len(owners),
            children=len(live),
            drifted=drifted,
            stale=len(reconciler.stale_children),
            duration_ms=round((self.clock() - started) * 1000, 1),
        )
