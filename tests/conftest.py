"""Session fixtures shared by every test folder.

``cluster`` is the real local control plane (tests/helpers/cluster.py), started
once per session on demand and always stopped, even when tests fail. There is no
skip: a test that asks for the cluster fails when the cluster cannot start.
``crd`` is the MailtrapWebhook CRD from crds/ on it, applied once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import LocalCluster, local_cluster
from tests.helpers.kube import install_crd

_started: list[LocalCluster] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    keep = os.environ.get("MAILTRAP_CLUSTER_LOGS")
    with local_cluster(
        workdir=tmp_path_factory.mktemp("cluster"),
        keep_logs=Path(keep) if keep else None,
        # Only ServiceAccount requests are recorded: the chart's RBAC tests read them.
        audit=True,
    ) as c:
        _started.append(c)
        yield c


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> None:
    install_crd(cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for c in _started:
        terminalreporter.write_line(
            f"integration tests ran against a real kube-apiserver {c.version} at {c.server}"
        )
