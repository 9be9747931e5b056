"""Attack 2: a tenant asks the operator for what RBAC denies it.

Before (issue 10): ``spec.image`` was free, so a tenant who may not read Secrets ran
its own image with any Secret of the namespace mounted (``targets[].signingSecretRef``
mounts any key); it got an Ingress (RBAC denies it those) for any host, with an
nginx ``server-snippet``; priorityClassName, tolerations and pod labels such as
``app: payments`` went through; a target could be the cloud's metadata address.
Now each is a PolicyViolation naming the field and the setting, nothing is applied,
and a receiver refuses to connect to a name that resolves to a denied address.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.canary import canary
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import condition, get, wait_until
from tests.helpers.operator import OperatorProcess, wait_ready
from tests.helpers.podrunner import running_pod_template
from tests.helpers.targets import LoopbackTarget
from tests.helpers.webhooks import delivery_event
from tests.security.conftest import Evidence, Tenant
from tests.security.tenancy import (
    degraded,
    post,
    put_secret,
    scrape,
    sign,
    signing_secret,
    warning_events,
    webhook,
)

pytestmark = pytest.mark.integration

# The chart's defaults, plus the hosts this platform gives the tenant's team.
OPERATOR_ENV = {"MAILTRAP_OPERATOR_ALLOWED_INGRESS_HOSTS": "*.hooks.tenant.example"}
NAME = "attack"
CHILD = f"{NAME}-receiver"


def message_of(obj: dict[str, Any]) -> str:
    return str(condition(obj, "Degraded")["message"])


def nothing_made(cluster: LocalCluster, namespace: str) -> None:
    for kind in ("configmap", "service", "deployment", "ingress"):
        assert get(cluster, kind, CHILD, namespace=namespace) is None, kind


def test_a_tenant_cannot_run_its_image_nor_mount_a_secret_that_did_not_opt_in(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    signing_secret(cluster, tenant.namespace)
    # The team's database password: the tenant may not read it, and it did not opt in.
    put_secret(cluster, tenant.namespace, "db-creds", {"password": canary("db")}, opted_in=False)
    targets = [
        {
            "name": "a",
            "url": "http://collector.evil.example/",
            "signingSecretRef": {"name": "db-creds", "key": "password"},
        }
    ]
    assert (
        tenant.apply(webhook(NAME, image="evil.example/steal:1", targets=targets)).returncode == 0
    )
    obj = degraded(cluster, tenant.namespace, NAME, "PolicyViolation")
    assert "spec.image: receivers run the image the platform chose" in message_of(obj)
    assert "--allow-image-override (chart value policy.allowImageOverride)" in message_of(obj)
    nothing_made(cluster, tenant.namespace)

    # Without the image, the platform's receiver would sign with the password: the
    # Secret has not opted in, so it is not used, and its keys are not revealed.
    patch = json.dumps({"spec": {"image": None}})
    assert tenant.kubectl("patch", "mtwh", NAME, "--type=merge", "-p", patch).returncode == 0
    obj = degraded(cluster, tenant.namespace, NAME, "SecretNotLabelled")
    assert f"kubectl -n {tenant.namespace} label secret db-creds" in message_of(obj)
    assert "password" not in message_of(obj)
    nothing_made(cluster, tenant.namespace)


def test_ingress_configuration_hosts_scheduling_and_labels_need_the_platforms_leave(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    signing_secret(cluster, tenant.namespace)
    spec = {
        "ingress": {
            "enabled": True,
            "host": "bank.example.com",
            "annotations": {
                "nginx.ingress.kubernetes.io/server-snippet": "location / { return 200; }",
                "nginx.ingress.kubernetes.io/whitelist-source-range": "0.0.0.0/0",
            },
        },
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"operator": "Exists"}],
        "podLabels": {"app": "payments"},
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
    }
    assert tenant.apply(webhook(NAME, **spec)).returncode == 0
    message = message_of(degraded(cluster, tenant.namespace, NAME, "PolicyViolation"))
    for field in (
        "spec.ingress.annotations[nginx.ingress.kubernetes.io/server-snippet]: snippet",
        "spec.ingress.annotations[nginx.ingress.kubernetes.io/whitelist-source-range]",
        "spec.ingress.host: 'bank.example.com' is not one of *.hooks.tenant.example",
        "spec.priorityClassName",
        "spec.tolerations",
        "spec.podLabels[app]",
        "spec.podAnnotations[sidecar.istio.io/inject]",
    ):
        assert field in message
    wait_until(
        lambda: any(e["reason"] == "PolicyViolation" for e in warning_events(
            cluster, tenant.namespace, NAME)),
        what="a PolicyViolation Warning Event",
    )  # fmt: skip
    nothing_made(cluster, tenant.namespace)

    # What the platform allows goes through: its team's host, the documented annotation.
    allowed = {
        "ingress": {
            "enabled": True,
            "host": "payments.hooks.tenant.example",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        }
    }
    assert tenant.apply(webhook(NAME, **allowed)).returncode == 0
    wait_ready(cluster, tenant.namespace, NAME)
    ingress = get(cluster, "ingress", CHILD, namespace=tenant.namespace)
    assert ingress["spec"]["rules"][0]["host"] == "payments.hooks.tenant.example"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"url": "http://169.254.169.254/latest/meta-data/iam/"}, "denied range 169.254.0.0/16"),
        ({"url": "http://2852039166/latest/meta-data/"}, "denied range 169.254.0.0/16"),
        ({"url": "http://metadata.google.internal/"}, "is a denied destination"),
        ({"service": {"name": "kubernetes", "namespace": "default", "port": 443}},
         "'kubernetes.default.svc' is a denied destination"),
    ],
)  # fmt: skip
def test_targets_at_denied_destinations_are_refused(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant, target: Any, field: str
) -> None:
    signing_secret(cluster, tenant.namespace)
    assert tenant.apply(webhook(NAME, targets=[{"name": "a", **target}])).returncode == 0
    message = message_of(degraded(cluster, tenant.namespace, NAME, "PolicyViolation"))
    assert "spec.targets[0]" in message
    assert field in message
    nothing_made(cluster, tenant.namespace)


def test_a_receiver_never_connects_to_a_name_that_resolves_to_a_denied_address(
    cluster: LocalCluster,
    operator: OperatorProcess,
    tenant: Tenant,
    loopback_target: LoopbackTarget,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    target = loopback_target
    # "localhost" passes the spec check (it is a name), and resolves to loopback,
    # which the operator's default ranges deny: the receiver's own guard refuses it.
    secret = signing_secret(cluster, tenant.namespace)
    url = f"http://localhost:{target.port}/events"
    spec = {"targets": [{"name": "local", "url": url}], "delivery": {"spoolPath": "/data/s.db"}}
    assert tenant.apply(webhook(NAME, **spec)).returncode == 0
    wait_ready(cluster, tenant.namespace, NAME)
    deployment = get(cluster, "deployment", CHILD, namespace=tenant.namespace)
    with running_pod_template(cluster=cluster, deployment=deployment, workdir=tmp_path) as pod:
        body = json.dumps({"events": [delivery_event()]}).encode()
        headers = {"Content-Type": "application/json", "Mailtrap-Signature": sign(secret, body)}
        status, answer = post(pod.url("webhook", "/webhooks/mailtrap"), body, headers)
        evidence.add("receiver answer", answer)
        assert status == 200, answer
        dead = 'mailtrap_webhook_dead_letters_total{reason="egress_denied",target="local"} 1.0'
        metrics = wait_until(
            lambda: dead in (text := scrape(pod.url("metrics", "/metrics"))) and text,
            what=f"the event dead-lettered as egress_denied, in {pod.log_path}",
        )
        evidence.add("receiver metrics", metrics)
    assert target.received == []
    assert "EgressDenied" in pod.log()
