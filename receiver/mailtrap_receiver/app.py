"""The webhook app: the one endpoint Mailtrap posts to.

`create_app` builds the aiohttp application of the webhook port (8080) from a
validated `config.ReceiverConfig`. A ``POST`` on ``config.path`` goes through, in
this order (the first failing step answers):

1. the router: another path is 404, another method on the path 405;
2. shutting down (503) and ``maxInFlightRequests`` (429);
3. the source address allow-list (`auth.SourceGate`, 403);
4. basic auth, when configured (`auth.BasicAuth`, 401);
5. the body, read as a stream and refused past ``maxBodySize`` (413);
6. the signature over the raw body (`auth.signature_in`, `auth.signature_matches`, 401);
7. the format (`parsing.parse_events`: 415 unsupported type or any
   Content-Encoding but identity, 400 unparseable);
8. each object is classified (`events.classify`); valid events go to the sink
   (`sinks.Sink`: 503 when it cannot take them, 429 when it is full) and then
   invalid ones to the dead-letter store (`deadletters.DeadLetterStore`).

Success is 200 ``{"accepted": n, "duplicates": n, "invalid": n, "filtered": n}``;
every error is ``{"error": code, "detail": text}``. `request_middleware` turns
rejections into those JSON errors, counts every response in `metrics.Metrics` and
writes the one log line per request. Resources live in ``cleanup_ctx``: the sink is
started before the first request and closed after the last in-flight one, and the
secret files are polled for changes meanwhile. Whatever serves the app passes it
`RUNNER_OPTIONS` (no automatic decompression). The health and metrics port is a
separate app (`admin.create_admin_app`); `server` runs both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .admin import Lifecycle
from .auth import (
    BasicAuth,
    SecretFile,
    SourceGate,
    signature_in,
    signature_matches,
    watch_secret_files,
)
from .config import ReceiverConfig
from .deadletters import DeadLetter, DeadLetterStore, MemoryDeadLetterStore
from .delivery import build_delivery
from .events import Event, classify
from .logs import emit, request_fields
from .metrics import Metrics
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
# Mailtrap and proxies may honour it; a second is enough for a load spike to pass.
_RETRY_AFTER: Final = {"Retry-After": "1"}
_BASIC_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="mailtrap-webhook"'}
_NO_EVENTS: Final = SubmitResult()
# A sender that stops mid-body would otherwise hold an in-flight slot for ever (a
# slow-body attack needs no credentials: the signature covers the body). Mailtrap
# sends a body of at most a few hundred KiB at once.
BODY_READ_TIMEOUT: Final = 30.0

log = structlog.get_logger("mailtrap_receiver.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Rejected(Exception):
    """A request refused with a status, an error code and a detail for the sender."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The JSON error body every failure uses: ``{"error": code, "detail": text}``."""
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def request_middleware(*, metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """JSON errors, the request metrics and one log line, for every request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        error: str | None = None
        try:
            response = await handler(request)
        except Rejected as rejected:
            error = rejected.code
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
        seconds = time.perf_counter() - started
        status = response.status
        metrics.observe_request(status, seconds)
        line = {
            "status": status,
            "error": error,
            "method": request.method,
            "path": request.path,
            "remote": request.remote,
            "duration_ms": round(seconds * 1000, 3),
        }
        fields = request.get(LOG_FIELDS)
        if fields:
            line.update(fields)
        emit(log, "info" if status < 400 or status in (404, 405) else "warning", "request", line)
        return response

    return middleware


def _too_large(limit: int) -> Rejected:
    return Rejected(413, "body_too_large", f"the body is larger than {limit} bytes")


def _unreadable() -> Rejected:
    return Rejected(400, "malformed_body", "the body could not be read")


async def read_body(
    request: web.Request, *, limit: int, within: float = BODY_READ_TIMEOUT
) -> bytes:
    """The request body, read as a stream; 413 as soon as it passes ``limit`` bytes,
    400 when it has not all arrived ``within`` seconds."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (Mailtrap's usually does): nothing to
        # wait for, so no timer to arm; it is buffered already, so only the size counts.
        try:
            body = content.read_nowait()
        except (web.RequestPayloadError, HttpProcessingError, ConnectionError):
            raise _unreadable() from None
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            while True:
                # Never ask for more than one byte past the limit: nothing is buffered
                # beyond it, and one extra byte proves the body is too large.
                chunk = await content.read(limit + 1 - size)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise Rejected(
            400, "malformed_body", f"the body did not arrive within {within:g}s"
        ) from None
    except (web.RequestPayloadError, HttpProcessingError, ConnectionError):
        # A broken chunked encoding or a peer gone mid-body: the sender's fault,
        # and nothing to log but the status.
        raise _unreadable() from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
        body_read_timeout: float,
    ) -> None:
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._sink = sink
        self._dead_letters = dead_letters
        self._signing = signing
        self._basic_auth = basic_auth
        self._gate = gate
        self._max_body_size = config.max_body_size
        self._body_read_timeout = body_read_timeout
        self._max_in_flight = config.max_in_flight_requests
        self._redact_emails = config.logging.redact_emails
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self._lifecycle.stopping:
            raise Rejected(
                503, "shutting_down", "the receiver is shutting down", headers=_RETRY_AFTER
            )
        if self._in_flight >= self._max_in_flight:
            raise Rejected(
                429, "too_many_requests", "too many requests in progress", headers=_RETRY_AFTER
            )
        self._in_flight += 1
        try:
            return await self._process(request)
        finally:
            self._in_flight -= 1

    def _refuse(
        self, status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Rejected:
        self._metrics.auth_failed(reason)
        return Rejected(status, reason, detail, headers=headers)

    async def _process(self, request: web.Request) -> web.Response:
        headers = request.headers
        if self._gate is not None:
            # Every line, in order, as one list (RFC 9110 allows either form): a proxy
            # may add a line of its own rather than append to the client's, and then
            # reading only the first would trust what the client wrote there.
            forwarded_for = ",".join(headers.getall("X-Forwarded-For", ()))
            if not self._gate.allows(request.remote, forwarded_for):
                raise self._refuse(403, "source_not_allowed", "the source address is not allowed")
        if self._basic_auth is not None:
            reason = self._basic_auth.failure(headers.get("Authorization"))
            if reason is not None:
                raise self._refuse(
                    401, reason, "valid basic auth credentials are required", _BASIC_CHALLENGE
                )
        body = await read_body(request, limit=self._max_body_size, within=self._body_read_timeout)
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
            items = parse_events(body, content_type=content_type)
        except BodyError as error:
            raise Rejected(error.status, error.code, str(error)) from None

        valid: list[Event] = []
        letters: list[DeadLetter] = []
        metrics = self._metrics
        received: dict[str, int] = {}  # counted per type, not per event: batches are large
        for item in items:
            outcome = classify(item)
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
            "format": media_type(content_type) or None,
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
        except SinkOverloaded as error:
            raise Rejected(429, "sink_overloaded", str(error), headers=_RETRY_AFTER) from None
        except SinkUnavailable as error:
            raise Rejected(503, "sink_unavailable", str(error), headers=_RETRY_AFTER) from None
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
    body_read_timeout: float = BODY_READ_TIMEOUT,
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

    handler = WebhookHandler(
        config=config,
        metrics=metrics,
        lifecycle=lifecycle,
        sink=sink,
        dead_letters=dead_letters,
        signing=signing,
        basic_auth=basic_auth,
        gate=gate,
        body_read_timeout=body_read_timeout,
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
