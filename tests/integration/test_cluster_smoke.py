"""The local control plane behaves like a real cluster in the ways later tests rely on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.cluster import LocalCluster

pytestmark = pytest.mark.integration

_VERSIONS = Path(__file__).resolve().parents[2] / "hack" / "versions.env"


def _eventually(check: Callable[[], bool], *, timeout: float = 60.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _get(cluster: LocalCluster, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_apiserver_is_within_the_skew_testbins_allows(cluster: LocalCluster) -> None:
    # hack/testbins.sh takes a kube-apiserver from the environment or PATH when it is
    # the pinned minor or one either side, so that, not the exact pin, is the promise.
    lines = _VERSIONS.read_text().splitlines()
    pins = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    pinned = pins["KUBERNETES_VERSION"]
    print(f"kube-apiserver version: {cluster.version} (pinned: {pinned})")
    have = re.match(r"v(\d+)\.(\d+)\.", cluster.version)
    want = re.match(r"v(\d+)\.(\d+)\.", pinned)
    assert have is not None, f"unexpected version {cluster.version!r}"
    assert want is not None, f"unexpected pin {pinned!r}"
    skew = abs(int(have.group(2)) - int(want.group(2)))
    assert have.group(1) == want.group(1), f"{cluster.version}: not the major of {pinned}"
    assert skew <= 1, f"{cluster.version}: more than one minor away from {pinned}"


def test_namespace_and_configmap(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "smoke-cm")
    cluster.kubectl("-n", "smoke-cm", "create", "configmap", "c", "--from-literal=k=v")
    assert _get(cluster, "-n", "smoke-cm", "configmap", "c")["data"] == {"k": "v"}


_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.example.com}
spec:
  group: smoke.example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties: {size: {type: integer, minimum: 1}}
"""


def test_trivial_crd_and_object(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.smoke.example.com", "--timeout=60s"
    )
    cluster.kubectl("create", "namespace", "smoke-crd")
    widget = "apiVersion: smoke.example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    widget += "spec: {size: 3}\n"
    cluster.kubectl("-n", "smoke-crd", "apply", "-f", "-", input_text=widget)
    assert _get(cluster, "-n", "smoke-crd", "widget", "w")["spec"] == {"size": 3}
    bad = widget.replace("size: 3", "size: 0")
    result = cluster.kubectl("-n", "smoke-crd", "apply", "-f", "-", input_text=bad, check=False)
    assert result.returncode != 0
    assert "spec.size" in result.stderr


def test_deployment_pods_become_ready_on_a_simulated_node(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "smoke-deploy")
    cluster.kubectl(
        "-n", "smoke-deploy", "create", "deployment", "web", "--image=nginx", "--replicas=2"
    )

    def ready() -> bool:
        status = _get(cluster, "-n", "smoke-deploy", "deployment", "web").get("status", {})
        return bool(status.get("readyReplicas") == 2)

    _eventually(ready, what="2 ready replicas")
    pods = _get(cluster, "-n", "smoke-deploy", "pods", "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == "kwok-node-0"
        assert pod["status"]["phase"] == "Running"


def test_garbage_collection_of_owned_objects(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "smoke-gc")
    cluster.kubectl("-n", "smoke-gc", "create", "configmap", "owner")
    owner_uid = _get(cluster, "-n", "smoke-gc", "configmap", "owner")["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    cluster.kubectl("-n", "smoke-gc", "apply", "-f", "-", input_text=json.dumps(owned))
    cluster.kubectl("-n", "smoke-gc", "delete", "configmap", "owner")

    def collected() -> bool:
        got = cluster.kubectl("-n", "smoke-gc", "get", "configmap", "owned", check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    _eventually(collected, what="the owned ConfigMap to be garbage-collected")


def test_serviceaccount_credentials_follow_rbac(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.kubectl("create", "namespace", "smoke-rbac")
    cluster.kubectl("-n", "smoke-rbac", "create", "serviceaccount", "reader")
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace="smoke-rbac", name="reader", path=tmp_path / "reader.kubeconfig"
    )
    denied = cluster.kubectl(
        "-n", "smoke-rbac", "get", "configmaps", kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    cluster.kubectl(
        "-n", "smoke-rbac", "create", "role", "read-cm", "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "-n",
        "smoke-rbac",
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        "--serviceaccount=smoke-rbac:reader",
    )

    def allowed() -> bool:
        got = cluster.kubectl(
            "-n", "smoke-rbac", "get", "configmaps", kubeconfig=kubeconfig, check=False
        )
        return got.returncode == 0

    _eventually(allowed, what="the RoleBinding to take effect")
    whoami = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == (
        "system:serviceaccount:smoke-rbac:reader"
    )
