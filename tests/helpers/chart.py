"""The Helm chart as tests see it: rendered by the real helm, and its RBAC as data.

`render` runs ``helm template`` (helm from hack/testbins.sh) and returns the
manifests; `helm` runs any other helm command against a cluster. The chart is the
one source of the operator's permissions, so tests take them from here:
`rules_of` picks a (Cluster)Role's rules out of a rendering and `permissions`
flattens rules into (API group, resource, verb) triples. `used_permissions` and
`denials` read the API server's audit log (`LocalCluster.audit_events`) for what
a ServiceAccount was allowed and refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.cluster import REPO, LocalCluster, testbins_dir

CHART = REPO / "charts" / "mailtrap-webhook-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

Permission = tuple[str, str, str]  # (API group, resource[/subresource], verb)

SERVICE_MONITOR = "servicemonitors.monitoring.coreos.com"
# A ServiceMonitor CRD that accepts any object: enough for the API server to serve
# the kind, which is all the chart's template and the operator need from it.
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": SERVICE_MONITOR},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@functools.cache
def helm_binary() -> str:
    return str(testbins_dir() / "helm")


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [helm_binary(), *args]
    if kubeconfig is not None:
        command.append(f"--kubeconfig={kubeconfig}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def values_files(
    values: Mapping[str, Any] | None = None, files: Sequence[Path] = ()
) -> Iterator[list[str]]:
    """helm's --values flags for ``files``, then for ``values`` (written as JSON, which
    is YAML, to a temporary file: --set cannot spell every value)."""
    args = [arg for path in files for arg in ("--values", str(path))]
    with tempfile.TemporaryDirectory(prefix="helm-values-") as tmp:
        if values:
            path = Path(tmp) / "values.json"
            path.write_text(json.dumps(values))
            args += ["--values", str(path)]
        yield args


def render(
    *,
    values: Mapping[str, Any] | None = None,
    files: Sequence[Path] = (),
    release: str = "mailtrap",
    namespace: str = "mailtrap-system",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """``helm template`` of the chart: every manifest, as data."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    with values_files(values, files) as flags:
        out = helm(*args, *flags).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: Iterable[Mapping[str, Any]], kind: str, namespace: str | None = None) -> list[Any]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind
        and (namespace is None or doc["metadata"].get("namespace") == namespace)
    ]


def rules_of(
    docs: Iterable[Mapping[str, Any]], kind: str, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The rules of the operator's one Role or ClusterRole (in ``namespace``) of a
    rendering: the ClusterRoles aggregated into Kubernetes' view and edit are users'."""
    (role,) = [doc for doc in find(docs, kind, namespace) if not aggregated(doc)]
    return list(role["rules"])


def aggregated(role: Mapping[str, Any]) -> bool:
    """Whether a ClusterRole feeds one of Kubernetes' built-in roles (aggregation)."""
    labels = role["metadata"].get("labels") or {}
    return any(key.startswith("rbac.authorization.k8s.io/aggregate-to-") for key in labels)


def permissions(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# --- the audit log ------------------------------------------------------------------

DECISION = "authorization.k8s.io/decision"


def _permission(event: Mapping[str, Any], verb: str | None = None) -> Permission:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "")
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return (ref.get("apiGroup", ""), resource, verb or event["verb"])


def _in(event: Mapping[str, Any], namespace: str | None) -> bool:
    return namespace is None or (event.get("objectRef") or {}).get("namespace") == namespace


def used_permissions(
    events: Iterable[Mapping[str, Any]], *, namespace: str | None = None
) -> set[Permission]:
    """What the requests were allowed to do, as RBAC sees it.

    A server-side apply that made a new object is a patch answered 201: the API
    server checked ``create`` for it too, so that counts as a use of create.
    """
    used: set[Permission] = set()
    for event in events:
        if not _in(event, namespace) or "objectRef" not in event:
            continue
        if (event.get("annotations") or {}).get(DECISION) != "allow":
            continue
        code = (event.get("responseStatus") or {}).get("code")
        if code == 403:  # allowed by RBAC, refused later (admission): not a use
            continue
        used.add(_permission(event))
        if event["verb"] == "patch" and code == 201:
            used.add(_permission(event, "create"))
    return used


def denials(
    events: Iterable[Mapping[str, Any]], *, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Requests refused for want of a permission: by RBAC, or by an admission check
    that asks RBAC (create on a server-side apply, owner-reference finalizers)."""
    found = []
    for event in events:
        if not _in(event, namespace):
            continue
        status = event.get("responseStatus") or {}
        forbidden = (event.get("annotations") or {}).get(DECISION) == "forbid"
        # "is being terminated" is a namespace going away, not a permission.
        refused = status.get("code") == 403 and "terminat" not in str(status.get("message"))
        if forbidden or refused:
            found.append(
                {
                    "permission": _permission(event),
                    "code": status.get("code"),
                    "message": status.get("message", ""),
                }
            )
    return found


# The release the chart tests install, and the name its templates give most objects.
RELEASE = "mailtrap"
FULLNAME = f"{RELEASE}-mailtrap-webhook-operator"


def account(namespace: str, name: str) -> str:
    """The user name the API server knows a ServiceAccount by."""
    return f"system:serviceaccount:{namespace}:{name}"


def chart_env(deployment: Mapping[str, Any], pod_id: str) -> dict[str, str]:
    """The operator container's environment as the chart sets it, for running the
    operator as a local process with the chart's settings."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    env["POD_ID"] = pod_id  # the chart's fieldRef: the Pod's name
    return env


def fullname(release: str) -> str:
    """The name the chart's templates give most objects of a release."""
    return f"{release}-mailtrap-webhook-operator"


def install(
    cluster: LocalCluster,
    *,
    namespace: str,
    release: str = RELEASE,
    values: Mapping[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`helm install` of the chart (its defaults, plus ``values``), waiting for it to be
    ready."""
    with values_files(values) as flags:
        return helm(
            "install", release, str(CHART), "--namespace", namespace, *flags,
            "--wait", "--timeout=120s", kubeconfig=cluster.admin_kubeconfig,
        )  # fmt: skip


def upgrade(cluster: LocalCluster, *, namespace: str, values: str) -> None:
    """`helm upgrade` of the release keeping its values, plus ``--set values``."""
    helm(
        "upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values",
        "--set", values, "--wait", "--timeout=120s", kubeconfig=cluster.admin_kubeconfig,
    )  # fmt: skip


def uninstall(cluster: LocalCluster, *, namespace: str, release: str = RELEASE) -> None:
    """Remove the release, if any, and its namespace (not waited for)."""
    helm("uninstall", release, "--namespace", namespace,
         kubeconfig=cluster.admin_kubeconfig, check=False)  # fmt: skip
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@contextlib.contextmanager
def service_monitor_crd(cluster: LocalCluster) -> Iterator[None]:
    """The minimal ServiceMonitor CRD for a ``with`` block, removed after it unless it
    was there before (the operator's tests check what happens without it)."""
    existed = cluster.kubectl("get", "crd", SERVICE_MONITOR, check=False).returncode == 0
    if not existed:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(SERVICE_MONITOR_CRD))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{SERVICE_MONITOR}")
    try:
        yield
    finally:
        if not existed:
            cluster.kubectl("delete", "crd", SERVICE_MONITOR, "--timeout=60s", check=False)


def install_chart_crds(cluster: LocalCluster) -> None:
    """What Helm installs from the chart's crds/ folder (kopf's peering kinds)."""
    for path in sorted((CHART / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(path))


def adopt_crd(cluster: LocalCluster, *, release: str, namespace: str) -> None:
    """Let a release take over the MailtrapWebhook CRD that the tests' `crd` fixture
    applied with kubectl (Helm adopts an object carrying its ownership marks), as a
    user who applied crds/ by hand before installing the chart would."""
    crd = "crd/mailtrapwebhooks.mailtrap.io"
    cluster.kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl(
        "annotate", "--overwrite", crd,
        f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
    )  # fmt: skip


def dump(docs: Iterable[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)
