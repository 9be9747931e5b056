"""What this operator process last applied and wrote, kept in memory.

Watch events do not say who made a change. The ledger remembers, for every
child the `reconciler` applied, the ``uid``, ``resourceVersion`` and
``generation`` the API server answered with, and a digest of the fields our
server-side apply owns (`ownership.applied_fields`), so that a later event or a
re-listed object (reduced to a `ChildState`) can be told apart (`drift`): our own
write, or an older event still in flight, is ignored; so is a newer version in
which the fields we set are still ours (the Deployment controller writing status,
an autoscaler changing replicas we left to it, someone adding an annotation).
Deletion, lost labels, a lost owner reference, or any field we set changed by
another writer (which takes it out of our "Apply" entry) is drift, and the
reconciler repairs that child.

Per owner it keeps the status wanted and the status last written (fresher than
kopf's index right after a write; they differ while a write has failed), the
Deployment's rollout last seen, since when the API has been failing, and a lock
so that reconciles, drift repairs and status refreshes of one MailtrapWebhook
never interleave.

Nothing here is persisted: after a restart, kopf's resume handlers reconcile
every resource once and so fill the ledger again.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import ownership
from .resources import (
    DEPLOYMENT,
    FIELD_MANAGER,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    OPERATOR_NAME,
    OwnerKey,
    controller_owner,
)
from .status import Problem, Rollout

ChildKey = tuple[str, str, str]  # (kind, namespace, name)


@dataclass
class AppliedChild:
    owner: OwnerKey
    resource_version: str
    generation: int | None
    uid: str = ""  # which object it was: the next write is conditioned on it
    fields: str = ""  # digest of the fields our apply owns (`ownership.applied_fields`)
    # Whether our apply owns spec.replicas (Deployments): the operator takes it out
    # before an apply that leaves replicas to an autoscaler (see reconciler).
    holds_replicas: bool = False


@dataclass
class OwnerRecord:
    uid: str
    # The status as the operator last built it, and as it was last written (or read
    # back by a resync); they differ while a status write has not landed yet.
    status: dict[str, Any] | None = None
    written: dict[str, Any] | None = None
    written_version: str = ""  # the owner's resourceVersion our last status write made
    written_at: float = float("-inf")  # when (monotonic) it was made
    reconciled: bool = False
    # The generation every child was last applied for: a drift repair applies only
    # the drifted child, unless the spec moved on since (then all of them).
    generation: int = 0
    # The problem of the last reconcile when a retry may solve it (not a spec error):
    # what the retry waits for (`reconciler.retry_delay`); None when none is due.
    retry: Problem | None = None
    # The receiver Deployment's rollout, as last applied or watched: the status of a
    # reconcile that did not apply the Deployment (a drift repair of another child).
    rollout: Rollout | None = None
    # Since when (monotonic seconds) the API has been failing transiently; None
    # while it answers. A failure reported only once it lasts (reconciler).
    failing_since: float | None = None


def newer(seen: str, recorded: str) -> bool:
    """Whether resourceVersion ``seen`` comes after ``recorded``."""
    # resourceVersions are opaque by contract but etcd revisions in practice;
    # comparing numerically lets a late event for an older version pass as ours.
    if seen.isdigit() and recorded.isdigit():
        return int(seen) > int(recorded)
    return seen != recorded


@dataclass(frozen=True)
class ChildState:
    """What drift detection needs of an observed child: a few fields, not its body.

    Watch events carry whole objects (with managedFields, several kilobytes each);
    keeping only this lets kopf drop the body as soon as the handler returns.
    """

    key: ChildKey
    owner: OwnerKey | None
    owner_uid: str  # empty when the owner reference is gone
    deleted: bool
    resource_version: str
    generation: int | None
    labelled: bool  # still carries our managed-by label and its owner's instance label
    uid: str = ""
    fields: str = ""  # `ownership.applied_fields` of the object
    writer: str = ""  # the last field manager other than us (`ownership.last_writer`)
    rollout: Rollout | None = None  # Deployments only

    @classmethod
    def from_body(cls, *, kind: str, body: Mapping[str, Any], deleted: bool) -> ChildState:
        meta = body.get("metadata") or {}
        key, resource_version, generation = _identity(kind, meta)
        namespace = key[1]
        labels = meta.get("labels") or {}
        managed = meta.get("managedFields") or ()
        found = controller_owner(body)
        owner_uid = ""
        if found is not None:
            owner: OwnerKey | None = found[0]
            owner_uid = found[1]
        elif labels.get(LABEL_INSTANCE):
            # Without its owner reference, the instance label still says whose it is.
            owner = (namespace, str(labels[LABEL_INSTANCE]))
        else:
            owner = None
        return cls(
            key=key,
            owner=owner,
            owner_uid=owner_uid,
            deleted=deleted,
            resource_version=resource_version,
            generation=generation,
            labelled=bool(
                owner is not None
                and labels.get(LABEL_MANAGED_BY) == OPERATOR_NAME
                and labels.get(LABEL_INSTANCE) == owner[1]
            ),
            uid=str(meta.get("uid") or ""),
            fields=ownership.applied_fields(managed, FIELD_MANAGER),
            writer=ownership.last_writer(managed, FIELD_MANAGER),
            rollout=Rollout.from_deployment(body) if kind == DEPLOYMENT.kind else None,
        )

    @classmethod
    def gone(cls, *, applied: AppliedChild, key: ChildKey, resource_version: str) -> ChildState:
        """A child we applied that a re-list (at ``resource_version``) no longer finds."""
        return cls(
            key=key,
            owner=applied.owner,
            owner_uid="",
            deleted=True,
            resource_version=resource_version,
            generation=None,
            labelled=False,
            uid=applied.uid,
        )


def _identity(kind: str, meta: Mapping[str, Any]) -> tuple[ChildKey, str, int | None]:
    """A child's key, resourceVersion and generation, from its metadata."""
    generation = meta.get("generation")
    return (
        (kind, str(meta.get("namespace", "")), str(meta.get("name", ""))),
        str(meta.get("resourceVersion") or ""),
        int(generation) if generation is not None else None,
    )


def drift(*, applied: AppliedChild | None, state: ChildState) -> str | None:
    """Why an observed child differs from what we applied, or None if it does not."""
    if applied is None:
        return None
    if (
        state.resource_version
        and applied.resource_version
        and not newer(state.resource_version, applied.resource_version)
    ):
        return None  # our own write, or what came before it
    if state.deleted:
        return "it was deleted or lost its labels"
    if state.uid and applied.uid and state.uid != applied.uid:
        return "it was replaced by another object"
    if not state.labelled:
        return "its labels were changed"
    if not state.owner_uid or state.owner != applied.owner:
        return "its owner reference was removed"
    if state.fields != applied.fields:
        by = f" by {state.writer}" if state.writer else ""
        return f"fields the operator sets were changed{by}"
    return None


class Ledger:
    """In-memory records keyed by owner and by child; see the module docstring."""

    def __init__(self) -> None:
        self._owners: dict[OwnerKey, OwnerRecord] = {}
        self._children: dict[ChildKey, AppliedChild] = {}
        self._by_owner: dict[OwnerKey, set[ChildKey]] = {}
        # Weak: a lock lives only while some task holds or awaits it.
        self._locks: weakref.WeakValueDictionary[OwnerKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def lock(self, key: OwnerKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    # -- owners --

    def owner(self, key: OwnerKey, *, uid: str) -> OwnerRecord:
        """The record of an owner; a new one if the name now belongs to another object."""
        record = self._owners.get(key)
        if record is None or record.uid != uid:
            self.forget_owner(key)
            record = self._owners[key] = OwnerRecord(uid=uid)
        return record

    def known_owner(self, key: OwnerKey, *, uid: str | None = None) -> OwnerRecord | None:
        record = self._owners.get(key)
        if record is None or (uid is not None and record.uid != uid):
            return None
        return record

    def known_owners(self) -> list[tuple[OwnerKey, OwnerRecord]]:
        return list(self._owners.items())

    def forget_owner(self, key: OwnerKey) -> None:
        self._owners.pop(key, None)
        for child in self._by_owner.pop(key, set()):
            self._children.pop(child, None)

    # -- children --

    def record_applied(self, *, kind: str, owner: OwnerKey, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key, resource_version, generation = _identity(kind, meta)
        managed = meta.get("managedFields") or ()
        self._children[key] = AppliedChild(
            owner=owner,
            resource_version=resource_version,
            generation=generation,
            uid=str(meta.get("uid") or ""),
            fields=ownership.applied_fields(managed, FIELD_MANAGER),
            holds_replicas=ownership.owns(managed, FIELD_MANAGER, ownership.REPLICAS),
        )
        self._by_owner.setdefault(owner, set()).add(key)

    def applied(self, key: ChildKey) -> AppliedChild | None:
        return self._children.get(key)

    def forget_child(self, key: ChildKey) -> None:
        applied = self._children.pop(key, None)
        if applied is not None:
            self._by_owner.get(applied.owner, set()).discard(key)

    def children_of(self, owner: OwnerKey) -> Iterable[ChildKey]:
        return tuple(self._by_owner.get(owner, ()))
