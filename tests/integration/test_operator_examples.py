"""Every file in examples/ applied to the real cluster, with the real operator running.

Each yields its children, owned and labelled, a Ready status with the URLs, and
``kubectl get mtwh`` shows the printer columns. The fake secret values of the
examples never show up in the operator's log, the status, the Events or the
ConfigMap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mailtrap_receiver.config import parse_config
from tests.helpers.cluster import REPO, LocalCluster
from tests.helpers.kube import apply, condition, example, get
from tests.helpers.operator import CHILD_KINDS, OperatorProcess, events, wait_ready

pytestmark = pytest.mark.integration

EXAMPLES = {
    "basic.yaml": ("transactional", {"configmap", "service", "deployment", "poddisruptionbudget"}),
    "ingress.yaml": (
        "hooks",
        {"configmap", "service", "deployment", "poddisruptionbudget", "ingress", "networkpolicy"},
    ),
    "cloudevents-batching.yaml": ("engagement", {"configmap", "service", "deployment"}),
}


def test_every_example_is_covered() -> None:
    assert {path.name for path in (REPO / "examples").glob("*.yaml")} == set(EXAMPLES)


@pytest.mark.parametrize("file", sorted(EXAMPLES))
def test_example_yields_owned_labelled_children_and_a_ready_status(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, file: str
) -> None:
    name, kinds = EXAMPLES[file]
    text = example(file)
    apply(cluster, text, namespace=namespace)
    obj = wait_ready(cluster, namespace, name)

    uid = obj["metadata"]["uid"]
    for kind in CHILD_KINDS:
        child = get(cluster, kind, f"{name}-receiver", namespace=namespace)
        if kind not in kinds:
            assert child is None, f"unexpected {kind}"
            continue
        assert child is not None, f"missing {kind}"
        meta = child["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mailtrap.io/v1alpha1",
                "kind": "MailtrapWebhook",
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mailtrap-webhook-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == name
        assert meta["labels"]["app.kubernetes.io/name"] == "mailtrap-receiver"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "mailtrap-webhook"
        assert meta["labels"]["app.kubernetes.io/component"]

    spec = yaml.safe_load_all(text)
    resource = next(doc for doc in spec if doc["kind"] == "MailtrapWebhook")
    status = obj["status"]
    replicas = resource["spec"].get("replicas", 2)
    assert (status["replicas"], status["readyReplicas"]) == (replicas, replicas)
    assert status["url"] == f"http://{name}-receiver.{namespace}.svc:80/webhooks/mailtrap"
    ingress = resource["spec"].get("ingress")
    if ingress:
        assert status["externalURL"] == f"https://{ingress['host']}/webhooks/mailtrap"
    else:
        assert "externalURL" not in status
    assert condition(obj, "Degraded")["status"] == "False"
    assert len(status["configHash"]) == 64
    assert "finalizers" not in obj["metadata"]

    config_map = get(cluster, "configmap", f"{name}-receiver", namespace=namespace)
    config_text = config_map["data"]["config.yaml"]
    config = parse_config(yaml.safe_load(config_text), base_dir=Path("/"), environ={})
    assert [t.name for t in config.targets] == [t["name"] for t in resource["spec"]["targets"]]

    assert any(event["reason"] == "Applied" for event in events(cluster, namespace, name))

    # Placeholders stand in for real secrets: none may leak anywhere.
    fakes = {
        value
        for doc in yaml.safe_load_all(text)
        if doc["kind"] == "Secret"
        for value in doc["stringData"].values()
    }
    seen = [
        operator.log(),
        cluster.kubectl("-n", namespace, "get", "mtwh", name, "-o", "yaml").stdout,
        cluster.kubectl("-n", namespace, "get", "events", "-o", "yaml").stdout,
        cluster.kubectl("-n", namespace, "get", "deployment,configmap", "-o", "yaml").stdout,
    ]
    for fake in fakes:
        assert all(fake not in text for text in seen), "a secret value leaked"


def test_kubectl_get_shows_ready_replicas_url_and_age(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, example("basic.yaml"), namespace=namespace)
    wait_ready(cluster, namespace, "transactional")
    out = cluster.kubectl("-n", namespace, "get", "mtwh").stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "REPLICAS", "URL", "AGE"]
    row = out[1].split()
    assert row[:4] == [
        "transactional",
        "True",
        "2",
        f"http://transactional-receiver.{namespace}.svc:80/webhooks/mailtrap",
    ]
    wide = cluster.kubectl("-n", namespace, "get", "mtwh", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-4:] == ["EXTERNAL", "URL", "REASON", "SUSPENDED"]
    assert wide[1].split()[-2:] == ["ReceiverReady", "false"]


def test_operator_serves_health_and_metrics(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, example("cloudevents-batching.yaml"), namespace=namespace)
    wait_ready(cluster, namespace, "engagement")
    assert operator.get("/healthz")[0] == 200
    assert operator.metric("mailtrap_operator_reconciles_total", {"outcome": "success"}) >= 1
    assert operator.metric("mailtrap_operator_managed_resources") >= 1
    assert operator.metric("mailtrap_operator_reconcile_duration_seconds_count") >= 1
    _, text = operator.get("/metrics")
    assert 'mailtrap_operator_reconciles_total{outcome="degraded"}' in text
