"""Attack 1: a tenant names its MailtrapWebhook after another team's objects.

Before (issue 10): the operator server-side applied with force to
``<name>-receiver`` whatever was there. On the chart's RBAC the Ingress,
NetworkPolicy and PodDisruptionBudget of the victim got the tenant's rules,
selector and an owner reference (so deleting the MailtrapWebhook garbage-collected
them), and a ServiceMonitor of that name was deleted on the first reconcile. Now
nothing the resource does not control is written or deleted: it is a reported
ChildConflict. The API server's part of that (an apply or delete through a uid that
is not the live object's is refused) is proven here too, with the operator's own
client.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailtrap_operator.kubeapi import ApiError
from mailtrap_operator.resources import CONFIG_MAP
from tests.helpers.chart import service_monitor_crd
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import condition, get, wait_until
from tests.helpers.operator import OperatorProcess, wait_ready
from tests.security.conftest import Tenant
from tests.security.tenancy import (
    degraded,
    operator_client,
    put,
    signing_secret,
    warning_events,
    webhook,
)

pytestmark = pytest.mark.integration

VICTIM = "payments"
CHILD = f"{VICTIM}-receiver"
# Another team's objects, named as the operator would name the children of a
# MailtrapWebhook called "payments".
VICTIMS: dict[str, dict[str, Any]] = {
    "configmap": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"settings": "victim"}},
    "service": {
        "apiVersion": "v1",
        "kind": "Service",
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]},
    },
    "ingress": {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "spec": {
            "rules": [
                {
                    "host": "pay.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {"name": "payments", "port": {"number": 80}}
                                },
                            }
                        ]
                    },
                }
            ]
        },
    },
    "networkpolicy": {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "spec": {
            "podSelector": {"matchLabels": {"app": "payments"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}],
        },
    },
    "poddisruptionbudget": {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "payments"}}},
    },
    "servicemonitor": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "spec": {"selector": {"matchLabels": {"app": "payments"}}},
    },
}
# What the tenant asks for: every optional child but the ServiceMonitor, which the
# operator would delete as unwanted.
ATTACK = {
    "replicas": 2,
    "ingress": {"enabled": True, "host": "pay.example.com"},
    "networkPolicy": {"enabled": True},
}


@pytest.fixture(scope="module", autouse=True)
def service_monitors(cluster: LocalCluster) -> Iterator[None]:
    """The ServiceMonitor kind, served before the module's operator starts."""
    with service_monitor_crd(cluster):
        yield


def plant(cluster: LocalCluster, namespace: str, *kinds: str) -> dict[str, dict[str, Any]]:
    """The victims of ``kinds`` in ``namespace``, as stored."""
    return {
        kind: put(cluster, namespace, {**copy.deepcopy(VICTIMS[kind]), "metadata": {"name": CHILD}})
        for kind in kinds
    }


def untouched(cluster: LocalCluster, namespace: str, before: dict[str, dict[str, Any]]) -> None:
    for kind, victim in before.items():
        now = get(cluster, kind, CHILD, namespace=namespace)
        assert now is not None, f"the victim {kind} was deleted"
        assert now["metadata"]["uid"] == victim["metadata"]["uid"], kind
        assert now["metadata"]["resourceVersion"] == victim["metadata"]["resourceVersion"], kind
        assert not now["metadata"].get("ownerReferences"), kind


def test_a_name_held_by_another_teams_objects_is_reported_never_taken_over(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    signing_secret(cluster, tenant.namespace)
    victims = plant(cluster, tenant.namespace, *VICTIMS)
    created = tenant.apply(webhook(VICTIM, **ATTACK))
    assert created.returncode == 0, created.stderr

    obj = degraded(cluster, tenant.namespace, VICTIM, "ChildConflict")
    message = condition(obj, "Degraded")["message"]
    for kind in ("ConfigMap", "Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"):
        assert f'{kind} "{CHILD}" exists and is not controlled by this MailtrapWebhook' in message
    assert "it has no controller" in message
    assert condition(obj, "Ready")["status"] == "False"
    wait_until(
        lambda: any(e["reason"] == "ChildConflict" for e in warning_events(
            cluster, tenant.namespace, VICTIM)),
        what="a ChildConflict Warning Event",
    )  # fmt: skip
    # Nothing applied at all: not even the Deployment, whose name was free.
    assert get(cluster, "deployment", CHILD, namespace=tenant.namespace) is None
    untouched(cluster, tenant.namespace, victims)

    # Deleting the resource takes nothing with it: no victim got an owner reference.
    assert tenant.kubectl("delete", "mtwh", VICTIM, "--wait=true").returncode == 0
    time.sleep(5)  # what garbage collection would have needed to act
    untouched(cluster, tenant.namespace, victims)


def test_another_teams_service_monitor_is_left_alone(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    # The tenant wants no ServiceMonitor; the operator used to delete one of that name.
    signing_secret(cluster, tenant.namespace)
    victims = plant(cluster, tenant.namespace, "servicemonitor")
    assert tenant.apply(webhook(VICTIM)).returncode == 0
    obj = wait_ready(cluster, tenant.namespace, VICTIM)
    untouched(cluster, tenant.namespace, victims)
    # Switching it on is a conflict, not a takeover.
    patch = json.dumps({"spec": {"serviceMonitor": {"enabled": True}}})
    assert tenant.kubectl("patch", "mtwh", VICTIM, "--type=merge", "-p", patch).returncode == 0
    degraded(cluster, tenant.namespace, VICTIM, "ChildConflict")
    untouched(cluster, tenant.namespace, victims)
    deployment = get(cluster, "deployment", CHILD, namespace=tenant.namespace)
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]


def test_the_other_object_going_away_lets_the_resource_become_ready(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    signing_secret(cluster, tenant.namespace)
    plant(cluster, tenant.namespace, "service")
    assert tenant.apply(webhook(VICTIM)).returncode == 0
    degraded(cluster, tenant.namespace, VICTIM, "ChildConflict")
    cluster.kubectl("-n", tenant.namespace, "delete", "service", CHILD)
    # Retried with backoff (5 s, 10 s, 20 s ...): no one needs to touch the resource.
    obj = wait_ready(cluster, tenant.namespace, VICTIM)
    assert obj["metadata"]["generation"] == 1
    service = get(cluster, "service", CHILD, "--show-managed-fields", namespace=tenant.namespace)
    assert service["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    # What the operator created, server-side apply owns (and so can remove later).
    managers = {(m["manager"], m["operation"]) for m in service["metadata"]["managedFields"]}
    assert ("mailtrap-webhook-operator", "Update") not in managers
    assert ("mailtrap-webhook-operator", "Apply") in managers


def test_the_api_server_refuses_writes_through_a_uid_it_does_not_hold(
    cluster: LocalCluster, tenant: Tenant
) -> None:
    # What ownership relies on, with the operator's own client on the real API server.
    api = operator_client(cluster.admin_kubeconfig)
    namespace = tenant.namespace
    [victim] = plant(cluster, namespace, "configmap").values()

    def manifest(uid: str, name: str = CHILD) -> dict[str, Any]:
        meta = {"name": name, "namespace": namespace, "uid": uid}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"x": "y"}}

    async def attempts() -> list[ApiError | bool | None]:
        found: list[ApiError | bool | None] = []
        for call in (
            # an apply through another object's uid: the live object is not that one
            api.apply(manifest=manifest("00000000-0000-0000-0000-000000000001"), kind=CONFIG_MAP),
            # an apply through a uid on a free name: not created
            api.apply(manifest=manifest("00000000-0000-0000-0000-000000000002", "free"),
                      kind=CONFIG_MAP),
            # a create of a taken name
            api.create(manifest=manifest("", CHILD), kind=CONFIG_MAP),
        ):  # fmt: skip
            try:
                await call
                found.append(None)
            except ApiError as error:
                found.append(error)
        found.append(
            await api.delete(
                kind=CONFIG_MAP,
                namespace=namespace,
                name=CHILD,
                uid="00000000-0000-0000-0000-000000000003",
            )
        )
        return found

    try:
        stale, free, taken, deleted = asyncio.run(attempts())
    finally:
        api.close()
    assert isinstance(stale, ApiError)
    assert (stale.status, stale.uid_mismatch, stale.rejected) == (422, True, False), stale
    assert isinstance(free, ApiError)
    assert (free.status, free.uid_mismatch) == (409, True), free
    assert isinstance(taken, ApiError)
    assert taken.already_exists, taken
    assert deleted is False
    untouched(cluster, namespace, {"configmap": victim})
    assert get(cluster, "configmap", "free", namespace=namespace) is None
