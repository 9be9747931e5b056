"""What can go wrong talking to Mailtrap's Webhooks API, one exception class per case.

`client` raises these and nothing else, so the code that reconciles a webhook can
map each to a condition reason (``reason``) and decide whether to retry
(``retryable``) without looking at HTTP. Messages carry Mailtrap's own words (its
``error``/``errors`` body) or what failed on the way, never the API token: `client`
builds every message from the status and body alone and scrubs the token from
anything it quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class MailtrapError(Exception):
    """Base class: ``status`` is the HTTP status (None when nothing answered)."""

    reason: ClassVar[str] = "Error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"


class InvalidToken(MailtrapError):
    """401: Mailtrap does not accept the token (``Incorrect API token``)."""

    reason = "InvalidToken"


class Forbidden(InvalidToken):
    """403: a valid token without access to this account (``Account access forbidden``).
    A kind of `InvalidToken`: the fix is the same, another token or account id."""


class NotFound(MailtrapError):
    """404: no such webhook in this account (or no such account path)."""

    reason = "NotFound"


class Rejected(MailtrapError):
    """422: Mailtrap refused the values; ``errors`` maps each field to its messages."""

    reason = "Rejected"

    def __init__(
        self, message: str, *, status: int | None = 422, errors: Mapping[str, tuple[str, ...]]
    ) -> None:
        super().__init__(message, status=status)
        self.errors = dict(errors)


class RateLimited(MailtrapError):
    """429, or the shared request budget ran dry before a request was sent.
    ``retry_after``: seconds until a request may go out again."""

    reason = "RateLimited"
    retryable = True

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unreachable(MailtrapError):
    """No usable answer: connection refused or reset, a timeout, or a 5xx."""

    reason = "Unreachable"
    retryable = True


class UnexpectedAnswer(MailtrapError):
    """An answer this client does not understand: another status (a redirect, 400,
    405), or a 2xx whose body is not the ``{"data": ...}`` it should be."""

    reason = "UnexpectedAnswer"
