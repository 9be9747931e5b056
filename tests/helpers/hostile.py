"""Hostile clients of the webhook port and what they cost the receiver, for the
``tests/security/test_internet_*.py`` tests.

`internet_receiver` starts a real receiver process (durable mode, its spool in the
test's directory) whose signing secret and basic-auth credentials are canaries
(`tests.helpers.canary`), and always kills it. `SlowClients` keeps many
connections open from several loopback source addresses (Linux routes all of
127.0.0.0/8 to loopback), each sending a request one byte a second, reconnecting
when the receiver closes it, for as long as the test says; `slow_clients_process`
runs them in a process of their own. `raw_exchange` sends
bytes as they are and returns what comes back. `rss` is the memory of a process
and its children (the receiver and its spool writer). Every loop here is bounded
in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mailtrap_receiver.auth import sign
from tests.helpers.canary import canary
from tests.helpers.children import die_with_parent
from tests.helpers.processes import ReceiverProcess, start_receiver_async, write_config

REPO = Path(__file__).resolve().parents[2]
PATH = "/webhooks/mailtrap"
MIB = 1024 * 1024


def raise_open_files_limit() -> int:
    """The soft limit on open files of this process, raised to the hard one: a
    thousand connections need a thousand files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source(group: int, number: int) -> str:
    """A loopback address of its own: 127.<group>.<number // 250>.<number % 250 + 1>."""
    return f"127.{group}.{number // 250}.{number % 250 + 1}"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # The command name may hold spaces and parentheses: split after the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def rss(pid: int) -> int:
    """Resident memory of ``pid`` and its children, in bytes."""
    total = 0
    for member in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Secrets:
    """The canary secrets a receiver runs with."""

    signing: bytes
    username: str
    password: str


@dataclass
class InternetReceiver:
    process: ReceiverProcess
    secrets: Secrets
    spool: Path
    config: Path

    def sign(self, body: bytes) -> dict[str, str]:
        return {
            "Mailtrap-Signature": sign(body, secret=self.secrets.signing),
            "Content-Type": "application/json",
        }


@contextlib.asynccontextmanager
async def internet_receiver(
    tmp_path: Path,
    *,
    target_url: str,
    basic_auth: bool = False,
    settings: Mapping[str, Any] | None = None,
    name: str = "receiver",
) -> AsyncIterator[InternetReceiver]:
    """A receiver process exposed as on the internet, killed on the way out."""
    secrets = Secrets(
        signing=canary("signing-secret").encode(),
        username="mailtrap",
        password=canary("basic-auth-password"),
    )
    signing = tmp_path / f"{name}-signing.txt"
    signing.write_bytes(secrets.signing + b"\n")
    config: dict[str, Any] = {
        "signingSecretFile": str(signing),
        "targets": [{"name": "app", "url": target_url}],
        "delivery": {"spoolPath": str(tmp_path / f"{name}-spool" / "spool.db")},
        "shutdownGracePeriod": "5s",
    }
    if basic_auth:
        credentials = tmp_path / f"{name}-credentials.txt"
        credentials.write_text(f"{secrets.username}:{secrets.password}\n")
        config["basicAuthSecretFile"] = str(credentials)
    for key, value in (settings or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = write_config(tmp_path / f"{name}.json", config)
    process = await start_receiver_async(config=path)
    try:
        yield InternetReceiver(process, secrets, Path(config["delivery"]["spoolPath"]), path)
    finally:
        process.kill()


async def raw_exchange(
    host: str,
    port: int,
    data: bytes,
    *,
    local: str | None = None,
    within: float = 30.0,
) -> tuple[bytes, float]:
    """Send ``data`` and read until the receiver closes the connection (or ``within``
    seconds pass); what came back and how long the connection stayed open."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=None if local is None else (local, 0)
    )
    answer = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                answer += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer, time.monotonic() - started


def slow_body_head(length: int) -> bytes:
    """A request whose body (``length`` bytes, declared) is still to come."""
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nMailtrap-Signature: {'0' * 64}\r\n\r\n"
    ).encode()


SLOW_HEADERS = (
    f"POST {PATH} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
    "X-Padding: " + "a" * 4000
).encode()


@dataclass
class SlowClients:
    """Connections that each send a request one byte a second: ``bodies`` of them a
    body after complete headers, ``headers`` of them their headers themselves
    (slowloris), from ``sources`` loopback addresses. A connection the receiver
    closes (or answers) is opened again, at most once a second per slot. Run it with
    ``async with``; `open` says how many are connected."""

    host: str
    port: int
    bodies: int
    headers: int = 0
    group: int = 1
    sources: int = 11
    open: int = 0
    connections: int = 0
    answers: dict[bytes, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> SlowClients:
        count = self.bodies + self.headers
        self._tasks = [asyncio.create_task(self._slot(n, count)) for n in range(count)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _slot(self, number: int, count: int) -> None:
        local = source(self.group, number % self.sources)
        # Either way more bytes to trickle than a test lasts seconds.
        body = number < self.bodies
        head = slow_body_head(100_000) if body else SLOW_HEADERS[:40]
        trickle = b" " * 1000 if body else SLOW_HEADERS[40:]
        # Spread the first connections over a second, as a real attack ramps up.
        await asyncio.sleep(number / count)
        while not self._stop.is_set():
            opened = time.monotonic()
            with contextlib.suppress(OSError):
                await self._connection(local, head, trickle)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - opened)))

    async def _connection(self, local: str, head: bytes, trickle: bytes) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(local, 0))
        self.open += 1
        self.connections += 1
        try:
            writer.write(head)
            for position in range(len(trickle)):
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    writer.write(trickle[position : position + 1])
                    continue
                if not answer:
                    return
                status = answer.split(b"\r\n", 1)[0]
                self.answers[status] = self.answers.get(status, 0) + 1
                # Answered: keep sending, as an attacker would, until closed.
                await asyncio.wait_for(reader.read(), 30.0)
                return
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.open -= 1
            writer.close()


def client(*, fresh: bool = False) -> aiohttp.ClientSession:
    """A client session for signed requests; ``fresh``: a new connection per request,
    as a sender that keeps none would (each request then has to get through the
    accept queue and the header timer)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=fresh),
        timeout=aiohttp.ClientTimeout(total=60),
    )


@contextlib.asynccontextmanager
async def bodies_begun(
    receiver: ReceiverProcess, sources: Sequence[str], *, length: int, sent: bytes = b"{"
) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """A request from each of ``sources`` whose body (``length`` bytes declared)
    stops after ``sent``; every connection is closed on the way out."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for local in sources:
            _, writer = await asyncio.open_connection(
                receiver.host, receiver.port, local_addr=(local, 0)
            )
            writer.write(slow_body_head(length) + sent)
            writers.append(writer)
        yield writers
    finally:
        for writer in writers:
            writer.close()


async def signed_post(
    session: aiohttp.ClientSession, receiver: InternetReceiver, body: bytes
) -> tuple[int, Any, float]:
    """POST a signed body; status, decoded answer and seconds taken."""
    started = time.monotonic()
    async with session.post(
        receiver.process.url(), data=body, headers=receiver.sign(body)
    ) as response:
        answer = await response.read()
    return response.status, orjson.loads(answer) if answer else None, time.monotonic() - started


async def _attack(
    host: str, port: int, bodies: int, headers: int, sources: int, seconds: float
) -> None:
    raise_open_files_limit()
    async with SlowClients(host, port, bodies, headers, sources=sources) as clients:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            status = {
                "open": clients.open,
                "connections": clients.connections,
                "answers": {key.decode(errors="replace"): n for key, n in clients.answers.items()},
            }
            print(orjson.dumps(status).decode(), flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.helpers.hostile HOST PORT BODIES HEADERS SOURCES SECONDS``:
    run `SlowClients` in a process of its own (so its thousand coroutines do not slow
    the test's own requests), printing a JSON status line every second."""
    host, port, bodies, headers, sources, seconds = (sys.argv[1:] if argv is None else argv)[:6]
    asyncio.run(_attack(host, int(port), int(bodies), int(headers), int(sources), float(seconds)))


@contextlib.asynccontextmanager
async def slow_clients_process(
    receiver: ReceiverProcess, *, bodies: int, headers: int, sources: int, seconds: float
) -> AsyncIterator[AttackStatus]:
    """`SlowClients` in their own process for at most ``seconds``, killed on the way out;
    the status it last reported is kept up to date."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.hostile",
        receiver.host,
        str(receiver.port),
        str(bodies),
        str(headers),
        str(sources),
        str(seconds),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    status = AttackStatus()

    async def follow() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            status.update(orjson.loads(line))

    follower = asyncio.create_task(follow())
    try:
        yield status
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


@dataclass
class AttackStatus:
    """What the attacking process last reported, and every open count it reported."""

    open: int = 0
    connections: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)

    def update(self, data: dict[str, Any]) -> None:
        self.open, self.connections, self.answers = (
            data["open"],
            data["connections"],
            data["answers"],
        )
        self.history.append(self.open)


if __name__ == "__main__":
    main()
