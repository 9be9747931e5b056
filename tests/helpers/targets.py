"""A real HTTP target on loopback that records what the receiver forwards to it.

`RecordingTarget` is an aiohttp server on 127.0.0.1 and a free port. Tests read
`received` (path, headers, raw body and arrival time of each request), choose the
status it answers with (and extra response headers, such as ``Retry-After``), can
hold requests until released (`hold`/`release`) to keep them in flight, and can take
it down (`stop`: connections are refused) and bring it back on the same port
(`start` again). `event_ids` reads the event ids out of every body, whatever the
format and batching. It runs in the test's event loop, so tests that start processes
must not block that loop while the receiver forwards (use asyncio subprocesses).
`LoopbackTarget` is the same idea for synchronous tests: a threaded server that
answers 200 and records (path, headers, body).
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return orjson.loads(self.body)

    def event_ids(self) -> list[str]:
        """The event ids this request carried (mailtrap or cloudevents, one or a batch)."""
        data = self.json()
        items = data["events"] if isinstance(data, dict) and "events" in data else data
        if not isinstance(items, list):
            items = [items]
        return [
            str(item["data"]["event_id"] if "specversion" in item else item["event_id"])
            for item in items
        ]


class RecordingTarget:
    """Records every request; answers ``status`` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self.response_headers: dict[str, str] = {}
        self.arrived = asyncio.Event()  # set on each request; tests clear it to wait again
        self._gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0
        self._path = "/events"

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, request.headers, await request.read()))
        self.arrived.set()
        if self._gate is not None:
            await self._gate.wait()
        return web.Response(status=self.status, text="ok", headers=self.response_headers)

    def hold(self) -> None:
        """Keep requests waiting (in flight) until `release`."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def start(self, path: str | None = None) -> RecordingTarget:
        """Listen (again: on the same port once it had one)."""
        self._path = path or self._path
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        host, self.port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{self.port}{self._path}"
        return self

    async def stop(self) -> None:
        """Stop listening: requests to `url` are refused until `start`."""
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()

    def bodies(self) -> list[Any]:
        return [item.json() for item in self.received]

    def event_ids(self) -> list[str]:
        """Every event id received, in arrival order, repeats included."""
        return [event_id for item in self.received for event_id in item.event_ids()]


class LoopbackTarget:
    """An HTTP server on 127.0.0.1 that records what is POSTed to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                target.received.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
