"""Many MailtrapWebhooks at once, read fast, and what the operator wrote to make them so.

- `manifests`: a List of MailtrapWebhooks (one receiver Pod each) and their Secret;
- `Admin`: the admin's client of the API server (or of a peer API server), with the
  kubernetes library rather than kubectl, so that polling every half second stays
  cheap on a busy machine; `Fleet` is one look at every resource and its children;
- `Writes`: the operator's requests in the audit log since a mark, by kind of write,
  and the 429s it got.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import secret_manifest

GROUP, VERSION, PLURAL = "mailtrap.io", "v1alpha1", "mailtrapwebhooks"
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def manifests(names: Iterable[str], **spec: Any) -> str:
    items: list[dict[str, Any]] = [json.loads(secret_manifest("signing", {"signing-secret": "x"}))]
    for index, name in enumerate(names):
        items.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "MailtrapWebhook",
                "metadata": {"name": name},
                "spec": {
                    "signingSecretRef": {"name": "signing"},
                    "replicas": 1,
                    "targets": [{"name": "a", "url": f"http://t{index}.example/events"}],
                    **spec,
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or ():
        if item.get("type") == kind:
            return dict(item)
    return {}


@dataclass
class Fleet:
    """One look at the resources of a namespace and their children, by name."""

    resources: dict[str, dict[str, Any]]
    deployments: dict[str, dict[str, Any]]
    config_maps: dict[str, dict[str, Any]]

    def ready(self, name: str) -> bool:
        obj = self.resources[name]
        current = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"][
            "generation"
        ]
        return current and condition(obj, "Ready").get("status") == "True"

    def child(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.deployments if kind == "deployment" else self.config_maps
        return found.get(f"{name}-receiver")

    def all_ready(self) -> bool:
        return all(self.ready(name) for name in self.resources)

    def ready_without_deployment(self) -> list[str]:
        """Resources saying Ready=True while their Deployment is missing."""
        return [
            name
            for name in self.resources
            if self.ready(name) and self.child("deployment", name) is None
        ]


class Admin:
    """The admin's client of the cluster's API server, or of ``server`` (a peer)."""

    def __init__(self, cluster: LocalCluster, server: str | None = None) -> None:
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.admin_kubeconfig), client_configuration=configuration
        )
        if server is not None:
            configuration.host = server
        self.api = k8s_client.ApiClient(configuration)
        self.core = k8s_client.CoreV1Api(self.api)
        self.apps = k8s_client.AppsV1Api(self.api)
        self.custom = k8s_client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    def fleet(self, namespace: str) -> Fleet:
        resources = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        deployments = self._raw(self.apps.list_namespaced_deployment(namespace, **_RAW))
        config_maps = self._raw(self.core.list_namespaced_config_map(namespace, **_RAW))
        return Fleet(
            resources={item["metadata"]["name"]: item for item in resources["items"]},
            deployments={item["metadata"]["name"]: item for item in deployments["items"]},
            config_maps={item["metadata"]["name"]: item for item in config_maps["items"]},
        )

    def resource(self, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        return found

    def events(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._raw(self.core.list_namespaced_event(namespace, **_RAW))[
            "items"
        ]
        return items

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind == "deployment":
            self.apps.delete_namespaced_deployment(name, namespace)
        else:
            self.core.delete_namespaced_config_map(name, namespace)

    @staticmethod
    def _raw(response: Any) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(response.data)
        return found


_RAW: Mapping[str, Any] = {"_preload_content": False}


def wait_for(
    check: Any, *, what: str, timeout: float, interval: float = 0.5, last: Any = None
) -> float:
    """Poll ``check`` until it is true; the seconds that took. AssertionError after
    ``timeout``, with what ``last()`` says then (else the last value seen)."""
    started = time.monotonic()
    while True:
        seen = check()
        if seen:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            seen = last() if last is not None else seen
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {seen}")
        time.sleep(interval)


@dataclass
class Writes:
    """What one user (the operator) asked the API server since `Writes.mark`."""

    cluster: LocalCluster
    user: str
    start: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    throttled: int = 0

    def mark(self) -> Writes:
        self.start = len(self.cluster.audit_events(username=self.user))
        return self

    def read(self, *, namespace: str | None = None) -> Writes:
        """Count the writes (by resource and verb) and the 429 answers since the mark."""
        self.counts.clear()
        self.throttled = 0
        for event in self.cluster.audit_events(username=self.user)[self.start :]:
            ref = event.get("objectRef") or {}
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if (event.get("responseStatus") or {}).get("code") == 429:
                self.throttled += 1
                continue
            if event.get("verb") in WRITES:
                resource = ref.get("resource", "")
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                self.counts[f"{event['verb']} {resource}"] += 1
        return self

    def total(self, *prefixes: str) -> int:
        """Writes whose "verb resource" contains any of ``prefixes`` (all without)."""
        return sum(
            count
            for key, count in self.counts.items()
            if not prefixes or any(prefix in key for prefix in prefixes)
        )

    def __str__(self) -> str:
        parts = ", ".join(f"{key}: {count}" for key, count in sorted(self.counts.items()))
        return f"{self.total()} writes ({parts}); {self.throttled} answered 429"
