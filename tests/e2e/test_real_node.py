"""The product as a user runs it, on a real node: the images built from this
checkout, the Helm chart, the operator in its Pod, receivers in theirs.

On the real-node fixture (tests/e2e/conftest.py: a real kubelet, containerd and
kube-proxy joined to a local control plane) the chart is installed with the built
images (``imagePullPolicy: Never``) into a namespace that enforces PodSecurity
"restricted". Then:

- the operator Pod becomes Ready and talks to the API server with its
  ServiceAccount's token (the API server's audit log names that account and the
  Pod's IP as the caller);
- a MailtrapWebhook gets receiver Pods that become Ready, running the receiver
  image, which has neither kopf nor the Kubernetes client;
- a signed event posted to the receiver's Service (its ClusterIP, through
  kube-proxy) reaches the echo target Pod (tests/e2e/echo-target.yaml) through that
  target's Service; a badly signed one gets 401; `kubectl logs` shows the
  receiver's JSON lines about it;
- the receiver's and the operator's container processes, seen from the host's
  /proc, run as the non-root user and group their pod specs name, with no
  capabilities, no privilege escalation, seccomp and a read-only root filesystem;
  `kubectl exec` agrees;
- what later tests of Pod deletion need works: a Pod reaches its own Service
  (kube-proxy's hairpin), and the node can be cordoned, drained and uncordoned.

The image digests, the kubelet's version and the receiver's user and group are
printed at the end of the run.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.chart import CHART, FULLNAME, RELEASE, helm
from tests.helpers.kube import condition, get, wait_until
from tests.helpers.node import FACTS, NodeCluster
from tests.helpers.webhooks import delivery_event, json_body, signed_headers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SYSTEM = "mailtrap-system"
APPS = "e2e"
WEBHOOK = "e2e"
RECEIVER = f"{WEBHOOK}-receiver"
ECHO_TARGET = Path(__file__).with_name("echo-target.yaml")
RUN_AS = "10001"


@dataclass(frozen=True)
class Release:
    node: NodeCluster
    secret: bytes
    receiver_service_ip: str

    @property
    def url(self) -> str:
        return f"http://{self.receiver_service_ip}/webhooks/mailtrap"


def kubectl(node: NodeCluster, *args: str) -> str:
    return node.cluster.kubectl(*args).stdout


def pods(node: NodeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = get(node.cluster, "pods", "-l", selector, namespace=namespace)["items"]
    return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def diagnosis(node: NodeCluster) -> str:
    """What the cluster says, for a failure message."""
    parts = [
        node.cluster.kubectl("get", "all,mtwh", "-A", "-o", "wide", check=False).stdout,
        node.cluster.kubectl("get", "events", "-A", check=False).stdout[-4000:],
        node.cluster.kubectl(
            "-n", SYSTEM, "logs", f"deploy/{FULLNAME}", "--tail=50", check=False
        ).stdout,
    ]
    return "\n".join(parts)


def restricted_namespace(node: NodeCluster, name: str) -> None:
    node.cluster.kubectl("create", "namespace", name)
    node.cluster.kubectl(
        "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"
    )


def repository_and_tag(ref: str) -> tuple[str, str]:
    repository, tag = ref.rsplit(":", 1)
    return repository, tag


@pytest.fixture(scope="module")
def release(real_node: NodeCluster) -> Iterator[Release]:
    node = real_node
    restricted_namespace(node, SYSTEM)
    restricted_namespace(node, APPS)
    operator_repo, tag = repository_and_tag(node.images["operator"].ref)
    receiver_repo, receiver_tag = repository_and_tag(node.images["receiver"].ref)
    assert receiver_tag == tag, "hack/images.sh tags both images alike"
    installed = helm(
        "install", RELEASE, str(CHART), "--namespace", SYSTEM,
        "--set", f"image.repository={operator_repo}", "--set-string", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"receiver.image.repository={receiver_repo}",
        "--wait", "--timeout=300s",
        kubeconfig=node.cluster.admin_kubeconfig, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr + diagnosis(node)

    node.cluster.kubectl("-n", APPS, "apply", "-f", str(ECHO_TARGET))
    rollout = node.cluster.kubectl(
        "-n", APPS, "rollout", "status", "deploy/suppression-api", "--timeout=180s", check=False
    )
    assert rollout.returncode == 0, rollout.stderr + diagnosis(node)
    target_ip = get(node.cluster, "service", "suppression-api", namespace=APPS)["spec"]["clusterIP"]

    secret = secrets.token_hex(16).encode()
    signing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "e2e-signing",
            # The operator reads only Secrets labelled for it.
            "labels": {"mailtrap.io/webhook-secret": "true"},
        },
        "stringData": {"signing-secret": secret.decode()},
    }
    webhook = {
        "apiVersion": "mailtrap.io/v1alpha1",
        "kind": "MailtrapWebhook",
        "metadata": {"name": WEBHOOK},
        "spec": {
            "signingSecretRef": {"name": "e2e-signing", "key": "signing-secret"},
            # By ClusterIP: the node has no cluster DNS (Pods resolve nothing).
            "targets": [{"name": "suppressions", "url": f"http://{target_ip}:8080/events"}],
        },
    }
    text = yaml.safe_dump_all([signing, webhook])
    node.cluster.kubectl("-n", APPS, "apply", "-f", "-", input_text=text)
    try:
        wait_until(
            lambda: (
                condition(get(node.cluster, "mtwh", WEBHOOK, namespace=APPS), "Ready").get("status")
                == "True"
            ),
            what="the MailtrapWebhook to be Ready",
            timeout=300,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{diagnosis(node)}") from None
    service = get(node.cluster, "service", RECEIVER, namespace=APPS)
    yield Release(node=node, secret=secret, receiver_service_ip=service["spec"]["clusterIP"])
    # The node outlives this module (later tests use it too): leave it empty.
    node.cluster.kubectl("delete", "namespace", APPS, "--wait=false", check=False)
    helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait",
         kubeconfig=node.cluster.admin_kubeconfig, check=False)  # fmt: skip
    node.cluster.kubectl("delete", "namespace", SYSTEM, "--wait=false", check=False)


def receiver_selector(node: NodeCluster) -> str:
    deployment = get(node.cluster, "deployment", RECEIVER, namespace=APPS)
    labels = deployment["spec"]["selector"]["matchLabels"]
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def image_ids(pod: dict[str, Any]) -> set[str]:
    return {status["imageID"] for status in pod["status"]["containerStatuses"]}


def test_the_operator_pod_is_ready_and_calls_the_api_with_its_service_account(
    release: Release,
) -> None:
    node = release.node
    (pod,) = pods(node, SYSTEM, f"app.kubernetes.io/instance={RELEASE}")
    assert ready(pod)
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    assert pod["spec"]["nodeName"] == "localhost"
    account = f"system:serviceaccount:{SYSTEM}:{FULLNAME}"
    calls = node.cluster.audit_events(username=account)
    from_pod = [event for event in calls if pod["status"]["podIP"] in event["sourceIPs"]]
    assert from_pod, f"no API request from the operator Pod as {account}: {calls[:3]}"
    assert {"list", "watch", "patch"} <= {event["verb"] for event in from_pod}
    (operator_image,) = image_ids(pod)
    FACTS.append(f"operator image {node.images['operator'].ref}: {operator_image}")


def test_the_receiver_pods_are_ready_and_carry_no_operator_dependencies(
    release: Release,
) -> None:
    node = release.node
    found = pods(node, APPS, receiver_selector(node))
    assert found, diagnosis(node)
    assert all(ready(pod) for pod in found), diagnosis(node)
    receiver_image = node.images["receiver"].ref
    assert {pod["spec"]["containers"][0]["image"] for pod in found} == {receiver_image}
    (digest,) = set().union(*(image_ids(pod) for pod in found))
    FACTS.append(f"receiver image {receiver_image}: {digest} ({len(found)} Pods)")
    probe = (
        "import importlib.util, sys; "
        "sys.exit(len([m for m in ('kopf', 'kubernetes') if importlib.util.find_spec(m)]))"
    )
    pod_name = found[0]["metadata"]["name"]
    result = node.cluster.kubectl(
        "-n", APPS, "exec", pod_name, "--", "python", "-c", probe, check=False
    )
    assert result.returncode == 0, f"the receiver image has {result.returncode} of kopf, kubernetes"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_signed_event_reaches_the_target_pod_through_both_services(release: Release) -> None:
    node = release.node
    bad = post(release.url, b'{"events": []}', {"Mailtrap-Signature": "0" * 64})
    assert bad[0] == 401, bad

    event = delivery_event(event="bounce")
    body = json_body(event)
    status, answer = post(release.url, body, signed_headers(body, secret=release.secret))
    assert status == 200, answer

    def target_got_it() -> dict[str, Any] | None:
        logs = kubectl(node, "-n", APPS, "logs", "deploy/suppression-api")
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        return next((line for line in lines if line["body"] == event), None)

    got = wait_until(target_got_it, what="the event at the target Pod", timeout=120)
    assert got["path"] == "/events"
    assert got["event"] == "bounce"

    # Whichever receiver Pod took it logged it, as JSON lines.
    logs = kubectl(node, "-n", APPS, "logs", "-l", receiver_selector(node), "--tail=-1")
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert lines, logs
    mentioning = [line for line in lines if event["event_id"] in json.dumps(line)]
    assert mentioning, logs[-3000:]
    assert any(line.get("status") == 401 for line in lines), logs[-3000:]


def test_a_pod_reaches_its_own_service(release: Release) -> None:
    # kube-proxy's hairpin: the Service sends the Pod's own request back to it.
    node = release.node
    service = get(node.cluster, "service", "suppression-api", namespace=APPS)
    url = f"http://{service['spec']['clusterIP']}:8080/hairpin"
    probe = (
        "import sys, urllib.request; "
        f"request = urllib.request.Request({url!r}, data=b'{{}}', method='POST'); "
        "sys.exit(urllib.request.urlopen(request, timeout=10).status != 200)"
    )
    result = node.cluster.kubectl(
        "-n", APPS, "exec", "deploy/suppression-api", "--", "python", "-c", probe, check=False
    )
    assert result.returncode == 0, result.stderr


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def assert_restricted(node: NodeCluster, pod: dict[str, Any], program: str) -> str:
    """The Pod's one container process, read from the host's /proc and through
    `kubectl exec`, runs as the pod spec's user and group with nothing more; what
    was found, for the run's summary."""
    context = pod["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(RUN_AS), int(RUN_AS))
    (container,) = pod["status"]["containerStatuses"]
    pid = node.node.container_pid(container["containerID"])
    status = proc_status(pid)
    assert program in Path(f"/proc/{pid}/cmdline").read_text()
    assert status["Uid"].split() == [RUN_AS] * 4, status["Uid"]
    assert status["Gid"].split() == [RUN_AS] * 4, status["Gid"]
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, (capabilities, status[capabilities])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # a filter: the runtime's default profile
    assert "ro" in root_mount_options(pid)

    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    ids = kubectl(node, "-n", namespace, "exec", name, "--", "id").strip()
    assert ids.startswith(f"uid={RUN_AS} gid={RUN_AS}"), ids
    touch = node.cluster.kubectl("-n", namespace, "exec", name, "--", "touch", "/x", check=False)
    assert "Read-only file system" in touch.stderr, touch.stderr
    return (
        f"{name}: host PID {pid}, uid {status['Uid'].split()[0]}, "
        f"gid {status['Gid'].split()[0]}, no capabilities, read-only root ({ids})"
    )


def test_the_receiver_and_the_operator_run_as_their_pod_specs_say(release: Release) -> None:
    node = release.node
    receiver = pods(node, APPS, receiver_selector(node))[0]
    FACTS.append(f"receiver Pod {assert_restricted(node, receiver, 'mailtrap-receiver')}")
    (operator,) = pods(node, SYSTEM, f"app.kubernetes.io/instance={RELEASE}")
    FACTS.append(f"operator Pod {assert_restricted(node, operator, 'mailtrap-operator')}")


def test_the_node_can_be_cordoned_and_drained(release: Release) -> None:
    node = release.node
    echo = "app=suppression-api"
    (before,) = pods(node, APPS, echo)
    kubectl(node, "cordon", "localhost")
    try:
        drained = node.cluster.kubectl(
            "drain", "localhost", "--pod-selector", echo, "--timeout=120s", check=False
        )
        assert drained.returncode == 0, drained.stderr
        # Its replacement has nowhere to go while the only node is cordoned.
        (pending,) = wait_until(
            lambda: [p for p in pods(node, APPS, echo) if p["status"]["phase"] == "Pending"],
            what="the echo target's replacement, Pending",
        )
        assert pending["metadata"]["name"] != before["metadata"]["name"]
        assert get(node.cluster, "pod", before["metadata"]["name"], namespace=APPS) is None
    finally:
        kubectl(node, "uncordon", "localhost")
    wait_until(
        lambda: all(ready(p) for p in pods(node, APPS, echo)) and pods(node, APPS, echo),
        what="the echo target Ready again after uncordon",
    )
