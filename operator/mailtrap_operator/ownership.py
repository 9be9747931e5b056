"""Whose object sits at a child's name, and what the operator may do with it: pure.

The operator changes or deletes only objects this MailtrapWebhook controls: those
with a controller owner reference to it, by uid. Anything else at a child's name
(another team's Service, an earlier MailtrapWebhook's leftover that garbage
collection has not removed yet, an object nobody owns) is a conflict, reported and
left alone, never taken over. `reconciler` learns what exists from kopf's children
index, its ledger or a GET, turns it into a `Found`, and asks `claim`:

- nothing there: `Action.CREATE`, with a POST, which fails if someone was faster;
- ours: `Action.APPLY`, a server-side apply (or a delete) conditioned on the uid
  seen, so an object replaced in between is refused by the API server;
- anything else: `Action.CONFLICT`, with who holds it (`Claim.holder`).

`claim` is the one place that decides; adopting an orphan that carries our identity
labels would be one more branch here.

A POST leaves the fields it set owned by an "Update" entry of our field manager,
which later applies could never remove; `fold_managed_fields` hands them to our
"Apply" entry, so the object is as if server-side apply had created it.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .resources import API_VERSION, KIND, Owner


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
        return cls(uid=str(meta.get("uid", "")), controller=controller)

    @classmethod
    def of(cls, owner: Owner, *, uid: str, owner_uid: str) -> Found:
        """An object that a MailtrapWebhook of ``owner``'s name controls (as kopf's
        children index and the ledger know them)."""
        return cls(uid=uid, controller=Controller(API_VERSION, KIND, owner.name, owner_uid))


class Action(enum.Enum):
    CREATE = "create"
    APPLY = "apply"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Claim:
    action: Action
    uid: str = ""  # APPLY: the uid the write is conditioned on
    holder: str = ""  # CONFLICT: who controls the object, for people


def claim(found: Found | None, owner: Owner) -> Claim:
    """What the operator may do at a child's name, given what is there."""
    if found is None:
        return Claim(Action.CREATE)
    controller = found.controller
    if controller == Controller(API_VERSION, KIND, owner.name, owner.uid):
        return Claim(Action.APPLY, uid=found.uid)
    return Claim(Action.CONFLICT, holder=_holder(controller, owner))


def _holder(controller: Controller | None, owner: Owner) -> str:
    if controller is None:
        return "it has no controller (made by hand or by another tool)"
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


def fold_managed_fields(
    entries: Sequence[Mapping[str, Any]], manager: str
) -> list[dict[str, Any]] | None:
    """``entries`` with ``manager``'s "Update" entries merged into its "Apply" entry
    of the same apiVersion (made one when there is none); None when there are none."""
    updates = [
        entry
        for entry in entries
        if entry.get("manager") == manager
        and entry.get("operation") == "Update"
        and not entry.get("subresource")
    ]
    if not updates:
        return None
    folded: list[dict[str, Any]] = []
    applies: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if any(entry is update for update in updates):
            continue
        copied = copy.deepcopy(dict(entry))
        if copied.get("manager") == manager and copied.get("operation") == "Apply":
            applies[str(copied.get("apiVersion", ""))] = copied
        folded.append(copied)
    for update in updates:
        version = str(update.get("apiVersion", ""))
        apply = applies.get(version)
        if apply is None:
            apply = copy.deepcopy(dict(update))
            apply["operation"] = "Apply"
            applies[version] = apply
            folded.append(apply)
        else:
            apply["fieldsV1"] = _union(apply.get("fieldsV1") or {}, update.get("fieldsV1") or {})
    return folded


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two field sets (FieldsV1: nested objects whose leaves are {}) as one."""
    merged = copy.deepcopy(dict(a))
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _union(merged[key], value)
        else:
            merged.setdefault(key, copy.deepcopy(value))
    return merged
