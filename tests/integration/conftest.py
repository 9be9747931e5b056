"""Fixtures for the operator's integration tests on the real local control plane.

- ``operator``: the real operator, a local process, one per test module (a
  module may set ``OPERATOR_ARGS`` to pass it flags). It must still be running
  when the module ends: a crash fails the module with the operator's log.
- ``namespace``: a fresh namespace per test, deleted (without waiting) after it.
- ``loopback_target``: a threaded HTTP target on loopback (tests/helpers/fixtures.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.helpers.cluster import LocalCluster
from tests.helpers.fixtures import loopback_target  # noqa: F401 - a fixture
from tests.helpers.operator import OperatorProcess, start_operator


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    crd: None,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    args = list(getattr(request.module, "OPERATOR_ARGS", ()))
    log_dir = tmp_path_factory.mktemp("operator")
    process = start_operator(
        kubeconfig=cluster.admin_kubeconfig, log_path=log_dir / "operator.log", args=args
    )
    try:
        yield process
        assert process.alive(), f"the operator died:\n{process.log()[-5000:]}"
        print(f"operator peak RSS in {request.module.__name__}: {process.memory_kib() // 1024} MiB")
    finally:
        process.stop()


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:50].strip("-")
    name = f"{name}-{abs(hash(request.node.nodeid)) % 10000:04d}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
