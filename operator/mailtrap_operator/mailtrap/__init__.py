"""Mailtrap's side of a webhook: a client of its Webhooks API and the CLI around it.

- `models`: the webhook object as requests send it and answers hold it, and the
  API's event type names (from `mailtrap_receiver.events`);
- `errors`: one exception per way a request can fail, each with a condition reason;
- `budget`: the request budget all resources of one account share (rate limit);
- `client`: `MailtrapClient`, the five requests over aiohttp, nothing else;
- `commands`: ``mailtrap-operator mailtrap list|delete``, what exists on Mailtrap's
  side, to find and remove orphans.

The reconcile of a ``MailtrapWebhook``'s ``spec.mailtrap`` builds on these and
lives apart from the child builders. ``tests/helpers/fake_mailtrap.py`` is the
faithful fake of the API the tests and ``make dev`` run against.
"""

from .budget import Budgets, RequestBudget
from .client import API_URL_ENV, DEFAULT_API_URL, MailtrapClient, api_url_from, check_api_url
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
from .models import (
    EVENT_TYPES,
    PATCHABLE_FIELDS,
    PAYLOAD_FORMATS,
    SENDING_STREAMS,
    WEBHOOK_TYPES,
    CreatedWebhook,
    NewWebhook,
    Webhook,
    WebhookChanges,
    api_event_types,
    differences,
)

__all__ = [
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "EVENT_TYPES",
    "PATCHABLE_FIELDS",
    "PAYLOAD_FORMATS",
    "SENDING_STREAMS",
    "WEBHOOK_TYPES",
    "Budgets",
    "CreatedWebhook",
    "Forbidden",
    "InvalidToken",
    "MailtrapClient",
    "MailtrapError",
    "NewWebhook",
    "NotFound",
    "RateLimited",
    "Rejected",
    "RequestBudget",
    "UnexpectedAnswer",
    "Unreachable",
    "Webhook",
    "WebhookChanges",
    "api_event_types",
    "api_url_from",
    "check_api_url",
    "differences",
]
