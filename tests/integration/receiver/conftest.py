"""Fixtures for the receiver process tests: a real loopback target, and the real
``mailtrap-receiver serve`` process pointed at it, killed at teardown whatever
happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import fixtures
from tests.helpers.processes import ReceiverProcess, start_receiver, write_config
from tests.helpers.targets import RecordingTarget

# Shared fixtures, registered here by name.
secret_file = fixtures.secret_file
target = fixtures.target
second_target = fixtures.second_target


@pytest.fixture
def receiver(
    target: RecordingTarget, secret_file: Path, tmp_path: Path
) -> Iterator[ReceiverProcess]:
    config = write_config(
        tmp_path / "receiver.json",
        {
            "path": "/webhooks/mailtrap",
            "signingSecretFile": secret_file.name,  # relative: resolved beside the config
            "targets": [{"name": "app", "url": target.url}],
            "delivery": {"ack": "delivered"},
            "shutdownGracePeriod": "60s",
        },
    )
    process = start_receiver(config=config)
    try:
        yield process
    finally:
        process.kill()
