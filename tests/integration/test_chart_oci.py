"""The chart as users get it: packaged by ``make chart``, pushed to an OCI registry,
installed from there.

``make chart`` writes ``mailtrap-webhook-operator-<version>.tgz`` with the version
and appVersion of pyproject.toml. The package is installed as a file, then pushed
with ``helm push`` to a real OCI registry (go-containerregistry's, from
hack/testbins.sh, on a loopback port) and installed with ``helm install
oci://...``, the way charts are published and installed today, on the local
control plane. kwok runs the operator's Pod in name only; what is checked is that
each install deploys the packaged chart with the package's version.
"""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.chart import helm
from tests.helpers.children import die_with_parent, free_port, stop_process
from tests.helpers.cluster import REPO, LocalCluster
from tests.helpers.cluster import testbins_dir as binaries
from tests.helpers.kube import get, wait_until
from tests.helpers.processes import http_status

pytestmark = pytest.mark.integration

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CHART = "mailtrap-webhook-operator"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """An OCI registry on loopback; its host:port."""
    port = free_port()
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen(
        [str(binaries() / "oci-registry"), "-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 200 or None,
            what="the OCI registry",
            timeout=30,
        )
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=10)
        log.close()


def install_and_check(cluster: LocalCluster, reference: str, *extra: str) -> None:
    release = f"packaged-{abs(hash(reference)) % 10000}"
    namespace = f"{release}-system"
    fullname = f"{release}-{CHART}"
    try:
        done = helm(
            "install", release, reference, *extra, "--namespace", namespace,
            "--create-namespace", "--set", "crds.enabled=false", "--wait", "--timeout=120s",
            kubeconfig=cluster.admin_kubeconfig,
        )  # fmt: skip
        assert "STATUS: deployed" in done.stdout, done.stdout
        listed = helm("list", "--namespace", namespace, "-o", "json",
                      kubeconfig=cluster.admin_kubeconfig).stdout  # fmt: skip
        assert f'"chart":"{CHART}-{VERSION}"' in listed, listed
        assert f'"app_version":"{VERSION}"' in listed, listed
        deployment = get(cluster, "deployment", fullname, namespace=namespace)
        assert deployment is not None
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(f":{VERSION}"), container["image"]
    finally:
        helm("uninstall", release, "--namespace", namespace,
             kubeconfig=cluster.admin_kubeconfig, check=False)  # fmt: skip
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_packaged_chart_installs_from_a_file_and_from_an_oci_registry(
    cluster: LocalCluster, crd: None, registry: str, tmp_path: Path
) -> None:
    made = subprocess.run(
        ["make", "--no-print-directory", "chart", f"CHART_DIST={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    (package,) = tmp_path.glob("*.tgz")
    assert package.name == f"{CHART}-{VERSION}.tgz"

    install_and_check(cluster, str(package))

    pushed = helm("push", str(package), f"oci://{registry}/charts", "--plain-http")
    assert f"Pushed: {registry}/charts/{CHART}:{VERSION}" in pushed.stdout + pushed.stderr
    install_and_check(
        cluster, f"oci://{registry}/charts/{CHART}", "--version", VERSION, "--plain-http"
    )
