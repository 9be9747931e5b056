"""Security tests: what a tenant can do through the operator, on the real local cluster.

Who is who, as in a shared cluster:

- the platform team (the admin kubeconfig) installs the chart and sets up victims:
  other teams' objects and Secrets;
- the operator runs as a local process with the token of the chart's ServiceAccount
  and the environment the chart's Deployment gives it, so it has exactly the chart's
  RBAC and settings (a module may add settings in ``OPERATOR_ENV``);
- a tenant: a ServiceAccount whose Role grants only ``mailtrapwebhooks`` (every verb)
  in its own namespace. Every attack is made with the tenant's kubeconfig, never the
  admin's.

Every secret value here comes from `tests.helpers.canary`. The leak check
(test_canary.py) runs last in this folder (`pytest_collection_modifyitems`) and looks
for every canary in logs, Events, statuses, metrics and what the product answered,
which tests hand to the ``evidence`` fixture.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import chart_env, fullname, install, uninstall
from tests.helpers.cluster import LocalCluster
from tests.helpers.fixtures import loopback_target  # noqa: F401 - a fixture
from tests.helpers.kube import get
from tests.helpers.operator import OperatorProcess, start_operator

RELEASE = "sec"
RELEASE_NAMESPACE = "sec-system"
OPERATOR_ACCOUNT = fullname(RELEASE)
LEAK_CHECK = "test_canary.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The leak check last: it reads what every other security test left behind."""
    here = Path(__file__).parent
    last = [item for item in items if item.path.parent == here and item.path.name == LEAK_CHECK]
    if last:
        items[:] = [item for item in items if item not in last] + last


@dataclass
class Evidence:
    """Texts the product answered (error bodies, the API server's refusals of the
    tenant, statuses), kept for the leak check."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text


@pytest.fixture(scope="session")
def evidence() -> Evidence:
    return Evidence()


@pytest.fixture(scope="session")
def release(cluster: LocalCluster, crd: None) -> Iterator[dict[str, Any]]:
    """The chart with its defaults (the CRD is the session's), in a namespace of its
    own; its Deployment's manifest, whose environment the operator runs with."""
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    install(
        cluster, namespace=RELEASE_NAMESPACE, release=RELEASE, values={"crds": {"enabled": False}}
    )
    try:
        yield get(cluster, "deployment", OPERATOR_ACCOUNT, namespace=RELEASE_NAMESPACE)
    finally:
        uninstall(cluster, namespace=RELEASE_NAMESPACE, release=RELEASE)


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    release: dict[str, Any],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator on the chart's ServiceAccount and environment, one per module."""
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace=RELEASE_NAMESPACE, name=OPERATOR_ACCOUNT, path=workdir / "sa.kubeconfig"
    )
    env = {**chart_env(release, pod_id="local"), **getattr(request.module, "OPERATOR_ENV", {})}
    process = start_operator(kubeconfig=kubeconfig, log_path=workdir / "operator.log", env=env)
    try:
        yield process
        assert process.alive(), f"the operator died:\n{process.log()[-5000:]}"
    finally:
        process.stop()


TENANT_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "mailtrapwebhooks-only"},
    "rules": [{"apiGroups": ["mailtrap.io"], "resources": ["mailtrapwebhooks"], "verbs": ["*"]}],
}


@dataclass
class Tenant:
    """A team that may manage MailtrapWebhooks in its namespace, and nothing else."""

    cluster: LocalCluster
    namespace: str
    kubeconfig: Path
    evidence: Evidence

    def kubectl(
        self, *args: str, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the tenant, in its namespace; never raises (refusals are results)."""
        result = self.cluster.kubectl(
            "-n", self.namespace, *args, input_text=input_text, kubeconfig=self.kubeconfig,
            check=False,
        )  # fmt: skip
        self.evidence.add(f"tenant kubectl {' '.join(args)}", result.stdout + result.stderr)
        return result

    def apply(self, resource: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", input_text=json.dumps(resource))

    def can(self, verb: str, resource: str) -> bool:
        return self.kubectl("auth", "can-i", verb, resource).stdout.strip() == "yes"


def namespace_for(request: pytest.FixtureRequest, prefix: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{prefix}-{name}-{abs(hash(request.node.nodeid)) % 10000:04d}"


@pytest.fixture
def tenant(
    cluster: LocalCluster,
    crd: None,
    evidence: Evidence,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[Tenant]:
    namespace = namespace_for(request, "t")
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl("-n", namespace, "create", "serviceaccount", "tenant")
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(TENANT_ROLE))
        cluster.kubectl(
            "-n", namespace, "create", "rolebinding", "tenant",
            f"--role={TENANT_ROLE['metadata']['name']}", f"--serviceaccount={namespace}:tenant",
        )  # fmt: skip
        kubeconfig = cluster.serviceaccount_kubeconfig(
            namespace=namespace, name="tenant", path=tmp_path / "tenant.kubeconfig"
        )
        found = Tenant(cluster, namespace, kubeconfig, evidence)
        # What RBAC lets the tenant do, before any attack: MailtrapWebhooks only.
        assert found.can("create", "mailtrapwebhooks")
        for verb, resource in [
            ("get", "secrets"),
            ("create", "services"),
            ("create", "ingresses"),
            ("create", "pods"),
            ("create", "deployments"),
        ]:
            assert not found.can(verb, resource), f"the tenant may {verb} {resource}"
        yield found
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def other_team(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """Another team's namespace, which the tenant has no rights in."""
    namespace = namespace_for(request, "v")
    cluster.kubectl("create", "namespace", namespace)
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
