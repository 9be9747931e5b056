"""Canary secret values: recognisable, registered, and searched for after the suite.

Every secret value a security test hands to the operator or a receiver (signing
secrets, basic-auth credentials, target signing keys, API tokens) comes from
`canary`, so that one test at the end of ``tests/security`` can look for each of
them, and for the encodings they travel in (base64 in a Secret, hex), in everything
the product wrote: logs, Events, status, metrics and error bodies. A value found
there is a leak. The values are random per test session, so an old log cannot make
the check pass or fail.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable

_VALUES: list[str] = []


def canary(label: str) -> str:
    """A new secret value, registered for the leak check; ``label`` says what it is for."""
    value = f"canary-{label}-{secrets.token_hex(12)}"
    _VALUES.append(value)
    return value


def values() -> tuple[str, ...]:
    """Every canary handed out so far in this session."""
    return tuple(_VALUES)


def _forms(value: str) -> Iterable[str]:
    raw = value.encode()
    yield value
    yield base64.b64encode(raw).decode()
    yield raw.hex()


def leaks(text: str, *, among: Iterable[str] | None = None) -> list[str]:
    """The canaries (``among``, else all registered) that ``text`` holds in any form."""
    found = []
    for value in values() if among is None else among:
        if any(form in text for form in _forms(value)):
            found.append(value)
    return found
