"""The receiver process: both apps on their ports, and a graceful stop on SIGTERM.

`cli` calls `run` for ``mailtrap-receiver serve``. `serve` builds the webhook app
(`app.create_app`) and the health and metrics app (`admin.create_admin_app`)
around one `metrics.Metrics` and one `admin.Lifecycle`, starts the admin port first
(so probes answer while the sink starts), then the webhook port, and only then
reports ready. The webhook port is served by `connections.GuardedSite` (header
timeout, idle timeout, a cap on connections, aiohttp's own errors as JSON), and the
soft limit on open files is raised to the hard one first, since every connection
is a file. On SIGTERM or SIGINT it fails readiness, stops listening, lets the
requests in flight finish, and closes the sink through the app's ``cleanup_ctx``
(in ack mode ``durable`` the sink keeps delivering pending events meanwhile), all
within ``shutdownGracePeriod`` from the signal, and returns, so the process exits
0. uvloop runs the loop when it is installed; aiohttp's access log is off because
`app` writes its own line per request.
"""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Callable
from typing import Final

import structlog
from aiohttp import web

from .admin import Lifecycle, create_admin_app
from .app import RUNNER_OPTIONS, create_app
from .config import ReceiverConfig
from .connections import ConnectionGuard, GuardedSite
from .logs import flush_logs
from .metrics import Metrics

# Mailtrap sends bursts; a deeper accept queue rides them out instead of refusing.
_BACKLOG: Final = 1024
# Log lines are buffered (see logs); this is how stale stdout may get.
LOG_FLUSH_INTERVAL: Final = 0.2
# Files the process needs besides its connections: the spool, its socket, logs,
# the admin port and its scrapers, connections to targets.
_SPARE_FILES: Final = 256

log = structlog.get_logger("mailtrap_receiver.server")


async def serve(
    *,
    config: ReceiverConfig,
    host: str,
    port: int,
    metrics_port: int,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or a SIGTERM/SIGINT arrives, then shut down cleanly."""
    stop = asyncio.Event() if stop is None else stop
    lifecycle = Lifecycle()
    metrics = Metrics()
    # Built before anything listens: a bad secret file fails here, naming its key.
    app = create_app(config=config, metrics=metrics, lifecycle=lifecycle)
    admin_runner = web.AppRunner(
        create_admin_app(lifecycle=lifecycle, metrics=metrics), access_log=None
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace_period)
    guard = ConnectionGuard(config.limits, metrics=metrics)
    files = raise_open_files_limit()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    flusher = asyncio.create_task(_flush_logs_now_and_then())
    try:
        await admin_runner.setup()
        await web.TCPSite(admin_runner, host, metrics_port, backlog=_BACKLOG).start()
        await runner.setup()
        await GuardedSite(
            runner,
            host,
            port,
            guard=guard,
            idle_timeout=config.limits.idle_timeout,
            backlog=_BACKLOG,
            **RUNNER_OPTIONS,
        ).start()
        lifecycle.started = True
        log.info(
            "listening",
            host=host,
            port=port,
            metrics_port=metrics_port,
            path=config.path,
            open_files_limit=files,
        )
        if files < config.limits.max_connections + _SPARE_FILES:
            log.warning(
                "the open files limit is below limits.maxConnections; connections beyond it "
                "are refused by the system",
                open_files_limit=files,
                max_connections=config.limits.max_connections,
            )
        await stop.wait()
        log.info("stopping", grace_period_s=config.shutdown_grace_period)
    finally:
        # Readiness fails at once; the durable sink delivers until the deadline.
        lifecycle.stop(grace_period=config.shutdown_grace_period)
        # Stops the listener, waits for in-flight requests, then runs cleanup_ctx
        # (the sink flushes, delivers what is due while the grace period lasts, and
        # closes the spool).
        await runner.cleanup()
        await admin_runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        flusher.cancel()
    log.info("stopped")
    flush_logs()


async def _flush_logs_now_and_then() -> None:
    while True:
        await asyncio.sleep(LOG_FLUSH_INTERVAL)
        flush_logs()


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (each connection is a file,
    and the usual soft limit of 1024 is below ``limits.maxConnections``); the limit
    that holds now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an infinite hard limit the kernel caps lower: keep the soft one
    return soft


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(*, config: ReceiverConfig, host: str, port: int, metrics_port: int) -> None:
    """Run `serve` to completion on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config=config, host=host, port=port, metrics_port=metrics_port))
