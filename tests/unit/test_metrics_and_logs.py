"""Metric names and labels, the README's metric table, and the log output format."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from mailtrap_receiver.admin import Lifecycle, create_admin_app
from mailtrap_receiver.events import CANONICAL_EVENTS, Event, classify
from mailtrap_receiver.logs import redact_email, request_fields
from mailtrap_receiver.metrics import PREFIX, Metrics, metric_names
from tests.helpers.webhooks import delivery_event

REPO = Path(__file__).resolve().parents[2]

EXPECTED_METRICS = {
    "mailtrap_webhook_requests_total": "counter",
    "mailtrap_webhook_request_duration_seconds": "histogram",
    "mailtrap_webhook_events_received_total": "counter",
    "mailtrap_webhook_auth_failures_total": "counter",
    "mailtrap_webhook_refused_total": "counter",
    "mailtrap_webhook_open_connections": "gauge",
    "mailtrap_webhook_arriving_body_bytes": "gauge",
    "mailtrap_webhook_duplicates_total": "counter",
    "mailtrap_webhook_invalid_events_total": "counter",
    "mailtrap_webhook_deliveries_total": "counter",
    "mailtrap_webhook_delivery_duration_seconds": "histogram",
    "mailtrap_webhook_queue_depth": "gauge",
    "mailtrap_webhook_oldest_pending_age_seconds": "gauge",
    "mailtrap_webhook_dead_letters_total": "counter",
    "mailtrap_webhook_dead_letters_stored": "gauge",
    "mailtrap_webhook_store_writable": "gauge",
    "mailtrap_webhook_spool_corruptions_total": "counter",
    "mailtrap_webhook_dead_letters_expired_total": "counter",
    "mailtrap_webhook_dead_letters_held_total": "counter",
    "mailtrap_webhook_end_to_end_lag_seconds": "histogram",
}


def test_the_metric_set() -> None:
    metrics = Metrics()
    assert sorted(metric_names(metrics)) == sorted(EXPECTED_METRICS)
    types = {family.name: family.type for family in metrics.registry.collect()}
    for name, kind in EXPECTED_METRICS.items():
        assert types[name.removesuffix("_total")] == kind
        assert name.startswith(PREFIX)


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe_request(200, 0.01)
    assert first.registry.get_sample_value("mailtrap_webhook_requests_total", {"code": "200"}) == 1
    assert (
        second.registry.get_sample_value("mailtrap_webhook_requests_total", {"code": "200"}) is None
    )


def test_event_labels_are_the_canonical_names_and_exist_at_zero() -> None:
    text = Metrics().render().decode()
    labels = set(re.findall(r'mailtrap_webhook_events_received_total\{event="([a-z_]+)"\}', text))
    assert labels == set(CANONICAL_EVENTS)


def test_a_target_has_series_before_its_first_delivery() -> None:
    metrics = Metrics()
    metrics.add_target("app")
    for outcome in ("delivered", "rejected", "error"):
        assert (
            metrics.registry.get_sample_value(
                "mailtrap_webhook_deliveries_total", {"target": "app", "outcome": outcome}
            )
            == 0
        )
    assert metrics.registry.get_sample_value("mailtrap_webhook_queue_depth", {"target": "app"}) == 0


def test_the_readme_documents_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Receiver reference") :]
    documented = set(re.findall(r"`(mailtrap_webhook_[a-z_]+)`", section))
    assert documented == set(EXPECTED_METRICS)


async def test_the_admin_app(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    lifecycle, metrics = Lifecycle(), Metrics()
    client = await aiohttp_client(create_admin_app(lifecycle=lifecycle, metrics=metrics))
    assert (await client.get("/healthz")).status == 200
    starting = await client.get("/readyz")
    assert starting.status == 503
    assert await starting.json() == {"error": "not_ready", "detail": "the receiver is starting"}
    lifecycle.started = True
    assert (await client.get("/readyz")).status == 200
    lifecycle.stopping = True
    assert (await (await client.get("/readyz")).json())["detail"] == "the receiver is stopping"
    assert (await client.get("/healthz")).status == 200
    # A part that cannot work now fails readiness only; one that failed for good, both.
    lifecycle.stopping = False
    problem: list[str] = []
    lifecycle.checks.append(lambda: problem[0] if problem else None)
    assert (await client.get("/readyz")).status == 200
    problem.append("the spool cannot write: database or disk is full")
    not_ready = await client.get("/readyz")
    assert not_ready.status == 503
    assert (await not_ready.json())["detail"] == problem[0]
    assert (await client.get("/healthz")).status == 200
    problem.clear()
    lifecycle.failure = "the spool writer process exited unexpectedly"
    assert (await (await client.get("/readyz")).json())["detail"] == lifecycle.failure
    assert (await client.get("/healthz")).status == 503
    scraped = await client.get("/metrics")
    assert scraped.headers["Content-Type"].startswith("text/plain; version=")
    assert "mailtrap_webhook_requests_total" in await scraped.text()


def test_redacted_emails_are_short_stable_and_case_blind() -> None:
    token = redact_email("Jane@Example.com")
    assert token == redact_email(" jane@example.com ")
    assert token != redact_email("john@example.com")
    assert re.fullmatch(r"email:[0-9a-f]{12}", token)


def test_request_fields_take_the_first_few_events() -> None:
    events = [classify(delivery_event(email=f"u{n}@example.com")) for n in range(8)]
    fields = request_fields([e for e in events if isinstance(e, Event)], redact_emails=False)
    assert len(fields["event_ids"]) == len(fields["message_ids"]) == len(fields["emails"]) == 5
    assert fields["emails"][0] == "u0@example.com"
    assert request_fields([], redact_emails=False) == {}


def _run_logging(fmt: str) -> str:
    code = (
        "from mailtrap_receiver.logs import configure_logging\n"
        "import logging, structlog\n"
        f"configure_logging(format={fmt!r}, level='info')\n"
        "structlog.get_logger().info('hello', n=1, path='/x')\n"
        "structlog.get_logger().debug('hidden')\n"
        "logging.getLogger('aiohttp.server').error('from the stdlib')\n"
    )
    return _run(code)


def _run(code: str) -> str:
    """What ``code`` prints to stdout in a fresh interpreter (logging is process-wide)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def test_json_logs_are_one_object_per_line() -> None:
    lines = [orjson.loads(line) for line in _run_logging("json").splitlines()]
    assert [line["msg"] for line in lines] == ["hello", "from the stdlib"]
    assert lines[0]["level"] == "info"
    assert lines[0]["n"] == 1
    assert lines[1]["level"] == "error"
    assert all("timestamp" in line for line in lines)


def test_console_logs_are_for_people() -> None:
    output = _run_logging("console")
    assert "hello" in output
    assert "hidden" not in output
    assert not output.lstrip().startswith("{")


def test_console_tracebacks_are_plain_whatever_is_installed() -> None:
    # structlog's console renderer uses rich (with local variables: bodies, secrets)
    # or better_exceptions when installed; a stand-in for the latter shows which.
    code = (
        "import sys, types\n"
        "fancy = types.ModuleType('better_exceptions')\n"
        "fancy.format_exception = lambda *args: ['FANCY TRACEBACK\\n']\n"
        "sys.modules['better_exceptions'] = fancy\n"
        "from mailtrap_receiver.logs import configure_logging\n"
        "import structlog\n"
        "configure_logging(format='console', level='info')\n"
        "try:\n"
        "    secret = 'do-not-print'\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    structlog.get_logger().exception('failed')\n"
    )
    output = _run(code)
    assert "Traceback (most recent call last)" in output
    assert "ValueError: boom" in output
    assert "FANCY" not in output
    assert "do-not-print" not in output


def test_an_unparsable_request_is_logged_without_its_traceback() -> None:
    # aiohttp's parse errors quote the line they could not parse (a credential, maybe).
    code = (
        "from mailtrap_receiver.logs import configure_logging\n"
        "import logging\n"
        "from aiohttp.http_exceptions import BadHttpMessage\n"
        "configure_logging(format='json', level='info')\n"
        "try:\n"
        "    raise BadHttpMessage('Invalid header value char: Authorization: Basic c2VjcmV0')\n"
        "except BadHttpMessage:\n"
        "    logging.getLogger('aiohttp.server').exception('Error handling request')\n"
        "try:\n"
        "    raise ValueError('a bug')\n"
        "except ValueError:\n"
        "    logging.getLogger('aiohttp.server').exception('Unhandled exception')\n"
    )
    output = _run(code)
    parse_error, bug = (orjson.loads(line) for line in output.splitlines())
    assert parse_error["msg"] == "Error handling request (BadHttpMessage)"
    assert "c2VjcmV0" not in output
    assert "exception" not in parse_error
    assert "ValueError: a bug" in bug["exception"]  # other errors keep their traceback
