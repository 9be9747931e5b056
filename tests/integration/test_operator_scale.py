"""200 MailtrapWebhooks created at once are all reconciled, in bounded time and memory.

The operator runs as its own process for this module, so its peak resident set
size (VmHWM) is what this load cost. The time and the memory are printed (run
with ``-s`` to see them); the bounds asserted are generous, for a busy 2-core
machine: the product target is 1,000 resources in under 5 minutes and 300 MB.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import get, secret_manifest, wait_until
from tests.helpers.operator import OperatorProcess

pytestmark = pytest.mark.integration

COUNT = 200
MAX_SECONDS = 240
MAX_RSS_MIB = 300


def _resources() -> str:
    items: list[dict[str, Any]] = [json.loads(secret_manifest("signing", {"signing-secret": "x"}))]
    for index in range(COUNT):
        items.append(
            {
                "apiVersion": "mailtrap.io/v1alpha1",
                "kind": "MailtrapWebhook",
                "metadata": {"name": f"hook-{index:04d}"},
                "spec": {
                    "signingSecretRef": {"name": "signing"},
                    "replicas": 1,
                    "targets": [{"name": "a", "url": f"http://t{index}.example/events"}],
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _counts(cluster: LocalCluster, namespace: str) -> tuple[int, int]:
    items = get(cluster, "mtwh", namespace=namespace)["items"]
    reconciled = ready = 0
    for obj in items:
        status = obj.get("status") or {}
        if status.get("observedGeneration") == obj["metadata"]["generation"] and status.get(
            "configHash"
        ):
            reconciled += 1
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
            ready += conditions.get("Ready") == "True"
    return reconciled, ready


def test_200_resources_at_once(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    started = time.monotonic()
    cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=_resources())
    created = time.monotonic() - started

    wait_until(
        lambda: _counts(cluster, namespace)[0] == COUNT,
        what=f"{COUNT} reconciled resources",
        timeout=MAX_SECONDS,
        interval=1.0,
    )
    reconciled = time.monotonic() - started
    wait_until(
        lambda: _counts(cluster, namespace)[1] == COUNT,
        what=f"{COUNT} Ready resources",
        timeout=MAX_SECONDS,
        interval=1.0,
    )
    ready = time.monotonic() - started
    peak_mib = operator.memory_kib("VmHWM") / 1024
    print(
        f"\n{COUNT} MailtrapWebhooks: created by kubectl in {created:.1f}s, all reconciled "
        f"(children applied, status written) in {reconciled:.1f}s, all Ready in {ready:.1f}s; "
        f"operator peak RSS {peak_mib:.0f} MiB"
    )

    deployments = get(
        cluster,
        "deployments",
        "-l",
        "app.kubernetes.io/managed-by=mailtrap-webhook-operator",
        namespace=namespace,
    )["items"]
    assert len(deployments) == COUNT
    assert operator.metric("mailtrap_operator_reconciles_total", {"outcome": "success"}) >= COUNT
    assert operator.metric("mailtrap_operator_managed_resources") >= COUNT
    assert reconciled < MAX_SECONDS
    assert peak_mib < MAX_RSS_MIB
    assert operator.alive()
