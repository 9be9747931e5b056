"""What the security tests build and wait for: resources, victims, signed requests.

The fixtures (the operator on the chart's RBAC, the tenant) are in conftest.py; these
are the plain helpers the attack modules share. Every secret value is a canary.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from mailtrap_operator.kubeapi import KubeApi
from tests.helpers.canary import canary
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import condition, get, secret_manifest, wait_until
from tests.helpers.operator import events

API_VERSION = "mailtrap.io/v1alpha1"


def webhook(name: str, **spec: Any) -> dict[str, Any]:
    """A MailtrapWebhook with the signing Secret `signing_secret` makes; ``spec`` adds."""
    return {
        "apiVersion": API_VERSION,
        "kind": "MailtrapWebhook",
        "metadata": {"name": name},
        "spec": {
            "signingSecretRef": {"name": "signing"},
            "replicas": 1,
            "targets": [{"name": "a", "url": "http://events.example/in"}],
            **spec,
        },
    }


def signing_secret(cluster: LocalCluster, namespace: str) -> str:
    """The labelled Secret "signing" (made by whoever may write Secrets: the admin);
    its canary value."""
    value = canary("signing")
    put_secret(cluster, namespace, "signing", {"signing-secret": value})
    return value


def put_secret(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    data: Mapping[str, str],
    *,
    opted_in: bool = True,
) -> None:
    manifest = secret_manifest(name, dict(data), opted_in=opted_in)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=manifest)


def put(cluster: LocalCluster, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Another team's object (made by the admin), as the API server stored it."""
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(obj))
    found = get(cluster, obj["kind"].lower(), obj["metadata"]["name"], namespace=namespace)
    assert found is not None
    return dict(found)


def degraded(
    cluster: LocalCluster, namespace: str, name: str, reason: str, *, timeout: float = 90
) -> dict[str, Any]:
    """The resource once its status says Degraded for ``reason`` about its current
    generation."""

    def check() -> dict[str, Any] | None:
        obj = get(cluster, "mailtrapwebhook", name, namespace=namespace)
        found = condition(obj, "Degraded")
        current = found.get("observedGeneration") == (obj or {}).get("metadata", {}).get(
            "generation"
        )
        return obj if current and found.get("reason") == reason else None

    return dict(
        wait_until(check, what=f"{namespace}/{name} Degraded with {reason}", timeout=timeout)
    )


def warning_events(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return [event for event in events(cluster, namespace, name) if event["type"] == "Warning"]


def sign(secret: str, body: bytes) -> str:
    """Mailtrap's signature, computed here from the spec, not with the receiver's code."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        return str(response.read().decode())


def operator_client(kubeconfig: Path) -> KubeApi:
    """The operator's own API client, with a kubeconfig's credentials; close() it."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    return KubeApi(api_client=k8s_client.ApiClient(configuration), workers=2)
