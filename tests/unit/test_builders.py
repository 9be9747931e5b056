"""The operator's pure builders: every child manifest, the receiver config and the hash.

The receiver config is also loaded with the receiver's own loader, from a spec
that uses every key of the CRD, so the operator and the receiver cannot disagree
on a key without a test failing here.
"""

from __future__ import annotations

import base64
import copy
import inspect
import ipaddress
import json
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailtrap_operator import builders
from mailtrap_operator.metrics import OperatorMetrics
from mailtrap_operator.policy import Policy
from mailtrap_operator.reconciler import Reconciler
from mailtrap_operator.resources import (
    INGRESS,
    NETWORK_POLICY,
    POD_DISRUPTION_BUDGET,
    SECRET_OPT_IN_LABEL,
    SECRET_OPT_IN_VALUE,
    SERVICE_MONITOR,
    Owner,
)
from mailtrap_operator.settings import Settings
from mailtrap_receiver.config import OPERATOR_ONLY_KEYS, load_config
from tests.helpers.canary import canary
from tests.helpers.canary import leaks as canary_leaks
from tests.helpers.fakeapi import FakeApi, secret_body
from tests.helpers.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds/mailtrapwebhooks.mailtrap.io.yaml").read_text())
SPEC_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

MINIMAL: dict[str, Any] = {
    "signingSecretRef": {"name": "mailtrap-signing", "key": "signing-secret"},
    "targets": [{"name": "analytics", "url": "http://analytics.data.svc/ingest"}],
}

# Every key the CRD's spec schema has, with a value the API server would accept.
FULL: dict[str, Any] = {
    "path": "/hooks/mailtrap",
    "signingSecretRef": {"name": "mailtrap-signing", "key": "current"},
    "events": ["bounce", "soft_bounce", "spam_complaint", "unsubscribe"],
    "targets": [
        {
            "name": "suppressions",
            "service": {
                "name": "suppression-api",
                "port": 8080,
                "path": "/events",
                "scheme": "http",
            },
            "events": ["bounce", "spam_complaint", "unsubscribe"],
            "format": "mailtrap",
            "batchSize": 10,
            "timeout": "5s",
            "concurrency": 2,
            "headers": {"X-Team": "mail"},
            "retry": {"maxAttempts": 5, "initialBackoff": "2s", "maxBackoff": "1m"},
            "signingSecretRef": {"name": "target-signing", "key": "hmac"},
        },
        {
            "name": "analytics",
            "url": "http://analytics.data.svc.cluster.local/ingest",
            "format": "cloudevents",
            "service": None,
        },
        {
            "name": "audit",
            "service": {"name": "audit", "namespace": "security", "port": 443, "scheme": "https"},
        },
    ],
    "delivery": {
        "ack": "durable",
        "spoolPath": "/data/spool/events.db",
        "dedupWindow": "25h",
        "maxPendingEvents": 1000,
        "maxDeadLetters": 5000,
        "deadLetterRetention": "72h",
        "retry": {"maxAttempts": 20, "initialBackoff": "1s", "maxBackoff": "10m"},
    },
    "shutdownGracePeriod": "45s",
    "basicAuthSecretRef": {"name": "mailtrap-basic", "key": "credentials"},
    "allowedSourceRanges": ["10.0.0.0/8"],
    "trustedProxyRanges": ["10.1.0.0/16"],
    "maxBodySize": "2Mi",
    "maxInFlightRequests": 100,
    "limits": {
        "headerTimeout": "10s",
        "idleTimeout": "90s",
        "maxConnections": 1000,
        "bodyTimeout": "20s",
        "minBodyRate": "8Ki",
        "maxBodyReadsPerSource": 8,
        "maxBodyMemory": "32Mi",
        "maxEventsPerRequest": 500,
        "maxJsonDepth": 16,
        "maxFieldLength": 128,
    },
    "logging": {"format": "console", "level": "debug", "redactEmails": True},
    "replicas": 3,
    "replicasManagedExternally": False,
    "suspend": False,
    "image": "registry.example/mailtrap:1.2.3",
    "imagePullPolicy": "IfNotPresent",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "mail", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {}},
    "priorityClassName": "high",
    "podAnnotations": {"example.com/team": "mail"},
    "podLabels": {"team": "mail"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "hooks.example.com",
        "tlsSecretName": "hooks-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    },
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "networkPolicy": {
        "enabled": True,
        "webhookFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}],
        "metricsFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}],
    },
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
}
del FULL["targets"][1]["service"]  # listed above only to show the url target has none

# Every key FULL references; test_config_text_never_holds_secret_values fills them.
SECRETS = {
    ("mailtrap-signing", "current"): "signing",
    ("target-signing", "hmac"): "target",
    ("mailtrap-basic", "credentials"): "basic",
}


def owner_of(spec: dict[str, Any], *, name: str = "transactional") -> Owner:
    return Owner(namespace="mail", name=name, uid="uid-1234", generation=3, spec=spec)


def children_of(spec: dict[str, Any], *, monitors: bool = True) -> builders.Children:
    owner = owner_of(spec)
    text = builders.render_config(
        config=builders.build_config(spec=spec, namespace=owner.namespace), owner=owner
    )
    return builders.build_children(
        owner=owner,
        default_image="operator-image:1",
        config_text=text,
        config_hash=builders.config_hash(config_text=text),
        service_monitors_available=monitors,
    )


def by_kind(children: builders.Children) -> dict[str, dict[str, Any]]:
    return {manifest["kind"]: manifest for manifest in children.manifests}


def pod_template_hash(spec: dict[str, Any]) -> str:
    deployment = by_kind(children_of(spec))["Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    return str(annotations[builders.CONFIG_HASH_ANNOTATION])


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        keys.add(path)
        keys |= _schema_keys(sub, path)
        if "items" in sub:
            keys |= _schema_keys(sub["items"], path + "[]")
    return keys


def _value_keys(value: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else key
            keys.add(path)
            keys |= _value_keys(sub, path)
    elif isinstance(value, list):
        for item in value:
            keys |= _value_keys(item, prefix + "[]")
    return keys


# --- the receiver config --------------------------------------------------------------


def test_the_full_spec_uses_every_key_of_the_crd() -> None:
    # Free-form maps (headers, selectors, resources...) have no schema keys.
    assert _schema_keys(SPEC_SCHEMA) - _value_keys(FULL) == set()


def test_config_is_the_spec_without_operator_keys_and_with_secret_files() -> None:
    config = builders.build_config(spec=FULL, namespace="mail")
    assert not OPERATOR_ONLY_KEYS & set(config)
    assert "signingSecretRef" not in config
    assert config["signingSecretFile"] == (
        "/var/run/secrets/mailtrap-receiver/mailtrap-signing/current"
    )
    assert config["basicAuthSecretFile"] == (
        "/var/run/secrets/mailtrap-receiver/mailtrap-basic/credentials"
    )
    first = config["targets"][0]
    assert "signingSecretRef" not in first
    assert first["signingSecretFile"] == "/var/run/secrets/mailtrap-receiver/target-signing/hmac"
    assert first["service"]["namespace"] == "mail"  # defaulted to the resource's namespace
    assert config["targets"][2]["service"]["namespace"] == "security"  # kept when given
    assert config["delivery"] == FULL["delivery"]
    assert FULL["targets"][0]["service"].get("namespace") is None  # the spec is not mutated


def test_the_operators_denied_ranges_go_into_the_config_and_never_the_specs() -> None:
    denied = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("::1/128")]
    spec = {**MINIMAL, "deniedTargetRanges": ["0.0.0.0/32"]}  # the CRD would prune it
    config = builders.build_config(spec=spec, namespace="mail", denied_target_ranges=denied)
    assert config["deniedTargetRanges"] == ["169.254.0.0/16", "::1/128"]
    assert "deniedTargetRanges" not in builders.build_config(spec=spec, namespace="mail")


@pytest.mark.parametrize("spec", [MINIMAL, FULL], ids=["minimal", "full"])
def test_config_file_loads_with_the_receivers_own_loader(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    owner = owner_of(spec)
    text = builders.render_config(
        config=builders.build_config(spec=spec, namespace=owner.namespace), owner=owner
    )
    path = tmp_path / builders.CONFIG_FILE
    path.write_text(text)
    config = load_config(path, environ={})
    signing = spec["signingSecretRef"]
    assert config.signing_secret_file == Path(builders.SECRETS_DIR, signing["name"], signing["key"])
    assert [target.name for target in config.targets] == [t["name"] for t in spec["targets"]]
    assert config.path == spec.get("path", builders.DEFAULT_PATH)


async def test_config_text_never_holds_secret_values(capsys: pytest.CaptureFixture[str]) -> None:
    # Through the whole reconcile, from Secrets as the API server returns them (values
    # in base64), with the operator's own parsing of them: nothing the operator
    # writes or logs may hold a value, in any encoding.
    api = FakeApi("mail")
    for (name, key), _ in SECRETS.items():
        body = api.secrets.setdefault(name, secret_body(name, {}))
        body["data"][key] = base64.b64encode(canary(f"{name}-{key}").encode()).decode()
    values = [
        base64.b64decode(v).decode() for s in api.secrets.values() for v in s["data"].values()
    ]
    assert len(values) == len(SECRETS)
    assert sorted(canary_leaks(json.dumps(api.secrets), among=values)) == sorted(values)
    api.monitors_served = True
    # FULL uses every key: a platform that allows them all.
    generous = Policy(
        allow_image_override=True,
        allowed_priority_classes=("*",),
        allow_tolerations=True,
        allowed_pod_labels=("*",),
        allowed_pod_annotations=("*",),
    )
    reconciler = Reconciler(
        settings=Settings(policy=generous),
        api=api,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
    )
    try:
        owner = Owner(namespace="mail", name="transactional", uid="u", generation=1, spec=FULL)
        assert await reconciler.reconcile(owner=owner, known_children=(), trigger="create") is None
        await eventually(lambda: bool(api.events))
    finally:
        await reconciler.close()
    manifests = list(api.objects.values())
    assert {manifest["kind"] for manifest in manifests} >= {"ConfigMap", "Deployment"}
    config_text = next(m for m in manifests if m["kind"] == "ConfigMap")["data"][
        builders.CONFIG_FILE
    ]
    assert "/var/run/secrets/mailtrap-receiver/mailtrap-signing/current" in config_text
    written = json.dumps([manifests, api.status, api.events]) + capsys.readouterr().out
    assert canary_leaks(written, among=values) == []


def test_secret_refs_are_listed_once_with_where_they_come_from() -> None:
    spec = copy.deepcopy(FULL)
    spec["targets"][1]["signingSecretRef"] = {"name": "mailtrap-signing", "key": "current"}
    refs = builders.secret_refs(spec)
    assert [(ref.name, ref.key) for ref in refs] == sorted(SECRETS)
    assert {ref.field for ref in refs} >= {
        "spec.signingSecretRef",
        "spec.basicAuthSecretRef",
        "spec.targets[0].signingSecretRef",
    }


def test_secret_refs_default_their_keys_like_the_crd() -> None:
    spec = {**MINIMAL, "signingSecretRef": {"name": "s"}, "basicAuthSecretRef": {"name": "b"}}
    assert {(ref.name, ref.key) for ref in builders.secret_refs(spec)} == {
        ("s", "signing-secret"),
        ("b", "credentials"),
    }


# --- the pod-template hash ------------------------------------------------------------


def test_hash_changes_with_the_config() -> None:
    changed = copy.deepcopy(FULL)
    changed["targets"][1]["url"] = "http://elsewhere.data.svc/ingest"
    assert pod_template_hash(FULL) != pod_template_hash(changed)


def test_the_hash_is_the_config_texts_alone() -> None:
    # No Secret value nor version goes in: the receivers re-read rotated secret files
    # themselves, and the hash is in status and on the pod template for anyone to read.
    assert set(inspect.signature(builders.config_hash).parameters) == {"config_text"}
    children = by_kind(children_of(FULL))
    text = children["ConfigMap"]["data"][builders.CONFIG_FILE]
    assert pod_template_hash(FULL) == builders.config_hash(config_text=text)


def test_moving_a_secret_reference_changes_the_hash() -> None:
    # What the receiver reads from where is config; what the files hold is not.
    changed = copy.deepcopy(FULL)
    changed["signingSecretRef"] = {"name": "mailtrap-signing", "key": "next"}
    assert pod_template_hash(FULL) != pod_template_hash(changed)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("replicas", 7),
        ("podLabels", {"team": "other"}),
        ("podAnnotations", {"other": "x"}),
        ("image", "registry.example/mailtrap:9"),
        ("resources", {"requests": {"cpu": "1"}}),
        ("ingress", {"enabled": False}),
        ("nodeSelector", {}),
    ],
)
def test_hash_ignores_what_the_receiver_does_not_read(key: str, value: Any) -> None:
    changed = {**FULL, key: value}
    assert pod_template_hash(FULL) == pod_template_hash(changed)


# --- children: common metadata ---------------------------------------------------------


def test_every_child_is_owned_labelled_and_named_after_the_resource() -> None:
    children = children_of(FULL)
    kinds = [manifest["kind"] for manifest in children.manifests]
    assert kinds == [
        "ConfigMap",
        "Service",
        "Deployment",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ]
    for manifest in children.manifests:
        meta = manifest["metadata"]
        assert meta["name"] == "transactional-receiver"
        assert meta["namespace"] == "mail"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mailtrap.io/v1alpha1",
                "kind": "MailtrapWebhook",
                "name": "transactional",
                "uid": "uid-1234",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "mailtrap-receiver"
        assert labels["app.kubernetes.io/instance"] == "transactional"
        assert labels["app.kubernetes.io/managed-by"] == "mailtrap-webhook-operator"
        assert labels["app.kubernetes.io/part-of"] == "mailtrap-webhook"
        assert labels["app.kubernetes.io/component"]


def test_config_map_holds_the_rendered_config() -> None:
    config_map = by_kind(children_of(FULL))["ConfigMap"]
    text = config_map["data"][builders.CONFIG_FILE]
    assert yaml.safe_load(text) == builders.build_config(spec=FULL, namespace="mail")
    assert text.startswith("# Receiver config for MailtrapWebhook mail/transactional")


# --- the Deployment ----------------------------------------------------------------------


def _deployment(spec: dict[str, Any]) -> dict[str, Any]:
    return by_kind(children_of(spec))["Deployment"]


def _container(spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _deployment(spec)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_pods_run_non_root_read_only_without_capabilities() -> None:
    pod = _deployment(MINIMAL)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    context = _container(MINIMAL)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_container_runs_the_receiver_on_named_ports_with_probes() -> None:
    container = _container(MINIMAL)
    assert container["command"] == ["mailtrap-receiver"]
    assert container["args"][:3] == ["serve", "--config", "/etc/mailtrap-receiver/config.yaml"]
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "webhook": 8080,
        "metrics": 9090,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MAILTRAP_CLOUDEVENTS_SOURCE"]["value"] == (
        "/apis/mailtrap.io/v1alpha1/namespaces/mail/mailtrapwebhooks/transactional"
    )
    assert container["image"] == "operator-image:1"
    assert "imagePullPolicy" not in container


def test_mounts_config_read_only_and_only_the_needed_secret_keys() -> None:
    deployment = _deployment(FULL)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in _container(FULL)["volumeMounts"]}

    config_mount = mounts["/etc/mailtrap-receiver"]
    assert config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == "transactional-receiver"

    config = builders.build_config(spec=FULL, namespace="mail")
    files = [config["signingSecretFile"], config["basicAuthSecretFile"]]
    files.append(config["targets"][0]["signingSecretFile"])
    for path in files:
        directory, key = posixpath.split(path)
        mount = mounts[directory]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == posixpath.basename(directory)
        assert secret["items"] == [{"key": key, "path": key}]

    spool = mounts["/data/spool"]
    assert "emptyDir" in volumes[spool["name"]]
    assert not spool.get("readOnly")
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert len(mounts) == len(volumes) == 6  # config, 3 secrets, spool, tmp


def test_spool_defaults_to_its_own_directory() -> None:
    mounts = {mount["name"]: mount for mount in _container(MINIMAL)["volumeMounts"]}
    assert mounts["spool"]["mountPath"] == "/var/spool/mailtrap-receiver"


def test_spec_shapes_the_pods() -> None:
    deployment = _deployment(FULL)
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["nodeSelector"] == FULL["nodeSelector"]
    assert pod["tolerations"] == FULL["tolerations"]
    assert pod["affinity"] == FULL["affinity"]
    assert pod["priorityClassName"] == "high"
    assert pod["terminationGracePeriodSeconds"] == 45 + builders.TERMINATION_GRACE_MARGIN_SECONDS
    container = _container(FULL)
    assert container["resources"] == FULL["resources"]
    assert container["image"] == FULL["image"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert template["metadata"]["labels"]["team"] == "mail"
    assert template["metadata"]["annotations"]["example.com/team"] == "mail"


def test_defaults_without_a_spec_for_them() -> None:
    deployment = _deployment(MINIMAL)
    assert deployment["spec"]["replicas"] == 2
    assert _container(MINIMAL)["resources"] == builders.DEFAULT_RESOURCES
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30 + builders.TERMINATION_GRACE_MARGIN_SECONDS
    assert "nodeSelector" not in pod


def test_pod_labels_and_annotations_cannot_replace_ours() -> None:
    spec = {
        **MINIMAL,
        "podLabels": {"app.kubernetes.io/instance": "hijack", "team": "mail"},
        "podAnnotations": {builders.CONFIG_HASH_ANNOTATION: "forged"},
    }
    deployment = _deployment(spec)
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["app.kubernetes.io/instance"] == "transactional"
    assert template["annotations"][builders.CONFIG_HASH_ANNOTATION] != "forged"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["labels"].items()


def test_termination_grace_follows_the_shutdown_grace_period() -> None:
    spec = {**MINIMAL, "shutdownGracePeriod": "1m30s"}
    pod = _deployment(spec)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90 + builders.TERMINATION_GRACE_MARGIN_SECONDS


# --- Service and optional children ---------------------------------------------------------


def test_service_routes_port_80_to_the_webhook_and_exposes_metrics() -> None:
    service = by_kind(children_of(MINIMAL))["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (80, "webhook")
    assert (ports["metrics"]["port"], ports["metrics"]["targetPort"]) == (9090, "metrics")
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "mailtrap-receiver",
        "app.kubernetes.io/instance": "transactional",
    }


def test_minimal_spec_makes_no_optional_children() -> None:
    children = children_of(MINIMAL)
    assert [manifest["kind"] for manifest in children.manifests] == [
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",  # two replicas by default
    ]
    assert children.unwanted == {INGRESS, NETWORK_POLICY, SERVICE_MONITOR}


def test_ingress_routes_only_the_webhook_path_with_tls() -> None:
    ingress = by_kind(children_of(FULL))["Ingress"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == FULL["ingress"]["annotations"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "hooks.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/hooks/mailtrap"
    assert path["pathType"] == "Exact"
    assert path["backend"]["service"] == {
        "name": "transactional-receiver",
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"] == [{"hosts": ["hooks.example.com"], "secretName": "hooks-tls"}]


def test_ingress_without_host_is_a_spec_error() -> None:
    with pytest.raises(builders.SpecError, match="host"):
        children_of({**MINIMAL, "ingress": {"enabled": True}})


@pytest.mark.parametrize(
    ("replicas", "pdb", "wanted"),
    [(1, {}, False), (2, {}, True), (3, {"enabled": False}, False), (0, {}, False)],
)
def test_pod_disruption_budget_only_with_more_than_one_replica(
    replicas: int, pdb: dict[str, Any], wanted: bool
) -> None:
    children = children_of({**MINIMAL, "replicas": replicas, "podDisruptionBudget": pdb})
    assert ("PodDisruptionBudget" in by_kind(children)) is wanted
    assert (POD_DISRUPTION_BUDGET in children.unwanted) is not wanted


def test_pod_disruption_budget_keeps_the_minimum_available() -> None:
    pdb = by_kind(children_of(FULL))["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "transactional"


def test_network_policy_admits_only_the_two_ports_from_the_given_peers() -> None:
    policy = by_kind(children_of(FULL))["NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    webhook, metrics = policy["spec"]["ingress"]
    assert webhook == {
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "from": FULL["networkPolicy"]["webhookFrom"],
    }
    assert metrics["ports"] == [{"port": 9090, "protocol": "TCP"}]
    open_policy = by_kind(children_of({**MINIMAL, "networkPolicy": {"enabled": True}}))
    assert all("from" not in rule for rule in open_policy["NetworkPolicy"]["spec"]["ingress"])


def test_service_monitor_only_when_the_api_is_served() -> None:
    served = children_of(FULL, monitors=True)
    monitor = by_kind(served)["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    assert not served.skipped_service_monitor
    missing = children_of(FULL, monitors=False)
    assert "ServiceMonitor" not in by_kind(missing)
    assert missing.skipped_service_monitor
    assert SERVICE_MONITOR in missing.unwanted


# --- validation and URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spool",
    ["/spool.db", "/etc/mailtrap-receiver/spool.db", "/tmp/spool.db", "/var/run/secrets/s.db"],
)
def test_spool_paths_that_clash_with_other_mounts_are_rejected(spool: str) -> None:
    spec = {**MINIMAL, "delivery": {"spoolPath": spool}}
    with pytest.raises(builders.SpecError, match="spoolPath"):
        builders.validate(owner_of(spec))


def test_names_too_long_for_a_service_are_rejected() -> None:
    builders.validate(owner_of(MINIMAL, name="a" * builders.MAX_NAME_LENGTH))
    with pytest.raises(builders.SpecError, match=r"metadata\.name"):
        builders.validate(owner_of(MINIMAL, name="a" * (builders.MAX_NAME_LENGTH + 1)))


def test_urls() -> None:
    assert builders.service_url(owner_of(FULL)) == (
        "http://transactional-receiver.mail.svc:80/hooks/mailtrap"
    )
    assert builders.external_url(owner_of(FULL)) == "https://hooks.example.com/hooks/mailtrap"
    assert builders.external_url(owner_of(MINIMAL)) is None
    assert builders.service_url(owner_of(MINIMAL)).endswith("/webhooks/mailtrap")


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_make_configs_the_receiver_loads(path: Path, tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    (resource,) = [doc for doc in documents if doc["kind"] == "MailtrapWebhook"]
    assert "namespace" not in resource["metadata"]
    secrets = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Secret"}
    for ref in builders.secret_refs(resource["spec"]):
        assert ref.key in secrets[ref.name]["stringData"], f"{path.name}: {ref}"
        # The opt-in without which the operator would refuse the Secret.
        labels = secrets[ref.name]["metadata"]["labels"]
        assert labels == {SECRET_OPT_IN_LABEL: SECRET_OPT_IN_VALUE}, f"{path.name}: {ref}"
    owner = owner_of(resource["spec"], name=resource["metadata"]["name"])
    text = builders.render_config(
        config=builders.build_config(spec=resource["spec"], namespace="mail"), owner=owner
    )
    (tmp_path / "config.yaml").write_text(text)
    load_config(tmp_path / "config.yaml", environ={})
    builders.validate(owner)


def test_replicas_left_to_an_autoscaler_are_set_only_at_creation() -> None:
    spec = {**MINIMAL, "replicas": 3, "replicasManagedExternally": True}
    deployment = by_kind(children_of(spec))["Deployment"]
    assert "replicas" not in deployment["spec"]
    created = builders.creation_manifest(owner_of(spec), deployment)
    assert created["spec"]["replicas"] == 3
    assert "replicas" not in deployment["spec"]  # not changed in place
    # Everything else, and every other kind, is created as it is applied.
    assert {**created["spec"], "replicas": None} == {**deployment["spec"], "replicas": None}
    config_map = by_kind(children_of(spec))["ConfigMap"]
    assert builders.creation_manifest(owner_of(spec), config_map) == config_map
    managed = by_kind(children_of({**MINIMAL, "replicas": 3}))["Deployment"]
    assert builders.creation_manifest(owner_of(MINIMAL), managed) == managed


def test_each_kind_carries_its_component_label() -> None:
    for manifest in children_of(FULL).manifests:
        kind = next(kind for kind in builders.COMPONENTS if kind.kind == manifest["kind"])
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == builders.COMPONENTS[kind]
