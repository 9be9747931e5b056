"""Owner references under OwnerReferencesPermissionEnforcement, on the chart's RBAC:
children left by an orphaning delete are adopted by the re-created resource, a child
whose owner reference was removed is taken back, and a name deleted and created
again quickly converges; none of it ends in Forbidden (issue 17, item 3).

Also spec.suspend, which must leave such changes alone until it is unset.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.conftest import Faults
from tests.faults.fleet import Admin, condition, manifests, wait_for

pytestmark = pytest.mark.integration

CHILDREN = ("configmap", "deployment")


def forbidden_seen(admin: Admin, namespace: str) -> list[str]:
    return [
        f"{event['reason']}: {event['message']}"
        for event in admin.events(namespace)
        if event["reason"] == "Forbidden" or "Forbidden" in event.get("message", "")
    ]


def uids(admin: Admin, namespace: str, name: str) -> dict[str, str]:
    fleet = admin.fleet(namespace)
    return {kind: fleet.child(kind, name)["metadata"]["uid"] for kind in CHILDREN}  # type: ignore[index]


def owner_uids(admin: Admin, namespace: str, name: str) -> set[str]:
    fleet = admin.fleet(namespace)
    return {
        ref["uid"]
        for kind in CHILDREN
        for ref in (fleet.child(kind, name) or {}).get("metadata", {}).get("ownerReferences") or ()
    }


def ready(admin: Admin, namespace: str, name: str) -> bool:
    fleet = admin.fleet(namespace)
    return name in fleet.resources and fleet.ready(name)


def owned(admin: Admin, namespace: str, name: str, uid: str) -> bool:
    """Whether the resource is Ready and every child has it, by ``uid``, as owner."""
    return ready(admin, namespace, name) and owner_uids(admin, namespace, name) == {uid}


def test_orphaned_children_are_adopted_and_a_removed_reference_is_put_back(
    faults: Faults, namespace: str
) -> None:
    cluster, admin = faults.cluster, Admin(faults.cluster)
    try:
        with faults.operator("adoption"):
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=manifests(["moved"]))
            wait_for(lambda: ready(admin, namespace, "moved"), what="Ready", timeout=120)
            before = uids(admin, namespace, "moved")

            # Moved as people move a resource: deleted leaving its children, made again.
            cluster.kubectl("-n", namespace, "delete", "mtwh", "moved", "--cascade=orphan")
            started = time.monotonic()
            cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=manifests(["moved"]))
            new_uid = admin.resource(namespace, "moved")["metadata"]["uid"]
            wait_for(
                lambda: owned(admin, namespace, "moved", new_uid),
                what="the re-created resource Ready, owning its old children",
                timeout=120,
            )
            adopted = time.monotonic() - started
            assert uids(admin, namespace, "moved") == before  # the same objects, adopted

            # An owner reference removed by hand is put back on the same object.
            cluster.kubectl(
                "-n", namespace, "patch", "deployment", "moved-receiver", "--type=json",
                "-p", json.dumps([{"op": "remove", "path": "/metadata/ownerReferences"}]),
            )  # fmt: skip
            started = time.monotonic()
            wait_for(
                lambda: owner_uids(admin, namespace, "moved") == {new_uid},
                what="the owner reference back",
                timeout=60,
            )
            referenced = time.monotonic() - started
            assert uids(admin, namespace, "moved") == before
            wait_for(
                lambda: any(
                    "its owner reference was removed" in event.get("message", "")
                    for event in admin.events(namespace)
                ),
                what="a Restored Event saying the reference was removed",
                timeout=30,
            )
            assert forbidden_seen(admin, namespace) == []
        print(
            f"\nadopted after an orphaning delete and re-create in {adopted:.1f}s; "
            f"a removed owner reference put back in {referenced:.1f}s"
        )
    finally:
        admin.close()


def test_a_name_deleted_and_made_again_quickly_converges(faults: Faults, namespace: str) -> None:
    cluster, admin = faults.cluster, Admin(faults.cluster)
    try:
        with faults.operator("recreate"):
            text = manifests(["again"])
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=text)
            wait_for(lambda: ready(admin, namespace, "again"), what="Ready", timeout=120)
            started = time.monotonic()
            for _ in range(5):
                cluster.kubectl("-n", namespace, "delete", "mtwh", "again", "--wait=false")
                cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=text)
            last = admin.resource(namespace, "again")["metadata"]["uid"]
            wait_for(
                lambda: owned(admin, namespace, "again", last),
                what="the last resource Ready, owning its children",
                timeout=180,
            )
            converged = time.monotonic() - started
            degraded = condition(admin.resource(namespace, "again"), "Degraded")
            assert degraded["status"] == "False"
            assert forbidden_seen(admin, namespace) == []
        print(f"\n5 quick delete-and-create cycles of one name converged in {converged:.1f}s")
    finally:
        admin.close()


def test_a_suspended_resource_is_left_alone_until_it_is_resumed(
    faults: Faults, namespace: str
) -> None:
    cluster, admin = faults.cluster, Admin(faults.cluster)
    try:
        # A short resync period, to see that the re-lists leave it alone too.
        with faults.operator("suspend", MAILTRAP_OPERATOR_RESYNC_PERIOD="1"):
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=manifests(["paused"]))
            wait_for(lambda: ready(admin, namespace, "paused"), what="Ready", timeout=120)
            cluster.kubectl(
                "-n", namespace, "patch", "mtwh", "paused", "--type=merge",
                "-p", json.dumps({"spec": {"suspend": True, "replicas": 2}}),
            )  # fmt: skip
            wait_for(
                lambda: (
                    condition(admin.resource(namespace, "paused"), "Progressing").get("reason")
                    == "Suspended"
                ),
                what="Suspended",
                timeout=60,
            )
            admin.delete("configmap", namespace, "paused-receiver")
            time.sleep(4)  # several resync periods, and the watch event
            fleet = admin.fleet(namespace)
            assert fleet.child("configmap", "paused") is None
            assert fleet.child("deployment", "paused")["spec"]["replicas"] == 1  # type: ignore[index]
            assert condition(fleet.resources["paused"], "Ready")["reason"] == "Suspended"
            wide = cluster.kubectl("-n", namespace, "get", "mtwh", "paused", "-o", "wide").stdout
            assert wide.splitlines()[1].split()[-1] == "true"

            cluster.kubectl(
                "-n", namespace, "patch", "mtwh", "paused", "--type=merge",
                "-p", json.dumps({"spec": {"suspend": False}}),
            )  # fmt: skip
            wait_for(
                lambda: (
                    admin.fleet(namespace).child("configmap", "paused") is not None
                    and admin.fleet(namespace).child("deployment", "paused")["spec"]["replicas"]
                    == 2
                ),  # type: ignore[index]
                what="the resumed resource's children as its spec says",
                timeout=60,
            )
            wait_for(lambda: ready(admin, namespace, "paused"), what="Ready again", timeout=120)
    finally:
        admin.close()
