"""The platform team's rules for what a MailtrapWebhook may ask for: pure checks.

Whoever may create a MailtrapWebhook gets a Deployment, a Service and maybe an
Ingress made with the operator's rights, not theirs. The spec must not let them
gain what their own RBAC denies them, so `check` compares a spec with the
operator's `Policy` (parsed by `settings`) and returns every `Violation`, each
naming the spec field and the setting that forbids it. `reconciler` checks before
it reads or applies anything; a violation is a permanent Degraded condition
(``PolicyViolation``), retried only when the spec changes (or the operator
restarts, with new settings).

Refused unless the platform allows it (the README's "Security" says why):

- ``spec.image``: receivers run the operator's image, unless `allow_image_override`
  (then only from `allowed_image_registries`, when listed). ``imagePullPolicy``
  is free: it cannot change which image runs;
- Ingress annotations not in `allowed_ingress_annotations`, and any ``*-snippet``
  (or ``*-snippets``) key even if listed: those put configuration into the Ingress
  controller, shared by every team; hosts outside `allowed_ingress_hosts` and
  classes outside `allowed_ingress_classes`, when those are listed (a host is
  another team's traffic);
- ``priorityClassName`` not in `allowed_priority_classes` (none by default),
  ``tolerations`` unless `allow_tolerations` (taints keep dedicated nodes for
  whom they are for); ``nodeSelector`` and ``affinity`` only narrow placement and
  are free;
- ``podLabels`` and ``podAnnotations`` keys not in `allowed_pod_labels` and
  `allowed_pod_annotations` (none by default): a label can make another Service or
  NetworkPolicy select the receiver Pods;
- targets whose host is a denied name (`denied_target_hosts`: the API server's,
  cloud metadata) or an address in `denied_target_cidrs` (link-local, loopback,
  ...). Names that resolve to denied addresses are refused by the receiver when it
  connects (``deniedTargetRanges`` in its config, written from the same list).

Key, host and name lists are glob patterns (``*`` matches anything).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# The annotations the README documents for spec.ingress.
DEFAULT_INGRESS_ANNOTATIONS: Final = ("cert-manager.io/cluster-issuer", "cert-manager.io/issuer")
DEFAULT_DENIED_TARGET_CIDRS: Final = (
    "169.254.0.0/16",  # link-local, where clouds serve instance metadata and credentials
    "fe80::/10",
    "127.0.0.0/8",  # the receiver Pod itself
    "::1/128",
    "0.0.0.0/8",
)
DEFAULT_DENIED_TARGET_HOSTS: Final = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "metadata.google.internal",
)
# Ingress controllers' raw configuration (ingress-nginx's *-snippet, NGINX's *-snippets).
_SNIPPET: Final = re.compile(r"-snippets?$", re.IGNORECASE)
# What inet_aton reads as IPv4 besides dotted quads (2852039166, 0xa9.0xfe.0xa9.0xfe).
_NUMERIC_HOST: Final = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def is_snippet(key: str) -> bool:
    """Whether an annotation key (or a pattern for one) names raw controller configuration."""
    return bool(_SNIPPET.search(key.rstrip("*")))


@dataclass(frozen=True)
class Policy:
    """What a MailtrapWebhook may ask for; the defaults are the secure ones."""

    allow_image_override: bool = False
    allowed_image_registries: tuple[str, ...] = ()
    allowed_ingress_annotations: tuple[str, ...] = DEFAULT_INGRESS_ANNOTATIONS
    allowed_ingress_hosts: tuple[str, ...] = ()  # empty: any host
    allowed_ingress_classes: tuple[str, ...] = ()  # empty: any class
    allowed_priority_classes: tuple[str, ...] = ()
    allow_tolerations: bool = False
    allowed_pod_labels: tuple[str, ...] = ()
    allowed_pod_annotations: tuple[str, ...] = ()
    denied_target_cidrs: tuple[IPNetwork, ...] = tuple(
        ipaddress.ip_network(cidr) for cidr in DEFAULT_DENIED_TARGET_CIDRS
    )
    denied_target_hosts: tuple[str, ...] = DEFAULT_DENIED_TARGET_HOSTS
    require_secret_label: bool = True  # see reconciler.secret_problem


def flag(name: str) -> str:
    """The operator flag of a `Policy` field (`settings` builds its parser from these)."""
    return "--" + name.replace("_", "-")


def setting(name: str) -> str:
    """How people set a `Policy` field: its flag and its chart value."""
    first, *rest = name.split("_")
    return f"{flag(name)} (chart value policy.{first}{''.join(word.title() for word in rest)})"


@dataclass(frozen=True)
class Violation:
    """One thing the spec asks for that the policy forbids."""

    field: str  # the spec path, such as spec.ingress.annotations
    setting: str  # the `Policy` field that forbids it
    why: str

    def __str__(self) -> str:
        return f"{self.field}: {self.why} (operator setting {setting(self.setting)})"


def check(spec: Mapping[str, Any], *, namespace: str, policy: Policy) -> list[Violation]:
    """Every violation of ``policy`` in ``spec`` (of a MailtrapWebhook in ``namespace``)."""
    return [
        *_image(spec, policy),
        *_ingress(spec.get("ingress") or {}, policy),
        *_scheduling(spec, policy),
        *_pod_metadata(spec, policy),
        *_targets(spec.get("targets") or (), namespace, policy),
    ]


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _listed(patterns: Sequence[str]) -> str:
    return ", ".join(patterns) if patterns else "nothing"


def _image(spec: Mapping[str, Any], policy: Policy) -> Iterable[Violation]:
    image = str(spec.get("image") or "")
    if not image:
        return
    if not policy.allow_image_override:
        yield Violation(
            "spec.image",
            "allow_image_override",
            "receivers run the image the platform chose; a MailtrapWebhook may not set one",
        )
    elif policy.allowed_image_registries and not any(
        image.startswith(prefix.rstrip("/") + "/") for prefix in policy.allowed_image_registries
    ):
        yield Violation(
            "spec.image",
            "allowed_image_registries",
            f"{image!r} is not from {_listed(policy.allowed_image_registries)}",
        )


def _ingress(ingress: Mapping[str, Any], policy: Policy) -> Iterable[Violation]:
    if not ingress.get("enabled"):
        return
    for key in sorted(ingress.get("annotations") or {}):
        if is_snippet(key):
            yield Violation(
                f"spec.ingress.annotations[{key}]",
                "allowed_ingress_annotations",
                "snippet annotations put raw configuration into the shared Ingress "
                "controller and are never allowed",
            )
        elif not _matches(key, policy.allowed_ingress_annotations):
            yield Violation(
                f"spec.ingress.annotations[{key}]",
                "allowed_ingress_annotations",
                f"only {_listed(policy.allowed_ingress_annotations)} may be set",
            )
    host = str(ingress.get("host") or "").lower()
    if host and policy.allowed_ingress_hosts and not _matches(host, policy.allowed_ingress_hosts):
        yield Violation(
            "spec.ingress.host",
            "allowed_ingress_hosts",
            f"{host!r} is not one of {_listed(policy.allowed_ingress_hosts)}",
        )
    ingress_class = str(ingress.get("className") or "")
    if (
        ingress_class
        and policy.allowed_ingress_classes
        and not _matches(ingress_class, policy.allowed_ingress_classes)
    ):
        yield Violation(
            "spec.ingress.className",
            "allowed_ingress_classes",
            f"{ingress_class!r} is not one of {_listed(policy.allowed_ingress_classes)}",
        )


def _scheduling(spec: Mapping[str, Any], policy: Policy) -> Iterable[Violation]:
    priority = str(spec.get("priorityClassName") or "")
    if priority and not _matches(priority, policy.allowed_priority_classes):
        yield Violation(
            "spec.priorityClassName",
            "allowed_priority_classes",
            f"only {_listed(policy.allowed_priority_classes)} may be used",
        )
    if spec.get("tolerations") and not policy.allow_tolerations:
        yield Violation(
            "spec.tolerations",
            "allow_tolerations",
            "taints keep nodes for the workloads they are meant for",
        )


def _pod_metadata(spec: Mapping[str, Any], policy: Policy) -> Iterable[Violation]:
    for field, allowed, name in (
        ("podLabels", policy.allowed_pod_labels, "allowed_pod_labels"),
        ("podAnnotations", policy.allowed_pod_annotations, "allowed_pod_annotations"),
    ):
        for key in sorted(spec.get(field) or {}):
            if not _matches(key, allowed):
                yield Violation(
                    f"spec.{field}[{key}]", name, f"only keys {_listed(allowed)} may be set"
                )


def _targets(
    targets: Iterable[Mapping[str, Any]], namespace: str, policy: Policy
) -> Iterable[Violation]:
    for index, target in enumerate(targets):
        service = target.get("service")
        if service:
            field = f"spec.targets[{index}].service"
            host = f"{service.get('name')}.{service.get('namespace') or namespace}.svc"
        else:
            field = f"spec.targets[{index}].url"
            host = urlsplit(str(target.get("url") or "")).hostname or ""
        why = denied_host(host, policy)
        if why is not None:
            yield Violation(field, why[0], why[1])


def denied_host(host: str, policy: Policy) -> tuple[str, str] | None:
    """Why a target host is denied (the setting and a reason), or None."""
    name = host.lower().rstrip(".")
    if _matches(name, policy.denied_target_hosts):
        return "denied_target_hosts", f"{name!r} is a denied destination"
    address = ip_literal(name)
    if address is None:
        return None
    for network in policy.denied_target_cidrs:
        if address.version == network.version and address in network:
            return "denied_target_cidrs", f"{name!r} is in the denied range {network}"
    return None


def ip_literal(host: str) -> IPAddress | None:
    """The address a host name that is an IP literal stands for, in any form a client
    would connect to: dotted quads, IPv6 (an IPv4-mapped one as its IPv4 address),
    and the numeric IPv4 forms inet_aton reads (2852039166, 0xa9fea9fe)."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not _NUMERIC_HOST.match(text):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
