"""The operator works with exactly the permissions the README lists, and no more.

It runs here with a ServiceAccount's token (not the admin's certificate), bound
to a ClusterRole with the rules below, the least privilege the README documents
for the Helm chart: a resource is reconciled, a child deleted by hand comes
back, a Secret is watched, status and Events are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, example, get, wait_until
from tests.helpers.operator import OperatorProcess, events, running_operator, wait_ready

pytestmark = pytest.mark.integration

CHILD_VERBS = ["get", "list", "watch", "create", "patch", "delete"]
RULES = [
    {
        "apiGroups": ["mailtrap.io"],
        "resources": ["mailtrapwebhooks"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["mailtrap.io"], "resources": ["mailtrapwebhooks/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["mailtrap.io"],
        "resources": ["mailtrapwebhooks/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": CHILD_VERBS},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": CHILD_VERBS},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses", "networkpolicies"],
        "verbs": CHILD_VERBS,
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHILD_VERBS},
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["servicemonitors"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
ACCOUNT_NAMESPACE = "operator-rbac-system"


@pytest.fixture
def operator_with_rbac(
    cluster: LocalCluster, crd: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", ACCOUNT_NAMESPACE)
    cluster.kubectl("-n", ACCOUNT_NAMESPACE, "create", "serviceaccount", "operator")
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "mailtrap-operator-test"},
        "rules": RULES,
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(role))
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        "mailtrap-operator-test",
        "--clusterrole=mailtrap-operator-test",
        f"--serviceaccount={ACCOUNT_NAMESPACE}:operator",
    )
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace=ACCOUNT_NAMESPACE, name="operator", path=tmp_path / "operator.kubeconfig"
    )
    try:
        with running_operator(kubeconfig=kubeconfig, log_path=tmp_path / "operator.log") as op:
            yield op
            assert op.alive(), op.log()
            assert "forbidden" not in op.log().lower(), op.log()
    finally:
        cluster.kubectl("delete", "clusterrolebinding", "mailtrap-operator-test", check=False)
        cluster.kubectl("delete", "clusterrole", "mailtrap-operator-test", check=False)
        cluster.kubectl("delete", "namespace", ACCOUNT_NAMESPACE, "--wait=false", check=False)


def test_operator_works_with_the_documented_least_privilege(
    cluster: LocalCluster, operator_with_rbac: OperatorProcess, namespace: str
) -> None:
    account = f"system:serviceaccount:{ACCOUNT_NAMESPACE}:operator"
    can = cluster.kubectl("auth", "can-i", "list", "pods", "--as", account, check=False)
    assert can.stdout.strip() == "no"  # the ServiceAccount is not the admin

    apply(cluster, example("ingress.yaml"), namespace=namespace)
    obj = wait_ready(cluster, namespace, "hooks")
    assert obj["status"]["externalURL"] == "https://hooks.example.com/webhooks/mailtrap"

    cluster.kubectl("-n", namespace, "delete", "deployment", "hooks-receiver")
    wait_until(
        lambda: get(cluster, "deployment", "hooks-receiver", namespace=namespace),
        what="the Deployment to come back",
    )
    cluster.kubectl("-n", namespace, "patch", "mtwh", "hooks", "--type=merge", "-p",
                    '{"spec": {"ingress": {"enabled": false}}}')  # fmt: skip
    wait_until(
        lambda: get(cluster, "ingress", "hooks-receiver", namespace=namespace) is None,
        what="the Ingress to be deleted",
    )
    assert any(event["reason"] == "Applied" for event in events(cluster, namespace, "hooks"))
