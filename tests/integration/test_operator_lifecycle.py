"""How the real operator keeps children in line with the spec on a real control plane.

Spec changes, secret rotation (which rolls nothing) and unrelated changes against
the pod-template hash; children deleted or edited by hand; deletion of the
resource; readiness following the (simulated) Pods; a missing, unlabelled or
incomplete Secret; optional children switched on and off; a ServiceMonitor once
its CRD exists. Each test has its own namespace.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import chart
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, condition, get, secret_manifest, wait_until
from tests.helpers.operator import (
    OperatorProcess,
    config_hash,
    events,
    wait_ready,
    wait_reconciled,
)

pytestmark = pytest.mark.integration

# The ServiceMonitor test installs that CRD mid-module: check for it every second.
# The pod label and annotation the tests set are allowed by the platform's policy
# (kwok reads test.mailtrap.io/not-ready to keep a Pod not Ready).
OPERATOR_ARGS = [
    "--discovery-ttl=1",
    "--allowed-pod-labels=team",
    "--allowed-pod-annotations=test.mailtrap.io/not-ready",
]

NAME = "hooks"
CHILD = f"{NAME}-receiver"
SECRET_VALUE = "fake-lifecycle-secret-1"
ROTATED_VALUE = "fake-lifecycle-secret-2"


def resource(**spec: Any) -> str:
    body = {
        "apiVersion": "mailtrap.io/v1alpha1",
        "kind": "MailtrapWebhook",
        "metadata": {"name": NAME},
        "spec": {
            "signingSecretRef": {"name": "signing"},
            "replicas": 1,
            "targets": [{"name": "a", "url": "http://a.example/events"}],
            **spec,
        },
    }
    return json.dumps(body)


def create(cluster: LocalCluster, namespace: str, *, secret: bool = True, **spec: Any) -> None:
    if secret:
        apply(
            cluster,
            secret_manifest("signing", {"signing-secret": SECRET_VALUE}),
            namespace=namespace,
        )
    apply(cluster, resource(**spec), namespace=namespace)


def patch(cluster: LocalCluster, namespace: str, spec: dict[str, Any]) -> None:
    cluster.kubectl(
        "-n", namespace, "patch", "mtwh", NAME, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def child(cluster: LocalCluster, namespace: str, kind: str) -> Any:
    return get(cluster, kind, CHILD, namespace=namespace)


def config_text(cluster: LocalCluster, namespace: str) -> str:
    return str(child(cluster, namespace, "configmap")["data"]["config.yaml"])


# --- the pod-template hash --------------------------------------------------------------


def test_spec_change_updates_children_and_the_hash(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace)
    wait_ready(cluster, namespace, NAME)
    before = config_hash(cluster, namespace, NAME)
    assert before

    patch(cluster, namespace, {"targets": [{"name": "a", "url": "http://b.example/moved"}]})
    obj = wait_reconciled(cluster, namespace, NAME)
    assert obj["metadata"]["generation"] == 2
    assert "http://b.example/moved" in config_text(cluster, namespace)
    after = wait_until(
        lambda: (h := config_hash(cluster, namespace, NAME)) != before and h,
        what="the pod-template hash to change",
    )
    assert obj["status"]["configHash"] == after


def test_unrelated_change_keeps_the_hash(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace)
    wait_ready(cluster, namespace, NAME)
    before = config_hash(cluster, namespace, NAME)

    patch(cluster, namespace, {"replicas": 2, "podLabels": {"team": "mail"}})
    wait_reconciled(cluster, namespace, NAME)
    deployment = child(cluster, namespace, "deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "mail"
    assert config_hash(cluster, namespace, NAME) == before
    wait_ready(cluster, namespace, NAME)


def test_secret_rotation_rolls_nothing_and_touches_nothing(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    # The receivers re-read their mounted secret files: a rotation needs no rollout,
    # and the operator, which does not watch Secrets, takes no part in it.
    create(cluster, namespace)
    wait_ready(cluster, namespace, NAME)
    deployment = child(cluster, namespace, "deployment")
    before = config_hash(cluster, namespace, NAME)
    reconciles = operator.metric("mailtrap_operator_reconciles_total", {"outcome": "success"})

    rotated = secret_manifest("signing", {"signing-secret": f"{ROTATED_VALUE}\n{SECRET_VALUE}"})
    apply(cluster, rotated, namespace=namespace)
    # A rotation the operator reacted to would have reconciled within this long.
    time.sleep(5)
    assert config_hash(cluster, namespace, NAME) == before
    now = child(cluster, namespace, "deployment")
    assert now["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]
    assert (
        operator.metric("mailtrap_operator_reconciles_total", {"outcome": "success"}) == reconciles
    )
    obj = get(cluster, "mtwh", NAME, namespace=namespace)
    everything = operator.log() + json.dumps(obj) + json.dumps(events(cluster, namespace, NAME))
    everything += config_text(cluster, namespace)
    assert SECRET_VALUE not in everything
    assert ROTATED_VALUE not in everything


# --- drift -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["configmap", "service", "deployment", "poddisruptionbudget", "ingress"]
)
def test_a_child_deleted_by_hand_comes_back(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, kind: str
) -> None:
    create(
        cluster,
        namespace,
        replicas=2,
        ingress={"enabled": True, "host": "hooks.example.com"},
    )
    wait_ready(cluster, namespace, NAME)
    old_uid = child(cluster, namespace, kind)["metadata"]["uid"]
    cluster.kubectl("-n", namespace, "delete", kind, CHILD)
    back = wait_until(
        lambda: (c := child(cluster, namespace, kind)) and c["metadata"]["uid"] != old_uid and c,
        what=f"the {kind} to come back",
    )
    assert back["metadata"]["ownerReferences"][0]["name"] == NAME
    wait_until(
        lambda: any(e["reason"] == "Restored" for e in events(cluster, namespace, NAME)),
        what="a Restored event",
    )


def test_a_deployment_edited_by_hand_is_put_back(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace, replicas=2)
    wait_ready(cluster, namespace, NAME)
    original = child(cluster, namespace, "deployment")["spec"]["template"]["spec"]["containers"][0]

    cluster.kubectl("-n", namespace, "scale", "deployment", CHILD, "--replicas=5")
    wait_until(
        lambda: child(cluster, namespace, "deployment")["spec"]["replicas"] == 2,
        what="replicas to be put back to 2",
    )
    cluster.kubectl("-n", namespace, "set", "image", f"deployment/{CHILD}", "receiver=evil:1")
    container_patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["--evil"]},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem",
            "value": False,
        },
    ]
    cluster.kubectl(
        "-n", namespace, "patch", "deployment", CHILD, "--type=json", "-p",
        json.dumps(container_patch),
    )  # fmt: skip

    def restored() -> bool:
        container = child(cluster, namespace, "deployment")["spec"]["template"]["spec"][
            "containers"
        ][0]
        return bool(
            container["image"] == original["image"]
            and container["args"] == original["args"]
            and container["securityContext"]["readOnlyRootFilesystem"] is True
        )

    wait_until(restored, what="image, args and securityContext to be put back")

    cluster.kubectl(
        "-n", namespace, "patch", "configmap", CHILD, "--type=merge", "-p",
        json.dumps({"data": {"config.yaml": "targets: []\n"}}),
    )  # fmt: skip
    wait_until(
        lambda: "a.example" in config_text(cluster, namespace),
        what="the ConfigMap to be put back",
    )
    cluster.kubectl("-n", namespace, "label", "service", CHILD, "app.kubernetes.io/instance-")
    wait_until(
        lambda: (
            child(cluster, namespace, "service")["metadata"]["labels"].get(
                "app.kubernetes.io/instance"
            )
            == NAME
        ),
        what="the Service's labels to be put back",
    )
    assert operator.metric("mailtrap_operator_drift_repairs_total", {"kind": "Deployment"}) >= 1


def test_deleting_the_resource_removes_every_child_and_leaves_no_finalizer(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(
        cluster,
        namespace,
        replicas=2,
        ingress={"enabled": True, "host": "hooks.example.com"},
        networkPolicy={"enabled": True},
    )
    obj = wait_ready(cluster, namespace, NAME)
    assert not obj["metadata"].get("finalizers")
    kinds = [
        "configmap",
        "service",
        "deployment",
        "poddisruptionbudget",
        "ingress",
        "networkpolicy",
    ]
    assert all(child(cluster, namespace, kind) for kind in kinds)

    # --wait: returns only once the object is gone, which a hanging finalizer would block.
    cluster.kubectl("-n", namespace, "delete", "mtwh", NAME, "--wait=true", "--timeout=60s")
    wait_until(
        lambda: all(child(cluster, namespace, kind) is None for kind in kinds),
        what="garbage collection of every child",
    )
    selector = f"app.kubernetes.io/instance={NAME}"
    wait_until(
        lambda: not get(cluster, "pods", "-l", selector, namespace=namespace)["items"],
        what="the receiver Pods to go",
    )


# --- status ----------------------------------------------------------------------------


def test_ready_only_when_pods_are_ready_and_ready_replicas_follow(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace, replicas=2, podAnnotations={"test.mailtrap.io/not-ready": "true"})

    def pods_running_not_ready() -> dict[str, Any] | None:
        obj = get(cluster, "mtwh", NAME, namespace=namespace)
        status = (obj or {}).get("status") or {}
        return obj if status.get("replicas") == 2 else None

    obj = wait_until(pods_running_not_ready, what="two receiver Pods, not Ready")
    assert obj["status"]["readyReplicas"] == 0
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Ready")["reason"] == "PodsNotReady"

    pods = get(cluster, "pods", "-l", f"app.kubernetes.io/instance={NAME}", namespace=namespace)
    names = sorted(pod["metadata"]["name"] for pod in pods["items"])
    assert len(names) == 2

    def status() -> dict[str, Any]:
        return dict(get(cluster, "mtwh", NAME, namespace=namespace)["status"])

    cluster.kubectl("-n", namespace, "annotate", "pod", names[0], "test.mailtrap.io/not-ready-")
    wait_until(lambda: status()["readyReplicas"] == 1, what="readyReplicas 1")
    obj = get(cluster, "mtwh", NAME, namespace=namespace)
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Ready")["message"] == "1/2 receiver Pods are Ready."

    cluster.kubectl("-n", namespace, "annotate", "pod", names[1], "test.mailtrap.io/not-ready-")
    obj = wait_ready(cluster, namespace, NAME)
    assert obj["status"]["readyReplicas"] == 2
    assert condition(obj, "Ready")["reason"] == "ReceiverReady"

    cluster.kubectl("-n", namespace, "annotate", "pod", names[0], "test.mailtrap.io/not-ready=true")
    wait_until(
        lambda: (
            status()["readyReplicas"] == 1
            and condition({"status": status()}, "Ready")["status"] == "False"
        ),
        what="Ready to drop with a Pod",
    )


def test_missing_secret_is_degraded_then_ready_once_created(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace, secret=False)

    def degraded() -> dict[str, Any] | None:
        obj = get(cluster, "mtwh", NAME, namespace=namespace)
        return obj if condition(obj, "Degraded").get("status") == "True" else None

    obj = wait_until(degraded, what="the Degraded condition")
    message = condition(obj, "Degraded")["message"]
    assert 'Secret "signing" not found' in message
    assert "spec.signingSecretRef" in message
    assert condition(obj, "Degraded")["reason"] == "SecretMissing"
    assert condition(obj, "Ready")["status"] == "False"
    assert child(cluster, namespace, "deployment") is None  # nothing half-applied
    wait_until(
        lambda: any(
            e["reason"] == "SecretMissing" and e["type"] == "Warning"
            for e in events(cluster, namespace, NAME)
        ),
        what="a Warning event",
    )
    assert operator.metric("mailtrap_operator_reconciles_total", {"outcome": "degraded"}) >= 1

    # Secrets are not watched: each step below is noticed by the retry (at most 30 s).
    unlabelled = secret_manifest("signing", {"signing-secret": "x"}, opted_in=False)
    apply(cluster, unlabelled, namespace=namespace)
    obj = wait_until(
        lambda: condition(degraded(), "Degraded")["reason"] == "SecretNotLabelled" and degraded(),
        what="the missing label to be named",
    )
    assert (
        "kubectl -n " + namespace + " label secret signing" in condition(obj, "Degraded")["message"]
    )

    apply(cluster, secret_manifest("signing", {"wrong-key": "x"}), namespace=namespace)
    wait_until(
        lambda: (
            'has no key "signing-secret"' in condition(degraded(), "Degraded").get("message", "")
        ),
        what="the missing key to be named",
    )

    apply(cluster, secret_manifest("signing", {"signing-secret": "x"}), namespace=namespace)
    obj = wait_ready(cluster, namespace, NAME)
    assert condition(obj, "Degraded")["status"] == "False"
    assert obj["metadata"]["generation"] == 1  # the resource itself was never touched


# --- optional children -----------------------------------------------------------------


def test_optional_children_follow_the_spec(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    create(cluster, namespace, replicas=1)
    wait_ready(cluster, namespace, NAME)
    for kind in ("ingress", "networkpolicy", "poddisruptionbudget"):
        assert child(cluster, namespace, kind) is None

    patch(
        cluster,
        namespace,
        {
            "replicas": 2,
            "ingress": {"enabled": True, "host": "hooks.example.com", "tlsSecretName": "tls"},
            "networkPolicy": {"enabled": True},
        },
    )
    obj = wait_reconciled(cluster, namespace, NAME)
    assert obj["status"]["externalURL"] == "https://hooks.example.com/webhooks/mailtrap"
    ingress = child(cluster, namespace, "ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "tls"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/webhooks/mailtrap"
    assert child(cluster, namespace, "networkpolicy") is not None
    assert child(cluster, namespace, "poddisruptionbudget") is not None

    patch(cluster, namespace, {"replicas": 1, "ingress": {"enabled": False}, "networkPolicy": None})
    obj = wait_reconciled(cluster, namespace, NAME)
    for kind in ("ingress", "networkpolicy", "poddisruptionbudget"):
        wait_until(lambda k=kind: child(cluster, namespace, k) is None, what=f"{kind} removed")
    assert "externalURL" not in obj["status"]


@contextlib.contextmanager
def without_service_monitor_crd(cluster: LocalCluster) -> Iterator[None]:
    """No ServiceMonitor CRD for a ``with`` block, put back after it if it was there
    (another test, or a Prometheus Operator on a reused cluster, may have left it)."""
    found = get(cluster, "crd", chart.SERVICE_MONITOR)
    if found is not None:
        cluster.kubectl("delete", "crd", chart.SERVICE_MONITOR, "--timeout=60s")
    try:
        yield
    finally:
        if found is not None:
            meta = found["metadata"]
            found["metadata"] = {
                key: meta[key] for key in ("name", "labels", "annotations") if key in meta
            }
            found.pop("status", None)
            cluster.kubectl("apply", "-f", "-", input_text=json.dumps(found))


def test_service_monitor_is_skipped_without_its_crd_and_made_with_it(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    with without_service_monitor_crd(cluster):
        create(cluster, namespace, serviceMonitor={"enabled": True})
        wait_ready(cluster, namespace, NAME)
        wait_until(
            lambda: any(
                e["reason"] == "ServiceMonitorSkipped" for e in events(cluster, namespace, NAME)
            ),
            what="a ServiceMonitorSkipped event",
        )
        assert get(cluster, "crd", chart.SERVICE_MONITOR) is None

        with chart.service_monitor_crd(cluster):
            spec = {"enabled": True, "labels": {"release": "prom"}}
            create(cluster, namespace, serviceMonitor=spec)
            patch(cluster, namespace, {"serviceMonitor": {"enabled": True, "interval": "15s"}})

            def monitor_with_interval() -> Any:
                found = get(cluster, "servicemonitor", CHILD, namespace=namespace)
                return (
                    found if found and found["spec"]["endpoints"][0]["interval"] == "15s" else None
                )

            monitor = wait_until(
                monitor_with_interval, what="the ServiceMonitor, scraped every 15s"
            )
            assert monitor["metadata"]["ownerReferences"][0]["name"] == NAME
            assert monitor["spec"]["endpoints"] == [
                {"port": "metrics", "path": "/metrics", "interval": "15s"}
            ]
            patch(cluster, namespace, {"serviceMonitor": {"enabled": False}})
            wait_until(
                lambda: get(cluster, "servicemonitor", CHILD, namespace=namespace) is None,
                what="the ServiceMonitor to be removed",
            )
