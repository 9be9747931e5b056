"""Operator settings: defaults, environment variables, flags, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailtrap_operator.handlers import (
    REQUEST_CONNECTIONS,
    connection_limit,
    kopf_settings,
    retry_delay,
)
from mailtrap_operator.policy import Policy
from mailtrap_operator.settings import DEFAULT_RECEIVER_IMAGE, ENV_PREFIX, build_parser, parse


def test_defaults_watch_everything_standalone() -> None:
    settings = parse([], environ={})
    assert settings.namespaces == ()
    assert settings.clusterwide
    assert settings.standalone
    assert settings.receiver_image == DEFAULT_RECEIVER_IMAGE
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert settings.metrics_port == 8080
    assert settings.priority > 0
    assert settings.policy == Policy()


@pytest.mark.parametrize(
    ("argv", "env", "wanted"),
    [
        ([], {"MAILTRAP_OPERATOR_REQUIRE_SECRET_LABEL": "false"}, False),
        (["--require-secret-label"], {"MAILTRAP_OPERATOR_REQUIRE_SECRET_LABEL": "false"}, True),
        (["--require-secret-label=off"], {}, False),
        (["--require-secret-label", "true"], {}, True),
    ],
)
def test_the_secret_label_requirement_is_on_unless_turned_off(
    argv: list[str], env: dict[str, str], wanted: bool
) -> None:
    assert parse(argv, environ=env).policy.require_secret_label is wanted


def test_environment_then_flags() -> None:
    env = {
        "MAILTRAP_OPERATOR_NAMESPACES": "mail, billing,mail",
        "MAILTRAP_OPERATOR_RECEIVER_IMAGE": "registry.example/op:1",
        "MAILTRAP_OPERATOR_LOG_FORMAT": "console",
        "MAILTRAP_OPERATOR_LOG_LEVEL": "DEBUG",
        "MAILTRAP_OPERATOR_METRICS_PORT": "9000",
        "MAILTRAP_OPERATOR_PEERING_NAME": "mailtrap",
        "MAILTRAP_OPERATOR_PRIORITY": "7",
    }
    settings = parse([], environ=env)
    assert settings.namespaces == ("billing", "mail")
    assert not settings.clusterwide
    assert settings.receiver_image == "registry.example/op:1"
    assert (settings.log_format, settings.log_level) == ("console", "debug")
    assert settings.metrics_port == 9000
    assert (settings.peering_name, settings.priority, settings.standalone) == ("mailtrap", 7, False)
    flagged = parse(
        ["--metrics-port", "9100", "--namespaces", "", "--log-format", "json"], environ=env
    )
    assert flagged.metrics_port == 9100
    assert flagged.namespaces == ()
    assert flagged.log_format == "json"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--namespaces", "Bad_Name"], {}),
        (["--metrics-port", "0"], {}),
        ([], {"MAILTRAP_OPERATOR_LOG_FORMAT": "xml"}),
        ([], {"MAILTRAP_OPERATOR_METRICS_PORT": "eighty"}),
        (["--api-workers", "0"], {}),
        ([], {"MAILTRAP_OPERATOR_REQUIRE_SECRET_LABEL": "maybe"}),
    ],
)
def test_bad_values_stop_with_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv, environ=env)
    assert exit_info.value.code == 2


def test_kopf_is_configured_for_annotations_and_our_label_selector() -> None:
    settings = kopf_settings(parse(["--namespaces", "mail"], environ={}))
    assert settings.posting.enabled is False
    assert settings.scanning.disabled is True
    assert settings.peering.standalone is True
    assert settings.peering.clusterwide is False
    mapping = settings.watching.label_selectors
    selectors = {mapping[key] for key in mapping}
    assert selectors == {"app.kubernetes.io/managed-by=mailtrap-webhook-operator"}
    assert len(settings.watching.label_selectors) == 6


def test_retry_backoff_grows_and_is_capped() -> None:
    delays = [retry_delay(n) for n in range(12)]
    assert delays[:3] == [5.0, 10.0, 20.0]
    assert delays == sorted(delays)
    assert delays[-1] == 300.0


def test_kopf_connection_pool_leaves_room_for_every_watch() -> None:
    # One watch per kind per namespace (6 children, MailtrapWebhooks, peering); no Secrets.
    everywhere = connection_limit(parse([], environ={}))
    three = connection_limit(parse(["--namespaces", "a,b,c"], environ={}))
    assert everywhere - REQUEST_CONNECTIONS >= 8
    assert three - REQUEST_CONNECTIONS >= 24


def test_policy_flags_and_variables_are_named_after_the_policys_fields() -> None:
    env = {
        "MAILTRAP_OPERATOR_ALLOW_IMAGE_OVERRIDE": "true",
        "MAILTRAP_OPERATOR_ALLOWED_IMAGE_REGISTRIES": "registry.example.com/team-a/, ,",
        "MAILTRAP_OPERATOR_ALLOWED_INGRESS_HOSTS": "*.Hooks.Example.com",
        "MAILTRAP_OPERATOR_DENIED_TARGET_CIDRS": "10.0.0.0/8, 10.1.2.3/8",
    }
    policy = parse(
        ["--allowed-pod-labels", "team,app.kubernetes.io/version", "--allow-tolerations"],
        environ=env,
    ).policy
    assert policy.allow_image_override
    assert policy.allowed_image_registries == ("registry.example.com/team-a/",)
    assert policy.allowed_ingress_hosts == ("*.hooks.example.com",)
    assert policy.allowed_pod_labels == ("team", "app.kubernetes.io/version")
    assert policy.allow_tolerations
    assert [str(cidr) for cidr in policy.denied_target_cidrs] == ["10.0.0.0/8"]
    assert policy.allowed_ingress_annotations == Policy().allowed_ingress_annotations


def test_the_api_servers_own_address_is_always_denied_in_a_pod() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert [str(cidr) for cidr in parse([], environ=env).policy.denied_target_cidrs][-1] == (
        "10.96.0.1/32"
    )
    narrowed = parse(["--denied-target-cidrs", "169.254.0.0/16"], environ=env).policy
    assert [str(cidr) for cidr in narrowed.denied_target_cidrs] == [
        "169.254.0.0/16",
        "10.96.0.1/32",
    ]
    outside = parse([], environ={"KUBERNETES_SERVICE_HOST": "kubernetes.example"}).policy
    assert outside.denied_target_cidrs == Policy().denied_target_cidrs


@pytest.mark.parametrize(
    "argv",
    [
        ["--allowed-ingress-annotations", "nginx.ingress.kubernetes.io/server-snippet"],
        ["--allowed-ingress-annotations", "nginx.org/*-snippets"],
        ["--denied-target-cidrs", "10.0.0.0/33"],
        ["--allow-image-override", "perhaps"],
    ],
)
def test_bad_policy_settings_stop_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv, environ={})
    assert exit_info.value.code == 2


def test_the_readme_documents_every_flag_with_its_variable() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    parser = build_parser(environ={})
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                variable = ENV_PREFIX + option[2:].upper().replace("-", "_")
                assert f"| `{option}` | `{variable}` |" in readme, option
