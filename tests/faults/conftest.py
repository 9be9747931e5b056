"""Fault tests: the operator when the control plane misbehaves (issue 17).

The folder has a control plane of its own (`faults`), since its tests kill and
restart kube-apiserver and change its flags, which must not disturb the session's
cluster that the other folders share. On it the chart is installed (its RBAC, the
Deployment whose environment the operator runs with), and each test runs the
operator as a local process with the chart's ServiceAccount token, so that the
API server's audit log tells what the operator wrote (`fleet.Writes`).

Each test prints what it measured (repair times, write counts); run with ``-s``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import account, chart_env, fullname, install
from tests.helpers.cluster import ApiServerFaults, LocalCluster, local_cluster
from tests.helpers.kube import get, install_crd
from tests.helpers.operator import OperatorProcess, start_operator

pytestmark = pytest.mark.integration

RELEASE = "faults"
RELEASE_NAMESPACE = "faults-system"
OPERATOR_ACCOUNT = fullname(RELEASE)


@dataclass
class Faults:
    """The folder's cluster, its API server to break, and the chart's operator setup."""

    cluster: LocalCluster
    apiserver: ApiServerFaults
    deployment: Mapping[str, Any]  # the chart's operator Deployment
    workdir: Path

    @property
    def user(self) -> str:
        """Who the operator is to the API server (and in its audit log)."""
        return account(RELEASE_NAMESPACE, OPERATOR_ACCOUNT)

    @contextlib.contextmanager
    def operator(self, name: str, **env: str) -> Iterator[OperatorProcess]:
        """The operator on the chart's ServiceAccount and environment, plus ``env``
        (MAILTRAP_OPERATOR_* settings), for a ``with`` block."""
        kubeconfig = self.cluster.serviceaccount_kubeconfig(
            namespace=RELEASE_NAMESPACE,
            name=OPERATOR_ACCOUNT,
            path=self.workdir / f"{name}.kubeconfig",
        )
        process = start_operator(
            kubeconfig=kubeconfig,
            log_path=self.workdir / f"{name}.log",
            env={**chart_env(self.deployment, pod_id=name), **env},
            ready_timeout=120,
        )
        try:
            yield process
            assert process.alive(), f"the operator died:\n{process.log()[-5000:]}"
        finally:
            process.stop()


@pytest.fixture(scope="package")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    keep = os.environ.get("MAILTRAP_CLUSTER_LOGS")
    with local_cluster(
        workdir=tmp_path_factory.mktemp("faults-cluster"),
        keep_logs=Path(keep) / "faults" if keep else None,
        audit=True,
    ) as cluster:
        install_crd(cluster)
        cluster.kubectl("create", "namespace", RELEASE_NAMESPACE)
        install(
            cluster,
            namespace=RELEASE_NAMESPACE,
            release=RELEASE,
            values={"crds": {"enabled": False}},
        )
        deployment = get(cluster, "deployment", OPERATOR_ACCOUNT, namespace=RELEASE_NAMESPACE)
        yield Faults(
            cluster=cluster,
            apiserver=ApiServerFaults(cluster),
            deployment=deployment,
            workdir=tmp_path_factory.mktemp("faults-operators"),
        )


@pytest.fixture
def namespace(faults: Faults, request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.node.name.lower().replace("_", "-")[:40].strip("-")
    faults.cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        faults.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
