"""Who may post events: signature, secret files, basic auth and source addresses.

`app` runs these gates in a fixed order for every webhook request: the source
address (`SourceGate`, 403), then basic auth (`BasicAuth`, 401) and, once the body
is read, the signature (`signature_matches`, 401). The sinks reuse `sign` for
signing what they forward to targets.

Mailtrap signs the raw request body with HMAC-SHA256 and sends the lowercase hex
digest in ``Mailtrap-Signature`` (older docs: ``X-Mailtrap-Signature``). Every
comparison here is constant-time. Secrets come only from files (`SecretFile`), one
per line so a secret can be rotated without downtime, and the files are re-read
when they change: Kubernetes updates a mounted Secret by swapping a symlink, so
`watch_secret_files` polls their content about once a second. Nothing here logs a
secret, a signature or a credential. `ClientAddresses` and `source_key` say who
the client is (behind trusted proxies), for the gate and for `intake`'s limits per
client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import structlog
from multidict import CIMultiDictProxy

from .config import ConfigError, IPNetwork

SIGNATURE_HEADERS: Final = ("Mailtrap-Signature", "X-Mailtrap-Signature")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = structlog.get_logger("mailtrap_receiver.auth")


def sign(body: bytes, *, secret: bytes) -> str:
    """Mailtrap's signature of a body: HMAC-SHA256, lowercase hex."""
    return hmac.digest(secret, body, "sha256").hex()


def signature_in(headers: Mapping[str, str]) -> str | None:
    """The signature a request carries, in the first of `SIGNATURE_HEADERS` that has one."""
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def signature_matches(body: bytes, signature: str, secrets: Sequence[bytes]) -> bool:
    """Whether ``signature`` is the signature of ``body`` under any of ``secrets``."""
    # Never raises: a header may hold any text, and compare_digest refuses non-ASCII str.
    provided = signature.strip().lower().encode("ascii", "replace")
    matched = False
    # No early exit, so the time taken does not tell which secret matched.
    for secret in secrets:
        expected = hmac.digest(secret, body, "sha256").hex().encode("ascii")
        matched |= hmac.compare_digest(expected, provided)
    return matched


def parse_secret_lines(raw: bytes) -> tuple[bytes, ...]:
    """Secrets of a secret file: one per line, surrounding whitespace and blank lines ignored."""
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


class SecretFile:
    """A mounted secret file whose lines are the current secrets.

    `reload` re-reads it; a file that turns unreadable or empty keeps the previous
    secrets (and says so in the log) rather than locking everyone out.
    """

    def __init__(self, path: Path, *, key: str) -> None:
        self.path = path
        self.key = key  # the config key naming this file, for errors and logs
        self.version = 0  # bumped on every change, so users can cache derived values
        self._raw = b""
        self.values: tuple[bytes, ...] = ()
        try:
            self._raw = path.read_bytes()
        except OSError as error:
            raise ConfigError.one(key, f"cannot read {path}: {error.strerror}") from None
        self.values = parse_secret_lines(self._raw)
        if not self.values:
            raise ConfigError.one(key, f"{path} holds no secret")

    def reload(self) -> bool:
        """Re-read the file; True when its secrets changed."""
        try:
            raw = self.path.read_bytes()
        except OSError as error:
            log.warning("secret file unreadable", key=self.key, error=error.strerror)
            return False
        if raw == self._raw:
            return False
        values = parse_secret_lines(raw)
        if not values:
            log.warning("secret file is empty; keeping the previous secrets", key=self.key)
            return False
        self._raw, self.values = raw, values
        self.version += 1
        log.info("secret file reloaded", key=self.key, secrets=len(values))
        return True


async def watch_secret_files(files: Sequence[SecretFile], *, interval: float = 1.0) -> None:
    """Re-read ``files`` every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        for file in files:
            file.reload()


class BasicAuth:
    """HTTP basic auth against a file of ``username:password`` lines."""

    def __init__(self, credentials: SecretFile) -> None:
        self._file = credentials
        self._version = -1
        self._digests: tuple[bytes, ...] = ()

    def failure(self, authorization: str | None) -> str | None:
        """None when the header holds valid credentials, else the failure reason."""
        if authorization is None:
            return "basic_auth_missing"
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return "basic_auth_missing"
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "basic_auth_invalid"
        if self._version != self._file.version:
            self._digests = tuple(hashlib.sha256(line).digest() for line in self._file.values)
            self._version = self._file.version
        # Comparing fixed-length digests hides the length of the stored credentials.
        given = hashlib.sha256(credentials).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(digest, given)
        return None if matched else "basic_auth_invalid"


def _parse_address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, ranges: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in ranges)


class ClientAddresses:
    """The client's address of a request: the peer, or, when the peer is a trusted
    proxy, the right-most X-Forwarded-For entry that is not a trusted proxy."""

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def of(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        address = _parse_address(peer) if peer else None
        if address is None or not forwarded_for or not _within(address, self._trusted):
            return address
        # Right to left: each trusted hop vouches for the one before it; the first
        # untrusted entry is the client. Entries further left are client-supplied.
        for entry in reversed(forwarded_for.split(",")):
            hop = _parse_address(entry)
            if hop is None or not _within(hop, self._trusted):
                return hop
            address = hop
        return address


def forwarded_for(headers: CIMultiDictProxy[str]) -> str:
    """Every X-Forwarded-For line, in order, as one list.

    RFC 9110 allows either form: a proxy may add a line of its own rather than
    append to the client's, and then reading only the first would trust what the
    client wrote there.
    """
    return ",".join(headers.getall("X-Forwarded-For", ()))


def source_key(address: IPAddress | None) -> str:
    """Whom a limit per client counts against: an IPv4 address, or an IPv6 address's
    /64 (a single host usually holds a whole /64, so counting addresses inside it
    would let one client count as many)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SourceGate:
    """The source CIDR allow-list, with X-Forwarded-For from trusted proxies only."""

    def __init__(self, *, allowed: Sequence[IPNetwork], trusted: Sequence[IPNetwork]) -> None:
        self._allowed = tuple(allowed)
        self._clients = ClientAddresses(trusted)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        """See `ClientAddresses.of`."""
        return self._clients.of(peer, forwarded_for)

    def allows(self, peer: str | None, forwarded_for: str | None) -> bool:
        address = self._clients.of(peer, forwarded_for)
        return address is not None and _within(address, self._allowed)
