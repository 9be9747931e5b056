"""Signatures, secret files (rotation, hot reload), basic auth and source addresses."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from pathlib import Path

import pytest

from mailtrap_receiver.auth import (
    BasicAuth,
    SecretFile,
    SourceGate,
    sign,
    signature_matches,
    watch_secret_files,
)
from mailtrap_receiver.config import ConfigError
from tests.helpers.waiting import eventually

# The fixed vector, computed independently of this code with openssl:
#   printf '%s' "$VECTOR_BODY" | openssl dgst -sha256 -hmac 'whsec_test_rotation_1'
VECTOR_BODY = b'{"events":[{"event":"delivery","event_id":"0c6f1c5e-1f1a-4d1b-9a7e-000000000001"}]}'
VECTOR_SECRET = b"whsec_test_rotation_1"
VECTOR_SIGNATURE = "7742cd68ef535e0c92727411f447d61097a288facfd36032f4ceef96c1991917"


def test_signature_scheme_matches_the_fixed_vector() -> None:
    assert sign(VECTOR_BODY, secret=VECTOR_SECRET) == VECTOR_SIGNATURE
    assert signature_matches(VECTOR_BODY, VECTOR_SIGNATURE, [VECTOR_SECRET])


@pytest.mark.parametrize(
    "signature",
    [
        VECTOR_SIGNATURE[:-1] + "0",  # one nibble off
        VECTOR_SIGNATURE[:32],  # truncated
        "",
        "sha256=" + VECTOR_SIGNATURE,
        "é" * 64,  # not ASCII: must not raise
        sign(VECTOR_BODY + b" ", secret=VECTOR_SECRET),  # signature of another body
    ],
)
def test_wrong_signatures_do_not_match(signature: str) -> None:
    assert not signature_matches(VECTOR_BODY, signature, [VECTOR_SECRET])


def test_signature_case_and_surrounding_space_do_not_matter() -> None:
    assert signature_matches(VECTOR_BODY, f" {VECTOR_SIGNATURE.upper()} ", [VECTOR_SECRET])


def test_any_of_several_secrets_matches_for_rotation() -> None:
    secrets = [b"old-secret", VECTOR_SECRET]
    assert signature_matches(VECTOR_BODY, VECTOR_SIGNATURE, secrets)
    assert not signature_matches(VECTOR_BODY, VECTOR_SIGNATURE, [b"old-secret"])
    assert not signature_matches(VECTOR_BODY, VECTOR_SIGNATURE, [])


def test_secret_file_lines_are_stripped_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\n  first  \r\n\n\tsecond\n   \n")
    assert SecretFile(path, key="signingSecretFile").values == (b"first", b"second")


def test_missing_or_empty_secret_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^signingSecretFile: cannot read"):
        SecretFile(tmp_path / "absent", key="signingSecretFile")
    empty = tmp_path / "empty"
    empty.write_bytes(b" \n\n")
    with pytest.raises(ConfigError, match=r"^basicAuthSecretFile: .* holds no secret"):
        SecretFile(empty, key="basicAuthSecretFile")


def test_reload_picks_up_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"one\n")
    secret = SecretFile(path, key="signingSecretFile")
    assert not secret.reload()
    path.write_bytes(b"two\none\n")
    assert secret.reload()
    assert secret.values == (b"two", b"one")
    assert secret.version == 1


def test_reload_follows_a_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    # kubelet: key -> ..data/key, ..data -> ..<timestamp>; an update swaps ..data.
    first, second = tmp_path / "..2024_01", tmp_path / "..2024_02"
    first.mkdir()
    second.mkdir()
    (first / "key").write_bytes(b"old\n")
    (second / "key").write_bytes(b"new\n")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "key").symlink_to("..data/key")
    secret = SecretFile(tmp_path / "key", key="signingSecretFile")
    assert secret.values == (b"old",)
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert secret.reload()
    assert secret.values == (b"new",)


def test_a_file_that_vanishes_or_empties_keeps_the_previous_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"kept\n")
    secret = SecretFile(path, key="signingSecretFile")
    path.write_bytes(b"\n")
    assert not secret.reload()
    path.unlink()
    assert not secret.reload()
    assert secret.values == (b"kept",)


async def test_watching_picks_up_a_change_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"before\n")
    secret = SecretFile(path, key="signingSecretFile")
    watcher = asyncio.create_task(watch_secret_files([secret], interval=0.01))
    try:
        path.write_bytes(b"after\n")
        await eventually(lambda: secret.values == (b"after",))
    finally:
        watcher.cancel()
    assert secret.values == (b"after",)


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.fixture
def basic_auth(tmp_path: Path) -> tuple[BasicAuth, SecretFile]:
    path = tmp_path / "credentials"
    path.write_bytes(b"mailtrap:first-pass\nbackup:second:pass\n")
    credentials = SecretFile(path, key="basicAuthSecretFile")
    return BasicAuth(credentials), credentials


@pytest.mark.parametrize(
    ("header", "failure"),
    [
        (_basic("mailtrap:first-pass"), None),
        (_basic("backup:second:pass"), None),  # colons in the password are fine
        ("basic " + base64.b64encode(b"mailtrap:first-pass").decode(), None),
        (None, "basic_auth_missing"),
        ("Bearer abc", "basic_auth_missing"),
        (_basic("mailtrap:wrong"), "basic_auth_invalid"),
        (_basic("mailtrap:first-pass "), "basic_auth_invalid"),
        (_basic("nobody:first-pass"), "basic_auth_invalid"),
        ("Basic %%%not-base64", "basic_auth_invalid"),
        ("Basic ", "basic_auth_invalid"),
    ],
)
def test_basic_auth(
    basic_auth: tuple[BasicAuth, SecretFile], header: str | None, failure: str | None
) -> None:
    assert basic_auth[0].failure(header) == failure


def test_basic_auth_follows_credential_changes(
    basic_auth: tuple[BasicAuth, SecretFile],
) -> None:
    auth, credentials = basic_auth
    assert auth.failure(_basic("mailtrap:first-pass")) is None
    credentials.path.write_bytes(b"mailtrap:rotated\n")
    assert credentials.reload()
    assert auth.failure(_basic("mailtrap:first-pass")) == "basic_auth_invalid"
    assert auth.failure(_basic("mailtrap:rotated")) is None


def _nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr) for cidr in cidrs]


GATE = SourceGate(
    allowed=_nets("203.0.113.0/24", "2001:db8::/32"),
    trusted=_nets("10.0.0.0/8", "127.0.0.0/8"),
)


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "allowed"),
    [
        ("203.0.113.7", None, True),
        ("198.51.100.7", None, False),
        ("2001:db8::5", None, True),
        ("::ffff:203.0.113.7", None, True),  # IPv4-mapped IPv6 peer
        (None, None, False),
        # An untrusted peer's X-Forwarded-For is ignored, whatever it claims.
        ("198.51.100.7", "203.0.113.7", False),
        ("203.0.113.7", "198.51.100.7", True),
        # From a trusted proxy: the right-most entry that is not a trusted proxy.
        ("10.1.2.3", "203.0.113.7", True),
        ("10.1.2.3", "198.51.100.7", False),
        ("10.1.2.3", "203.0.113.7, 10.9.9.9", True),
        ("127.0.0.1", "203.0.113.7, 10.9.9.9, 10.1.1.1", True),
        # A client cannot smuggle an allowed address in front of its own.
        ("10.1.2.3", "203.0.113.7, 198.51.100.7", False),
        ("10.1.2.3", "203.0.113.7:4711", True),
        ("10.1.2.3", "[2001:db8::9]:443", True),
        ("10.1.2.3", "garbage", False),
        ("10.1.2.3", "", False),  # the proxy itself is not allowed
    ],
)
def test_source_gate(peer: str | None, forwarded_for: str | None, allowed: bool) -> None:
    assert GATE.allows(peer, forwarded_for) is allowed


def test_all_trusted_hops_yield_the_left_most() -> None:
    assert GATE.client_address("10.0.0.1", "10.0.0.3, 10.0.0.2") == ipaddress.ip_address("10.0.0.3")
