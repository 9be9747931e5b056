"""A second writer changing a child Deployment's replicas and a child ConfigMap's data
every 200 ms for 30 s: the operator backs off, reports DriftConflict naming it, and
its writes and Events stay bounded.

Before, each edit made the operator re-apply every child, patch status and post an
Event: 735 writes in 30 s (issue 17, item 2). Now each child is repaired at once,
then after 1, 2, 4 and 8 s, and then left alone (contest.py). The bound stated and
checked: at most `DRIFT_CONFLICT_ROUNDS` repairs per child; status writes at most
one per `STATUS_REFRESH_INTERVAL` (the Deployment's counts do move, as it is scaled
back and forth) plus two for the conflicts; Event writes within the per-resource
budget (`EVENTS_PER_MINUTE`, refilled over the fight), the repeats being counts on
two Events rather than new ones.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest

from mailtrap_operator.contest import DRIFT_CONFLICT_ROUNDS
from mailtrap_operator.reconciler import STATUS_REFRESH_INTERVAL
from mailtrap_operator.recorder import EVENTS_PER_MINUTE
from tests.faults.conftest import Faults
from tests.faults.fleet import Admin, Writes, condition, manifests, wait_for

pytestmark = pytest.mark.integration

NAME = "contested"
CHILD = f"{NAME}-receiver"
WRITER = "fighter"
PERIOD = 0.2
FIGHT_SECONDS = 30
# See the module docstring.
MAX_CHILD_WRITES = DRIFT_CONFLICT_ROUNDS
MAX_STATUS_WRITES = int(FIGHT_SECONDS / STATUS_REFRESH_INTERVAL) + 2
MAX_EVENT_WRITES = int(EVENTS_PER_MINUTE * (1 + FIGHT_SECONDS / 60))
MAX_WRITES = 2 * MAX_CHILD_WRITES + MAX_STATUS_WRITES + MAX_EVENT_WRITES


def fight(admin: Admin, namespace: str, stop: threading.Event, edits: list[int]) -> None:
    """Scale the Deployment between 2 and 3 and rewrite the ConfigMap, every 200 ms."""
    count = 0
    while not stop.is_set():
        started = time.monotonic()
        replicas = 2 + count % 2
        admin.apps.patch_namespaced_deployment_scale(
            CHILD, namespace, {"spec": {"replicas": replicas}}, field_manager=WRITER
        )
        admin.core.patch_namespaced_config_map(
            CHILD, namespace, {"data": {"config.yaml": f"# edit {count}\n"}}, field_manager=WRITER
        )
        count += 2
        edits[0] = count
        stop.wait(max(0.0, PERIOD - (time.monotonic() - started)))


def test_a_writer_fighting_over_two_children_is_given_up_on_with_bounded_writes(
    faults: Faults, namespace: str
) -> None:
    cluster = faults.cluster
    admin = Admin(cluster)
    try:
        with faults.operator("fight"):
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=manifests([NAME]))
            wait_for(
                lambda: admin.fleet(namespace).all_ready(), what="the resource Ready", timeout=120
            )
            writes = Writes(cluster, faults.user).mark()
            stop = threading.Event()
            edits = [0]
            fighter = threading.Thread(target=fight, args=(admin, namespace, stop, edits))
            started = time.monotonic()
            fighter.start()
            try:
                conflict_after = wait_for(
                    lambda: (
                        condition(admin.resource(namespace, NAME), "Degraded").get("reason")
                        == "DriftConflict"
                    ),
                    what="DriftConflict",
                    timeout=FIGHT_SECONDS,
                )
                time.sleep(max(0.0, FIGHT_SECONDS - (time.monotonic() - started)))
            finally:
                stop.set()
                fighter.join()
            writes.read(namespace=namespace)
            resource = admin.resource(namespace, NAME)
            events = admin.events(namespace)

        degraded = condition(resource, "Degraded")
        counted: collections.Counter[str] = collections.Counter()
        for event in events:
            if event["involvedObject"]["name"] == NAME:
                counted[event["reason"]] += event.get("count") or 1
        print(
            f"\n{edits[0]} edits by {WRITER!r} in {FIGHT_SECONDS}s; DriftConflict after "
            f"{conflict_after:.1f}s. Operator: {writes} (bound {MAX_WRITES}). "
            f"Events (reason: occurrences): {dict(counted)}"
        )
        assert (degraded["status"], degraded["reason"]) == ("True", "DriftConflict")
        assert f'"{WRITER} (scale)"' in degraded["message"]
        assert f'"{WRITER}"' in degraded["message"]
        assert f"Deployment {CHILD}" in degraded["message"]
        assert f"ConfigMap {CHILD}" in degraded["message"]
        # The receiver still runs: Ready follows its Pods, not the conflict.
        assert condition(resource, "Ready").get("reason") != "DriftConflict"
        assert writes.total("deployments") <= MAX_CHILD_WRITES
        assert writes.total("configmaps") <= MAX_CHILD_WRITES
        assert writes.total("mailtrapwebhooks/status") <= MAX_STATUS_WRITES
        assert writes.total("events") <= MAX_EVENT_WRITES
        assert writes.total() <= MAX_WRITES
        assert counted.get("Restored", 0) >= 2 * DRIFT_CONFLICT_ROUNDS - 1  # counted, not posted
    finally:
        admin.close()


def test_replicas_handed_to_an_autoscaler_are_not_fought_over(
    faults: Faults, namespace: str
) -> None:
    """spec.replicasManagedExternally: turned on for a running Deployment, its replicas
    are kept (not reset to the default of 1), and an autoscaler's changes (through the
    scale subresource, as a HorizontalPodAutoscaler makes them) are not drift."""
    cluster = faults.cluster
    admin = Admin(cluster)
    try:
        with faults.operator("autoscaled"):
            text = manifests(["scaled"], replicas=2, podDisruptionBudget={"enabled": False})
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=text)
            wait_for(lambda: admin.fleet(namespace).all_ready(), what="Ready", timeout=120)
            cluster.kubectl(
                "-n", namespace, "patch", "mtwh", "scaled", "--type=merge",
                "-p", '{"spec": {"replicasManagedExternally": true}}',
            )  # fmt: skip
            wait_for(
                lambda: admin.fleet(namespace).all_ready(), what="the new generation", timeout=60
            )
            deployment = admin.fleet(namespace).child("deployment", "scaled") or {}
            assert deployment["spec"]["replicas"] == 2  # handed over, not reset to 1
            writes = Writes(cluster, faults.user).mark()
            for replicas in (3, 4, 3):
                admin.apps.patch_namespaced_deployment_scale(
                    "scaled-receiver", namespace, {"spec": {"replicas": replicas}},
                    field_manager="horizontal-pod-autoscaler",
                )  # fmt: skip
                time.sleep(1)
            time.sleep(3)
            writes.read(namespace=namespace)
            resource = admin.resource(namespace, "scaled")
            deployment = admin.fleet(namespace).child("deployment", "scaled") or {}
        print(f"\nan autoscaler's three scalings; operator: {writes}")
        assert deployment["spec"]["replicas"] == 3
        assert writes.total("deployments") == 0  # nothing put back
        assert condition(resource, "Degraded").get("status") == "False"
    finally:
        admin.close()
