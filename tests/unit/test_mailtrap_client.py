"""The Mailtrap Webhooks API client, against the fake API over loopback.

Each operation against the fake, each error as its typed exception, the request
budget (with a clock the test moves, and against the fake's real rate limit), the
vocabulary pinned to Mailtrap's published spec, and the token: never in a message,
a repr, a log line, or a request anywhere but the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web

from mailtrap_operator import logs
from mailtrap_operator.mailtrap import (
    EVENT_TYPES,
    PATCHABLE_FIELDS,
    PAYLOAD_FORMATS,
    SENDING_STREAMS,
    WEBHOOK_TYPES,
    Budgets,
    CreatedWebhook,
    Forbidden,
    InvalidToken,
    MailtrapClient,
    MailtrapError,
    NewWebhook,
    NotFound,
    RateLimited,
    Rejected,
    RequestBudget,
    UnexpectedAnswer,
    Unreachable,
    Webhook,
    WebhookChanges,
    api_event_types,
    api_url_from,
    check_api_url,
    differences,
)
from mailtrap_operator.mailtrap.budget import LIMIT, WINDOW
from tests.helpers.canary import canary, leaks
from tests.helpers.children import free_port
from tests.helpers.fake_mailtrap import FakeMailtrap
from tests.helpers.targets import RecordingTarget

NEW = NewWebhook(
    url="https://hooks.example.com/webhooks/mailtrap",
    webhook_type="email_sending",
    sending_stream="transactional",
    event_types=("delivery", "bounce", "soft_bounce"),
)


def client_of(fake: FakeMailtrap, **options: Any) -> MailtrapClient:
    """A client of the fake's account with its token; ``options`` override."""
    settings: dict[str, Any] = {
        "account_id": fake.account_id, "token": fake.token, "api_url": fake.url, "timeout": 10,
    }  # fmt: skip
    return MailtrapClient(**(settings | options))


@pytest.fixture
async def client(fake_mailtrap: FakeMailtrap) -> AsyncIterator[MailtrapClient]:
    async with client_of(fake_mailtrap) as api:
        yield api


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """An API that answers every request with ``handler``, on loopback; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _everything_about(error: BaseException) -> str:
    """What a log line, an Event or a status message could show of an error."""
    return " ".join([str(error), repr(error), repr(error.args), *map(str, vars(error).values())])


# --- the five operations ----------------------------------------------------------------


async def test_create_get_list_patch_delete(
    client: MailtrapClient, fake_mailtrap: FakeMailtrap
) -> None:
    assert await client.list_webhooks() == []
    created = await client.create_webhook(NEW)
    assert isinstance(created, CreatedWebhook)
    stored = fake_mailtrap.webhooks[created.id]
    assert created.signing_secret.get_secret_value() == stored.signing_secret
    assert (created.url, created.event_types) == (NEW.url, ("delivery", "bounce", "soft_bounce"))
    assert fake_mailtrap.api_calls[-1].body == {
        "webhook": {
            "url": NEW.url, "webhook_type": "email_sending", "active": True,
            "payload_format": "json", "sending_stream": "transactional",
            "event_types": ["delivery", "bounce", "soft_bounce"],
        }
    }  # fmt: skip
    fetched = await client.get_webhook(created.id)
    assert type(fetched) is Webhook
    assert fetched == Webhook(**created.model_dump(exclude={"signing_secret"}))
    assert await client.list_webhooks() == [fetched]

    changed = await client.update_webhook(
        created.id, WebhookChanges(active=False, event_types=["spam_complaint", "delivery"])
    )
    # Sent as given, in the table's order; nothing else.
    assert fake_mailtrap.api_calls[-1].body == {
        "webhook": {"active": False, "event_types": ["delivery", "spam_complaint"]}
    }
    assert (changed.active, changed.event_types) == (False, ("delivery", "spam_complaint"))

    deleted = await client.delete_webhook(created.id)
    assert deleted == changed
    assert await client.list_webhooks() == []
    with pytest.raises(NotFound) as raised:
        await client.delete_webhook(created.id)
    assert raised.value.status == 404
    assert [call.method for call in fake_mailtrap.api_calls] == [
        "GET", "POST", "GET", "GET", "PATCH", "DELETE", "GET", "DELETE",
    ]  # fmt: skip
    assert client.rate_limit == 150
    assert client.rate_remaining == 150 - len(fake_mailtrap.api_calls)


async def test_a_rejected_create_names_each_field(client: MailtrapClient) -> None:
    with pytest.raises(Rejected) as raised:
        await client.create_webhook(NewWebhook(url="ftp://x", webhook_type="email_sending"))
    error = raised.value
    assert error.errors == {
        "url": ("is invalid",),
        "event_types": ("can't be blank",),
        "sending_stream": ("can't be blank",),
    }
    assert str(error) == (
        "url: is invalid; event_types: can't be blank; sending_stream: can't be blank (HTTP 422)"
    )
    assert (error.reason, error.retryable) == ("Rejected", False)


async def test_an_empty_patch_is_refused_before_sending(
    client: MailtrapClient, fake_mailtrap: FakeMailtrap
) -> None:
    with pytest.raises(ValueError, match="at least one field"):
        await client.update_webhook(1, WebhookChanges())
    with pytest.raises(ValueError, match="not a webhook id"):
        await client.get_webhook(0)
    assert fake_mailtrap.api_calls == []


async def test_a_wrong_token_or_account(fake_mailtrap: FakeMailtrap) -> None:
    wrong = canary("wrong-mailtrap-token")
    async with client_of(fake_mailtrap, token=wrong) as api:
        with pytest.raises(InvalidToken) as raised:
            await api.list_webhooks()
    assert str(raised.value) == "Incorrect API token (HTTP 401)"
    assert (raised.value.reason, raised.value.retryable) == ("InvalidToken", False)
    assert leaks(_everything_about(raised.value)) == []
    async with client_of(fake_mailtrap, account_id=fake_mailtrap.account_id + 1) as api:
        with pytest.raises(Forbidden) as forbidden:
            await api.list_webhooks()
    assert isinstance(forbidden.value, InvalidToken)
    assert str(forbidden.value) == "Account access forbidden (HTTP 403)"


# --- what goes wrong on the way ---------------------------------------------------------


async def test_server_errors_drops_timeouts_and_nothing_listening_are_unreachable(
    fake_mailtrap: FakeMailtrap, client: MailtrapClient
) -> None:
    fake_mailtrap.faults.api_status = 502
    with pytest.raises(Unreachable) as raised:
        await client.list_webhooks()
    assert raised.value.status == 502
    assert raised.value.retryable
    fake_mailtrap.faults.api_status = None
    fake_mailtrap.faults.api_drop = True
    with pytest.raises(Unreachable, match="ServerDisconnectedError"):
        await client.list_webhooks()
    fake_mailtrap.faults.api_drop = False
    fake_mailtrap.faults.api_delay = 2.0
    async with client_of(fake_mailtrap, timeout=0.3) as impatient:
        with pytest.raises(Unreachable, match=r"no answer .* within 0.3 s") as timed_out:
            await impatient.list_webhooks()
    assert timed_out.value.status is None
    async with MailtrapClient(
        account_id=1, token=fake_mailtrap.token, api_url=f"http://127.0.0.1:{free_port()}"
    ) as nowhere:
        with pytest.raises(Unreachable, match="Cannot connect"):
            await nowhere.list_webhooks()


async def test_a_429_pauses_the_shared_budget_for_retry_after(
    fake_mailtrap: FakeMailtrap, client: MailtrapClient
) -> None:
    fake_mailtrap.faults.rate_limited, fake_mailtrap.faults.retry_after = 1, 3
    with pytest.raises(RateLimited) as raised:
        await client.list_webhooks()
    assert (raised.value.status, raised.value.retry_after) == (429, 3.0)
    assert raised.value.retryable
    assert 2.5 < client.budget.wait_time() <= 3.5
    calls = len(fake_mailtrap.api_calls)
    # Another client of the account, that will not wait that long, is told so without
    # a request going out.
    async with client_of(fake_mailtrap, budget=client.budget, budget_wait=0.5) as other:
        with pytest.raises(RateLimited) as budget_said:
            await other.list_webhooks()
    assert budget_said.value.status is None
    assert budget_said.value.retry_after > 2
    assert len(fake_mailtrap.api_calls) == calls


async def test_the_budget_keeps_many_clients_of_one_account_under_the_limit(
    fake_mailtrap: FakeMailtrap,
) -> None:
    # The fake allows 12 per second; the budget lets at most 3 + 8 out in any second.
    fake_mailtrap.rate_limit, fake_mailtrap.rate_window = 12, 1.0
    budgets = Budgets(burst=3, rate=8.0, window=1.0)
    shared = budgets.for_account(fake_mailtrap.url + "/", fake_mailtrap.account_id)
    assert budgets.for_account(fake_mailtrap.url, fake_mailtrap.account_id) is shared
    assert budgets.for_account(fake_mailtrap.url, fake_mailtrap.account_id + 1) is not shared
    clients = [client_of(fake_mailtrap, budget=shared) for _ in range(3)]
    started = time.monotonic()
    try:
        await asyncio.gather(*(api.list_webhooks() for api in clients for _ in range(7)))
    finally:
        await asyncio.gather(*(api.close() for api in clients))
    elapsed = time.monotonic() - started
    assert [call.status for call in fake_mailtrap.api_calls] == [200] * 21
    # 21 requests, 3 at once and 18 at 8/s: at least 2.25 s.
    assert elapsed >= 2.0


async def test_answers_it_does_not_understand(fake_mailtrap: FakeMailtrap) -> None:
    token = fake_mailtrap.token
    elsewhere = await RecordingTarget().start()
    answers: list[web.Response] = []

    async def handler(request: web.Request) -> web.Response:
        return answers.pop(0)

    try:
        async with (
            serving(handler) as url,
            MailtrapClient(account_id=5, token=token, api_url=url) as api,
        ):
            answers.append(web.Response(status=302, headers={"Location": elsewhere.url}))
            with pytest.raises(UnexpectedAnswer, match="redirected"):
                await api.list_webhooks()
            answers.append(web.Response(status=200, text="<html>maintenance</html>"))
            with pytest.raises(UnexpectedAnswer, match="not JSON: <html>maintenance"):
                await api.list_webhooks()
            answers.append(web.json_response({"webhooks": []}))
            with pytest.raises(UnexpectedAnswer, match="no data"):
                await api.list_webhooks()
            answers.append(web.json_response({"data": {"id": "three"}}))
            with pytest.raises(UnexpectedAnswer, match="not a webhook"):
                await api.get_webhook(3)
            answers.append(web.json_response({"errors": ["too", "vague"]}, status=422))
            with pytest.raises(Rejected) as rejected:
                await api.get_webhook(3)
            assert rejected.value.errors == {"base": ("too", "vague")}
            answers.append(web.Response(status=405))
            with pytest.raises(UnexpectedAnswer) as refused:
                await api.get_webhook(3)
            assert refused.value.status == 405
            later = email.utils.formatdate(time.time() + 120, usegmt=True)
            answers.append(web.json_response({}, status=429, headers={"Retry-After": later}))
            with pytest.raises(RateLimited) as limited:
                await api.get_webhook(3)
            assert 100 < limited.value.retry_after <= 121  # an HTTP date works too
    finally:
        await elsewhere.close()
    assert elsewhere.received == []  # the token never followed the redirect


@contextlib.contextmanager
def operator_logging() -> Iterator[None]:
    """The operator's logging, debug and JSON, undone afterwards for other tests."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure(log_format="json", level="debug")
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


async def test_the_token_is_never_in_what_the_client_says(
    fake_mailtrap: FakeMailtrap, capsys: pytest.CaptureFixture[str]
) -> None:
    token = fake_mailtrap.token

    # A server that quotes the request's Authorization header back in its errors, as
    # a misbehaving proxy might; the account id in the path is the status it answers.
    async def echo(request: web.Request) -> web.Response:
        said = request.headers["Authorization"]
        status = int(request.path.split("/")[3])
        body = {"errors": {"url": [said]}} if status == 422 else {"error": said}
        return web.json_response(body, status=status)

    with operator_logging():
        errors: list[MailtrapError] = []
        async with serving(echo) as url:
            for status in (401, 403, 404, 422, 429, 500):
                async with MailtrapClient(account_id=status, token=token, api_url=url) as api:
                    with pytest.raises(MailtrapError) as raised:
                        await api.list_webhooks()
                    errors.append(raised.value)
                    assert token not in repr(api)
        assert sorted(type(error).__name__ for error in errors) == sorted(
            ["InvalidToken", "Forbidden", "NotFound", "Rejected", "RateLimited", "Unreachable"]
        )
        assert any("[token]" in str(error) for error in errors)
        for error in errors:
            assert leaks(_everything_about(error), among=[token]) == [], error
        # And what the operations against the fake logged.
        async with client_of(fake_mailtrap) as api:
            created = await api.create_webhook(NEW)
            assert token not in repr(created) + str(created)
            assert created.signing_secret.get_secret_value() not in repr(created)
    out = capsys.readouterr()
    assert "mailtrap api" in out.out
    assert leaks(out.out + out.err, among=[token]) == []


# --- the budget on its own ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _budget(burst: int = 3, rate: float = 1.0) -> tuple[RequestBudget, Clock]:
    clock = Clock()
    return RequestBudget(burst=burst, rate=rate, window=10.0, clock=clock), clock


def test_the_bucket_empties_and_refills_at_its_rate() -> None:
    budget, clock = _budget()
    assert [budget.try_take() for _ in range(4)] == [True, True, True, False]
    assert budget.wait_time() == pytest.approx(1.0)
    clock.now += 1.0
    assert budget.available() == 1
    clock.now += 100.0
    assert budget.available() == 3  # never more than the burst


def test_what_mailtrap_says_bounds_the_bucket() -> None:
    budget, clock = _budget(burst=25, rate=10.0)
    budget.observe(remaining=4, retry_after=None)
    assert budget.available() == 4
    budget.observe(remaining=0, retry_after=None)  # used up elsewhere: a whole window
    assert budget.available() == 0
    assert budget.wait_time() == pytest.approx(10.1)
    clock.now += 10.5
    assert budget.available() == 5
    budget.observe(remaining=90, retry_after=30)
    assert budget.wait_time() == pytest.approx(30.1)


async def test_take_waits_within_max_wait_and_refuses_beyond() -> None:
    budget = RequestBudget(burst=1, rate=5.0)
    await budget.take(max_wait=0)
    started = time.monotonic()
    await budget.take(max_wait=5)
    assert time.monotonic() - started >= 0.15
    with pytest.raises(RateLimited) as raised:
        await budget.take(max_wait=0)
    assert raised.value.status is None
    assert 0 < raised.value.retry_after <= 0.25


def test_a_budget_needs_room() -> None:
    with pytest.raises(ValueError, match="burst"):
        RequestBudget(burst=0)


def test_the_default_budget_stays_under_mailtraps_limit_in_any_window() -> None:
    budget = RequestBudget()
    assert budget.burst + budget.rate * WINDOW < LIMIT


# --- the vocabulary and the request models -----------------------------------------------


def test_the_vocabulary_is_mailtraps_published_one() -> None:
    # email-sending.openapi.yml (mailtrap/mailtrap-openapi), components.schemas.Webhook
    # and the update request.
    assert set(WEBHOOK_TYPES) == {"email_sending", "campaigns", "audit_log", "inbound_receiving"}
    assert set(PAYLOAD_FORMATS) == {"json", "jsonlines"}
    assert set(SENDING_STREAMS) == {"transactional", "bulk"}
    assert set(EVENT_TYPES) == {
        "delivery", "soft_bounce", "bounce", "suspension", "unsubscribe", "open",
        "spam_complaint", "click", "reject",
    }  # fmt: skip
    assert set(PATCHABLE_FIELDS) == {
        "url", "active", "payload_format", "event_types", "inbound_inbox_id",
    }  # fmt: skip


def test_event_types_are_the_sending_events_once_in_order() -> None:
    assert api_event_types(["unsubscribe", "delivery", "unsubscribe"]) == (
        "delivery",
        "unsubscribe",
    )
    with pytest.raises(ValueError, match="not a sending event type: inbound, soft bounce"):
        api_event_types(["delivery", "soft bounce", "inbound"])
    with pytest.raises(ValueError, match="soft bounce"):
        NewWebhook(url="https://e.com", webhook_type="email_sending", event_types=["soft bounce"])
    with pytest.raises(ValueError, match="extra"):
        WebhookChanges(sending_stream="bulk")  # type: ignore[call-arg]


def test_answers_are_read_leniently() -> None:
    webhook = Webhook.model_validate(
        {
            "id": 2, "url": "https://e.com", "active": True, "webhook_type": "newsletters",
            "payload_format": "json", "event_types": None, "permissions": {"can_read": True},
        }
    )  # fmt: skip
    assert (webhook.webhook_type, webhook.event_types, webhook.sending_stream) == (
        "newsletters",
        (),
        None,
    )
    assert "signing_secret" not in webhook.wire()


@pytest.mark.parametrize(
    ("current", "desired", "patch", "fixed"),
    [
        ({}, {}, {}, ()),
        ({"active": False}, {}, {"active": True}, ()),
        (
            {"event_types": ("bounce", "delivery")},
            {"event_types": ("delivery", "bounce"), "url": "https://new.example.com"},
            {"url": "https://new.example.com"},
            (),
        ),
        ({}, {"event_types": ("delivery",)}, {"event_types": ("delivery",)}, ()),
        ({}, {"sending_stream": "bulk", "payload_format": "jsonlines"},
         {"payload_format": "jsonlines"}, ("sending_stream",)),
        ({"domain_id": 435}, {}, {}, ("domain_id",)),
    ],
)  # fmt: skip
def test_differences_split_what_patch_can_change_from_what_it_cannot(
    current: dict[str, Any], desired: dict[str, Any], patch: dict[str, Any], fixed: tuple[str, ...]
) -> None:
    base = NEW.model_dump()
    answer = Webhook(id=1, **{**base, **current})
    changes, needs_new = differences(answer, NewWebhook(**{**base, **desired}))
    assert changes.model_dump(exclude_none=True) == patch
    assert needs_new == fixed


def test_inbound_inbox_changes_are_patched_unless_back_to_every_inbox() -> None:
    inbound = {"url": "https://e.com", "webhook_type": "inbound_receiving"}
    current = Webhook(id=1, active=True, payload_format="json", inbound_inbox_id=1, **inbound)
    changes, fixed = differences(current, NewWebhook(inbound_inbox_id=2, **inbound))
    assert (changes.model_dump(exclude_none=True), fixed) == ({"inbound_inbox_id": 2}, ())
    changes, fixed = differences(current, NewWebhook(**inbound))
    assert (bool(changes), fixed) == (False, ("inbound_inbox_id",))


# --- the base URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://mailtrap.io", "https://mailtrap.io"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        (" https://proxy.internal/mailtrap/ ", "https://proxy.internal/mailtrap"),
    ],
)
def test_api_urls(text: str, expected: str) -> None:
    assert check_api_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "mailtrap.io",
        "ftp://mailtrap.io",
        "https://",
        "https://u:p@mailtrap.io",
        "https://m.io/?a=1",
    ],
)
def test_bad_api_urls(text: str) -> None:
    with pytest.raises(ValueError, match="URL") as raised:
        check_api_url(text)
    assert "u:p" not in str(raised.value)


def test_api_url_from_the_environment() -> None:
    assert api_url_from({}) == "https://mailtrap.io"
    assert api_url_from({"MAILTRAP_API_URL": " "}) == "https://mailtrap.io"
    assert api_url_from({"MAILTRAP_API_URL": "http://127.0.0.1:1"}) == "http://127.0.0.1:1"


def test_a_client_needs_an_account_and_a_token() -> None:
    with pytest.raises(ValueError, match="account id"):
        MailtrapClient(account_id=0, token="t")
    with pytest.raises(ValueError, match="empty"):
        MailtrapClient(account_id=1, token=" ")
    with pytest.raises(ValueError, match="whitespace") as raised:
        MailtrapClient(account_id=1, token="two\nlines")
    assert "two" not in str(raised.value)
    # A token read from a file keeps its newline: that is not part of it.
    assert MailtrapClient(account_id=1, token="token\n")._token.get_secret_value() == "token"
