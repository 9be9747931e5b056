"""A real HTTP target on loopback that records what the receiver forwards to it.

`RecordingTarget` is an aiohttp server on 127.0.0.1 and a free port. Tests read
`received` (path, headers, raw body of each request), choose the status it answers
with, and can hold requests until released (`hold`/`release`) to keep them in
flight. It runs in the test's event loop, so tests that start processes must not
block that loop while the receiver forwards (use asyncio subprocesses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class RecordingTarget:
    """Records every request; answers ``status`` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self.arrived = asyncio.Event()  # set on each request; tests clear it to wait again
        self._gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, request.headers, await request.read()))
        self.arrived.set()
        if self._gate is not None:
            await self._gate.wait()
        return web.Response(status=self.status, text="ok")

    def hold(self) -> None:
        """Keep requests waiting (in flight) until `release`."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def start(self, path: str = "/events") -> RecordingTarget:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}{path}"
        return self

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self) -> list[Any]:
        return [item.json() for item in self.received]
