"""The platform's policy on MailtrapWebhook specs: what is refused, and how it is said.

tests/security/test_policy.py makes the same attempts as a tenant on a real cluster.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mailtrap_operator import policy
from mailtrap_operator.policy import Policy, check

BASE: dict[str, Any] = {
    "signingSecretRef": {"name": "signing"},
    "targets": [{"name": "a", "url": "http://events.team-a.svc/in"}],
}


DEFAULTS = Policy()


def violations(policy_: Policy = DEFAULTS, **spec: Any) -> list[policy.Violation]:
    return check({**BASE, **spec}, namespace="team-a", policy=policy_)


def fields(found: list[policy.Violation]) -> list[tuple[str, str]]:
    return [(item.field, item.setting) for item in found]


def test_a_plain_spec_breaks_nothing() -> None:
    spec = {
        "imagePullPolicy": "Always",  # cannot change which image runs
        "nodeSelector": {"kubernetes.io/os": "linux"},  # only narrows placement
        "affinity": {"podAntiAffinity": {}},
        "resources": {"limits": {"memory": "1Gi"}},  # the quota's business
        "ingress": {
            "enabled": True,
            "host": "hooks.example.com",
            "className": "nginx",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        },
    }
    assert violations(**spec) == []


def test_the_image_is_the_platforms_unless_it_allows_a_registry() -> None:
    (found,) = violations(image="evil.example/steal:1")
    assert (found.field, found.setting) == ("spec.image", "allow_image_override")
    assert str(found).startswith("spec.image: receivers run the image the platform chose")
    assert "--allow-image-override (chart value policy.allowImageOverride)" in str(found)
    allowed = Policy(allow_image_override=True, allowed_image_registries=("registry.example.com",))
    assert violations(allowed, image="registry.example.com/team/receiver:1") == []
    for image in ("registry.example.com.evil.io/x:1", "evil.example/registry.example.com/x"):
        assert fields(violations(allowed, image=image)) == [
            ("spec.image", "allowed_image_registries")
        ]
    assert violations(Policy(allow_image_override=True), image="anything:1") == []


@pytest.mark.parametrize(
    "key",
    [
        "nginx.ingress.kubernetes.io/server-snippet",
        "nginx.ingress.kubernetes.io/configuration-snippet",
        "nginx.org/location-snippets",
        "example.com/AUTH-SNIPPET",
    ],
)
def test_snippet_annotations_are_refused_even_when_allowed(key: str) -> None:
    ingress = {"enabled": True, "host": "h.example.com", "annotations": {key: "return 200;"}}
    open_policy = Policy(allowed_ingress_annotations=("*",))
    (found,) = violations(open_policy, ingress=ingress)
    assert found.field == f"spec.ingress.annotations[{key}]"
    assert "never allowed" in found.why


def test_only_listed_ingress_annotations_hosts_and_classes() -> None:
    ingress = {
        "enabled": True,
        "host": "payments.example.com",
        "className": "public",
        "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"},
    }
    assert fields(violations(ingress=ingress)) == [
        ("spec.ingress.annotations[nginx.ingress.kubernetes.io/rewrite-target]",
         "allowed_ingress_annotations"),
    ]  # fmt: skip
    strict = Policy(
        allowed_ingress_annotations=("nginx.ingress.kubernetes.io/*",),
        allowed_ingress_hosts=("*.team-a.example.com",),
        allowed_ingress_classes=("internal",),
    )
    assert fields(violations(strict, ingress=ingress)) == [
        ("spec.ingress.host", "allowed_ingress_hosts"),
        ("spec.ingress.className", "allowed_ingress_classes"),
    ]
    ours = {**ingress, "host": "hooks.team-a.example.com", "className": "internal"}
    assert violations(strict, ingress=ours) == []
    wildcard = {**ours, "host": "*.example.com"}  # all of example.com's names
    assert fields(violations(strict, ingress=wildcard)) == [
        ("spec.ingress.host", "allowed_ingress_hosts")
    ]
    assert violations(ingress={**ingress, "enabled": False}) == []  # nothing is made


def test_scheduling_and_pod_metadata_need_the_platforms_leave() -> None:
    spec = {
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"operator": "Exists"}],
        "podLabels": {"app": "payments"},
        "podAnnotations": {"example.com/x": "y"},
    }
    assert fields(violations(**spec)) == [
        ("spec.priorityClassName", "allowed_priority_classes"),
        ("spec.tolerations", "allow_tolerations"),
        ("spec.podLabels[app]", "allowed_pod_labels"),
        ("spec.podAnnotations[example.com/x]", "allowed_pod_annotations"),
    ]
    generous = Policy(
        allowed_priority_classes=("system-cluster-critical",),
        allow_tolerations=True,
        allowed_pod_labels=("app",),
        allowed_pod_annotations=("example.com/*",),
    )
    assert violations(generous, **spec) == []


@pytest.mark.parametrize(
    "target",
    [
        {"url": "http://169.254.169.254/latest/meta-data/"},
        {"url": "http://[fe80::1%25eth0]/"},
        {"url": "http://127.0.0.1:9090/metrics"},
        {"url": "http://[::ffff:169.254.169.254]/"},
        {"url": "http://2852039166/"},  # 169.254.169.254 as one number
        {"url": "http://0xa9.0xfe.0xa9.0xfe/"},
        {"url": "http://0/"},
        {"url": "https://KUBERNETES.default.svc./api"},
        {"url": "http://metadata.google.internal/computeMetadata/v1/"},
        {"service": {"name": "kubernetes", "namespace": "default", "port": 443}},
    ],
)
def test_denied_destinations_are_refused(target: dict[str, Any]) -> None:
    found = violations(targets=[{"name": "a", **target}])
    assert [item.field.rsplit(".", 1)[0] for item in found] == ["spec.targets[0]"]
    assert "is a denied destination" in found[0].why or "in the denied range" in found[0].why


def test_a_service_in_the_default_namespace_of_the_api_server_is_refused_by_default() -> None:
    # A tenant in namespace default names the API server's Service without a namespace.
    spec = {**BASE, "targets": [{"name": "a", "service": {"name": "kubernetes", "port": 443}}]}
    found = check(spec, namespace="default", policy=Policy())
    assert fields(found) == [("spec.targets[0].service", "denied_target_hosts")]


def test_the_deny_list_is_the_platforms_to_change() -> None:
    loopback_allowed = Policy(denied_target_cidrs=(ipaddress.ip_network("169.254.0.0/16"),))
    targets = [{"name": "a", "url": "http://127.0.0.1:8080/"}]
    assert violations(loopback_allowed, targets=targets) == []
    assert fields(violations(targets=targets)) == [("spec.targets[0].url", "denied_target_cidrs")]


def test_every_setting_is_named_as_people_set_it() -> None:
    assert policy.setting("denied_target_cidrs") == (
        "--denied-target-cidrs (chart value policy.deniedTargetCidrs)"
    )
    for name in Policy.__dataclass_fields__:
        assert policy.flag(name).startswith("--")
