"""The leak check: no secret value anywhere the product writes or answers.

Runs last in tests/security (conftest.py's pytest_collection_modifyitems), after
every attack. Every secret value the security tests handed out is a registered
canary (tests/helpers/canary.py); this looks for each, raw, base64 or hex, in:

- every log under pytest's base temporary directory (the operators', the
  receivers', the control plane's, its audit log);
- every Event and every MailtrapWebhook status in the cluster;
- the live /metrics of an operator and of a receiver it runs;
- the error bodies that receiver answers, and every answer and refusal the other
  tests kept (the ``evidence`` fixture: kubectl output of the tenant, bodies).

It can fail: the same search finds every canary in the cluster's Secrets, where
they are meant to be.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.helpers import canary
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import get
from tests.helpers.operator import OperatorProcess, wait_ready
from tests.helpers.podrunner import running_pod_template
from tests.helpers.targets import LoopbackTarget
from tests.helpers.webhooks import delivery_event
from tests.security.conftest import Evidence, Tenant
from tests.security.tenancy import post, put_secret, scrape, sign, signing_secret, webhook

pytestmark = pytest.mark.integration

# The receiver forwards to a target on loopback: this platform allows loopback.
OPERATOR_ENV = {"MAILTRAP_OPERATOR_DENIED_TARGET_CIDRS": "169.254.0.0/16"}
PATH = "/webhooks/mailtrap"


def provoke(url: str, secret: str, user: str, password: str) -> list[str]:
    """A signed request and every refusal the receiver gives: their bodies."""
    body = json.dumps({"events": [delivery_event()]}).encode()
    good = base64.b64encode(f"{user}:{password}".encode()).decode()
    bad = base64.b64encode(f"{user}:wrong-{password}".encode()).decode()
    json_type = {"Content-Type": "application/json"}
    attempts = [
        ({**json_type, "Authorization": f"Basic {good}", "Mailtrap-Signature": sign(secret, body)},
         200),
        ({**json_type, "Authorization": f"Basic {good}", "Mailtrap-Signature": "0" * 64}, 401),
        ({**json_type, "Authorization": f"Basic {good}"}, 401),
        ({**json_type, "Authorization": f"Basic {bad}", "Mailtrap-Signature": sign(secret, body)},
         401),
        ({**json_type, "Mailtrap-Signature": sign(secret, body)}, 401),
    ]  # fmt: skip
    answers = []
    for headers, expected in attempts:
        status, answer = post(url + PATH, body, headers)
        assert status == expected, answer
        answers.append(answer)
    status, answer = post(url + "/elsewhere", body, json_type)
    assert status == 404
    answers.append(answer)
    return answers


def test_no_secret_value_is_anywhere_the_product_writes_or_answers(
    cluster: LocalCluster,
    operator: OperatorProcess,
    tenant: Tenant,
    loopback_target: LoopbackTarget,
    evidence: Evidence,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    secret = signing_secret(cluster, tenant.namespace)
    user, password = "mailtrap", canary.canary("basic-auth")
    forwarding = canary.canary("target")
    put_secret(cluster, tenant.namespace, "basic", {"credentials": f"{user}:{password}"})
    put_secret(cluster, tenant.namespace, "forwarding", {"signing-secret": forwarding})
    spec = {
        "basicAuthSecretRef": {"name": "basic"},
        "delivery": {"spoolPath": "/data/spool.db"},
        "targets": [
            {
                "name": "loopback",
                "url": f"http://127.0.0.1:{loopback_target.port}/events",
                "signingSecretRef": {"name": "forwarding"},
            }
        ],
    }
    assert tenant.apply(webhook("canary", **spec)).returncode == 0
    wait_ready(cluster, tenant.namespace, "canary")
    deployment = get(cluster, "deployment", "canary-receiver", namespace=tenant.namespace)
    with running_pod_template(cluster=cluster, deployment=deployment, workdir=tmp_path) as pod:
        for answer in provoke(pod.url("webhook", ""), secret, user, password):
            evidence.add("receiver answer", answer)
        evidence.add("receiver metrics", scrape(pod.url("metrics", "/metrics")))
    evidence.add("operator metrics", operator.get("/metrics")[1])

    places = list(evidence.texts)
    places.append(("every Event", json.dumps(get(cluster, "events", "-A"))))
    places.append(("every MailtrapWebhook", json.dumps(get(cluster, "mailtrapwebhooks", "-A"))))
    logs = sorted(tmp_path_factory.getbasetemp().rglob("*.log"))
    assert any(path.name == "operator.log" for path in logs)
    assert any(path.name == "receiver.log" for path in logs)
    places += [(str(path), path.read_text(errors="replace")) for path in logs]

    # The search finds this test's canaries where they belong: the check can fail.
    secrets = json.dumps(get(cluster, "secrets", "-n", tenant.namespace))
    assert set(canary.leaks(secrets)) >= {secret, password, forwarding}
    assert len(canary.values()) >= 3

    leaked = [where for where, text in places if canary.leaks(text)]
    assert leaked == [], f"secret values found in: {leaked}"
