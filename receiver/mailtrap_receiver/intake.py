"""Reading a request body from a client nobody has verified yet, within bounds.

`app` reads every webhook body through `BodyIntake.read`, after the checks that
need only headers (source gate, basic auth) and before the signature, which needs
the whole body. Until then the sender is anonymous, so what it may cost is bounded
here (the ``limits`` of the config):

- a body declared larger than ``maxBodySize`` is refused before a byte of it is
  read (413), and reading stops one byte past the limit otherwise;
- a body that came with its headers (Mailtrap's does: it sends a few hundred KiB
  at once) is taken as it is, with no timer, count or lock: the hot path;
- a body still arriving must come whole within ``bodyTimeout`` and, after a grace
  of `RATE_GRACE`, at ``minBodyRate`` bytes per second on average since the
  headers (408 ``body_timeout`` or ``body_too_slow``): one timer, moved forward as
  bytes arrive, enforces both;
- at most ``maxBodyReadsPerSource`` such bodies per client address at once (429
  ``source_busy``; the address is the peer's, or the X-Forwarded-For client's
  behind a trusted proxy, and an IPv6 client's /64: `auth.source_key`);
- together they may hold at most ``maxBodyMemory`` bytes, counted by their
  Content-Length when declared and as they arrive otherwise (503
  ``receiver_busy``); one body always fits, so a limit below ``maxBodySize``
  cannot refuse everything.

What an attack left behind goes back to the system: once no body is arriving any
more after more than `TRIM_AFTER` bytes were held, the garbage collector runs (a
request that failed mid-body leaves a reference cycle behind: its error's traceback
holds the frames that read it, and the request keeps the error) and glibc's
``malloc_trim`` returns freed heap pages (glibc keeps freed memory for reuse, and
the container's memory limit counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .auth import ClientAddresses, forwarded_for, source_key
from .config import ReceiverConfig
from .errors import RETRY_AFTER, Rejected

# Seconds after the headers during which a body may arrive at any rate: TCP's
# first retransmission alone can take a second.
RATE_GRACE: Final = 2.0
# Memory held by bodies still arriving, past which their release is followed by a
# malloc_trim, and how long after the last release that waits.
TRIM_AFTER: Final = 8 * 1024 * 1024
TRIM_DELAY: Final = 1.0


def _too_large(limit: int) -> Rejected:
    return Rejected(413, "body_too_large", f"the body is larger than {limit} bytes")


def _unreadable() -> Rejected:
    return Rejected(400, "malformed_body", "the body could not be read")


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return lambda: trim(0)


class BodyIntake:
    """Reads bodies under the limits (see the module docstring)."""

    def __init__(self, config: ReceiverConfig) -> None:
        limits = config.limits
        self._limit = config.max_body_size
        self._timeout = limits.body_timeout
        self._rate = float(limits.min_body_rate)
        self._per_source = limits.max_body_reads_per_source
        self._memory = limits.max_body_memory
        self._clients = ClientAddresses(config.trusted_proxy_ranges)
        # Bodies still arriving, per client address (`auth.source_key`).
        self._arriving: dict[str, int] = {}
        self.buffered = 0  # bytes those bodies may hold, as counted against maxBodyMemory
        self._peak = 0
        self._trim = _malloc_trim()
        self._trim_timer: asyncio.TimerHandle | None = None

    async def read(self, request: web.Request) -> bytes:
        """The whole body of ``request``, or `Rejected` (see the module docstring)."""
        limit = self._limit
        length = request.content_length
        if length is not None and length > limit:
            raise _too_large(limit)
        content = request.content
        if content.is_eof():
            # Came with the headers: buffered already, so only the size counts.
            try:
                body = content.read_nowait()
            except (web.RequestPayloadError, HttpProcessingError, ConnectionError):
                raise _unreadable() from None
            if len(body) > limit:
                raise _too_large(limit)
            return body
        return await self._read_arriving(request, length)

    async def _read_arriving(self, request: web.Request, length: int | None) -> bytes:
        address = self._clients.of(request.remote, forwarded_for(request.headers))
        source = source_key(address)
        arriving = self._arriving.get(source, 0)
        if arriving >= self._per_source:
            raise Rejected(
                429,
                "source_busy",
                f"{arriving} bodies from this address are still arriving",
                headers=RETRY_AFTER,
            )
        limit = self._limit
        self._arriving[source] = arriving + 1
        held = 0  # what this body counts against maxBodyMemory
        chunks: list[bytes] = []
        try:
            if length:
                self._hold(length, 0)
                held = length
            loop = asyncio.get_running_loop()
            started = loop.time()
            deadline = started + self._timeout
            slow = started + RATE_GRACE < deadline
            content = request.content
            size = 0
            async with asyncio.timeout(min(deadline, started + RATE_GRACE)) as timer:
                while True:
                    # Never ask for more than one byte past the limit: nothing is
                    # buffered beyond it, and one extra byte proves the body too large.
                    chunk = await content.read(limit + 1 - size)
                    if not chunk:
                        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                        break
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    if size > held:  # no Content-Length (chunked): counted as it comes
                        self._hold(size - held, held)
                        held = size
                    chunks.append(chunk)
                    # By then the next byte must have come: the average rate since
                    # the headers, after the grace, may not fall below the minimum.
                    due = started + RATE_GRACE + size / self._rate
                    slow = due < deadline
                    timer.reschedule(min(due, deadline))
        except TimeoutError:
            if slow:
                raise Rejected(
                    408,
                    "body_too_slow",
                    f"the body arrived slower than {self._rate:g} bytes per second",
                ) from None
            raise Rejected(
                408, "body_timeout", f"the body did not arrive within {self._timeout:g}s"
            ) from None
        except (web.RequestPayloadError, HttpProcessingError, ConnectionError):
            # A broken chunked encoding or a peer gone mid-body: the sender's fault,
            # and nothing to log but the status.
            raise _unreadable() from None
        finally:
            # On a failure this frame lives on in the error's traceback, which the
            # request's payload keeps (a cycle, which only the garbage collector
            # breaks): what it read must not live on with it.
            chunks.clear()
            chunk = b""
            left = self._arriving[source] - 1
            if left:
                self._arriving[source] = left
            else:
                del self._arriving[source]
            self._release(held)
        return body

    def _hold(self, size: int, already: int) -> None:
        """Count ``size`` more bytes of a body that holds ``already``; refuse when
        they do not fit beside the others'."""
        others = self.buffered - already
        if others and others + already + size > self._memory:
            raise Rejected(
                503,
                "receiver_busy",
                "too many bodies are arriving at once; send it again shortly",
                headers=RETRY_AFTER,
            )
        self.buffered += size
        self._peak = max(self._peak, self.buffered)

    def _release(self, size: int) -> None:
        self.buffered -= size
        if self.buffered == 0 and self._peak > TRIM_AFTER:
            self._peak = 0
            if self._trim_timer is not None:
                self._trim_timer.cancel()
            self._trim_timer = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_timer = None
        if self.buffered:
            return
        # Failed requests leave cycles behind (an error's traceback, its frames, the
        # request that kept the error): collected now rather than whenever.
        gc.collect()
        if self._trim is not None:
            with contextlib.suppress(OSError):
                self._trim()
