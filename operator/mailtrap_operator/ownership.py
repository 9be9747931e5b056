"""Whose object sits at a child's name, and what the operator may do with it: pure.

The operator changes or deletes only objects this MailtrapWebhook controls: those
with a controller owner reference to it, by uid, and orphans that carry its
identity. Anything else at a child's name (another team's Service, an earlier
MailtrapWebhook's leftover that garbage collection has not removed yet, an object
nobody owns) is a conflict, reported and left alone, never taken over.
`reconciler` learns what exists from kopf's children index, its ledger or a GET,
turns it into a `Found`, and asks `claim`:

- nothing there: `Action.CREATE`, with a POST, which fails if someone was faster;
- ours: `Action.APPLY`, a server-side apply (or a delete) conditioned on the uid
  seen, so an object replaced in between is refused by the API server;
- an orphan (no controller at all) carrying this resource's identity labels
  (managed-by this operator, instance = the resource's name, and the component
  that kind of child has): `Action.ADOPT`, the same conditioned apply, which adds
  the owner reference. Such orphans are what ``kubectl delete --cascade=orphan``
  leaves, which is how people move a resource (delete it that way, then create it
  again), and what remains of a child whose owner reference someone removed.
  Labels are written by whoever may write the object, so adopting on them takes
  nothing from anyone who could not already change it;
- anything else: `Action.CONFLICT`, with who holds it (`Claim.holder`).

`claim` is the one place that decides.

The rest reads managedFields, where server-side apply records which field manager
owns which field. A POST leaves the fields it set owned by an "Update" entry of
our field manager, which later applies could never remove; `settle_managed_fields`
hands them to our "Apply" entry, so the object is as if server-side apply had
created it, except fields handed on to another controller (spec.replicas under an
autoscaler), which it moves out of the "Apply" entry instead, so that applies
leaving them out do not remove them. `applied_fields` is a digest of our "Apply"
entry: another writer changing a field we set takes it out of that entry, which is
how drift is told from other changes (`ledger`), and `last_writer` names who did.
"""

from __future__ import annotations

import copy
import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .resources import (
    API_VERSION,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    OPERATOR_NAME,
    Owner,
)

# A field in managedFields' FieldsV1 notation, such as ("f:spec", "f:replicas").
FieldPath = tuple[str, ...]
REPLICAS: Final[FieldPath] = ("f:spec", "f:replicas")


@dataclass(frozen=True)
class Controller:
    """An object's controller owner reference."""

    api_version: str
    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class Found:
    """What is known of the object that exists at a child's name."""

    uid: str
    controller: Controller | None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Found:
        meta = body.get("metadata") or {}
        controller = next(
            (
                Controller(
                    api_version=str(ref.get("apiVersion", "")),
                    kind=str(ref.get("kind", "")),
                    name=str(ref.get("name", "")),
                    uid=str(ref.get("uid", "")),
                )
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller")
            ),
            None,
        )
        labels = {str(key): str(value) for key, value in (meta.get("labels") or {}).items()}
        return cls(uid=str(meta.get("uid", "")), controller=controller, labels=labels)

    @classmethod
    def of(cls, owner: Owner, *, uid: str, owner_uid: str) -> Found:
        """An object that a MailtrapWebhook of ``owner``'s name controls (as kopf's
        children index and the ledger know them)."""
        return cls(uid=uid, controller=Controller(API_VERSION, KIND, owner.name, owner_uid))


class Action(enum.Enum):
    CREATE = "create"
    APPLY = "apply"
    ADOPT = "adopt"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Claim:
    action: Action
    uid: str = ""  # APPLY, ADOPT: the uid the write is conditioned on
    holder: str = ""  # CONFLICT: who controls the object, for people

    @property
    def writes(self) -> bool:
        """Whether the object at the name may be written (through ``uid``)."""
        return self.action in (Action.APPLY, Action.ADOPT)


def claim(found: Found | None, owner: Owner, *, component: str = "") -> Claim:
    """What the operator may do at a child's name, given what is there; ``component``
    is the component label that kind of child carries (see `builders.COMPONENTS`)."""
    if found is None:
        return Claim(Action.CREATE)
    controller = found.controller
    if controller == Controller(API_VERSION, KIND, owner.name, owner.uid):
        return Claim(Action.APPLY, uid=found.uid)
    if controller is None and component and _identity_matches(found.labels, owner, component):
        return Claim(Action.ADOPT, uid=found.uid)
    return Claim(Action.CONFLICT, holder=_holder(controller, owner))


def _identity_matches(labels: Mapping[str, str], owner: Owner, component: str) -> bool:
    return (
        labels.get(LABEL_MANAGED_BY) == OPERATOR_NAME
        and labels.get(LABEL_INSTANCE) == owner.name
        and labels.get(LABEL_COMPONENT) == component
    )


def _holder(controller: Controller | None, owner: Owner) -> str:
    if controller is None:
        return (
            "it has no controller (made by hand or by another tool) and does not carry "
            "this resource's identity labels"
        )
    same_name = Controller(API_VERSION, KIND, owner.name, controller.uid)
    if controller == same_name:
        return (
            f'its controller is an earlier MailtrapWebhook "{owner.name}" '
            f"(uid {controller.uid}), which garbage collection should remove soon"
        )
    return f'its controller is {controller.kind} "{controller.name}"'


class ChildConflict(Exception):
    """Some child's name is held by an object this MailtrapWebhook does not control."""


def conflict_message(kind: str, name: str, holder: str) -> str:
    return f'{kind} "{name}" exists and is not controlled by this MailtrapWebhook ({holder})'


# --- managed fields -------------------------------------------------------------------


def settle_managed_fields(
    entries: Sequence[Mapping[str, Any]], manager: str, *, keep: Iterable[FieldPath] = ()
) -> list[dict[str, Any]] | None:
    """``entries`` with ``manager``'s "Update" entries merged into its "Apply" entry
    of the same apiVersion (made one when there is none), except the fields at
    ``keep``, which end up in an "Update" entry of ``manager`` whichever entry held
    them; None when that changes nothing."""
    kept = tuple(keep)
    settled: list[dict[str, Any]] = []
    applies: dict[str, dict[str, Any]] = {}
    holders: dict[str, dict[str, Any]] = {}  # our Update entries left with kept fields
    folded: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for entry in entries:
        copied = copy.deepcopy(dict(entry))
        version = str(copied.get("apiVersion", ""))
        ours = copied.get("manager") == manager and not copied.get("subresource")
        if ours and copied.get("operation") == "Update":
            fields = copied.get("fieldsV1") or {}
            copied["fieldsV1"] = _take(fields, kept)
            if fields:
                folded.append((version, fields, copied))
            if not copied["fieldsV1"]:
                continue
            holders[version] = copied
        elif ours and copied.get("operation") == "Apply":
            applies[version] = copied
        settled.append(copied)
    for version, fields, update in folded:
        apply = applies.get(version)
        if apply is None:
            apply = {**update, "operation": "Apply", "fieldsV1": {}}
            applies[version] = apply
            settled.append(apply)
        apply["fieldsV1"] = _union(apply.get("fieldsV1") or {}, fields)
    for version, apply in applies.items():
        moved = _take(apply.setdefault("fieldsV1", {}), kept)
        if not moved:
            continue
        holder = holders.get(version)
        if holder is None:
            holder = {**apply, "operation": "Update", "fieldsV1": {}}
            holders[version] = holder
            settled.append(holder)
        holder["fieldsV1"] = _union(holder["fieldsV1"], moved)
    if _canonical(settled) == _canonical(entries):
        return None
    return settled


def owns(entries: Sequence[Mapping[str, Any]], manager: str, path: FieldPath) -> bool:
    """Whether ``manager``'s "Apply" entry owns the field at ``path``."""
    entry = _apply_entry(entries, manager)
    node: Any = (entry or {}).get("fieldsV1") or {}
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def applied_fields(entries: Sequence[Mapping[str, Any]], manager: str) -> str:
    """A digest of the fields ``manager``'s "Apply" entry owns ("" without one). Any
    other writer that changes one of them takes it out of the entry, so the digest
    moves when, and only when, what the operator set is changed."""
    entry = _apply_entry(entries, manager)
    if entry is None:
        return ""
    data = orjson.dumps(entry.get("fieldsV1") or {}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def last_writer(entries: Sequence[Mapping[str, Any]], manager: str) -> str:
    """The field manager other than ``manager`` that wrote last (status writers left
    out), as people read it: ``kubectl-edit``, ``kube-controller-manager (scale)``;
    "" when there is none."""
    found = ""
    latest = ""
    for entry in entries:
        subresource = str(entry.get("subresource") or "")
        if entry.get("manager") == manager or subresource == "status":
            continue
        moment = str(entry.get("time") or "")
        if moment >= latest:
            latest = moment
            found = str(entry.get("manager") or "unknown")
            if subresource:
                found += f" ({subresource})"
    return found


def _apply_entry(entries: Sequence[Mapping[str, Any]], manager: str) -> Mapping[str, Any] | None:
    return next(
        (
            entry
            for entry in entries
            if entry.get("manager") == manager and entry.get("operation") == "Apply"
        ),
        None,
    )


def _canonical(entries: Sequence[Mapping[str, Any]]) -> bytes:
    return orjson.dumps(list(entries), option=orjson.OPT_SORT_KEYS)


def _take(fields: dict[str, Any], paths: Iterable[FieldPath]) -> dict[str, Any]:
    """Remove the fields at ``paths`` from ``fields``; the ones there were, as a set."""
    taken: dict[str, Any] = {}
    for path in paths:
        if _remove(fields, path):
            node: dict[str, Any] = {}
            for part in reversed(path):
                node = {part: node}
            taken = _union(taken, node)
    return taken


def _remove(fields: dict[str, Any], path: FieldPath) -> bool:
    """Take the field at ``path`` out of ``fields``, and parents left empty with it
    (an empty parent would read as a field of its own); whether it was there."""
    head, *rest = path
    if head not in fields:
        return False
    if rest:
        child = fields[head]
        if not isinstance(child, dict) or not _remove(child, tuple(rest)):
            return False
        if child:
            return True
    del fields[head]
    return True


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two field sets (FieldsV1: nested objects whose leaves are {}) as one."""
    merged = copy.deepcopy(dict(a))
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _union(merged[key], value)
        else:
            merged.setdefault(key, copy.deepcopy(value))
    return merged
