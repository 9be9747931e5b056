"""Fixtures of the end-to-end tests on a real node (tests/helpers/node.py).

- ``node_prerequisites``: skips (fails in CI) where a node cannot run.
- ``images``: the operator, receiver and pause images, built from this checkout by
  hack/images.sh (buildah, no registry; cached, so a second run takes seconds).
- ``real_node``: a control plane of its own (no kwok; the audit log on) and a real
  kubelet node joined to it, the images imported into its containerd. Package
  scope: it stops when the last test of tests/e2e is done, before the integration
  tests start, and fails if the host is not left as it was found. The integration
  tests' ``cluster`` (kwok, tests/conftest.py) is another control plane, which
  never schedules anything here.

The node needs root and what `make setup` installs (containerd, runc, the CNI
plugins, nftables, buildah, mmdebstrap). Where they are missing the tests skip,
saying what is missing, except under .ci/run (MAILTRAP_CI), where they fail.

What the tests establish about the images and the node (digests, kubelet version,
the receiver's user and group: `node.FACTS`) is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hoststate import CGROUP_ROOT
from tests.helpers.node import (
    CNI_BIN_DIR,
    FACTS,
    Image,
    NodeCluster,
    build_images,
    real_node_cluster,
)

NEEDED_COMMANDS = ("containerd", "ctr", "runc", "nft", "ip", "buildah", "mmdebstrap")


def missing_prerequisites() -> list[str]:
    missing = [f"{name} is not installed" for name in NEEDED_COMMANDS if not shutil.which(name)]
    if not Path(CNI_BIN_DIR, "ptp").exists():
        missing.append(f"the CNI plugins are not in {CNI_BIN_DIR} (containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("a kubelet and containerd need root")
    if not (CGROUP_ROOT / "pids").is_dir():
        missing.append("no cgroup v1 pids hierarchy: the node is made for cgroup v1 or hybrid")
    return missing


@pytest.fixture(scope="package")
def node_prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        why = "; ".join(missing)
        if os.environ.get("MAILTRAP_CI"):
            pytest.fail(f"the real node cannot run, though MAILTRAP_CI is set: {why}")
        pytest.skip(f"the real node needs root and what `make setup` installs: {why}")


@pytest.fixture(scope="package")
def images(node_prerequisites: None) -> dict[str, Image]:
    return build_images("operator", "receiver", "pause")


@pytest.fixture(scope="package")
def real_node(
    images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeCluster]:
    keep = os.environ.get("MAILTRAP_CLUSTER_LOGS")
    with real_node_cluster(
        workdir=tmp_path_factory.mktemp("real-node"),
        keep_logs=Path(keep) / "real-node" if keep else None,
        pause=images["pause"],
        audit=True,
    ) as (cluster, node):
        node.import_images([images["operator"].archive, images["receiver"].archive])
        FACTS.append(
            f"real node: kubelet {node.kubelet_version} (containerd and runc from Debian), "
            f"control plane {cluster.version} at {cluster.server}"
        )
        yield NodeCluster(cluster, node, images)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FACTS:
        terminalreporter.section("the real node and the images it ran")
    for line in FACTS:
        terminalreporter.write_line(line)
