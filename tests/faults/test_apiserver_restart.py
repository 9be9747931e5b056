"""kube-apiserver SIGKILLed for about 10 s under 50 resources: what was deleted while it
was down, or right after it came back, is repaired within seconds.

Watches miss what changes while they are down: before the resync, such children
stayed missing for good, and a resource whose Deployment was gone kept saying
Ready=True (issue 17, item 1). During the outage, deletions go through a second
API server on the same etcd, as in a highly available control plane; right after
the first one is back, through it. The operator runs with the default resync
period (5 minutes), so repairs within a minute come from the re-lists that follow
the API server's return, not from the period.
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests.faults.conftest import Faults
from tests.faults.fleet import Admin, Fleet, Writes, manifests, wait_for

pytestmark = pytest.mark.integration

COUNT = 50
DOWN_SECONDS = 10
# A bound well under the default resync period: only the recovery re-lists meet it.
MAX_REPAIR_SECONDS = 60
NAMES = [f"hook-{index:02d}" for index in range(COUNT)]
# (kind, resource) deleted while the API server is down, then right after it is back.
DURING = [("configmap", name) for name in NAMES[0:5]] + [
    ("deployment", name) for name in NAMES[5:10]
]
AFTER = [("configmap", name) for name in NAMES[10:15]] + [
    ("deployment", name) for name in NAMES[15:20]
]


def summary(times: list[float]) -> str:
    return f"min {min(times):.1f}s, median {statistics.median(times):.1f}s, max {max(times):.1f}s"


def test_children_deleted_during_and_right_after_an_outage_come_back(
    faults: Faults, namespace: str
) -> None:
    cluster = faults.cluster
    admin = Admin(cluster)
    try:
        with faults.operator("restart"):
            cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=manifests(NAMES))
            wait_for(
                lambda: (
                    len(admin.fleet(namespace).resources) == COUNT
                    and admin.fleet(namespace).all_ready()
                ),
                what=f"{COUNT} Ready resources",
                timeout=240,
                interval=1.0,
            )
            before = {
                (kind, name): admin.fleet(namespace).child(kind, name)["metadata"]["uid"]  # type: ignore[index]
                for kind, name in DURING + AFTER
            }
            writes = Writes(cluster, faults.user).mark()

            with faults.apiserver.peer() as peer:
                other = Admin(cluster, server=peer)
                try:
                    faults.apiserver.kill()
                    down_at = time.monotonic()
                    deleted_at = {}
                    for kind, name in DURING:
                        other.delete(kind, namespace, f"{name}-receiver")
                        deleted_at[kind, name] = time.monotonic()
                finally:
                    other.close()
                time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
                faults.apiserver.start()
            back_at = time.monotonic()
            for kind, name in AFTER:
                admin.delete(kind, namespace, f"{name}-receiver")
                deleted_at[kind, name] = time.monotonic()

            repaired_at: dict[tuple[str, str], float] = {}
            bad_ready: set[str] = set()

            def all_repaired() -> bool:
                fleet: Fleet = admin.fleet(namespace)
                now = time.monotonic()
                for key in deleted_at:
                    found = fleet.child(*key)
                    if key not in repaired_at and found and found["metadata"]["uid"] != before[key]:
                        repaired_at[key] = now
                bad_ready.update(fleet.ready_without_deployment())
                return len(repaired_at) == len(deleted_at)

            wait_for(all_repaired, what="every deleted child to come back", timeout=180)
            fleet = admin.fleet(namespace)
            wait_for(
                lambda: admin.fleet(namespace).all_ready(),
                what="every resource Ready again",
                timeout=120,
                interval=1.0,
            )
            writes.read()

        during = [repaired_at[key] - back_at for key in DURING]
        after = [repaired_at[key] - deleted_at[key] for key in AFTER]
        print(
            f"\nkube-apiserver down {back_at - down_at:.1f}s with {COUNT} resources: "
            f"{len(DURING)} children deleted during the outage back {summary(during)} after "
            f"it answered again; {len(AFTER)} deleted right after it came back, repaired "
            f"{summary(after)} after their deletion. Operator: {writes}"
        )
        assert max(during + after) < MAX_REPAIR_SECONDS
        # Nothing says Ready while its Deployment is missing, once repairs are done.
        assert fleet.ready_without_deployment() == []
        # Briefly, between a deletion and its repair, a status may still say Ready;
        # what matters is that none stayed so (checked above, and all are Ready now).
        print(f"seen Ready without a Deployment while repairs ran: {sorted(bad_ready)}")
    finally:
        admin.close()
