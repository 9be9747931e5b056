"""The chart on the real local control plane: every rendering is accepted, and a
release installs, upgrades and uninstalls as its README and values promise.

kwok runs the operator's Pods in name only (the image never runs here), but the
API server, the controllers and PodSecurity admission are real: a Pod that broke
the "restricted" level would never be created, and ``helm --wait`` would time out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.chart import (
    CI_VALUES,
    FULLNAME,
    RELEASE,
    adopt_crd,
    helm,
    install,
    install_chart_crds,
    render,
    service_monitor_crd,
    uninstall,
    upgrade,
)
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, get, wait_until

pytestmark = pytest.mark.integration

DRY_RUN_NAMESPACE = "chart-dry-run"
CRD = "crd/mailtrapwebhooks.mailtrap.io"


@pytest.fixture(scope="module")
def prerequisites(cluster: LocalCluster, crd: None) -> Iterator[None]:
    """What the renderings expect to exist: the CRDs of kinds they use (the chart's
    own, kopf's peering kinds, a minimal ServiceMonitor) and the namespaces named in
    ci/*-values.yaml."""
    install_chart_crds(cluster)
    names = [DRY_RUN_NAMESPACE, "team-a", "team-b"]
    for name in names:
        cluster.kubectl("create", "namespace", name, check=False)
    with service_monitor_crd(cluster):
        yield
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize(
    "scenario",
    [None, *CI_VALUES],
    ids=["defaults", *(path.name.removesuffix("-values.yaml") for path in CI_VALUES)],
)
def test_every_rendered_manifest_is_accepted_by_the_api_server(
    cluster: LocalCluster, prerequisites: None, scenario: Path | None
) -> None:
    docs = render(
        files=[scenario] if scenario else [],
        release="dry-run",
        namespace=DRY_RUN_NAMESPACE,
        include_crds=True,
    )
    text = "\n---\n".join(json.dumps(doc) for doc in docs)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_text=text, check=False)
    assert out.returncode == 0, out.stderr
    accepted = [line for line in out.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs), out.stdout


# --- a release's life -----------------------------------------------------------------

NAMESPACE = "mailtrap-install"


def operator_pods(cluster: LocalCluster) -> list[dict[str, object]]:
    found = get(
        cluster,
        "pods",
        "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator",
        namespace=NAMESPACE,
    )
    return [pod for pod in found["items"] if not pod["metadata"].get("deletionTimestamp")]


@pytest.fixture
def restricted_namespace(cluster: LocalCluster) -> Iterator[str]:
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl(
        "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    try:
        yield NAMESPACE
    finally:
        uninstall(cluster, namespace=NAMESPACE)


def test_install_upgrade_and_uninstall_keep_users_resources(
    cluster: LocalCluster, crd: None, restricted_namespace: str, namespace: str
) -> None:
    # PodSecurity is enforced in the release's namespace: a Pod with the defaults
    # (root allowed, privilege escalation, capabilities) is refused.
    lax = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lax", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=json.dumps(lax), check=False
    )
    assert 'violates PodSecurity "restricted' in refused.stderr

    # The CRD exists already (applied from crds/ by the tests' fixture): hand it over.
    adopt_crd(cluster, release=RELEASE, namespace=NAMESPACE)
    installed = install(cluster, namespace=NAMESPACE)
    assert "STATUS: deployed" in installed.stdout
    assert "kubectl -n <namespace> get mtwh -o wide" in installed.stdout  # NOTES
    (pod,) = operator_pods(cluster)
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    assert get(cluster, "clusterrolebinding", FULLNAME)["subjects"][0]["name"] == FULLNAME
    crd_meta = get(cluster, CRD)["metadata"]
    assert crd_meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd_meta["labels"]["app.kubernetes.io/instance"] == RELEASE

    # A user's resource; no operator runs here, it only has to outlive the release.
    apply(
        cluster,
        json.dumps(
            {
                "apiVersion": "mailtrap.io/v1alpha1",
                "kind": "MailtrapWebhook",
                "metadata": {"name": "kept"},
                "spec": {
                    "signingSecretRef": {"name": "signing"},
                    "targets": [{"name": "app", "url": "http://app.example/events"}],
                },
            }
        ),
        namespace=namespace,
    )

    upgrade(cluster, namespace=NAMESPACE, values="replicaCount=2")
    wait_until(lambda: len(operator_pods(cluster)) == 2, what="two operator Pods")
    assert get(cluster, "clusterkopfpeering", FULLNAME) is not None
    deployment = get(cluster, "deployment", FULLNAME, namespace=NAMESPACE)
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MAILTRAP_OPERATOR_PEERING_NAME", "value": FULLNAME} in env
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"

    helm("uninstall", RELEASE, "--namespace", NAMESPACE, kubeconfig=cluster.admin_kubeconfig)
    assert get(cluster, "deployment", FULLNAME, namespace=NAMESPACE) is None
    assert get(cluster, "clusterrole", FULLNAME) is None
    assert get(cluster, "serviceaccount", FULLNAME, namespace=NAMESPACE) is None
    # Kept: the CRD, and so every MailtrapWebhook.
    assert get(cluster, CRD) is not None
    assert get(cluster, "mtwh", "kept", namespace=namespace) is not None
