"""The command line: config errors, and send-test's sample events and encodings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mailtrap_receiver.cli import main
from mailtrap_receiver.events import CANONICAL_EVENTS, Event, EventName, classify
from mailtrap_receiver.parsing import parse_events
from mailtrap_receiver.sendtest import (
    CONTENT_TYPES,
    BodyFormat,
    encode_body,
    read_signing_secret,
    sample_event,
    sample_events,
)


def test_a_config_error_names_the_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("signingSecretFile: s\ntargets:\n  - {name: app, url: 'ftp://nope'}\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "targets[0].url:" in err
    assert str(config) in err


def test_a_missing_secret_file_exits_2_before_listening(tmp_path: Path) -> None:
    # A real process: serving configures process-wide logging.
    config = tmp_path / "receiver.yaml"
    config.write_text("signingSecretFile: absent.txt\ntargets: [{name: app, url: 'http://a'}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "mailtrap_receiver", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "signingSecretFile: cannot read" in done.stderr
    assert str(tmp_path / "absent.txt") in done.stderr


def test_serve_requires_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve"])
    assert raised.value.code == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("name", CANONICAL_EVENTS)
def test_each_sample_event_is_valid_and_of_its_type(name: EventName) -> None:
    result = classify(sample_event(name))
    assert isinstance(result, Event)
    assert result.name == name


def test_sample_events_use_mailtrap_wire_names_and_fresh_ids() -> None:
    batch = sample_events()
    assert {event["event"] for event in batch} >= {"soft bounce", "spam"}
    assert len({event["event_id"] for event in batch}) == len(batch) == 9
    assert sample_events(event="click")[0]["event"] == "click"
    assert len(sample_events(body_format="form")) == 1


@pytest.mark.parametrize("body_format", ["json", "jsonl", "form"])
def test_encoded_bodies_parse_back(body_format: BodyFormat) -> None:
    events = sample_events(body_format=body_format)
    body = encode_body(events, body_format=body_format)
    parsed = parse_events(body, content_type=CONTENT_TYPES[body_format])
    if body_format == "form":
        assert len(parsed) == 1
        assert all(isinstance(classify(item), Event) for item in parsed)
        assert isinstance(parsed[0], dict)
        assert "custom_variables" not in parsed[0]
    else:
        assert parsed == orjson.loads(orjson.dumps(events))


def test_the_secret_file_gives_its_first_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\n current \nolder\n")
    assert read_signing_secret(path) == b"current"
    path.write_bytes(b"\n")
    with pytest.raises(ValueError, match="no secret"):
        read_signing_secret(path)


def test_send_test_reports_an_unreadable_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["send-test", "--url", "http://127.0.0.1:9/x", "--secret-file", str(tmp_path / "x")]
    )
    assert code == 1
    assert "cannot read the secret" in capsys.readouterr().err


def test_send_test_reports_an_unreachable_receiver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    code = main(["send-test", "--url", "http://127.0.0.1:9/x", "--secret-file", str(secret)])
    assert code == 1
    assert "request failed" in capsys.readouterr().err
