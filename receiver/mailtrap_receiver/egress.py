"""Egress guard: the receiver never connects to an address the platform denied.

The operator refuses targets whose host is a denied name or address when it reads
the spec (``mailtrap_operator.policy``), but a name can resolve to anything, and
change what it resolves to. So the operator also writes its denied ranges into the
receiver's config (``deniedTargetRanges``: a key the CRD does not have, which only
the operator sets), and `connector` makes the HTTP client of `sinks.new_session`
check every address it is about to connect to, after name resolution:

- `GuardedResolver` drops denied addresses from what the resolver answers, and
  refuses a name that is left with none;
- the socket factory refuses to open a socket to a denied address, which also
  covers IP literals (aiohttp never hands those to a resolver).

Either raises `EgressDenied`. `sinks.post` names the failed attempt `DENIED`, and
such an attempt is not retried: its events go to the dead-letter store at once,
with reason ``egress_denied``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# The error name of an attempt the guard refused (sinks.Attempt.error).
DENIED: Final = "EgressDenied"
# Causes are followed this deep: aiohttp wraps the guard's error once or twice.
_MAX_CHAIN: Final = 8


class EgressDenied(OSError):
    """A connection to a denied address was refused before it was made."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def denied(address: str, ranges: Sequence[IPNetwork]) -> bool:
    """Whether an IP address (as a resolver or a URL gives it) is in a denied range;
    an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in ranges)


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, minus the denied addresses."""

    def __init__(self, ranges: Sequence[IPNetwork]) -> None:
        self._ranges = tuple(ranges)
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._resolver.resolve(host, port, family)
        allowed = [answer for answer in answers if not denied(answer["host"], self._ranges)]
        if not allowed:
            raise EgressDenied(f"{host} resolves only to denied addresses")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def _socket_factory(ranges: Sequence[IPNetwork]) -> Callable[[Any], socket.socket]:
    def open_socket(addr_info: Any) -> socket.socket:
        family, kind, proto, _, address = addr_info
        if denied(str(address[0]), ranges):
            raise EgressDenied(f"{address[0]} is a denied address")
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket


def connector(ranges: Sequence[IPNetwork], **options: Any) -> aiohttp.TCPConnector:
    """A TCP connector that refuses denied addresses (none refused without ``ranges``)."""
    if not ranges:
        return aiohttp.TCPConnector(**options)
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(ranges), socket_factory=_socket_factory(ranges), **options
    )


def error_name(error: BaseException) -> str:
    """What to call a failed attempt: `DENIED` if the guard refused it, else the
    exception's class name."""
    seen: BaseException | None = error
    for _ in range(_MAX_CHAIN):
        if seen is None:
            break
        if isinstance(seen, EgressDenied):
            return DENIED
        seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return type(error).__name__
