"""Fixtures for the unit tests: secret files, a real loopback target, a factory for
the webhook app under pytest-aiohttp's test client, and the fake Mailtrap API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mailtrap_receiver.admin import Lifecycle
from mailtrap_receiver.app import RUNNER_OPTIONS, create_app
from mailtrap_receiver.config import ReceiverConfig, parse_config
from mailtrap_receiver.deadletters import MemoryDeadLetterStore
from mailtrap_receiver.metrics import Metrics
from tests.helpers import fixtures
from tests.helpers.targets import RecordingTarget
from tests.helpers.webhooks import SECRET, json_body, signed_headers

# Shared fixtures, registered here by name.
secret_file = fixtures.secret_file
target = fixtures.target
second_target = fixtures.second_target
fake_mailtrap = fixtures.fake_mailtrap


class Receiver:
    """A webhook app under the test client, with the parts tests look into."""

    def __init__(
        self,
        client: TestClient[Any, Any],
        config: ReceiverConfig,
        metrics: Metrics,
        lifecycle: Lifecycle,
        dead_letters: MemoryDeadLetterStore,
    ) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.dead_letters = dead_letters

    async def post_events(
        self,
        *events: dict[str, Any],
        secret: bytes = SECRET,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body = json_body(*events)
        return await self.client.post(
            self.config.path,
            data=body,
            headers={**signed_headers(body, secret=secret), **(headers or {})},
        )

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


class MakeReceiver(Protocol):
    def __call__(self, **overrides: Any) -> Awaitable[Receiver]: ...


@pytest.fixture
def make_receiver(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    secret_file: Path,
    target: RecordingTarget,
    tmp_path: Path,
) -> MakeReceiver:
    """Build the app from a config (defaults: one target, the signing secret file)."""

    async def make(**overrides: Any) -> Receiver:
        poll = overrides.pop("secret_poll_interval", 1.0)
        data: dict[str, Any] = {
            "signingSecretFile": str(secret_file),
            "targets": [{"name": "app", "url": target.url}],
            "delivery": {"ack": "delivered"},
            **overrides,
        }
        config = parse_config(data, base_dir=tmp_path)
        metrics, lifecycle, dead_letters = Metrics(), Lifecycle(), MemoryDeadLetterStore()
        app = create_app(
            config=config,
            metrics=metrics,
            lifecycle=lifecycle,
            dead_letters=dead_letters,
            secret_poll_interval=poll,
        )
        # Started here: pytest-aiohttp's server_kwargs do not reach the AppRunner.
        server = TestServer(app)
        await server.start_server(**RUNNER_OPTIONS)
        client = await aiohttp_client(server)
        return Receiver(client, config, metrics, lifecycle, dead_letters)

    return make
