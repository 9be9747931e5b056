"""The receiver's egress guard against a real HTTP server on loopback.

Loopback is what the guard denies here (as the operator's default ranges do), so
every refusal below is of a server that is really listening and would answer: the
only thing between the client and it is the guard.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mailtrap_receiver import egress
from mailtrap_receiver.sinks import new_session
from tests.helpers.targets import RecordingTarget

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ELSEWHERE = (ipaddress.ip_network("169.254.0.0/16"),)


@pytest.mark.parametrize(
    ("address", "wanted"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped: the IPv4 address it stands for
        ("fe80::1%eth0", False),  # a zone is not part of the address
        ("10.0.0.1", False),
        ("not-an-address", False),
    ],
)
def test_denied_addresses(address: str, wanted: bool) -> None:
    assert egress.denied(address, LOOPBACK) is wanted


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = new_session(LOOPBACK)
    yield client
    await client.close()


async def send(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.post(url, data=b"{}") as response:
            return str(response.status)
    except (aiohttp.ClientError, OSError) as error:
        return egress.error_name(error)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",  # a literal, which aiohttp never hands to a resolver
        "localhost",  # a name that resolves to a denied address
        "[::ffff:127.0.0.1]",
    ],
)
async def test_a_denied_address_is_never_connected_to(
    session: aiohttp.ClientSession, target: RecordingTarget, host: str
) -> None:
    url = f"http://{host}:{target.port}/events"
    assert await send(session, url) == egress.DENIED
    assert target.received == []


async def test_allowed_addresses_and_an_unguarded_session_are_reached(
    target: RecordingTarget,
) -> None:
    for client in (new_session(ELSEWHERE), new_session()):
        try:
            assert await send(client, f"http://localhost:{target.port}/events") == "200"
        finally:
            await client.close()
    assert len(target.received) == 2


async def test_other_failures_keep_their_own_names() -> None:
    # Nothing listens on the discard port here, and loopback is not denied this time.
    guarded = new_session(ELSEWHERE)
    try:
        name = await send(guarded, "http://127.0.0.1:9/events")
    finally:
        await guarded.close()
    assert name != egress.DENIED
