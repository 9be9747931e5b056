"""The webhook app: the one endpoint Mailtrap posts to.

`create_app` builds the aiohttp application of the webhook port (8080) from a
validated `config.ReceiverConfig`. A ``POST`` on ``config.path`` goes through, in
this order (the first failing step answers):

1. the router: another path is 404, another method on the path 405;
2. shutting down (503);
3. the source address allow-list (`auth.SourceGate`, 403);
4. basic auth, when configured (`auth.BasicAuth`, 401): credentials that come in
   headers are checked before any of the body is read;
5. the body (`intake.BodyIntake`: 413 past ``maxBodySize``, and the limits on
   bodies still arriving: 408, 429, 503);
6. ``maxInFlightRequests`` (429): a request holds one of these slots only once its
   body is in, so slow senders cannot take them;
7. the signature over the raw body (`auth.signature_in`, `auth.signature_matches`, 401);
8. the format (`parsing.parse_events`: 415 unsupported type or any
   Content-Encoding but identity, 400 unparseable or nested too deep, 413 too
   many events);
9. each object is classified (`events.classify`); valid events go to the sink
   (`sinks.Sink`: 503 when it cannot take them, 429 when it is full) and then
   invalid ones to the dead-letter store (`deadletters.DeadLetterStore`: 503
   when it is full).

Success is 200 ``{"accepted": n, "duplicates": n, "invalid": n, "filtered": n}``;
every error is ``{"error": code, "detail": text}`` (`errors`). `request_middleware`
turns rejections into those JSON errors, counts every response in
`metrics.Metrics`, writes the one log line per request (attacker-controlled values
in it clipped), and tells the connection (`connections.GuardedConnection`, when the
app is served by `connections.GuardedSite`) where each request starts and ends.
Resources live in ``cleanup_ctx``: the sink is started before the first request
and closed after the last in-flight one, and the secret files are polled for
changes meanwhile. Whatever serves the app passes it `RUNNER_OPTIONS` (no automatic
decompression). The health and metrics port is a separate app
(`admin.create_admin_app`); `server` runs both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from .admin import Lifecycle
from .auth import (
    BasicAuth,
    SecretFile,
    SourceGate,
    forwarded_for,
    signature_in,
    signature_matches,
    watch_secret_files,
)
from .config import ReceiverConfig
from .connections import GuardedConnection
from .deadletters import DeadLetter, DeadLettersFull, DeadLetterStore, MemoryDeadLetterStore
from .delivery import build_delivery
from .errors import RETRY_AFTER, Rejected, error_response
from .events import Event, classify
from .intake import BodyIntake
from .logs import clip, emit, request_fields
from .metrics import REFUSAL_REASONS, Metrics
from .parsing import BodyError, media_type, parse_events
from .sinks import Sink, SinkOverloaded, SinkUnavailable, SubmitResult

LIFECYCLE: Final = web.AppKey("lifecycle", Lifecycle)
SINK: Final = web.AppKey[Sink]("sink")
# What the handler learned about a request, for its log line.
LOG_FIELDS: Final = web.RequestKey[dict[str, Any]]("log_fields")

# Error codes of responses aiohttp raises itself (routing, malformed HTTP).
_HTTP_ERROR_CODES: Final = {
    400: "malformed_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
# Options for the AppRunner (or test server) that serves this app. Mailtrap does not
# compress bodies; leaving decompression on would let a bad Content-Encoding fail in
# aiohttp's parser, before any handler, with a plain-text 400, and would sign-check
# decompressed bytes of unbounded size. Off, such requests get a JSON 415 here.
RUNNER_OPTIONS: Final[Mapping[str, Any]] = {"auto_decompress": False}
_BASIC_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="mailtrap-webhook"'}
_NO_EVENTS: Final = SubmitResult()

log = structlog.get_logger("mailtrap_receiver.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_middleware(*, metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """JSON errors, the request metrics and one log line, for every request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        protocol = request.protocol
        connection = protocol if isinstance(protocol, GuardedConnection) else None
        if connection is not None:
            connection.request_started()
        error: str | None = None
        try:
            response = await handler(request)
        except Rejected as rejected:
            error = rejected.code
            if error in REFUSAL_REASONS:
                metrics.refused(error)
            response = error_response(
                rejected.status, rejected.code, rejected.detail, headers=rejected.headers
            )
        except web.HTTPException as http_error:
            error = _HTTP_ERROR_CODES.get(http_error.status, "http_error")
            allow = http_error.headers.get("Allow")
            response = error_response(
                http_error.status,
                error,
                http_error.reason,
                headers={"Allow": allow} if allow is not None else None,
            )
        except Exception:
            log.exception("unhandled error")
            error = "internal_error"
            response = error_response(500, error, "the receiver failed to handle this request")
        finally:
            if connection is not None:
                connection.request_finished(request)
        seconds = time.perf_counter() - started
        status = response.status
        metrics.observe_request(status, seconds)
        line = {
            "status": status,
            "error": error,
            "method": clip(request.method),
            "path": clip(request.path),
            "remote": request.remote,
            "duration_ms": round(seconds * 1000, 3),
        }
        fields = request.get(LOG_FIELDS)
        if fields:
            line.update(fields)
        emit(log, "info" if status < 400 or status in (404, 405) else "warning", "request", line)
        return response

    return middleware


class WebhookHandler:
    """The ``POST <path>`` handler; everything per-request it needs is prepared here."""

    def __init__(
        self,
        *,
        config: ReceiverConfig,
        metrics: Metrics,
        lifecycle: Lifecycle,
        sink: Sink,
        dead_letters: DeadLetterStore,
        signing: SecretFile,
        basic_auth: BasicAuth | None,
        gate: SourceGate | None,
        intake: BodyIntake,
    ) -> None:
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._sink = sink
        self._dead_letters = dead_letters
        self._signing = signing
        self._basic_auth = basic_auth
        self._gate = gate
        self._intake = intake
        self._max_in_flight = config.max_in_flight_requests
        limits = config.limits
        self._max_depth = limits.max_json_depth
        self._max_events = limits.max_events_per_request
        self._max_field_length = limits.max_field_length
        self._redact_emails = config.logging.redact_emails
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self._lifecycle.stopping:
            raise Rejected(
                503, "shutting_down", "the receiver is shutting down", headers=RETRY_AFTER
            )
        headers = request.headers
        if self._gate is not None and not self._gate.allows(request.remote, forwarded_for(headers)):
            raise self._refuse(403, "source_not_allowed", "the source address is not allowed")
        if self._basic_auth is not None:
            reason = self._basic_auth.failure(headers.get("Authorization"))
            if reason is not None:
                raise self._refuse(
                    401, reason, "valid basic auth credentials are required", _BASIC_CHALLENGE
                )
        body = await self._intake.read(request)
        if self._in_flight >= self._max_in_flight:
            raise Rejected(
                429, "too_many_requests", "too many requests in progress", headers=RETRY_AFTER
            )
        self._in_flight += 1
        try:
            return await self._process(request, body)
        finally:
            self._in_flight -= 1

    def _refuse(
        self, status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Rejected:
        self._metrics.auth_failed(reason)
        return Rejected(status, reason, detail, headers=headers)

    async def _process(self, request: web.Request, body: bytes) -> web.Response:
        headers = request.headers
        signature = signature_in(headers)
        if signature is None:
            raise self._refuse(401, "signature_missing", "the Mailtrap-Signature header is missing")
        if not signature_matches(body, signature, self._signing.values):
            raise self._refuse(401, "signature_invalid", "the signature does not match the body")
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            raise Rejected(
                415,
                "unsupported_media_type",
                "compressed bodies (Content-Encoding) are not accepted",
            )
        content_type = headers.get("Content-Type")
        try:
            items = parse_events(
                body,
                content_type=content_type,
                max_depth=self._max_depth,
                max_events=self._max_events,
            )
        except BodyError as error:
            raise Rejected(error.status, error.code, str(error)) from None

        valid: list[Event] = []
        letters: list[DeadLetter] = []
        metrics = self._metrics
        received: dict[str, int] = {}  # counted per type, not per event: batches are large
        max_field_length = self._max_field_length
        for item in items:
            outcome = classify(item, max_field_length=max_field_length)
            if isinstance(outcome, Event):
                valid.append(outcome)
                received[outcome.name] = received.get(outcome.name, 0) + 1
            else:
                letters.append(
                    DeadLetter(
                        key=outcome.key,
                        reason=outcome.reason,
                        detail=outcome.detail,
                        event=outcome.data,
                        received_at=time.time(),
                    )
                )
        # Set before the sink runs, so a failed request's log line names its events.
        fields = request[LOG_FIELDS] = {
            "format": clip(media_type(content_type)) or None,
            "bytes": len(body),
            "invalid": len(letters),
            **request_fields(valid, redact_emails=self._redact_emails),
        }
        try:
            # Sink first: if it fails Mailtrap sends everything again, and the dead
            # letters are not stored twice.
            result = await self._sink.submit(valid) if valid else _NO_EVENTS
            if letters:
                await self._dead_letters.add(letters)
        except DeadLettersFull as error:
            # The valid events are stored: Mailtrap's retry finds them duplicates.
            raise Rejected(503, "dead_letters_full", str(error), headers=RETRY_AFTER) from None
        except SinkOverloaded as error:
            raise Rejected(429, "sink_overloaded", str(error), headers=RETRY_AFTER) from None
        except SinkUnavailable as error:
            raise Rejected(503, "sink_unavailable", str(error), headers=RETRY_AFTER) from None
        # Counted once the sink took them: a request refused above is sent again,
        # and counted then.
        for name, count in received.items():
            metrics.event_received(name, count)
        metrics.duplicates_seen(result.duplicates)
        for letter in letters:
            metrics.invalid_event(letter.reason)
        counts = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "invalid": len(letters),
            "filtered": result.filtered,
        }
        fields.update(counts)
        return web.Response(body=orjson.dumps(counts), content_type="application/json")


def create_app(
    *,
    config: ReceiverConfig,
    metrics: Metrics | None = None,
    lifecycle: Lifecycle | None = None,
    sink: Sink | None = None,
    dead_letters: DeadLetterStore | None = None,
    secret_poll_interval: float = 1.0,
) -> web.Application:
    """The webhook app for ``config``.

    Without a ``sink``, `delivery.build_delivery` picks the sink and dead-letter store
    the config asks for. Secret files are read here, so a missing one raises
    `config.ConfigError` naming its key before anything listens.
    """
    metrics = Metrics() if metrics is None else metrics
    lifecycle = Lifecycle() if lifecycle is None else lifecycle
    signing = SecretFile(config.signing_secret_file, key="signingSecretFile")
    secret_files = [signing]
    basic_auth = None
    if config.basic_auth_secret_file is not None:
        credentials = SecretFile(config.basic_auth_secret_file, key="basicAuthSecretFile")
        secret_files.append(credentials)
        basic_auth = BasicAuth(credentials)
    gate = (
        SourceGate(allowed=config.allowed_source_ranges, trusted=config.trusted_proxy_ranges)
        if config.allowed_source_ranges
        else None
    )
    if sink is None:
        sink, built_dead_letters = build_delivery(
            config=config, metrics=metrics, lifecycle=lifecycle
        )
        if dead_letters is None:
            dead_letters = built_dead_letters
    if dead_letters is None:
        dead_letters = MemoryDeadLetterStore()

    intake = BodyIntake(config)
    metrics.arriving_body_bytes.set_function(lambda: intake.buffered)
    handler = WebhookHandler(
        config=config,
        metrics=metrics,
        lifecycle=lifecycle,
        sink=sink,
        dead_letters=dead_letters,
        signing=signing,
        basic_auth=basic_auth,
        gate=gate,
        intake=intake,
    )
    app = web.Application(
        middlewares=[request_middleware(metrics=metrics)],
        client_max_size=config.max_body_size,
    )
    app[LIFECYCLE] = lifecycle
    app[SINK] = sink
    app.router.add_post(config.path, handler.handle)

    async def sink_context(app: web.Application) -> AsyncIterator[None]:
        await app[SINK].start()
        yield
        await app[SINK].close()

    async def secrets_context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch_secret_files(secret_files, interval=secret_poll_interval))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def on_shutdown(app: web.Application) -> None:
        app[LIFECYCLE].stopping = True

    app.cleanup_ctx.append(sink_context)
    app.cleanup_ctx.append(secrets_context)
    app.on_shutdown.append(on_shutdown)
    return app
