"""The chart's RBAC is what the operator needs: enough, and nothing more.

The operator runs here as a local process with the token of the ServiceAccount
the chart made, so it has exactly the chart's permissions. Two proofs, one per
direction:

- Enough, and every verb used: with the chart installed (every namespace, then
  with kopf peering), `exercise` reconciles an example to Ready and walks every
  path that needs a permission (Secrets read, drift repair, children adopted
  after an orphaning delete, optional children switched on and off, Events
  posted and counted again, peering). The API server's audit log then shows no
  request refused, and a use of every (group, resource, verb) the chart grants.
  The log does not see the checks the API server makes inside another request:
  create on a server-side apply that makes an object (counted from its 201
  answer), and the admission checks of owner references (update on
  mailtrapwebhooks/finalizers, delete on a child whose references change). The
  second proof covers those.
- Each rule needed: one namespace per rule, each with the chart's Role minus that
  rule and an operator watching only it, all at once (a control namespace keeps
  every rule). Every one must fail a step of `exercise`, with a refusal in the
  audit log to show why; the control must pass and be refused nothing. The
  cluster-wide peering rule, which no namespaced Role has, is taken out of the
  installed ClusterRole instead, with the same check.

Parallel namespaces, rather than one operator restart per rule, keep the cost
to about one `exercise`: the whole module takes about two minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import (
    FULLNAME,
    RELEASE,
    Permission,
    account,
    adopt_crd,
    chart_env,
    denials,
    dump,
    find,
    install,
    install_chart_crds,
    permissions,
    render,
    rules_of,
    service_monitor_crd,
    uninstall,
    upgrade,
    used_permissions,
)
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, condition, example, get, wait_until
from tests.helpers.operator import events, start_operator

pytestmark = pytest.mark.integration

RELEASE_NAMESPACE = "mailtrap-system"
NAME = "hooks"  # the resource in examples/ingress.yaml
CHILD = f"{NAME}-receiver"
OPTIONAL_CHILDREN = ("ingress", "networkpolicy", "poddisruptionbudget", "servicemonitor")
# Seconds a step may take when a permission is missing and it is expected to fail:
# with every permission, each step takes a few seconds even with a dozen operators
# sharing 2 cores. A failure counts only with a refusal in the audit log to explain it.
BROKEN = 30
# Checked inside other requests (OwnerReferencesPermissionEnforcement), so the audit
# log never shows them as used; each has a rule of its own that the variants remove.
IMPLICIT = {
    ("mailtrap.io", "mailtrapwebhooks/finalizers", "update"),
    ("", "configmaps", "delete"),
    ("", "services", "delete"),
    ("apps", "deployments", "delete"),
}
ADOPTED = ("configmap", "service", "deployment")


@dataclass(frozen=True)
class Peering:
    kind: str  # kopfpeering or clusterkopfpeering
    name: str
    identity: str  # what the operator calls itself there: its POD_ID


# --- what the operator is made to do ------------------------------------------------


def exercise(
    cluster: LocalCluster, namespace: str, *, timeout: float, peering: Peering | None = None
) -> None:
    """Everything the operator needs a permission for; AssertionError at the first step
    that does not happen within ``timeout`` seconds."""

    def until(check: Any, what: str) -> Any:
        return wait_until(check, what=f"{what} in {namespace}", timeout=timeout)

    def patch(spec: Mapping[str, Any]) -> None:
        body = json.dumps({"spec": spec})
        cluster.kubectl("-n", namespace, "patch", "mtwh", NAME, "--type=merge", "-p", body)

    def child(kind: str) -> Any:
        return get(cluster, kind, CHILD, namespace=namespace)

    def ready() -> Any:
        obj = get(cluster, "mtwh", NAME, namespace=namespace)
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and condition(obj, "Ready").get("status") == "True" else None

    def reason_seen(reason: str) -> bool:
        return any(event["reason"] == reason for event in events(cluster, namespace, NAME))

    def restored_count() -> int:
        found = events(cluster, namespace, NAME)
        return max((event.get("count") or 1 for event in found if event["reason"] == "Restored"),
                   default=0)  # fmt: skip

    # Secrets read, children created (with owner references), status written.
    apply(cluster, example("ingress.yaml"), namespace=namespace)
    obj = until(ready, "the example to be Ready")
    for kind in ("configmap", "service", "deployment", *OPTIONAL_CHILDREN[:3]):
        found = child(kind)
        assert found is not None, f"no {kind} in {namespace}"
        assert found["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    until(lambda: reason_seen("Applied"), "an Applied Event")

    # Adoption: deleted leaving its children, then made again, the resource takes
    # them back (owner references changed: delete on each, under the admission plugin).
    # Before the ServiceMonitor exists: the garbage collector may not know that kind
    # yet, and would delete it with its owner rather than orphan it.
    uids = {kind: child(kind)["metadata"]["uid"] for kind in ADOPTED}
    cluster.kubectl("-n", namespace, "delete", "mtwh", NAME, "--cascade=orphan")
    apply(cluster, example("ingress.yaml"), namespace=namespace)
    obj = until(ready, "the re-created example to be Ready")
    for kind, uid in uids.items():
        found = child(kind)
        assert found["metadata"]["uid"] == uid, f"{kind} in {namespace} was not adopted"
        assert found["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    patch({"serviceMonitor": {"enabled": True}})
    until(lambda: child("servicemonitor"), "the ServiceMonitor")

    # Drift: a child deleted by hand comes back (children watched, owner read back),
    # twice: the second Restored Event counts on the first one (patch).
    for _ in range(2):
        cluster.kubectl("-n", namespace, "delete", "deployment", CHILD)
        until(lambda: child("deployment"), "the deleted Deployment to come back")
    until(lambda: restored_count() >= 2, "a Restored Event counted twice")

    # Optional children switched off are deleted.
    patch(
        {
            "replicas": 1,
            "ingress": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "serviceMonitor": {"enabled": False},
        }
    )
    for kind in OPTIONAL_CHILDREN:
        until(lambda k=kind: child(k) is None, f"the {kind} to be deleted")

    if peering is not None:
        where = None if peering.kind.startswith("cluster") else namespace

        def peers() -> dict[str, Any]:
            found = get(cluster, peering.kind, peering.name, namespace=where) or {}
            return dict(found.get("status") or {})

        until(lambda: peering.identity in peers(), f"{peering.identity} in {peering.name}")


def assert_used_every_grant(granted: set[Permission], used: set[Permission]) -> None:
    unused = granted - used - IMPLICIT
    assert not unused, f"granted by the chart but never used: {sorted(unused)}"


# --- the chart installed for every namespace -------------------------------------------


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, crd: None) -> Iterator[str]:
    """The chart installed with its defaults, as a user would, in a namespace of its own."""
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    adopt_crd(cluster, release=RELEASE, namespace=RELEASE_NAMESPACE)
    install(cluster, namespace=RELEASE_NAMESPACE)
    try:
        yield RELEASE
    finally:
        uninstall(cluster, namespace=RELEASE_NAMESPACE)


@pytest.fixture(scope="module", autouse=True)
def chart_crds(cluster: LocalCluster) -> Iterator[None]:
    """The kinds `exercise` uses besides the CRD: kopf's peerings and ServiceMonitors."""
    install_chart_crds(cluster)
    with service_monitor_crd(cluster):
        yield


@dataclass
class Outcome:
    granted: set[Permission]
    used: set[Permission]
    refused: list[dict[str, Any]]
    failure: str


def run_with_release(
    cluster: LocalCluster,
    namespace: str,
    tmp_path: Path,
    *,
    peering: Peering | None,
    timeout: float = 90,
) -> Outcome:
    """Run the operator as the chart's Deployment would, with the chart's ServiceAccount,
    through `exercise`; what the chart grants, what was used, what was refused."""
    user = account(RELEASE_NAMESPACE, FULLNAME)
    seen = len(cluster.audit_events(username=user))
    deployment = get(cluster, "deployment", FULLNAME, namespace=RELEASE_NAMESPACE)
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace=RELEASE_NAMESPACE, name=FULLNAME, path=tmp_path / f"{namespace}.kubeconfig"
    )
    operator = start_operator(
        kubeconfig=kubeconfig,
        log_path=tmp_path / f"{namespace}.log",
        env=chart_env(deployment, pod_id=peering.identity if peering else "local"),
    )
    failure = ""
    try:
        exercise(cluster, namespace, timeout=timeout, peering=peering)
    except AssertionError as error:
        failure = str(error)
    finally:
        assert operator.alive(), operator.log()
        # One refused its peering retries for a while before it heeds SIGTERM.
        operator.stop(timeout=5 if failure else 30)
    granted = permissions(get(cluster, "clusterrole", FULLNAME)["rules"])
    audit = cluster.audit_events(username=user)[seen:]
    return Outcome(granted, used_permissions(audit), denials(audit), failure)


def test_the_charts_serviceaccount_is_enough_and_every_grant_is_used(
    cluster: LocalCluster, release: str, namespace: str, tmp_path: Path
) -> None:
    can = cluster.kubectl(
        "auth", "can-i", "list", "pods", "--as", account(RELEASE_NAMESPACE, FULLNAME), check=False
    )
    assert can.stdout.strip() == "no"  # the ServiceAccount is not the admin

    outcome = run_with_release(cluster, namespace, tmp_path, peering=None)
    assert not outcome.failure
    assert not outcome.refused
    assert_used_every_grant(outcome.granted, outcome.used)


def test_with_peering_the_charts_serviceaccount_is_enough_and_every_grant_is_used(
    cluster: LocalCluster, release: str, namespace: str, tmp_path: Path
) -> None:
    upgrade(cluster, namespace=RELEASE_NAMESPACE, values="replicaCount=2")
    peering = Peering("clusterkopfpeering", FULLNAME, identity="local-operator")
    outcome = run_with_release(cluster, namespace, tmp_path, peering=peering)
    assert not outcome.failure
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in outcome.granted
    assert not outcome.refused
    assert_used_every_grant(outcome.granted, outcome.used)

    # The one rule the namespaced variants below cannot take away: cluster-wide peering.
    rules = get(cluster, "clusterrole", FULLNAME)["rules"]
    kept = [rule for rule in rules if "clusterkopfpeerings" not in rule["resources"]]
    assert len(kept) == len(rules) - 1
    cluster.kubectl(
        "patch", "clusterrole", FULLNAME, "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/rules", "value": kept}]),
    )  # fmt: skip
    second = f"{namespace[:50]}-nopeer"
    cluster.kubectl("create", "namespace", second)
    try:
        outcome = run_with_release(cluster, second, tmp_path, peering=peering, timeout=BROKEN)
    finally:
        cluster.kubectl("delete", "namespace", second, "--wait=false", check=False)
    assert outcome.failure, "the operator worked without the clusterkopfpeerings rule"
    assert {denial["permission"][1] for denial in outcome.refused} == {"clusterkopfpeerings"}


# --- each rule needed: one namespace per rule removed --------------------------------

VARIANTS_RELEASE = "rbac"
VARIANTS_NAMESPACE = "rbac-system"
VARIANTS_FULLNAME = f"{VARIANTS_RELEASE}-mailtrap-webhook-operator"


@dataclass
class Variant:
    namespace: str
    removed: dict[str, Any] | None  # the rule taken out; None for the control
    failure: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        if self.removed is None:
            return "every rule"
        rule = self.removed
        return f"without {','.join(rule['apiGroups'])}/{','.join(rule['resources'])}"


def variant_namespace(index: int, rule: Mapping[str, Any]) -> str:
    resource = rule["resources"][0].replace("/", "-")
    return f"rbac-{index}-{resource}"[:63]


def run_variant(
    cluster: LocalCluster,
    variant: Variant,
    *,
    env: Mapping[str, str],
    kubeconfig: Path,
    log_dir: Path,
) -> None:
    started = time.monotonic()
    operator = start_operator(
        kubeconfig=kubeconfig,
        log_path=log_dir / f"{variant.namespace}.log",
        env={**env, "MAILTRAP_OPERATOR_NAMESPACES": variant.namespace},
        ready_timeout=120,
    )
    try:
        # A variant missing a rule fails a step after this long; the control, with
        # every rule, gets more time, as it shares 2 cores with all the others.
        exercise(
            cluster,
            variant.namespace,
            timeout=150 if variant.removed is None else BROKEN,
            peering=Peering("kopfpeering", VARIANTS_FULLNAME, identity=env["POD_ID"]),
        )
    except AssertionError as error:
        variant.failure = str(error).splitlines()[0]
    finally:
        operator.stop(timeout=5 if variant.failure else 30)
        variant.seconds = time.monotonic() - started


@pytest.fixture
def variants(cluster: LocalCluster, crd: None) -> Iterator[list[Variant]]:
    """A namespace per rule of the chart's namespaced Role (with peering, so the
    peering rule is among them), plus a control namespace with every rule."""
    rules = rules_of(
        render(
            values={"replicaCount": 2, "watchNamespaces": ["any"]},
            release=VARIANTS_RELEASE,
            namespace=VARIANTS_NAMESPACE,
        ),
        "Role",
        "any",
    )
    found = [Variant(variant_namespace(i, rule), rule) for i, rule in enumerate(rules)]
    found.append(Variant("rbac-control", None))
    for name in [VARIANTS_NAMESPACE, *(variant.namespace for variant in found)]:
        cluster.kubectl("create", "namespace", name)
    try:
        yield found
    finally:
        for name in [VARIANTS_NAMESPACE, *(variant.namespace for variant in found)]:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_removing_any_rule_of_the_chart_breaks_the_operator(
    cluster: LocalCluster, variants: list[Variant], tmp_path: Path
) -> None:
    docs = render(
        values={
            "replicaCount": 2,
            "crds": {"enabled": False},
            "watchNamespaces": [variant.namespace for variant in variants],
        },
        release=VARIANTS_RELEASE,
        namespace=VARIANTS_NAMESPACE,
    )
    for variant in variants:
        (role,) = find(docs, "Role", variant.namespace)
        if variant.removed is not None:
            role["rules"].remove(variant.removed)
    # Only what the operator's permissions are made of; its Pods would be kwok's.
    wanted = {"ServiceAccount", "Role", "RoleBinding", "KopfPeering"}
    cluster.kubectl(
        "apply", "-f", "-", input_text=dump(doc for doc in docs if doc["kind"] in wanted)
    )
    user = account(VARIANTS_NAMESPACE, VARIANTS_FULLNAME)
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace=VARIANTS_NAMESPACE, name=VARIANTS_FULLNAME, path=tmp_path / "sa.kubeconfig"
    )
    env = chart_env(find(docs, "Deployment")[0], pod_id="local-operator")

    with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
        for done in [
            pool.submit(run_variant, cluster, v, env=env, kubeconfig=kubeconfig, log_dir=tmp_path)
            for v in variants
        ]:
            done.result()

    audit = cluster.audit_events(username=user)
    report = []
    for variant in variants:
        refused = denials(audit, namespace=variant.namespace)
        report.append(
            f"{variant.describe():60} {variant.seconds:5.0f}s "
            f"{variant.failure or 'passed'} ({len(refused)} refused)"
        )
    print("\n".join(report))

    control = variants[-1]
    assert not control.failure, "\n".join(report)
    assert not denials(audit, namespace=control.namespace)
    granted = permissions(rules_of(docs, "Role", control.namespace))
    assert_used_every_grant(granted, used_permissions(audit, namespace=control.namespace))
    for variant in variants[:-1]:
        assert variant.failure, f"{variant.describe()}: nothing broke\n" + "\n".join(report)
        assert denials(audit, namespace=variant.namespace), (
            f"{variant.describe()}: broke with no permission refused\n" + "\n".join(report)
        )
