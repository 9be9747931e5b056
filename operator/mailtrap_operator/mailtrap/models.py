"""The webhook object of Mailtrap's Webhooks API: what requests send, what answers hold.

`client` sends `NewWebhook` (``POST``) and `WebhookChanges` (``PATCH``) wrapped in
``{"webhook": {...}}`` and reads answers into `Webhook`, or `CreatedWebhook` for the
one answer that carries the signing secret. The fake API in
``tests/helpers/fake_mailtrap.py`` validates requests with the same vocabulary, and
``tests/unit/test_mailtrap_client.py`` pins that vocabulary to Mailtrap's published
OpenAPI spec, so a wrong value here cannot hide behind the fake.

Event names: the API's ``event_types`` are not the names Mailtrap puts in a
payload's ``event`` field. Mailtrap's OpenAPI spec (``email-sending.openapi.yml``),
its PHP SDK and its MCP server all list ``delivery, soft_bounce, bounce, suspension,
unsubscribe, open, spam_complaint, click, reject``: exactly our canonical names of
the sending family, while payloads say ``soft bounce`` and ``spam``. So the API's
event types are taken from `mailtrap_receiver.events` (its one table of names and
families) as they are, and what the sender puts in payloads is
`events.preferred_wire_name`.

Answers are read leniently (unknown fields ignored, a new webhook type or event name
kept as text) so that Mailtrap adding something never breaks listing; requests are
strict, so the operator never sends what Mailtrap would refuse for a reason we know.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mailtrap_receiver.events import FAMILIES

WebhookType = Literal["email_sending", "campaigns", "audit_log", "inbound_receiving"]
PayloadFormat = Literal["json", "jsonlines"]
SendingStream = Literal["transactional", "bulk"]

WEBHOOK_TYPES: Final[tuple[WebhookType, ...]] = get_args(WebhookType)
PAYLOAD_FORMATS: Final[tuple[PayloadFormat, ...]] = get_args(PayloadFormat)
SENDING_STREAMS: Final[tuple[SendingStream, ...]] = get_args(SendingStream)
# What ``event_types`` may hold (see the module docstring): the sending family.
EVENT_TYPES: Final[tuple[str, ...]] = tuple(
    name for name, family in FAMILIES.items() if family == "sending"
)
# What ``PATCH`` changes. Anything else (webhook_type, sending_stream, domain_id) is
# fixed at creation: changing it takes a new webhook.
PATCHABLE_FIELDS: Final = ("url", "active", "payload_format", "event_types", "inbound_inbox_id")


def api_event_types(names: Any) -> tuple[str, ...]:
    """Canonical event names as the API's ``event_types``: the sending ones, each once,
    in the table's order; ValueError names any other."""
    wanted = list(names)
    unknown = sorted({str(name) for name in wanted} - set(EVENT_TYPES))
    if unknown:
        raise ValueError(
            f"not a sending event type: {', '.join(unknown)} "
            f"(Mailtrap's event_types are {', '.join(EVENT_TYPES)})"
        )
    return tuple(name for name in EVENT_TYPES if name in wanted)


class Webhook(BaseModel):
    """One webhook as Mailtrap answers it (``data`` of GET, PATCH and DELETE)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int
    url: str
    active: bool
    webhook_type: str
    payload_format: str
    sending_stream: str | None = None
    domain_id: int | None = None
    inbound_inbox_id: int | None = None
    event_types: tuple[str, ...] = ()

    @field_validator("event_types", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # Webhook types without events leave the field out or null.
        return () if value is None else value

    def wire(self) -> dict[str, Any]:
        """The object in Mailtrap's own shape (what ``mailtrap list -o json`` prints)."""
        return self.model_dump(mode="json", exclude={"signing_secret"})


class CreatedWebhook(Webhook):
    """The answer to ``POST``: the only one that holds the signing secret."""

    signing_secret: SecretStr


class NewWebhook(BaseModel):
    """What ``POST`` sends. Which fields each webhook type needs is Mailtrap's to say
    (a 422, `errors.Rejected`); here only each value's own form is checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    webhook_type: WebhookType
    active: bool = True
    payload_format: PayloadFormat = "json"
    sending_stream: SendingStream | None = None
    event_types: tuple[str, ...] | None = None
    domain_id: int | None = None
    inbound_inbox_id: int | None = None

    @field_validator("event_types")
    @classmethod
    def _sending_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else api_event_types(value)

    def body(self) -> dict[str, Any]:
        return {"webhook": self.model_dump(mode="json", exclude_none=True)}


class WebhookChanges(BaseModel):
    """What ``PATCH`` sends: only `PATCHABLE_FIELDS`, only those given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = Field(default=None, min_length=1)
    active: bool | None = None
    payload_format: PayloadFormat | None = None
    event_types: tuple[str, ...] | None = None
    inbound_inbox_id: int | None = None

    @field_validator("event_types")
    @classmethod
    def _sending_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else api_event_types(value)

    def __bool__(self) -> bool:
        return bool(self.model_dump(exclude_none=True))

    def body(self) -> dict[str, Any]:
        return {"webhook": self.model_dump(mode="json", exclude_none=True)}


def differences(current: Webhook, desired: NewWebhook) -> tuple[WebhookChanges, tuple[str, ...]]:
    """What ``PATCH`` must change to make ``current`` what ``desired`` says, and the
    fields that differ but cannot be patched (they take a new webhook)."""
    changes: dict[str, Any] = {}
    for field in ("url", "active", "payload_format"):
        if getattr(current, field) != getattr(desired, field):
            changes[field] = getattr(desired, field)
    wanted_events = desired.event_types or ()
    if set(current.event_types) != set(wanted_events) and desired.event_types is not None:
        changes["event_types"] = wanted_events
    fixed = [
        field
        for field in ("webhook_type", "sending_stream", "domain_id")
        if getattr(current, field) != getattr(desired, field)
    ]
    if current.inbound_inbox_id != desired.inbound_inbox_id:
        # PATCH can move a webhook to another inbox, not back to "every inbox" (null).
        if desired.inbound_inbox_id is None:
            fixed.append("inbound_inbox_id")
        else:
            changes["inbound_inbox_id"] = desired.inbound_inbox_id
    return WebhookChanges(**changes), tuple(fixed)
