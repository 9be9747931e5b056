"""The config file: defaults, units, errors that name the key, env overrides."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from mailtrap_receiver.config import (
    OPERATOR_ONLY_KEYS,
    ConfigError,
    ReceiverConfig,
    load_config,
    parse_byte_size,
    parse_config,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]


def minimal(**overrides: Any) -> dict[str, Any]:
    return {
        "signingSecretFile": "/etc/mailtrap/signing-secret",
        "targets": [{"name": "app", "url": "http://127.0.0.1:9000/events"}],
        **overrides,
    }


def problems(data: object, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, environ=environ)
    return dict(raised.value.problems)


def test_minimal_config_gets_the_crd_defaults() -> None:
    config = parse_config(minimal())
    assert config.path == "/webhooks/mailtrap"
    assert config.max_body_size == 1024 * 1024
    assert config.max_in_flight_requests == 1024
    assert config.shutdown_grace_period == 30
    assert config.delivery.ack == "durable"
    assert config.delivery.dedup_window == 25 * 3600
    retry = config.delivery.retry
    assert (retry.max_attempts, retry.initial_backoff, retry.max_backoff) == (20, 1, 600)
    assert config.logging.format == "json"
    assert config.logging.redact_emails is False
    target = config.targets[0]
    assert (target.format, target.batch_size, target.timeout, target.concurrency) == (
        "mailtrap",
        1,
        10,
        4,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("25h", 90_000), ("1h30m", 5400), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "10 s", "1d", "s", 10, None, "-5s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "size"),
    [(1024, 1024), (2_000_000, 2_000_000), ("1Mi", 1_048_576), ("512Ki", 524_288), ("2M", 2e6)],
)
def test_byte_sizes(value: object, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize("value", [1023, "1.5Mi", "1 Mi", True, "0", "lots"])
def test_bad_byte_sizes(value: object) -> None:
    with pytest.raises(ValueError, match="byte"):
        parse_byte_size(value)


def test_service_targets_and_cidrs() -> None:
    config = parse_config(
        minimal(
            targets=[{"name": "svc", "service": {"name": "api", "port": 8080}}],
            allowedSourceRanges=["10.1.2.3/8", "2001:db8::/32"],
        )
    )
    service = config.targets[0].service
    assert service is not None
    assert (service.path, service.scheme, service.namespace) == ("/", "http", None)
    assert config.allowed_source_ranges[0] == ipaddress.ip_network("10.0.0.0/8")


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        (minimal(targets=[{"name": "a", "url": "ftp://x"}]), "targets[0].url", "pattern"),
        (minimal(targets=[{"name": "a"}]), "targets[0]", "exactly one of url or service"),
        (
            minimal(
                targets=[{"name": "a", "url": "http://x", "service": {"name": "s", "port": 1}}]
            ),
            "targets[0]",
            "exactly one",
        ),
        (
            minimal(targets=[{"name": "a", "urll": "http://x"}]),
            "targets[0].urll",
            "did you mean url",
        ),
        (minimal(maxBodySise="1Mi"), "maxBodySise", "did you mean maxBodySize"),
        (minimal(targets=[]), "targets", "at least 1"),
        (
            minimal(targets=[{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]),
            "targets",
            "unique",
        ),
        (minimal(targets=[{"name": "Bad_Name", "url": "http://x"}]), "targets[0].name", "pattern"),
        (minimal(events=["bounce", "soft bounce"]), "events[1]", "soft_bounce"),
        (minimal(delivery={"ack": "eventually"}), "delivery.ack", "durable"),
        (minimal(delivery={"dedupWindow": "1d"}), "delivery.dedupWindow", "duration"),
        (
            minimal(delivery={"retry": {"maxAttempts": 0}}),
            "delivery.retry.maxAttempts",
            "greater than or equal to 1",
        ),
        (minimal(maxBodySize=100), "maxBodySize", "1024"),
        (minimal(allowedSourceRanges=["10.0.0.0/8", "nope"]), "allowedSourceRanges[1]", "CIDR"),
        (minimal(logging={"format": "xml"}), "logging.format", "json"),
        (
            minimal(targets=[{"name": "a", "url": "http://x", "headers": {"Bad Header": "v"}}]),
            "targets[0].headers",
            "header name",
        ),
        (
            minimal(targets=[{"name": "a", "url": "http://x", "timeout": "10"}]),
            "targets[0].timeout",
            "duration",
        ),
        ({"targets": [{"name": "a", "url": "http://x"}]}, "signingSecretFile", "required"),
        (minimal(signingSecretRef={"name": "s"}), "signingSecretRef", "unknown key"),
    ],
)
def test_errors_name_the_bad_key(data: dict[str, Any], key: str, text: str) -> None:
    found = problems(data)
    assert key in found, found
    assert text in found[key]


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"targets": [{"name": "a", "url": "ftp://x"}], "maxInFlightRequests": 0})
    assert set(found) == {"signingSecretFile", "targets[0].url", "maxInFlightRequests"}


def test_errors_do_not_echo_values() -> None:
    data = minimal(targets=[{"name": "a", "url": "http://x", "headers": {"X-Token": 5}}])
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert "targets[0].headers.X-Token" in str(raised.value)
    assert "5" not in str(raised.value).replace("X-Token", "")


@pytest.mark.parametrize("key", sorted(OPERATOR_ONLY_KEYS))
def test_operator_only_keys_are_refused(key: str) -> None:
    assert "operator-only" in problems(minimal(**{key: {}}))[key]


def test_the_whole_config_must_be_a_mapping() -> None:
    assert "config" in problems(["not", "a", "mapping"])


ENV = "MAILTRAP_RECEIVER_"


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("LOGGING__FORMAT", "console", lambda c: c.logging.format == "console"),
        ("DELIVERY__ACK", "delivered", lambda c: c.delivery.ack == "delivered"),
        ("LOGGING__REDACT_EMAILS", "true", lambda c: c.logging.redact_emails is True),
        ("MAX_BODY_SIZE", "2Mi", lambda c: c.max_body_size == 2 * 1024 * 1024),
        ("MAXBODYSIZE", "4096", lambda c: c.max_body_size == 4096),
        ("DELIVERY__RETRY__MAX_ATTEMPTS", "3", lambda c: c.delivery.retry.max_attempts == 3),
        ("TARGETS__0__URL", "http://other:1/x", lambda c: c.targets[0].url == "http://other:1/x"),
        ("EVENTS", "[bounce, spam_complaint]", lambda c: c.events == ["bounce", "spam_complaint"]),
        ("PATH", "/hooks", lambda c: c.path == "/hooks"),
    ],
)
def test_environment_overrides(name: str, value: str, read: Any) -> None:
    config = parse_config(minimal(), environ={ENV + name: value, "UNRELATED": "x"})
    assert read(config)


def test_environment_overrides_are_validated_like_the_file() -> None:
    found = problems(minimal(), environ={ENV + "LOGGING__FORMAT": "xml"})
    assert "json" in found["logging.format"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("NOPE", "no receiver config key"),
        ("REPLICAS", "no receiver config key"),
        ("TARGETS__3__URL", "has no item 3"),
        ("TARGETS__X__URL", "has no item X"),
        ("PATH__DEEPER", "has no nested keys"),
        ("LOGGING__COLOUR", "no receiver config key"),
    ],
)
def test_bad_environment_overrides_name_the_variable(name: str, text: str) -> None:
    found = problems(minimal(), environ={ENV + name: "1"})
    assert text in found[ENV + name]


def test_load_yaml_resolves_secret_files_against_its_directory(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "receiver.yaml").write_text(
        "signingSecretFile: ./secret.txt\n"
        "basicAuthSecretFile: /abs/creds\n"
        "targets:\n"
        "  - {name: app, url: 'http://127.0.0.1:9000/events', signingSecretFile: t.txt}\n"
    )
    config = load_config(folder / "receiver.yaml", environ={})
    assert config.signing_secret_file == folder / "secret.txt"
    assert config.basic_auth_secret_file == Path("/abs/creds")
    assert config.targets[0].signing_secret_file == folder / "t.txt"


def test_load_json(tmp_path: Path) -> None:
    path = tmp_path / "receiver.json"
    path.write_text('{"signingSecretFile": "/s", "targets": [{"name": "a", "url": "http://a"}]}')
    assert isinstance(load_config(path, environ={}), ReceiverConfig)


@pytest.mark.parametrize(
    ("text", "message"),
    [("targets: [unclosed", "not valid YAML"), ("", "signingSecretFile")],
)
def test_load_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "receiver.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_the_example_config_is_valid() -> None:
    config = load_config(REPO / "examples/local/receiver.yaml", environ={})
    assert config.signing_secret_file == REPO / "examples/local/secret.txt"
    assert config.signing_secret_file.read_text().strip()
    assert config.targets[0].url == "http://127.0.0.1:9000/events"


def test_a_target_retry_policy_falls_back_to_the_default() -> None:
    config = parse_config(
        minimal(
            targets=[{"name": "a", "url": "http://a", "retry": {"maxAttempts": 3}}],
            delivery={"retry": {"maxBackoff": "1m"}},
        )
    )
    retry = config.targets[0].effective_retry(config.delivery.retry)
    assert (retry.max_attempts, retry.initial_backoff, retry.max_backoff) == (3, 1, 60)
