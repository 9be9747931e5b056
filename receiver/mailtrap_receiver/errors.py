"""The receiver's error answers: `Rejected`, and the one JSON body every failure uses.

`app` raises `Rejected` for a request it refuses and its middleware turns it into
`error_response`; `intake` raises it while a body arrives too slowly or does not
fit; `connections` uses `error_response` for the answers aiohttp would otherwise
make itself (a malformed request line or header, a request that took too long to
arrive), so a client sees ``{"error": code, "detail": text}`` whoever refused it.
A detail never repeats what the client sent: it may be a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson
from aiohttp import web

# Mailtrap and proxies may honour it; a second is enough for a load spike to pass.
RETRY_AFTER: Final[Mapping[str, str]] = {"Retry-After": "1"}


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


def error_body(code: str, detail: str) -> bytes:
    """``{"error": code, "detail": text}`` as JSON bytes."""
    return orjson.dumps({"error": code, "detail": detail})


def error_response(
    status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The JSON error response every failure uses."""
    return web.Response(
        status=status,
        body=error_body(code, detail),
        content_type="application/json",
        headers=headers,
    )
