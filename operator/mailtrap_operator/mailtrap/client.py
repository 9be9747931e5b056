"""A small async client of Mailtrap's Webhooks API: list, get, create, patch, delete.

Only the API I/O lives here. The base URL is a setting (``MAILTRAP_API_URL``,
default `DEFAULT_API_URL`) so that tests, proxies and mirrors can stand in for
Mailtrap; requests go to ``{base}/api/accounts/{account_id}/webhooks[/{id}]`` with
``Authorization: Bearer <token>``, bodies are ``{"webhook": {...}}`` (`models`) and
answers ``{"data": ...}``. Every failure is one of `errors` (401 `InvalidToken`, 403
`Forbidden`, 404 `NotFound`, 422 `Rejected` with Mailtrap's per-field messages, 429
`RateLimited` with ``Retry-After``, `Unreachable` for connection errors, timeouts
and 5xx). There are no retries here: the caller decides, with ``retryable`` and
``retry_after``. Each request first takes one from the account's shared
`budget.RequestBudget` and reports the answer's rate-limit headers back to it.

Why not Mailtrap's official Python SDK (``mailtrap`` on PyPI, which has a webhooks
API): it is synchronous (``requests``), so every call would block kopf's event loop
or need a thread; it builds ``https://{host}/...`` itself, so no plain-HTTP test
server or path prefix can stand in for Mailtrap; it raises one generic ``APIError``
with the messages flattened into text (no 404, 422 fields or 429 to act on) and
drops the ``X-Ratelimit-*`` and ``Retry-After`` headers a shared budget needs. What
it would save is five small requests over aiohttp, which the project already uses.

The token never leaves this module except in the ``Authorization`` header of a
request to the configured base URL: redirects are not followed (a redirect would
carry it elsewhere), it is not in `repr`, and every error message is built from the
answer alone with the token scrubbed from anything quoted.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, SecretStr, ValidationError

from .. import __version__, logs
from .budget import RequestBudget
from .errors import (
    Forbidden,
    InvalidToken,
    MailtrapError,
    NotFound,
    RateLimited,
    Rejected,
    UnexpectedAnswer,
    Unreachable,
)
from .models import CreatedWebhook, NewWebhook, Webhook, WebhookChanges

DEFAULT_API_URL: Final = "https://mailtrap.io"
API_URL_ENV: Final = "MAILTRAP_API_URL"
DEFAULT_TIMEOUT: Final = 30.0
# How long a request may wait for the shared budget before it gives up (RateLimited).
DEFAULT_BUDGET_WAIT: Final = 15.0
USER_AGENT: Final = f"mailtrap-webhook-operator/{__version__}"
_QUOTED_BODY_LIMIT: Final = 300

log = logs.get_logger(__name__)

Model = TypeVar("Model", bound=BaseModel)


def check_api_url(text: str) -> str:
    """A Mailtrap API base URL without its trailing slash; ValueError says what is wrong."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    # Quoted without any credentials it holds: those must not reach a log or an Event.
    shown = repr(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http(s) URL with a host")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{shown}: the API URL takes no query, fragment or credentials")
    return url


def api_url_from(environ: Mapping[str, str]) -> str:
    """``$MAILTRAP_API_URL`` when set and not empty, else `DEFAULT_API_URL`."""
    return environ.get(API_URL_ENV, "").strip() or DEFAULT_API_URL


class MailtrapClient:
    """The Webhooks API of one Mailtrap account, through one API token."""

    def __init__(
        self,
        *,
        account_id: int,
        token: str | SecretStr,
        api_url: str = DEFAULT_API_URL,
        budget: RequestBudget | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        budget_wait: float = DEFAULT_BUDGET_WAIT,
    ) -> None:
        if isinstance(account_id, bool) or not isinstance(account_id, int) or account_id < 1:
            raise ValueError("a Mailtrap account id is a positive integer")
        value = (token.get_secret_value() if isinstance(token, SecretStr) else token).strip()
        if not value or any(char.isspace() for char in value):
            raise ValueError("the Mailtrap API token is empty or holds whitespace")
        self._token = SecretStr(value)
        self.account_id = account_id
        self.api_url = check_api_url(api_url)
        self.budget = budget if budget is not None else RequestBudget()
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._budget_wait = budget_wait
        # What the last answer said about the rate limit, for status and metrics.
        self.rate_limit: int | None = None
        self.rate_remaining: int | None = None

    def __repr__(self) -> str:
        return f"MailtrapClient(api_url={self.api_url!r}, account_id={self.account_id})"

    async def __aenter__(self) -> MailtrapClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session, if this client made it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the five operations ------------------------------------------------------

    async def list_webhooks(self) -> list[Webhook]:
        data = await self._request("GET", "")
        return [self._parse(Webhook, item) for item in self._expect(data, list)]

    async def get_webhook(self, webhook_id: int) -> Webhook:
        return self._parse(Webhook, await self._request("GET", self._id_path(webhook_id)))

    async def create_webhook(self, webhook: NewWebhook) -> CreatedWebhook:
        """Create a webhook; the answer holds the signing secret, which Mailtrap
        never shows again."""
        data = await self._request("POST", "", body=webhook.body())
        return self._parse(CreatedWebhook, data)

    async def update_webhook(self, webhook_id: int, changes: WebhookChanges) -> Webhook:
        if not changes:
            raise ValueError("a PATCH needs at least one field to change")
        data = await self._request("PATCH", self._id_path(webhook_id), body=changes.body())
        return self._parse(Webhook, data)

    async def delete_webhook(self, webhook_id: int) -> Webhook:
        """Delete a webhook; the answer is the webhook as it was."""
        return self._parse(Webhook, await self._request("DELETE", self._id_path(webhook_id)))

    # --- HTTP ---------------------------------------------------------------------

    @staticmethod
    def _id_path(webhook_id: int) -> str:
        if isinstance(webhook_id, bool) or not isinstance(webhook_id, int) or webhook_id < 1:
            raise ValueError(f"{webhook_id!r} is not a webhook id")
        return f"/{webhook_id}"

    @property
    def _base(self) -> str:
        return f"{self.api_url}/api/accounts/{self.account_id}/webhooks"

    def _scrub(self, text: str) -> str:
        token = self._token.get_secret_value()
        return text.replace(token, "[token]") if token else text

    def _session_for_request(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _request(self, method: str, path: str, *, body: Any = None) -> Any:
        """Send one request; the answer's ``data``, or one of `errors`."""
        await self.budget.take(max_wait=self._budget_wait)
        what = f"{method} /api/accounts/{self.account_id}/webhooks{path}"
        headers = {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            async with self._session_for_request().request(
                method,
                self._base + path,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                answer_headers = response.headers
        except TimeoutError:
            raise Unreachable(
                f"{what}: no answer from {self.api_url} within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as error:
            # Named by type and text only: aiohttp's errors can hold the request's
            # headers, and with them the token.
            detail = self._scrub(str(error)) or type(error).__name__
            raise Unreachable(f"{what}: {type(error).__name__}: {detail}") from None
        remaining = _int_header(answer_headers, "X-Ratelimit-Remaining")
        self.rate_limit = _int_header(answer_headers, "X-Ratelimit-Limit") or self.rate_limit
        self.rate_remaining = remaining if remaining is not None else self.rate_remaining
        retry_after = _retry_after(answer_headers) if status == 429 else None
        self.budget.observe(remaining=remaining, retry_after=retry_after)
        log.debug(
            "mailtrap api",
            request=what,
            status=status,
            ratelimit_remaining=remaining,
            seconds=round(time.monotonic() - started, 3),
        )
        if 200 <= status < 300:
            decoded = self._decode(raw, what=what, status=status)
            if not isinstance(decoded, dict) or "data" not in decoded:
                raise UnexpectedAnswer(f"{what}: the answer has no data", status=status)
            return decoded["data"]
        raise self._error(what, status, raw, answer_headers, retry_after)

    def _decode(self, raw: bytes, *, what: str, status: int) -> Any:
        try:
            return orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            raise UnexpectedAnswer(
                f"{what}: the answer is not JSON: {self._quote(raw)}", status=status
            ) from None

    def _quote(self, raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").strip()
        if len(text) > _QUOTED_BODY_LIMIT:
            text = text[:_QUOTED_BODY_LIMIT] + "..."
        return self._scrub(text)

    def _error(
        self,
        what: str,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        retry_after: float | None,
    ) -> MailtrapError:
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            body = None
        said = self._scrub(_said(body)) if body is not None else self._quote(raw)
        if status == 401:
            return InvalidToken(said or "Mailtrap refused the API token", status=status)
        if status == 403:
            return Forbidden(said or "the API token may not use this account", status=status)
        if status == 404:
            return NotFound(f"{what}: {said or 'Not Found'}", status=status)
        if status == 422:
            fields = {
                field: tuple(self._scrub(text) for text in messages)
                for field, messages in _field_errors(body).items()
            }
            message = "; ".join(
                f"{field}: {', '.join(messages)}" if field != "base" else ", ".join(messages)
                for field, messages in fields.items()
            )
            return Rejected(message or said or "invalid", errors=fields)
        if status == 429:
            wait = retry_after if retry_after is not None else self.budget.window
            return RateLimited(
                f"{what}: {said or 'Rate limit exceeded'}; retry in {wait:g} s",
                retry_after=wait,
            )
        if status >= 500:
            return Unreachable(f"{what}: {said or 'server error'}", status=status)
        if 300 <= status < 400:
            location = headers.get("Location", "")
            return UnexpectedAnswer(
                f"{what}: redirected to {self._scrub(location)!r}, which is not followed "
                "(set the API URL to where the API is)",
                status=status,
            )
        return UnexpectedAnswer(f"{what}: {said or 'unexpected answer'}", status=status)

    def _parse(self, model: type[Model], data: Any) -> Model:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                for item in error.errors(include_input=False, include_url=False)
            )
            raise UnexpectedAnswer(
                f"the answer is not a webhook as expected: {self._scrub(problems)}"
            ) from None

    @staticmethod
    def _expect(data: Any, kind: type) -> Any:
        if not isinstance(data, kind):
            raise UnexpectedAnswer(f"the answer's data is not a {kind.__name__}")
        return data


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _said(body: Any) -> str:
    """Mailtrap's words in an error body: ``{"error": ...}`` or ``{"errors": ...}``."""
    if not isinstance(body, dict):
        return str(body)[:_QUOTED_BODY_LIMIT]
    for key in ("error", "errors"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        if isinstance(value, dict):
            return "; ".join(f"{field}: {messages}" for field, messages in value.items())
    return ""


def _field_errors(body: Any) -> dict[str, tuple[str, ...]]:
    """A 422's ``errors`` as field -> messages. Mailtrap sends an object of lists
    (``{"url": ["can't be blank"]}``); a bare string or list goes under ``base``."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        return {
            str(field): tuple(str(text) for text in (items if isinstance(items, list) else [items]))
            for field, items in errors.items()
        }
    if isinstance(errors, list):
        return {"base": tuple(str(item) for item in errors)}
    if isinstance(errors, str):
        return {"base": (errors,)}
    return {}
