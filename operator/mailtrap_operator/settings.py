"""Operator settings, from command-line flags and ``MAILTRAP_OPERATOR_*`` variables.

A flag wins over its variable, which wins over the default. `cli` parses them
once and hands the frozen `Settings` to `logs`, `handlers` (kopf's own
settings: namespaces, peering) and `reconciler` (the default receiver image, and
the platform's `policy.Policy`, whose flags are named after its fields).
The Kubernetes credentials are not settings: in a Pod the ServiceAccount is
used, elsewhere ``$KUBECONFIG`` (see `kubeapi`). The Mailtrap API base URL also
answers to ``$MAILTRAP_API_URL``, the name every Mailtrap tool here shares
(`mailtrap.client`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import __version__
from .mailtrap.client import DEFAULT_API_URL, api_url_from, check_api_url
from .policy import IPNetwork, Policy, flag, ip_literal, is_snippet

ENV_PREFIX: Final = "MAILTRAP_OPERATOR_"
# The receiver-only image released with this version (the Dockerfile's `receiver`
# target); the Helm chart's receiver.image defaults to the same.
DEFAULT_RECEIVER_IMAGE: Final = (
    f"ghcr.io/mailtrap-webhook-operator/mailtrap-webhook-receiver:{__version__}"
)
LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
PULL_POLICIES: Final = ("", "Always", "IfNotPresent", "Never")
# Seconds between re-lists of every child (see resync): a few LISTs each time.
DEFAULT_RESYNC_PERIOD: Final = 300.0
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    receiver_image: str = DEFAULT_RECEIVER_IMAGE
    receiver_image_pull_policy: str = ""
    log_format: str = "json"
    log_level: str = "info"
    metrics_host: str = "0.0.0.0"  # noqa: S104 - the probe and Prometheus come from outside
    metrics_port: int = 8080
    peering_name: str = ""  # empty: standalone, no kopf peering
    priority: int = 0
    api_workers: int = 8
    discovery_ttl: float = 60.0
    resync_period: float = DEFAULT_RESYNC_PERIOD
    # Mailtrap's API (managed mode).
    mailtrap_api_url: str = DEFAULT_API_URL
    policy: Policy = field(default_factory=Policy)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def standalone(self) -> bool:
        return not self.peering_name


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(ENV_PREFIX + name, default)


def _namespaces(text: str) -> tuple[str, ...]:
    names = tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))
    for name in names:
        if len(name) > 63 or not _NAMESPACE.match(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a namespace name")
    return names


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number")
    return value


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _words(text: str) -> tuple[str, ...]:
    """A comma-separated list, each item stripped, empty ones and repeats left out."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _lower_words(text: str) -> tuple[str, ...]:
    return _words(text.lower())


def _annotation_patterns(text: str) -> tuple[str, ...]:
    patterns = _words(text)
    for pattern in patterns:
        if is_snippet(pattern):
            raise argparse.ArgumentTypeError(
                f"{pattern!r}: snippet annotations put raw configuration into the shared "
                "Ingress controller and cannot be allowed"
            )
    return patterns


def _cidrs(text: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _words(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be at least 1 (second)")
    return value


def api_url_argument(text: str) -> str:
    """``type=`` of a Mailtrap API URL flag (here and in `mailtrap.commands`)."""
    try:
        return check_api_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_mailtrap_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Flags of the managed mode, which talks to Mailtrap's Webhooks API."""
    parser.add_argument(
        "--mailtrap-api-url",
        type=api_url_argument,
        # MAILTRAP_OPERATOR_MAILTRAP_API_URL, then MAILTRAP_API_URL, then Mailtrap.
        default=_env(env, "MAILTRAP_API_URL", api_url_from(env)),
        help="base URL of Mailtrap's API, for tests, proxies and mirrors "
        "(also $MAILTRAP_API_URL; default: %(default)s)",
    )
    parser.epilog = (
        "mailtrap-operator mailtrap list|delete ... shows and removes webhooks on "
        "Mailtrap's side; see mailtrap-operator mailtrap --help."
    )


def build_parser(*, environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="mailtrap-operator",
        description=(
            "Reconcile MailtrapWebhook resources into webhook receivers. Every flag can also "
            f"be set as {ENV_PREFIX}<FLAG> (upper case, dashes as underscores)."
        ),
    )
    parser.add_argument(
        "--namespaces",
        type=_namespaces,
        default=_env(env, "NAMESPACES", ""),
        help="comma-separated namespaces to watch; every namespace when empty (default)",
    )
    parser.add_argument(
        "--receiver-image",
        default=_env(env, "RECEIVER_IMAGE", DEFAULT_RECEIVER_IMAGE),
        help="receiver image for resources without spec.image (default: %(default)s)",
    )
    parser.add_argument(
        "--receiver-image-pull-policy",
        choices=PULL_POLICIES,
        default=_env(env, "RECEIVER_IMAGE_PULL_POLICY", ""),
        help="pull policy for resources without spec.imagePullPolicy (default: the cluster's)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env(env, "LOG_FORMAT", "json"),
        help="json: one object per line (default); console: for people",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env(env, "LOG_LEVEL", "info").lower(),
        help="lowest level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default=_env(env, "METRICS_HOST", "0.0.0.0"),  # noqa: S104
        help="address of /metrics and /healthz (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=_env(env, "METRICS_PORT", "8080"),
        help="port of /metrics and /healthz (default: %(default)s)",
    )
    parser.add_argument(
        "--peering-name",
        default=_env(env, "PEERING_NAME", ""),
        help="kopf peering object for running several replicas (one active); "
        "standalone when empty (default)",
    )
    parser.add_argument(
        "--priority",
        type=_optional_int,
        default=_env(env, "PRIORITY", ""),
        help="kopf peering priority; random when unset, so replicas never tie",
    )
    parser.add_argument(
        "--api-workers",
        type=_positive,
        default=_env(env, "API_WORKERS", "8"),
        help="concurrent Kubernetes API requests (default: %(default)s)",
    )
    parser.add_argument(
        "--discovery-ttl",
        type=float,
        default=_env(env, "DISCOVERY_TTL", "60"),
        help="seconds the ServiceMonitor API check is cached (default: %(default)s)",
    )
    parser.add_argument(
        "--resync-period",
        type=_seconds,
        default=_env(env, "RESYNC_PERIOD", f"{DEFAULT_RESYNC_PERIOD:g}"),
        help="seconds between re-lists of every child, to repair what the watches missed "
        "(jittered by 10%%; also soon after the API server answers again; "
        "default: %(default)s)",
    )
    _add_mailtrap_arguments(parser, env)
    _add_policy(parser.add_argument_group("policy: what a MailtrapWebhook may ask for"), env)
    return parser


# Each Policy field: how its value is read, and its help. Flags and variables are
# named after the field (policy.flag), as the chart's values are (policy.setting).
_POLICY_OPTIONS: Final[tuple[tuple[str, Callable[[str], Any], str], ...]] = (
    (
        "require_secret_label",
        _bool,
        "use a referenced Secret only if it carries the label mailtrap.io/webhook-secret=true",
    ),
    ("allow_image_override", _bool, "let spec.image choose the receiver image"),
    (
        "allowed_image_registries",
        _words,
        "with --allow-image-override, only images under these registry/repository "
        "prefixes; any when empty",
    ),
    (
        "allowed_ingress_annotations",
        _annotation_patterns,
        "Ingress annotation keys (glob patterns) spec.ingress.annotations may set; "
        "*-snippet keys never",
    ),
    (
        "allowed_ingress_hosts",
        _lower_words,
        "host patterns spec.ingress.host may use; any when empty",
    ),
    (
        "allowed_ingress_classes",
        _words,
        "IngressClasses spec.ingress.className may name; any when empty",
    ),
    ("allowed_priority_classes", _words, "PriorityClasses spec.priorityClassName may name"),
    ("allow_tolerations", _bool, "let spec.tolerations put receivers on tainted nodes"),
    ("allowed_pod_labels", _words, "label keys (glob patterns) spec.podLabels may set"),
    (
        "allowed_pod_annotations",
        _words,
        "annotation keys (glob patterns) spec.podAnnotations may set",
    ),
    (
        "denied_target_cidrs",
        _cidrs,
        "CIDRs no target may be at (refused in the spec, and by the receiver after name "
        "resolution); the API server's ($KUBERNETES_SERVICE_HOST) is always added",
    ),
    ("denied_target_hosts", _lower_words, "target host names (glob patterns) refused in the spec"),
)


def _default_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _add_policy(group: argparse._ArgumentGroup, env: Mapping[str, str]) -> None:
    defaults = Policy()
    for name, parse_value, help_text in _POLICY_OPTIONS:
        extra: dict[str, Any] = {"nargs": "?", "const": True} if parse_value is _bool else {}
        group.add_argument(
            flag(name),
            dest=name,
            type=parse_value,
            default=_env(env, name.upper(), _default_text(getattr(defaults, name))),
            help=f"{help_text} (default: %(default)s)",
            **extra,
        )


def _api_server_address(environ: Mapping[str, str]) -> tuple[IPNetwork, ...]:
    """The API server's Service address, as Kubernetes tells every Pod."""
    address = ip_literal(environ.get("KUBERNETES_SERVICE_HOST", ""))
    return () if address is None else (ipaddress.ip_network(address),)


def parse(
    argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    parser = build_parser(environ=environ)
    args = parser.parse_args(argv)
    # String defaults (from the environment) go through ``type`` like flags do,
    # but ``choices`` are only checked for flags: check those here.
    priority = args.priority if args.priority is not None else random.randint(1, 2**30)  # noqa: S311
    if args.log_level not in LOG_LEVELS:
        parser.error(f"log level {args.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"log format {args.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if args.receiver_image_pull_policy not in PULL_POLICIES:
        parser.error(f"pull policy {args.receiver_image_pull_policy!r} is not valid")
    if not args.receiver_image:
        parser.error("the receiver image must not be empty")
    env = os.environ if environ is None else environ
    args.denied_target_cidrs = tuple(
        dict.fromkeys((*args.denied_target_cidrs, *_api_server_address(env)))
    )
    return Settings(
        namespaces=tuple(args.namespaces),
        receiver_image=args.receiver_image,
        receiver_image_pull_policy=args.receiver_image_pull_policy,
        log_format=args.log_format,
        log_level=args.log_level,
        metrics_host=args.metrics_host,
        metrics_port=int(args.metrics_port),
        peering_name=args.peering_name.strip(),
        priority=int(priority),
        api_workers=int(args.api_workers),
        discovery_ttl=float(args.discovery_ttl),
        resync_period=float(args.resync_period),
        mailtrap_api_url=args.mailtrap_api_url,
        policy=Policy(
            **{name: getattr(args, name) for name, _, _ in _POLICY_OPTIONS},
        ),
    )
