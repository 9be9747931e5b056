"""Names and coordinates of the Kubernetes resources the operator deals with.

One table of kinds (API group, version, plural) shared by the pure builders
(`builders`), the only module that talks to the API server (`kubeapi`) and the
kopf registrations (`handlers`), so a kind is spelled the same way everywhere.
`Owner` is the read-only view of one MailtrapWebhook that everything else is
given instead of a raw kopf body.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

GROUP: Final = "mailtrap.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "MailtrapWebhook"
PLURAL: Final = "mailtrapwebhooks"

# Who we are to the API server (field manager, event source) and to people
# reading labels.
OPERATOR_NAME: Final = "mailtrap-webhook-operator"
FIELD_MANAGER: Final = OPERATOR_NAME

# Annotations written by kopf for its own bookkeeping (progress of retried
# handlers, the last handled spec). Our own prefix, so they read as ours.
KOPF_ANNOTATION_PREFIX: Final = "operator.mailtrap.io"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
APP_NAME: Final = "mailtrap-receiver"
PART_OF: Final = "mailtrap-webhook"
MANAGED_BY_SELECTOR: Final = f"{LABEL_MANAGED_BY}={OPERATOR_NAME}"


@dataclass(frozen=True)
class Kind:
    """Where one kind of object lives in the API."""

    kind: str
    group: str
    version: str
    plural: str
    watched: bool = True  # whether handlers watch it for drift (see handlers)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str, name: str | None = None) -> str:
        """The REST path of a namespaced object (or of the collection when no name).

        Names come from specs that tenants write: each is one escaped path segment,
        so a name such as ``../../other/secrets/x`` can never address anything
        outside ``namespace`` (the CRD's patterns refuse such names first).
        """
        path = f"{self.api_root}/namespaces/{_segment(namespace)}/{self.plural}"
        return f"{path}/{_segment(name)}" if name is not None else path

    def list_path(self, *, namespace: str | None) -> str:
        """The collection in one namespace, or in every namespace when None."""
        if namespace is None:
            return f"{self.api_root}/{self.plural}"
        return self.path(namespace=namespace)

    @property
    def api_root(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


def _segment(value: str) -> str:
    # "." and ".." survive percent-encoding and are dot segments to URL normalisation.
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not an object or namespace name")
    return quote(value, safe="")


CONFIG_MAP: Final = Kind("ConfigMap", "", "v1", "configmaps")
SERVICE: Final = Kind("Service", "", "v1", "services")
DEPLOYMENT: Final = Kind("Deployment", "apps", "v1", "deployments")
INGRESS: Final = Kind("Ingress", "networking.k8s.io", "v1", "ingresses")
POD_DISRUPTION_BUDGET: Final = Kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets")
NETWORK_POLICY: Final = Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies")
# Not watched: the CRD may be missing when the operator starts, and kopf would
# then have nothing to watch. Reconciles still apply and prune it.
SERVICE_MONITOR: Final = Kind(
    "ServiceMonitor", "monitoring.coreos.com", "v1", "servicemonitors", watched=False
)

CHILD_KINDS: Final[tuple[Kind, ...]] = (
    CONFIG_MAP,
    SERVICE,
    DEPLOYMENT,
    INGRESS,
    POD_DISRUPTION_BUDGET,
    NETWORK_POLICY,
    SERVICE_MONITOR,
)
KINDS_BY_NAME: Final[Mapping[str, Kind]] = {kind.kind: kind for kind in CHILD_KINDS}
WATCHED_CHILD_KINDS: Final[tuple[Kind, ...]] = tuple(kind for kind in CHILD_KINDS if kind.watched)

MAILTRAP_WEBHOOK: Final = Kind(KIND, GROUP, VERSION, PLURAL, watched=False)
SECRET: Final = Kind("Secret", "", "v1", "secrets", watched=False)
EVENT: Final = Kind("Event", "", "v1", "events", watched=False)

OwnerKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Owner:
    """One MailtrapWebhook as the operator works from it: a snapshot, never live."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)
    deleting: bool = False
    resource_version: str = ""

    @property
    def key(self) -> OwnerKey:
        return (self.namespace, self.name)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        """Snapshot a kopf body (or any dict of the object): later events do not change it."""
        meta = body.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
            deleting=meta.get("deletionTimestamp") is not None,
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def owner_reference(self) -> dict[str, Any]:
        """The reference every child carries: garbage collection deletes them with us."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def controller_owner(body: Mapping[str, Any]) -> tuple[OwnerKey, str] | None:
    """The MailtrapWebhook (key and uid) that controls a child, from its ownerReferences."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == (API_VERSION)
        ):
            return (str(meta.get("namespace", "")), str(ref.get("name", ""))), str(
                ref.get("uid", "")
            )
    return None


# The label by which whoever may write a Secret lets MailtrapWebhooks use it (see
# `reconciler.secret_problem`): a tenant who cannot write a Secret cannot add it.
SECRET_OPT_IN_LABEL: Final = "mailtrap.io/webhook-secret"  # noqa: S105 - a label key
SECRET_OPT_IN_VALUE: Final = "true"  # noqa: S105 - its value


@dataclass(frozen=True)
class SecretInfo:
    """What a reconcile learns of a referenced Secret: its key names and whether it
    opted in. Never its values: the receiver reads those from its mounted files."""

    keys: frozenset[str]
    opted_in: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecretInfo:
        labels = (body.get("metadata") or {}).get("labels") or {}
        return cls(
            keys=frozenset(str(key) for key in body.get("data") or {}),
            opted_in=labels.get(SECRET_OPT_IN_LABEL) == SECRET_OPT_IN_VALUE,
        )
