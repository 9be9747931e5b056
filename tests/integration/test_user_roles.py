"""Namespace users and MailtrapWebhooks, through Kubernetes' built-in view and edit roles.

The chart's two aggregated ClusterRoles (``templates/aggregate-roles.yaml``) are
applied to the real control plane, whose ClusterRole aggregation controller folds
them into ``view``, ``edit`` and ``admin``. Then two ServiceAccounts of a namespace,
one bound to ``view`` and one to ``edit`` there (as a platform team binds its users),
act with their own tokens: the editor creates a MailtrapWebhook, the viewer reads it
and may not change it, neither may touch its status, and the roles gained exactly
the MailtrapWebhook rules the chart lists, nothing more.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.chart import aggregated, find, permissions, render
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import get, wait_until

pytestmark = pytest.mark.integration

RELEASE = "user-roles"


def role_permissions(cluster: LocalCluster, name: str) -> set[tuple[str, str, str]]:
    role = get(cluster, "clusterrole", name)
    assert role is not None, name
    return permissions(
        {**rule, "apiGroups": rule.get("apiGroups", [""])}
        for rule in role.get("rules") or ()
        if "resources" in rule
    )


@pytest.fixture(scope="module")
def user_roles(cluster: LocalCluster, crd: None) -> Iterator[list[dict[str, object]]]:
    roles = [role for role in find(render(release=RELEASE), "ClusterRole") if aggregated(role)]
    assert len(roles) == 2
    cluster.kubectl("apply", "-f", "-", input_text="\n---\n".join(json.dumps(r) for r in roles))
    try:
        yield roles
    finally:
        for role in roles:
            cluster.kubectl("delete", "clusterrole", str(role["metadata"]["name"]), check=False)  # type: ignore[index]


def user(cluster: LocalCluster, namespace: str, name: str, role: str, tmp: Path) -> Path:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", name)
    cluster.kubectl(
        "-n", namespace, "create", "rolebinding", name,
        f"--clusterrole={role}", f"--serviceaccount={namespace}:{name}",
    )  # fmt: skip
    return cluster.serviceaccount_kubeconfig(
        namespace=namespace, name=name, path=tmp / f"{name}.kubeconfig"
    )


def as_user(
    cluster: LocalCluster, kubeconfig: Path, *args: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, kubeconfig=kubeconfig, input_text=input_text, check=False)


def test_view_reads_and_edit_writes_mailtrapwebhooks_and_nothing_more(
    cluster: LocalCluster,
    user_roles: list[dict[str, object]],
    namespace: str,
    tmp_path: Path,
) -> None:
    chart_rules = {
        role["metadata"]["name"]: permissions(role["rules"])  # type: ignore[index,arg-type]
        for role in user_roles
    }
    wanted = set().union(*chart_rules.values())

    # The aggregation controller adds our rules to the built-in roles, and only ours:
    # whatever those roles hold on mailtrap.io is exactly what the chart lists.
    def aggregated_into(name: str, ours: str) -> bool:
        theirs = {p for p in role_permissions(cluster, name) if p[0] == "mailtrap.io"}
        return theirs == chart_rules[ours]

    wait_until(lambda: aggregated_into("view", f"{RELEASE}-mailtrap-webhook-operator-view"),
               what="the view role to aggregate the chart's rules", timeout=60)  # fmt: skip
    for name in ("edit", "admin"):
        wait_until(lambda n=name: aggregated_into(n, f"{RELEASE}-mailtrap-webhook-operator-edit"),
                   what=f"the {name} role to aggregate the chart's rules", timeout=60)  # fmt: skip
    assert {resource for _, resource, _ in wanted} == {"mailtrapwebhooks"}

    editor = user(cluster, namespace, "editor", "edit", tmp_path)
    viewer = user(cluster, namespace, "viewer", "view", tmp_path)
    resource = {
        "apiVersion": "mailtrap.io/v1alpha1",
        "kind": "MailtrapWebhook",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {
            "signingSecretRef": {"name": "mailtrap-signing"},
            "targets": [{"name": "app", "url": "http://app.example.svc:8080/events"}],
        },
    }
    created = as_user(cluster, editor, "apply", "-f", "-", input_text=json.dumps(resource))
    assert created.returncode == 0, created.stderr

    read = as_user(cluster, viewer, "-n", namespace, "get", "mtwh", "shared", "-o", "json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["spec"]["targets"][0]["name"] == "app"

    refused = [
        (viewer, ("-n", namespace, "delete", "mtwh", "shared")),
        (viewer, ("-n", namespace, "label", "mtwh", "shared", "team=mail")),
        # Status is the operator's to write, for editors too.
        (editor, ("-n", namespace, "patch", "mtwh", "shared", "--subresource=status",
                  "--type=merge", "-p", '{"status": {"url": "http://elsewhere"}}')),
    ]  # fmt: skip
    for kubeconfig, args in refused:
        out = as_user(cluster, kubeconfig, *args)
        assert out.returncode != 0, (args, out.stdout)
        assert "forbidden" in out.stderr.lower(), out.stderr

    changed = as_user(cluster, editor, "-n", namespace, "label", "mtwh", "shared", "team=mail")
    assert changed.returncode == 0, changed.stderr
    gone = as_user(cluster, editor, "-n", namespace, "delete", "mtwh", "shared")
    assert gone.returncode == 0, gone.stderr
