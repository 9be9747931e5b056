"""Pure builders: a MailtrapWebhook spec in, the manifests of its children out.

Nothing here talks to the API server or reads the clock, so unit tests check
every manifest directly. `reconciler` calls `build_children` with what it
read (secret values, whether the ServiceMonitor API exists) and hands the
manifests to `kubeapi` for server-side apply.

The receiver's config file is the spec minus the keys that only shape
Kubernetes objects (`mailtrap_receiver.config.OPERATOR_ONLY_KEYS`), with every
``...SecretRef`` replaced by a ``...SecretFile`` path where the Deployment mounts
that Secret key, plus the addresses targets may not be at, from the operator's
settings (``deniedTargetRanges``, which no spec can set). Secret values never
reach the builders: the config holds paths, and the pod-template hash covers the
config text alone (see `config_hash`).
"""

from __future__ import annotations

import copy
import hashlib
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from mailtrap_receiver.config import (
    OPERATOR_INJECTED_KEYS,
    OPERATOR_ONLY_KEYS,
    IPNetwork,
    parse_duration,
)
from mailtrap_receiver.sinks import CLOUDEVENTS_SOURCE_ENV

from .resources import (
    API_VERSION,
    APP_NAME,
    CONFIG_MAP,
    DEPLOYMENT,
    INGRESS,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    NETWORK_POLICY,
    OPERATOR_NAME,
    PART_OF,
    PLURAL,
    POD_DISRUPTION_BUDGET,
    SERVICE,
    SERVICE_MONITOR,
    Kind,
    Owner,
)

CONFIG_HASH_ANNOTATION: Final = "mailtrap.io/config-hash"
CONFIG_DIR: Final = "/etc/mailtrap-receiver"
CONFIG_FILE: Final = "config.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
SECRETS_DIR: Final = "/var/run/secrets/mailtrap-receiver"
TMP_DIR: Final = "/tmp"  # noqa: S108 - an emptyDir of its own, not the host's /tmp
CONTAINER_NAME: Final = "receiver"
COMMAND: Final = "mailtrap-receiver"
WEBHOOK_PORT: Final = 8080
METRICS_PORT: Final = 9090
SERVICE_PORT: Final = 80
RUN_AS_ID: Final = 10001
# Room on top of the receiver's own grace period for the kubelet to deliver
# SIGTERM and for the process to exit after its last delivery attempt.
TERMINATION_GRACE_MARGIN_SECONDS: Final = 10

DEFAULT_PATH: Final = "/webhooks/mailtrap"
DEFAULT_SPOOL_PATH: Final = "/var/spool/mailtrap-receiver/spool.db"
DEFAULT_SHUTDOWN_GRACE: Final = "30s"
DEFAULT_REPLICAS: Final = 2
DEFAULT_SIGNING_KEY: Final = "signing-secret"
DEFAULT_BASIC_AUTH_KEY: Final = "credentials"
DEFAULT_RESOURCES: Final[Mapping[str, Any]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
DEFAULT_SCRAPE_INTERVAL: Final = "30s"
DEFAULT_MIN_AVAILABLE: Final = 1

_SECRET_MODE: Final = 0o440  # readable by the pod's group (fsGroup), nobody else


class SpecError(ValueError):
    """The spec passed the CRD schema but cannot be turned into working children."""


@dataclass(frozen=True, order=True)
class SecretRef:
    """One Secret key the receiver needs, and where in the spec it was asked for."""

    name: str
    key: str
    field: str

    @property
    def mount_path(self) -> str:
        return f"{SECRETS_DIR}/{self.name}/{self.key}"


@dataclass(frozen=True)
class Children:
    """Everything one reconcile applies, and the optional kinds it must remove."""

    manifests: tuple[dict[str, Any], ...]
    unwanted: frozenset[Kind]
    skipped_service_monitor: bool = False


# --- names and labels -------------------------------------------------------------


def child_name(owner_name: str) -> str:
    """The name of every child: one of each kind, so one name is enough."""
    return f"{owner_name}-receiver"


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the receiver Pods; stable, since selectors are immutable."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: owner.name}


def labels(*, owner: Owner, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels; managed-by is what handlers watch."""
    return {
        **selector_labels(owner),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: OPERATOR_NAME,
        LABEL_PART_OF: PART_OF,
    }


# The component label of each kind of child: with the instance and managed-by
# labels, what identifies an orphan this resource may adopt (see `ownership`).
COMPONENTS: Final[Mapping[Kind, str]] = {
    CONFIG_MAP: "config",
    SERVICE: "receiver",
    DEPLOYMENT: "receiver",
    INGRESS: "ingress",
    POD_DISRUPTION_BUDGET: "receiver",
    NETWORK_POLICY: "receiver",
    SERVICE_MONITOR: "metrics",
}


def _metadata(owner: Owner, kind: Kind) -> dict[str, Any]:
    return {
        "name": child_name(owner.name),
        "namespace": owner.namespace,
        "labels": labels(owner=owner, component=COMPONENTS[kind]),
        "ownerReferences": [owner.owner_reference()],
    }


def suspended(owner: Owner) -> bool:
    """spec.suspend: the operator leaves every child as it is."""
    return bool(owner.spec.get("suspend"))


def replicas_external(spec: Mapping[str, Any]) -> bool:
    """spec.replicasManagedExternally: another controller (an autoscaler) owns the
    Deployment's replicas; the operator sets them only when it creates it."""
    return bool(spec.get("replicasManagedExternally"))


def creation_manifest(owner: Owner, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a create sends: the manifest, plus the initial replicas of a Deployment
    whose replicas are left to another controller (its applies leave them out)."""
    if manifest.get("kind") != DEPLOYMENT.kind or not replicas_external(owner.spec):
        return dict(manifest)
    spec = {**manifest["spec"], "replicas": int(owner.spec.get("replicas", DEFAULT_REPLICAS))}
    return {**manifest, "spec": spec}


def service_url(owner: Owner) -> str:
    """The in-cluster URL of the webhook endpoint, as reported in status.url."""
    path = str(owner.spec.get("path") or DEFAULT_PATH)
    return f"http://{child_name(owner.name)}.{owner.namespace}.svc:{SERVICE_PORT}{path}"


def external_url(owner: Owner) -> str | None:
    """The public URL to paste into Mailtrap, when an Ingress exposes the receiver."""
    ingress = owner.spec.get("ingress") or {}
    if not ingress.get("enabled") or not ingress.get("host"):
        return None
    return f"https://{ingress['host']}{owner.spec.get('path') or DEFAULT_PATH}"


# --- secrets and the receiver config ----------------------------------------------


def secret_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    """Every Secret key the spec references, once each, in a stable order."""
    found: dict[tuple[str, str], SecretRef] = {}

    def add(ref: Mapping[str, Any] | None, default_key: str, where: str) -> None:
        if not ref or not ref.get("name"):
            return
        name, key = str(ref["name"]), str(ref.get("key") or default_key)
        found.setdefault((name, key), SecretRef(name=name, key=key, field=where))

    add(spec.get("signingSecretRef"), DEFAULT_SIGNING_KEY, "spec.signingSecretRef")
    add(spec.get("basicAuthSecretRef"), DEFAULT_BASIC_AUTH_KEY, "spec.basicAuthSecretRef")
    for index, target in enumerate(spec.get("targets") or ()):
        add(
            target.get("signingSecretRef"),
            DEFAULT_SIGNING_KEY,
            f"spec.targets[{index}].signingSecretRef",
        )
    return sorted(found.values())


def _secret_file(ref: Mapping[str, Any], default_key: str) -> str:
    return SecretRef(
        name=str(ref["name"]), key=str(ref.get("key") or default_key), field=""
    ).mount_path


def build_config(
    *,
    spec: Mapping[str, Any],
    namespace: str,
    denied_target_ranges: Sequence[IPNetwork] = (),
) -> dict[str, Any]:
    """The receiver's config: the receiver keys of the spec, Secret refs turned into
    paths, and the operator's own ``deniedTargetRanges`` (never the spec's)."""
    config = {
        key: copy.deepcopy(value)
        for key, value in spec.items()
        if key not in OPERATOR_ONLY_KEYS and key not in OPERATOR_INJECTED_KEYS
    }
    if denied_target_ranges:
        config["deniedTargetRanges"] = [str(network) for network in denied_target_ranges]
    signing = config.pop("signingSecretRef", None)
    if signing:
        config["signingSecretFile"] = _secret_file(signing, DEFAULT_SIGNING_KEY)
    basic = config.pop("basicAuthSecretRef", None)
    if basic:
        config["basicAuthSecretFile"] = _secret_file(basic, DEFAULT_BASIC_AUTH_KEY)
    for target in config.get("targets") or ():
        target_signing = target.pop("signingSecretRef", None)
        if target_signing:
            target["signingSecretFile"] = _secret_file(target_signing, DEFAULT_SIGNING_KEY)
        service = target.get("service")
        if service is not None and not service.get("namespace"):
            # The receiver runs in the resource's namespace, but saying so in the
            # file keeps the config readable on its own.
            service["namespace"] = namespace
    return config


def render_config(*, config: Mapping[str, Any], owner: Owner) -> str:
    """The config file text; deterministic, since its hash rolls the Pods."""
    header = (
        f"# Receiver config for MailtrapWebhook {owner.namespace}/{owner.name}, written by\n"
        f"# {OPERATOR_NAME}. Edit the MailtrapWebhook, not this file.\n"
    )
    return header + yaml.safe_dump(
        dict(config), sort_keys=True, default_flow_style=False, allow_unicode=True
    )


def config_hash(*, config_text: str) -> str:
    """sha256 of the config file: what rolls the receiver Pods when it changes.

    Only the config: Secret values and versions stay out. The receivers re-read
    their mounted secret files when the kubelet updates them, so a rotation needs no
    rollout, and the operator, which no longer watches Secrets, could not follow one.
    """
    return hashlib.sha256(config_text.encode()).hexdigest()


# --- validation beyond the schema -------------------------------------------------

NAME_PATTERN: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH: Final = 63 - len(child_name(""))


def check_name(name: str) -> None:
    """Children names must be DNS labels (Service names are), so ours must be short enough."""
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise SpecError(
            f"metadata.name must be a DNS label of at most {MAX_NAME_LENGTH} characters "
            "starting with a letter, so that the receiver's Service name is valid"
        )


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def spool_dir(spec: Mapping[str, Any]) -> str:
    delivery = spec.get("delivery") or {}
    return posixpath.dirname(
        posixpath.normpath(str(delivery.get("spoolPath") or DEFAULT_SPOOL_PATH))
    )


def validate(owner: Owner) -> None:
    """Reject what the CRD schema lets through but no Pod could run with."""
    check_name(owner.name)
    spec = owner.spec
    directory = spool_dir(spec)
    if directory in ("/", ""):
        raise SpecError(
            "spec.delivery.spoolPath must be inside a directory (such as "
            f"{posixpath.dirname(DEFAULT_SPOOL_PATH)}), not at the root"
        )
    for reserved in (CONFIG_DIR, SECRETS_DIR, TMP_DIR):
        if _overlaps(directory, reserved):
            raise SpecError(
                f"spec.delivery.spoolPath must not be in or around {reserved}, "
                "where the receiver's config, secrets or temporary files are mounted"
            )
    try:
        parse_duration(spec.get("shutdownGracePeriod") or DEFAULT_SHUTDOWN_GRACE)
    except ValueError as error:
        raise SpecError(f"spec.shutdownGracePeriod: {error}") from None


# --- children ---------------------------------------------------------------------


def build_config_map(*, owner: Owner, config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": CONFIG_MAP.api_version,
        "kind": CONFIG_MAP.kind,
        "metadata": _metadata(owner, CONFIG_MAP),
        "data": {CONFIG_FILE: config_text},
    }


def _secret_volume_name(index: int) -> str:
    return f"secret-{index}"


def _termination_grace_seconds(spec: Mapping[str, Any]) -> int:
    grace = parse_duration(spec.get("shutdownGracePeriod") or DEFAULT_SHUTDOWN_GRACE)
    return math.ceil(grace) + TERMINATION_GRACE_MARGIN_SECONDS


def _volumes(spec: Mapping[str, Any], owner: Owner) -> tuple[list[Any], list[Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": child_name(owner.name),
                "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
            },
        }
    ]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    # One volume per Secret, projecting only the keys the receiver reads.
    by_secret: dict[str, list[str]] = {}
    for ref in secret_refs(spec):
        by_secret.setdefault(ref.name, []).append(ref.key)
    for index, (secret, keys) in enumerate(sorted(by_secret.items())):
        volume = _secret_volume_name(index)
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": secret,
                    "items": [{"key": key, "path": key} for key in sorted(keys)],
                    "defaultMode": _SECRET_MODE,
                },
            }
        )
        mounts.append({"name": volume, "mountPath": f"{SECRETS_DIR}/{secret}", "readOnly": True})
    volumes.append({"name": "spool", "emptyDir": {}})
    mounts.append({"name": "spool", "mountPath": spool_dir(spec)})
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}})
    mounts.append({"name": "tmp", "mountPath": TMP_DIR})
    return volumes, mounts


def cloudevents_source(owner: Owner) -> str:
    """The ``source`` of the CloudEvents the receiver forwards: the resource's API path,
    so a target that hears from several MailtrapWebhooks can tell them apart."""
    return f"/apis/{API_VERSION}/namespaces/{owner.namespace}/{PLURAL}/{owner.name}"


def build_deployment(
    *, owner: Owner, image: str, config_hash: str, image_pull_policy: str | None = None
) -> dict[str, Any]:
    spec = owner.spec
    volumes, mounts = _volumes(spec, owner)
    seccomp = {"type": "RuntimeDefault"}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": [COMMAND],
        "args": [
            "serve",
            "--config",
            CONFIG_PATH,
            "--port",
            str(WEBHOOK_PORT),
            "--metrics-port",
            str(METRICS_PORT),
        ],
        "ports": [
            {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": CLOUDEVENTS_SOURCE_ENV, "value": cloudevents_source(owner)},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "resources": copy.deepcopy(dict(spec.get("resources") or DEFAULT_RESOURCES)),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": seccomp,
        },
        "volumeMounts": mounts,
    }
    pull_policy = spec.get("imagePullPolicy") or image_pull_policy
    if pull_policy:
        container["imagePullPolicy"] = pull_policy

    pod_labels = {
        **dict(spec.get("podLabels") or {}),
        **labels(owner=owner, component=COMPONENTS[DEPLOYMENT]),
    }
    pod_annotations = {
        **dict(spec.get("podAnnotations") or {}),
        "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
        CONFIG_HASH_ANNOTATION: config_hash,
    }
    pod_spec: dict[str, Any] = {
        # The receiver never calls the Kubernetes API: no token in its Pods.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": _termination_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_ID,
            "runAsGroup": RUN_AS_ID,
            "fsGroup": RUN_AS_ID,
            "seccompProfile": seccomp,
        },
        "containers": [container],
        "volumes": volumes,
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if spec.get(key):
            pod_spec[key] = copy.deepcopy(spec[key])

    # Replicas left to another controller are not in the apply at all, so server-side
    # apply leaves them to whoever sets them (see `creation_manifest`).
    replicas: dict[str, int] = {}
    if not replicas_external(spec):
        replicas["replicas"] = int(spec.get("replicas", DEFAULT_REPLICAS))
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": _metadata(owner, DEPLOYMENT),
        "spec": {
            **replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner)},
            # Never below the wanted number of ready receivers while rolling.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def build_service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": _metadata(owner, SERVICE),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "webhook", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def build_ingress(owner: Owner) -> dict[str, Any] | None:
    """Only the webhook path is routed: health and metrics stay inside the cluster."""
    ingress = owner.spec.get("ingress") or {}
    if not ingress.get("enabled"):
        return None
    if not ingress.get("host"):
        raise SpecError("spec.ingress.host is required when spec.ingress.enabled is true")
    host = str(ingress["host"])
    metadata = _metadata(owner, INGRESS)
    if ingress.get("annotations"):
        metadata["annotations"] = dict(ingress["annotations"])
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": str(owner.spec.get("path") or DEFAULT_PATH),
                            "pathType": "Exact",
                            "backend": {
                                "service": {
                                    "name": child_name(owner.name),
                                    "port": {"name": "http"},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ingress.get("className"):
        spec["ingressClassName"] = str(ingress["className"])
    if ingress.get("tlsSecretName"):
        spec["tls"] = [{"hosts": [host], "secretName": str(ingress["tlsSecretName"])}]
    return {
        "apiVersion": INGRESS.api_version,
        "kind": INGRESS.kind,
        "metadata": metadata,
        "spec": spec,
    }


def build_pod_disruption_budget(owner: Owner) -> dict[str, Any] | None:
    """Only with more than one replica: with one, any budget would block node drains.

    minAvailable is not clamped here: the CRD refuses one at or above replicas.
    """
    pdb = owner.spec.get("podDisruptionBudget") or {}
    replicas = int(owner.spec.get("replicas", DEFAULT_REPLICAS))
    if not pdb.get("enabled", True) or replicas <= 1:
        return None
    return {
        "apiVersion": POD_DISRUPTION_BUDGET.api_version,
        "kind": POD_DISRUPTION_BUDGET.kind,
        "metadata": _metadata(owner, POD_DISRUPTION_BUDGET),
        "spec": {
            "minAvailable": int(pdb.get("minAvailable", DEFAULT_MIN_AVAILABLE)),
            "selector": {"matchLabels": selector_labels(owner)},
            # A crash-looping receiver must not hold up node maintenance.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _ingress_rule(port: int, peers: Sequence[Any] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": port, "protocol": "TCP"}]}
    if peers:
        rule["from"] = copy.deepcopy(list(peers))
    return rule


def build_network_policy(owner: Owner) -> dict[str, Any] | None:
    policy = owner.spec.get("networkPolicy") or {}
    if not policy.get("enabled"):
        return None
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": _metadata(owner, NETWORK_POLICY),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            # Ingress only: targets may be anywhere, so egress stays open.
            "policyTypes": ["Ingress"],
            "ingress": [
                _ingress_rule(WEBHOOK_PORT, policy.get("webhookFrom")),
                _ingress_rule(METRICS_PORT, policy.get("metricsFrom")),
            ],
        },
    }


def build_service_monitor(owner: Owner) -> dict[str, Any] | None:
    monitor = owner.spec.get("serviceMonitor") or {}
    if not monitor.get("enabled"):
        return None
    metadata = _metadata(owner, SERVICE_MONITOR)
    metadata["labels"] = {**dict(monitor.get("labels") or {}), **metadata["labels"]}
    return {
        "apiVersion": SERVICE_MONITOR.api_version,
        "kind": SERVICE_MONITOR.kind,
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "endpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": str(monitor.get("interval") or DEFAULT_SCRAPE_INTERVAL),
                }
            ],
        },
    }


_OPTIONAL_BUILDERS: Final = (
    (INGRESS, build_ingress),
    (POD_DISRUPTION_BUDGET, build_pod_disruption_budget),
    (NETWORK_POLICY, build_network_policy),
    (SERVICE_MONITOR, build_service_monitor),
)


def build_children(
    *,
    owner: Owner,
    default_image: str,
    config_text: str,
    config_hash: str,
    service_monitors_available: bool,
    image_pull_policy: str | None = None,
) -> Children:
    """All children in apply order: config first, so new Pods never see an old file."""
    validate(owner)
    manifests: list[dict[str, Any]] = [
        build_config_map(owner=owner, config_text=config_text),
        build_service(owner),
        build_deployment(
            owner=owner,
            image=str(owner.spec.get("image") or default_image),
            config_hash=config_hash,
            image_pull_policy=image_pull_policy,
        ),
    ]
    unwanted: set[Kind] = set()
    skipped_monitor = False
    for kind, build in _OPTIONAL_BUILDERS:
        manifest = build(owner)
        if manifest is not None and kind is SERVICE_MONITOR and not service_monitors_available:
            skipped_monitor = True
            manifest = None
        if manifest is None:
            unwanted.add(kind)
        else:
            manifests.append(manifest)
    return Children(
        manifests=tuple(manifests),
        unwanted=frozenset(unwanted),
        skipped_service_monitor=skipped_monitor,
    )
