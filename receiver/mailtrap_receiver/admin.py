"""The health and metrics port (9090): ``/healthz``, ``/readyz`` and ``/metrics``.

It is a separate aiohttp application from the webhook app (`app`), on its own port,
so the Service an Ingress points at never exposes it. Both apps share one
`Lifecycle`: `server` marks it started once both listen and stopping on SIGTERM,
and the webhook app marks it stopping when it shuts down. ``/readyz`` answers 503
while starting and while stopping, so Kubernetes sends no new requests to a receiver
that cannot finish them, and while a part it needs cannot work (`Lifecycle.checks`:
the spool cannot write, a full disk say; or `Lifecycle.failure`); ``/healthz``
answers 200 whenever the loop runs, unless a part the receiver cannot work without
has failed for good (`Lifecycle.failure`: the spool's writer process), so the
liveness probe restarts the container. The
durable sink reads `Lifecycle.stop_deadline` to know how long it may keep
delivering what is pending after SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from aiohttp import web

from .metrics import CONTENT_TYPE, Metrics


class Lifecycle:
    """Whether the receiver should get traffic: started, not stopping, nothing failed
    and every `checks` clear; and, once stopping, until when (``time.monotonic``)
    it may keep delivering."""

    def __init__(self) -> None:
        self.started = False
        self.stopping = False
        self.stop_deadline: float | None = None
        # Set when a part the receiver cannot work without has failed (the spool
        # writer): /healthz fails, so Kubernetes restarts the container.
        self.failure: str | None = None
        # Each says why the receiver cannot take requests now (the spool cannot
        # write, say), or None; any reason fails /readyz, none fails /healthz.
        self.checks: list[Callable[[], str | None]] = []
        # What went wrong and was dealt with (a corrupt spool recovered at start):
        # shown on /healthz, which stays 200.
        self.warnings: list[str] = []

    def stop(self, *, grace_period: float) -> None:
        """Start stopping now, with ``grace_period`` seconds to finish."""
        if not self.stopping or self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + grace_period
        self.stopping = True

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    @property
    def not_ready(self) -> str | None:
        """Why the receiver should get no traffic now, or None."""
        if self.stopping:
            return "the receiver is stopping"
        if not self.started:
            return "the receiver is starting"
        if self.failure is not None:
            return self.failure
        for check in self.checks:
            reason = check()
            if reason is not None:
                return reason
        return None


def _json(status: int, data: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def create_admin_app(*, lifecycle: Lifecycle, metrics: Metrics) -> web.Application:
    """The app of the health and metrics port."""

    async def healthz(request: web.Request) -> web.Response:
        if lifecycle.failure is not None:
            return _json(503, {"error": "unhealthy", "detail": lifecycle.failure})
        if lifecycle.warnings:
            return _json(200, {"status": "ok", "warnings": lifecycle.warnings})
        return _json(200, {"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = lifecycle.not_ready
        if reason is None:
            return _json(200, {"status": "ready"})
        return _json(503, {"error": "not_ready", "detail": reason})

    async def metrics_handler(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        # Set whole: aiohttp's content_type would drop the version parameter.
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
