"""The receiver started from the Deployment the operator made forwards a signed event.

The pod-template runner (tests/helpers/podrunner.py) runs the Deployment's
container locally with its command, args, env and the ConfigMap and Secret
fetched from the cluster, so this proves the operator and the receiver agree on
every path, port, flag and key. The target is a real HTTP server on loopback;
the signature is computed here from the spec (HMAC-SHA256, lowercase hex of the
raw body, in Mailtrap-Signature), not with the receiver's own code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, get, secret_manifest, wait_until
from tests.helpers.operator import HASH_ANNOTATION, OperatorProcess, wait_ready
from tests.helpers.podrunner import running_pod_template
from tests.helpers.targets import LoopbackTarget

pytestmark = pytest.mark.integration

# The targets are on loopback, which the operator denies by default (a receiver's
# loopback is its own Pod): this platform allows it, and nothing else changes.
OPERATOR_ARGS = ["--denied-target-cidrs=169.254.0.0/16,fe80::/10"]

SIGNING_SECRET = "fake-receiver-test-secret"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def test_a_signed_event_reaches_a_loopback_target_through_the_operators_pod_template(
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    loopback_target: LoopbackTarget,
    tmp_path: Path,
) -> None:
    target = loopback_target
    apply(
        cluster, secret_manifest("signing", {"signing-secret": SIGNING_SECRET}), namespace=namespace
    )
    resource = {
        "apiVersion": "mailtrap.io/v1alpha1",
        "kind": "MailtrapWebhook",
        "metadata": {"name": "local"},
        "spec": {
            "path": "/hooks/in",
            "signingSecretRef": {"name": "signing"},
            "replicas": 1,
            "events": ["delivery", "bounce"],
            "delivery": {"spoolPath": "/data/spool/events.db"},
            "targets": [
                {"name": "loopback", "url": f"http://127.0.0.1:{target.port}/events"},
                {
                    "name": "cloudevents",
                    "url": f"http://127.0.0.1:{target.port}/cloudevents",
                    "format": "cloudevents",
                },
                # Resolved against POD_NAMESPACE; not reachable from here, so it
                # only takes bounces and the delivery event below skips it.
                {
                    "name": "in-cluster",
                    "service": {"name": "elsewhere", "port": 8080},
                    "events": ["bounce"],
                },
            ],
        },
    }
    apply(cluster, json.dumps(resource), namespace=namespace)
    wait_ready(cluster, namespace, "local")
    deployment = get(cluster, "deployment", "local-receiver", namespace=namespace)
    assert deployment["spec"]["template"]["metadata"]["annotations"][HASH_ANNOTATION]

    with running_pod_template(cluster=cluster, deployment=deployment, workdir=tmp_path) as pod:
        # What the runner had to provide is what the operator put in the template.
        assert set(pod.ports) == {"webhook", "metrics"}
        assert pod.env["POD_NAMESPACE"] == namespace
        assert "/etc/mailtrap-receiver" in pod.mounts
        assert "/data/spool" in pod.mounts

        event_id = str(uuid.uuid4())
        event = {
            "event": "delivery",
            "timestamp": 1_716_915_293,
            "message_id": str(uuid.uuid4()),
            "email": "john.doe@example.com",
            "event_id": event_id,
            "sending_stream": "transactional",
        }
        body = json.dumps({"events": [event]}).encode()
        signature = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).hexdigest()

        status, answer = post(
            pod.url("webhook", "/hooks/in"),
            body,
            {"Content-Type": "application/json", "Mailtrap-Signature": "0" * 64},
        )
        assert status == 401, answer

        status, answer = post(
            pod.url("webhook", "/hooks/in"),
            body,
            {"Content-Type": "application/json", "Mailtrap-Signature": signature},
        )
        assert status == 200, (answer, pod.log())

        def forwarded() -> dict[str, bytes]:
            return {path: body for path, _, body in target.received if event_id.encode() in body}

        wait_until(
            lambda: len(forwarded()) == 2, what="the event at both loopback targets", timeout=60
        )
        bodies = forwarded()
        assert json.loads(bodies["/events"]) == event  # the original object, unchanged
        envelope = json.loads(bodies["/cloudevents"])
        assert envelope["type"] == "io.mailtrap.email.delivery"
        # The source names the resource, from the env the operator put in the template.
        assert envelope["source"] == (
            f"/apis/mailtrap.io/v1alpha1/namespaces/{namespace}/mailtrapwebhooks/local"
        )
        assert envelope["data"] == event

        # The operator's deny list reached the receiver: its one key no spec can set.
        config = yaml.safe_load((pod.mounts["/etc/mailtrap-receiver"] / "config.yaml").read_text())
        assert config["deniedTargetRanges"] == ["169.254.0.0/16", "fe80::/10"]

        metrics = urllib.request.urlopen(pod.url("metrics", "/metrics"), timeout=5).read()  # noqa: S310
        assert b"mailtrap_webhook_" in metrics
        assert SIGNING_SECRET not in pod.log()
