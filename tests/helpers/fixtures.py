"""pytest fixtures shared by the unit, integration and security tests.

A conftest.py imports the ones it needs (``from tests.helpers.fixtures import
secret_file, target``), so each test folder gets them without a root plugin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.canary import canary
from tests.helpers.fake_mailtrap import FakeMailtrap, SenderPolicy
from tests.helpers.targets import LoopbackTarget, RecordingTarget
from tests.helpers.webhooks import SECRET


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A signing secret file holding `SECRET`."""
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET + b"\n")
    return path


async def _recording_target() -> AsyncIterator[RecordingTarget]:
    """A real recording HTTP target on loopback, closed after the test."""
    recording = await RecordingTarget().start()
    yield recording
    await recording.close()


target = pytest.fixture(_recording_target, name="target")
# A separate one, for tests with two targets (isolation, per-target filters).
second_target = pytest.fixture(_recording_target, name="second_target")


# Mailtrap's account in the SDKs' recorded answers.
MAILTRAP_ACCOUNT = 1111111


async def _fake_mailtrap() -> AsyncIterator[FakeMailtrap]:
    """The fake Mailtrap API on loopback, with a canary token and a fast sender
    (3 attempts, 0.05 s apart, 5 s timeout)."""
    fake = FakeMailtrap(
        account_id=MAILTRAP_ACCOUNT,
        tokens=[canary("mailtrap-api-token")],
        sender=SenderPolicy(attempts=3, delay=0.05, timeout=5.0),
    )
    async with fake:
        yield fake


fake_mailtrap = pytest.fixture(_fake_mailtrap, name="fake_mailtrap")


@pytest.fixture
def loopback_target() -> Iterator[LoopbackTarget]:
    """A threaded HTTP target on loopback, for tests that block while it receives."""
    server = LoopbackTarget()
    try:
        yield server
    finally:
        server.close()
