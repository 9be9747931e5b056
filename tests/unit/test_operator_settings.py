"""Operator settings: defaults, environment variables, flags, and bad values."""

from __future__ import annotations

import pytest

from mailtrap_operator.handlers import (
    REQUEST_CONNECTIONS,
    connection_limit,
    kopf_settings,
    retry_delay,
)
from mailtrap_operator.settings import DEFAULT_RECEIVER_IMAGE, parse


def test_defaults_watch_everything_standalone() -> None:
    settings = parse([], environ={})
    assert settings.namespaces == ()
    assert settings.clusterwide
    assert settings.standalone
    assert settings.receiver_image == DEFAULT_RECEIVER_IMAGE
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert settings.metrics_port == 8080
    assert settings.priority > 0
    assert settings.require_secret_label


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
    assert parse(argv, environ=env).require_secret_label is wanted


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
