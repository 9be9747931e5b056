"""kopf handlers: the glue between watch events and the `reconciler`.

Importing this module registers the handlers on kopf's default registry;
`cli` imports it and runs kopf with `kopf_settings`. Handlers do no work of
their own: they read kopf's in-memory indexes and call the `Reconciler` kept in
kopf's ``memo``.

- MailtrapWebhooks: create, update and resume all reconcile; a returned
  problem becomes a retry with backoff (``kopf.TemporaryError``) or, for an
  invalid spec, none until the spec changes (``kopf.PermanentError``). No
  deletion handler and so no finalizer: owner references let the garbage
  collector delete the children.
- Children (ConfigMaps, Services, Deployments, Ingresses, PodDisruptionBudgets,
  NetworkPolicies), watched with the managed-by label as a server-side selector:
  drift repair and Deployment status -> owner status.

Secrets are not watched: see `reconciler` for why nothing needs to be.

At start, the reconciler gets kopf's indexes (for work it does in the background)
and `resync` starts its loop, which re-lists children every resync period and
after API outages.

Two indexes answer "who owns what" without reading the API: owners by
(namespace, name), and children (with their uid and their controller's uid) by
owner, which `reconciler` checks before it writes any child (see `ownership`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf

from .reconciler import ChildRef, Lookups, Reconciler, retry_delay
from .resources import (
    GROUP,
    KOPF_ANNOTATION_PREFIX,
    MANAGED_BY_SELECTOR,
    OPERATOR_NAME,
    PLURAL,
    VERSION,
    WATCHED_CHILD_KINDS,
    Owner,
    OwnerKey,
    controller_owner,
)
from .resync import Resync
from .settings import Settings

MTWH: Final = (GROUP, VERSION, PLURAL)
MANAGED_LABELS: Final = {MANAGED_BY_SELECTOR.split("=")[0]: MANAGED_BY_SELECTOR.split("=")[1]}
WATCHED_CHILDREN: Final = WATCHED_CHILD_KINDS
# kopf's own requests in flight (patches of its annotations), beside the watches.
REQUEST_CONNECTIONS: Final = 24


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings for this operator: quiet, annotation-based, least privilege."""
    config = kopf.OperatorSettings()
    # We post our own Events, with reasons people can act on.
    config.posting.enabled = False
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_ANNOTATION_PREFIX
    )
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Never added (there is no deletion handler), but named as ours if it ever is.
    config.persistence.finalizer = f"{KOPF_ANNOTATION_PREFIX}/finalizer"
    # One discovery at start instead of watching CRDs and namespaces: no
    # cluster-wide read permissions beyond the kinds we handle.
    config.scanning.disabled = True
    # Reconnect watches regularly: a silently dead connection must not stall us.
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.watching.connect_timeout = 10
    for kind in WATCHED_CHILDREN:
        config.watching.label_selectors[kind.group, kind.version, kind.plural] = MANAGED_BY_SELECTOR
    config.peering.standalone = settings.standalone
    config.peering.clusterwide = settings.clusterwide
    if settings.peering_name:
        config.peering.name = settings.peering_name
    config.peering.priority = settings.priority
    config.posting.reporting_component = OPERATOR_NAME
    config.process.ultimate_exiting_timeout = 30
    return config


def _reconciler(memo: Any) -> Reconciler:
    reconciler = getattr(memo, "reconciler", None)
    if not isinstance(reconciler, Reconciler):
        raise kopf.PermanentError("the operator was started without its reconciler in memo")
    return reconciler


@dataclass(frozen=True)
class _Indexes:
    """kopf's indexes, which it passes to handlers as keyword arguments by name."""

    owners: kopf.Index[OwnerKey, Owner]
    children: kopf.Index[OwnerKey, ChildRef]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> _Indexes:
        return cls(
            owners=kwargs["mtwh_owners"],
            children=kwargs["mtwh_children"],
        )

    def owner(self, key: OwnerKey) -> Owner | None:
        found: Owner | None = next(iter(self.owners.get(key, ())), None)
        return found

    def children_of(self, key: OwnerKey) -> Iterable[ChildRef]:
        return tuple(self.children.get(key, ()))

    def all_children(self) -> list[ChildRef]:
        return [child for store in self.children.values() for child in store]


# --- starting ---------------------------------------------------------------------


@kopf.on.startup()
async def start(*, memo: Any, **kwargs: Any) -> None:
    """Hand kopf's indexes to the reconciler and start the resync loop."""
    indexes = _Indexes.of(kwargs)
    reconciler = _reconciler(memo)
    reconciler.bind(Lookups(indexes.owner, indexes.children_of))
    resync = Resync(
        reconciler=reconciler, settings=reconciler.settings, indexed=indexes.all_children
    )
    reconciler.start(resync.run())


# --- connecting -----------------------------------------------------------------------


@kopf.on.login()
async def login(*, memo: Any, **kwargs: Any) -> kopf.AiohttpSession | None:
    """The client library's credentials (in-cluster or $KUBECONFIG), on a bounded pool."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    reconciler = _reconciler(memo)
    return reconciler.api.kopf_session(info, limit=connection_limit(reconciler.settings))


def connection_limit(settings: Settings) -> int:
    """Room for kopf's watches (one per kind, per namespace) plus requests in flight."""
    watches_per_namespace = len(WATCHED_CHILDREN) + 2  # + MailtrapWebhooks, peering
    return watches_per_namespace * max(1, len(settings.namespaces)) + REQUEST_CONNECTIONS


# --- indexes ------------------------------------------------------------------------


@kopf.index(*MTWH)
def mtwh_owners(*, body: kopf.Body, **_: Any) -> dict[OwnerKey, Owner]:
    owner = Owner.from_body(body)
    return {owner.key: owner}


def mtwh_children(
    *, body: kopf.Body, name: str, resource: kopf.Resource, **_: Any
) -> dict[OwnerKey, ChildRef]:
    owner = controller_owner(body)
    if owner is None:
        # Empty, not None: kopf keeps an object's earlier entries when the function
        # returns None, and a child orphaned since would still read as controlled.
        return {}
    uid = str((body.get("metadata") or {}).get("uid") or "")
    return {owner[0]: ChildRef(str(resource.kind), name, uid, owner[1])}


# --- MailtrapWebhooks ---------------------------------------------------------------


@kopf.on.resume(*MTWH)
@kopf.on.create(*MTWH)
@kopf.on.update(*MTWH)
async def reconcile(*, body: kopf.Body, reason: str, retry: int, memo: Any, **kwargs: Any) -> None:
    owner = Owner.from_body(body)
    problem = await _reconciler(memo).reconcile(
        owner=owner,
        known_children=_Indexes.of(kwargs).children_of(owner.key),
        trigger=str(reason),
    )
    if problem is None:
        return
    if problem.permanent:
        raise kopf.PermanentError(f"{problem.reason}: {problem.message}")
    raise kopf.TemporaryError(
        f"{problem.reason}: {problem.message}", delay=retry_delay(retry, problem)
    )


@kopf.on.event(*MTWH)
def mtwh_event(
    *, type: str | None, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    _reconciler(memo).on_owner_event(
        event_type=type, key=(namespace or "", name), managed=len(_Indexes.of(kwargs).owners)
    )


# --- children -----------------------------------------------------------------------


async def child_event(
    *, type: str | None, body: kopf.Body, resource: kopf.Resource, memo: Any, **kwargs: Any
) -> None:
    indexes = _Indexes.of(kwargs)
    _reconciler(memo).observe_child(
        kind=str(resource.kind),
        event_type=type,
        body=body,
        find_owner=indexes.owner,
        known_children=indexes.children_of,
    )


for _kind in WATCHED_CHILDREN:
    kopf.index(_kind.group, _kind.version, _kind.plural, id="mtwh_children", labels=MANAGED_LABELS)(
        mtwh_children
    )
    kopf.on.event(
        _kind.group, _kind.version, _kind.plural, id="child_event", labels=MANAGED_LABELS
    )(child_event)
