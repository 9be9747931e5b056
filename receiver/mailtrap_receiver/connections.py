"""The webhook port's connections: how long a client may take to say what it wants,
how many connections it may hold, and aiohttp's own error answers as the receiver's.

`server` serves the webhook app through `GuardedSite`; every connection it accepts
is a `GuardedConnection`, aiohttp's `web.RequestHandler` with these additions
(the ``limits`` of the config):

- **Header timeout.** From the first byte of a request (from the connection's
  opening, for its first request) the whole header block must arrive within
  ``headerTimeout``; otherwise the connection gets a JSON 408 ``header_timeout``
  (when it had sent anything) and is closed. A request whose headers are complete
  is the app's from then on: `intake` times its body.
- **Idle keep-alive.** Between requests a connection may stay open for
  ``idleTimeout`` (aiohttp's keep-alive timer), longer than proxies in front keep
  theirs (ingress-nginx 60 s, Google's load balancers 600 s), so that none sends a
  request on a connection the receiver is closing.
- **Open connections.** At most ``maxConnections``: a new one beyond it closes the
  connection that has waited longest without a request in progress (idle, or still
  sending its headers), or, when every connection is busy with a request, is
  closed itself.
- **aiohttp's own answers.** A request line or header aiohttp cannot parse (such
  as a header value with a control character) is answered with the JSON error
  ``malformed_request`` instead of aiohttp's text, which quotes the offending
  line; it is counted and logged like any refusal, and never with the header or a
  traceback (both may hold a credential).

Every refusal here is one log line in the shape of the app's request line, and
counts in ``requests_total`` (when answered) and ``refused_total``.

Why a RequestHandler subclass, made by a site of our own. aiohttp 3.14 has no
header timeout, and whether a request's headers are complete is private parser
state. A protocol wrapped around the server's protocol factory sees bytes but not
requests, and cannot change aiohttp's own error answers (RequestHandler has
``__slots__``, and ``handle_error`` is looked up on it). The subclass overrides
only asyncio's protocol methods and aiohttp's error hooks (``handle_error``,
``log_exception``), and learns where a request starts and ends from the app's
middleware through the public ``request.protocol`` (`request_started`,
`request_finished`), so it reads no private attribute of aiohttp's. The site
passes the runner's ``web.Server`` (the public ``runner.server``) as each
handler's manager, as aiohttp's ``TCPSite`` does through ``Server.__call__``; so
graceful shutdown (``runner.cleanup``) works as before. Pipelined requests (which
neither Mailtrap nor proxies send) are bounded by ``idleTimeout`` only.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from .config import LimitsConfig
from .errors import error_body, error_response
from .logs import emit
from .metrics import REFUSAL_REASONS, Metrics

# After refusing a request whose body is still arriving, aiohttp reads (and drops)
# the rest for this long so the client sees the answer, then closes.
LINGER: Final = 2.0
# Header lines per request; Mailtrap sends about ten, proxies add a few.
MAX_HEADERS: Final = 64

_TIMEOUT_DETAIL: Final = "the request headers did not arrive within {:g}s"

log = structlog.get_logger("mailtrap_receiver.connections")


class ConnectionGuard:
    """What the connections of one port share: the limits, the connections that
    wait without a request in progress (oldest first), counts and the log."""

    def __init__(self, limits: LimitsConfig, *, metrics: Metrics) -> None:
        self.header_timeout = limits.header_timeout
        self.max_connections = limits.max_connections
        self._metrics = metrics
        self.open = 0
        # Insertion-ordered: the first waited longest (idle, or sending headers).
        self._waiting: dict[GuardedConnection, None] = {}
        metrics.open_connections.set_function(lambda: self.open)
        head = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        body = error_body("header_timeout", _TIMEOUT_DETAIL.format(self.header_timeout))
        self.timeout_answer = (
            head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )

    def opened(self, connection: GuardedConnection) -> bool:
        """A new connection; False when it must be closed (every other is busy)."""
        self.open += 1
        if self.open > self.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self.refused("connection_limit", connection.remote)
                return False
            del self._waiting[victim]
            self.refused("connection_limit", victim.remote)
            victim.force_close()
        self._waiting[connection] = None
        return True

    def closed(self, connection: GuardedConnection) -> None:
        self.open -= 1
        self._waiting.pop(connection, None)

    def busy(self, connection: GuardedConnection) -> None:
        self._waiting.pop(connection, None)

    def waiting(self, connection: GuardedConnection) -> None:
        self._waiting[connection] = None

    def refused(self, reason: str, remote: str | None, *, status: int | None = None) -> None:
        """Count and log a refusal (``status``: what the client was answered, if anything)."""
        if reason in REFUSAL_REASONS:
            self._metrics.refused(reason)
        if status is not None:
            self._metrics.observe_request(status, 0.0)
        line = {"status": status, "error": reason, "method": None, "path": None, "remote": remote}
        emit(log, "warning", "request", line)


class GuardedConnection(web.RequestHandler):
    """One connection of the webhook port (see the module docstring)."""

    __slots__ = ("_guard", "_guard_loop", "_header_timer", "_in_request", "_last_body", "_partial")

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        guard: ConnectionGuard,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._guard_loop = loop
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._partial = False  # bytes of a header block not yet complete have arrived
        self._last_body: StreamReader | None = None  # the body of the last request

    @property
    def remote(self) -> str | None:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else None

    # -- asyncio's protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.opened(self):
            self.force_close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and not self._partial:
            body = self._last_body
            # Not the rest of a body the app left unread (aiohttp reads it to drop
            # it): these bytes begin a request.
            if body is None or body.is_eof():
                self._partial = True
                if self._header_timer is None:
                    self._arm()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._last_body = None
        self._guard.closed(self)
        super().connection_lost(exc)

    # -- where requests start and end (called by the app's middleware) ---------------------

    def request_started(self) -> None:
        self._disarm()
        self._in_request = True
        self._partial = False
        self._guard.busy(self)

    def request_finished(self, request: web.BaseRequest) -> None:
        self._in_request = False
        body = request.content
        # Kept only while unfinished: a body that ended in an error holds that error's
        # traceback, and with it the frames and chunks that read it.
        self._last_body = None if body.is_eof() else body
        if self.transport is not None:  # not lost while the app handled the request
            self._guard.waiting(self)

    # -- aiohttp's own answers -------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or handle, as JSON;
        ``message`` (which quotes the request) is never used."""
        self.request_started()
        if request.writer.output_size > 0:
            # As aiohttp: part of an answer went out, so the connection is broken.
            raise ConnectionError("an answer was being sent already")
        if isinstance(exc, HttpProcessingError) or status == 400:
            code = "malformed_request"
            detail = (
                "a request or header line is too long"
                if isinstance(exc, LineTooLong)
                else "the request line or headers could not be parsed"
            )
        else:
            code, detail = "internal_error", "the receiver failed to handle this request"
        self._guard.refused(code, self.remote, status=status)
        response = error_response(status, code, detail)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's error log: never the request (in a parse error's message) and,
        for a parse error, no traceback either."""
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            log.warning("malformed request", error=type(error).__name__, remote=self.remote)
        else:
            log.error("aiohttp error", exc_info=error)

    # -- the header timer ------------------------------------------------------------------

    def _arm(self) -> None:
        self._header_timer = self._guard_loop.call_later(
            self._guard.header_timeout, self._header_timeout
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if self._in_request or transport is None or transport.is_closing():
            return
        if self._partial:
            transport.write(self._guard.timeout_answer)
            self._guard.refused("header_timeout", self.remote, status=408)
        else:
            self._guard.refused("header_timeout", self.remote)
        self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are `GuardedConnection`s."""

    __slots__ = ("_guard", "_host", "_options", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        idle_timeout: float,
        backlog: int,
        **options: Any,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._options = {
            "keepalive_timeout": idle_timeout,
            "lingering_time": LINGER,
            "max_headers": MAX_HEADERS,
            "access_log": None,
            **options,
        }

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:  # pragma: no cover - BaseSite refuses a runner not set up
            raise RuntimeError("the runner is not set up")
        loop = asyncio.get_running_loop()
        guard, options = self._guard, self._options

        def connection() -> GuardedConnection:
            return GuardedConnection(server, loop=loop, guard=guard, **options)

        self._server = await loop.create_server(
            connection, self._host, self._port, backlog=self._backlog
        )
