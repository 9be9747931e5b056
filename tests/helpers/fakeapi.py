"""An in-memory stand-in for the operator's `KubeApi`, for the reconciler's unit tests.

The integration tests run the operator against a real API server, which cannot be
made to fail on cue, nor to lose a race at a chosen moment. `FakeApi` answers the
calls `Reconciler` makes, with the API server's rules that the reconciler relies
on (all checked against a real one in tests/security and tests/integration):

- a create of a taken name fails with 409 AlreadyExists; a create leaves an
  "Update" managedFields entry, an apply an "Apply" entry, each owning
  ``spec.replicas`` when it set them; an apply that leaves out replicas its
  "Apply" entry owned, and no other entry owns, resets them to the default (1);
- another writer (`FakeApi.edit`) takes the fields it changes out of our entries;
- an apply carrying ``metadata.uid`` fails when another object (422) or none (409)
  is at the name; a delete with a uid precondition fails (409) on another object;
- Secrets are kept as the API server returns them (base64 ``data``) and read
  through `SecretInfo.from_body`, as `KubeApi.read_secret` does.

Every call fails while ``down`` is set (``throttled`` answers 429 with Retry-After
instead, to status writes only); ``before_write`` runs before each create or
apply, so a test can change what is at a name between the check and the write.
"""

from __future__ import annotations

import base64
import copy
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from mailtrap_operator.kubeapi import ApiError, Connectivity
from mailtrap_operator.resources import FIELD_MANAGER, Kind, SecretInfo

_uids = itertools.count(1)


def secret_body(name: str, data: Mapping[str, str], *, opted_in: bool = True) -> dict[str, Any]:
    """A Secret as the API server answers a GET of it."""
    labels = {"mailtrap.io/webhook-secret": "true"} if opted_in else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "uid": f"uid-secret-{name}", "labels": labels},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


class FakeApi:
    """The calls `Reconciler` makes, on dicts keyed by (kind, name)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.down = False
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str]] = []  # (reason, message), one per Event posted
        self.event_counts: dict[str, int] = {}  # Event name -> count, as POSTed or PATCHed
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.status_writes = 0
        self.throttled = False
        self.monitors_served = False
        self.before_write: Callable[[str, str], None] | None = None
        self.connectivity = Connectivity()
        self._version = 100

    # -- what a test sets up or looks at --

    def put(
        self,
        kind: str,
        name: str,
        *,
        owner_uid: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An object made by someone else (``owner_uid``: a MailtrapWebhook controls it)."""
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if labels:
            meta["labels"] = dict(labels)
        if owner_uid is not None:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "mailtrap.io/v1alpha1",
                    "kind": "MailtrapWebhook",
                    "name": name.removesuffix("-receiver"),
                    "uid": owner_uid,
                    "controller": True,
                }
            ]
        return self._store(kind, {"kind": kind, "metadata": meta, "spec": {"victim": True}})

    def _store(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        meta = body["metadata"]
        meta.setdefault("uid", f"uid-{kind.lower()}-{next(_uids)}")
        meta["resourceVersion"] = str(self._version)
        if kind == "Deployment":
            meta["generation"] = int(meta.get("generation") or 0) + 1
        self.objects[(kind, meta["name"])] = body
        return copy.deepcopy(body)

    def edit(self, kind: str, name: str, *, writer: str = "kubectl-edit") -> dict[str, Any]:
        """Another writer changes fields we set: they leave our entries for its own."""
        body = self.objects[(kind, name)]
        entries = body["metadata"].get("managedFields") or []
        for entry in entries:
            if entry["manager"] == FIELD_MANAGER:
                entry["fieldsV1"] = {k: v for k, v in entry["fieldsV1"].items() if k != "f:apply"}
        entries.append({"manager": writer, "operation": "Update", "fieldsV1": {"f:apply": {}}})
        body["metadata"]["managedFields"] = entries
        if kind == "Deployment":
            body["spec"]["replicas"] = int(body["spec"].get("replicas", 1)) + 1
        return self._store(kind, body)

    def remove(self, kind: str, name: str) -> dict[str, Any]:
        """Someone deletes an object; its last state, as a DELETED event carries it."""
        body = self.objects.pop((kind, name))
        self._version += 1
        body["metadata"]["resourceVersion"] = str(self._version)
        return copy.deepcopy(body)

    def _check(self) -> None:
        if self.down:
            raise ApiError(0, "Unreachable", "ConnectionRefusedError")

    # -- KubeApi --

    async def read(self, *, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        found = self.objects.get((kind.kind, name))
        return copy.deepcopy(found) if found is not None else None

    async def create(self, *, manifest: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
        self._check()
        name = manifest["metadata"]["name"]
        if self.before_write is not None:
            self.before_write("create", kind.kind)
        if (kind.kind, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{name}" already exists')
        self.writes.append(("create", kind.kind, name))
        body = copy.deepcopy(dict(manifest))
        body["metadata"]["managedFields"] = [
            {"manager": FIELD_MANAGER, "operation": "Update", "fieldsV1": _fields(body)}
        ]
        return self._store(kind.kind, body)

    async def apply(self, *, manifest: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
        self._check()
        name, uid = manifest["metadata"]["name"], manifest["metadata"].get("uid")
        if self.before_write is not None:
            self.before_write("apply", kind.kind)
        live = self.objects.get((kind.kind, name))
        if uid is not None and live is None:
            raise ApiError(
                409, "Conflict", f"uid mismatch: the provided object specified uid {uid}"
            )
        if uid is not None and live is not None and live["metadata"]["uid"] != uid:
            raise ApiError(422, "Invalid", f"metadata.uid: Invalid value: {uid!r}: immutable")
        self.writes.append(("apply", kind.kind, name))
        body = copy.deepcopy(dict(manifest))
        entries = (live or {}).get("metadata", {}).get("managedFields") or ()
        others = [entry for entry in entries if entry.get("operation") != "Apply"]
        if "replicas" not in body.get("spec", {"replicas": None}) and live is not None:
            held = any("f:replicas" in (e["fieldsV1"].get("f:spec") or {}) for e in others)
            body["spec"]["replicas"] = live["spec"].get("replicas", 1) if held else 1
        body["metadata"]["managedFields"] = [
            *others,
            {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": _fields(manifest)},
        ]
        if live is not None:
            body["metadata"]["generation"] = live["metadata"].get("generation")
        return self._store(kind.kind, body)

    async def set_managed_fields(
        self,
        *,
        kind: Kind,
        namespace: str,
        name: str,
        resource_version: str,
        entries: list[dict[str, Any]],
    ) -> dict[str, Any]:
        self._check()
        live = self.objects[(kind.kind, name)]
        if live["metadata"]["resourceVersion"] != resource_version:
            raise ApiError(409, "Conflict", "the object has been modified")
        live["metadata"]["managedFields"] = copy.deepcopy(entries)
        return self._store(kind.kind, live)

    async def delete(self, *, kind: Kind, namespace: str, name: str, uid: str) -> bool:
        self._check()
        live = self.objects.get((kind.kind, name))
        if live is None or live["metadata"]["uid"] != uid:
            return False
        self.writes.append(("delete", kind.kind, name))
        del self.objects[(kind.kind, name)]
        return True

    async def read_secret(self, *, namespace: str, name: str) -> SecretInfo | None:
        self._check()
        body = self.secrets.get(name)
        return None if body is None else SecretInfo.from_body(body)

    async def read_owner(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return {"metadata": {"name": name, "namespace": namespace, "uid": "uid-owner"}}

    async def served(self, *, kind: Kind) -> bool:
        self._check()
        return self.monitors_served

    async def patch_status(
        self, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._check()
        if self.throttled:
            raise ApiError(429, "TooManyRequests", "too many requests", retry_after=0.01)
        self.status_writes += 1
        for key, value in status.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        self._version += 1
        return {"metadata": {"resourceVersion": str(self._version)}}

    async def post_event(
        self, *, name: str, reason: str, message: str, count: int, **_: Any
    ) -> None:
        self._check()
        self.events.append((reason, message))
        self.event_counts[name] = count

    async def patch_event(self, *, namespace: str, name: str, count: int, **_: Any) -> bool:
        self._check()
        if name not in self.event_counts:
            return False
        self.event_counts[name] = count
        return True

    async def list_objects(
        self, *, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        self._check()
        items = [copy.deepcopy(body) for (k, _), body in self.objects.items() if k == kind.kind]
        if kind.kind == "MailtrapWebhook":  # one status for all: tests have one owner
            items = [{**item, "status": copy.deepcopy(self.status)} for item in items]
        return items, str(self._version)


def _fields(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a manifest sets, as much of them as the reconciler's tests look at."""
    fields: dict[str, Any] = {"f:apply": {}}
    if "replicas" in (manifest.get("spec") or {}):
        fields["f:spec"] = {"f:replicas": {}}
    return fields
