"""The fake Mailtrap, pinned to what Mailtrap documents and was recorded answering.

Requests here are raw HTTP (aiohttp), not our client, so the fake is checked on its
own: the bodies, statuses, headers and error messages below are those of Mailtrap's
OpenAPI spec (``email-sending.openapi.yml``) and of the answers its Ruby SDK recorded
against the real API (``spec/fixtures/vcr_cassettes/Mailtrap_WebhooksAPI``). Then the
sender: signed batches in each payload format that the real receiver accepts,
routing by type, stream and event, retries, pausing, and the UI edits and faults
tests use.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from mailtrap_receiver.auth import signature_matches
from mailtrap_receiver.events import Event, classify
from mailtrap_receiver.parsing import parse_events
from tests.helpers.children import free_port
from tests.helpers.fake_mailtrap import FakeMailtrap, running_fake_mailtrap
from tests.helpers.targets import RecordingTarget
from tests.unit.conftest import MakeReceiver

# The request of the recorded create (Ruby SDK cassette), pointed at our target.
SENDING = {
    "webhook_type": "email_sending",
    "payload_format": "json",
    "sending_stream": "transactional",
    "event_types": ["delivery", "bounce"],
}
ANSWER_FIELDS = [
    "id", "url", "active", "webhook_type", "payload_format", "sending_stream",
    "domain_id", "inbound_inbox_id", "event_types",
]  # fmt: skip


class Api:
    """Raw requests to the fake's API with a token (a test's own HTTP client)."""

    def __init__(self, fake: FakeMailtrap, session: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.session = session
        self.base = f"{fake.url}/api/accounts/{fake.account_id}/webhooks"

    async def call(
        self,
        method: str,
        path: str = "",
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        base: str | None = None,
    ) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.fake.token if token is None else token}"}
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        async with self.session.request(
            method, (base or self.base) + path, data=data, headers=headers
        ) as response:
            text = await response.read()
            return response.status, orjson.loads(text), response.headers

    async def create(self, **fields: Any) -> dict[str, Any]:
        status, body, _ = await self.call("POST", body={"webhook": fields})
        assert status == 200, body
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture
async def api(fake_mailtrap: FakeMailtrap) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Api(fake_mailtrap, session)


# --- the API's shapes -----------------------------------------------------------------


async def test_create_answers_the_recorded_shape_with_the_secret_once(api: Api) -> None:
    status, body, headers = await api.call(
        "POST", body={"webhook": {"url": "https://example.com/mailtrap/webhooks", **SENDING}}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert (headers["X-Ratelimit-Limit"], headers["X-Ratelimit-Remaining"]) == ("150", "149")
    data = body["data"]
    # As recorded: the secret first, then the webhook's fields.
    assert list(data) == ["signing_secret", *ANSWER_FIELDS]
    assert re.fullmatch(r"[0-9a-f]{32}", data["signing_secret"])
    assert data | {"id": 0, "signing_secret": ""} == {
        "signing_secret": "", "id": 0, "url": "https://example.com/mailtrap/webhooks",
        "active": True, "webhook_type": "email_sending", "payload_format": "json",
        "sending_stream": "transactional", "domain_id": None, "inbound_inbox_id": None,
        "event_types": ["delivery", "bounce"],
    }  # fmt: skip
    for path in ("", f"/{data['id']}"):
        status, again, _ = await api.call("GET", path)
        assert status == 200
        assert "signing_secret" not in orjson.dumps(again).decode()
    _, listed, _ = await api.call("GET")
    assert listed == {"data": [{key: data[key] for key in ANSWER_FIELDS}]}


async def test_the_recorded_validation_error(api: Api) -> None:
    # The exact request and answer of the Ruby SDK's recorded 422.
    status, body, headers = await api.call(
        "POST", body={"webhook": {"url": "", "webhook_type": "email_sending"}}
    )
    assert status == 422
    assert body == {
        "errors": {
            "url": ["can't be blank", "is invalid"],
            "event_types": ["can't be blank"],
            "sending_stream": ["can't be blank"],
        }
    }
    assert "X-Ratelimit-Remaining" in headers
    assert api.fake.webhooks == {}


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"url": "ftp://example.com/x", **SENDING},
            {"url": ["is invalid"]},
        ),
        (
            {"url": "https://e.com/", "webhook_type": "sms"},
            {"webhook_type": [
                "is invalid. Allowed values: email_sending, campaigns, audit_log, "
                "inbound_receiving."
            ]},
        ),
        (
            {**SENDING, "url": "https://e.com/", "sending_stream": "marketing"},
            {"sending_stream": ["is invalid. Allowed values: transactional, bulk."]},
        ),
        (
            # The payload's spelling is not the API's: event_types use soft_bounce.
            {**SENDING, "url": "https://e.com/", "event_types": ["delivery", "soft bounce"]},
            {"event_types": [
                "is invalid. Allowed values: delivery, bounce, soft_bounce, open, click, "
                "unsubscribe, spam_complaint, suspension, reject."
            ]},
        ),
        (
            {**SENDING, "url": "https://e.com/", "payload_format": "xml"},
            {"payload_format": ["is invalid. Allowed values: json, jsonlines."]},
        ),
        (
            {"url": "https://e.com/", "webhook_type": "campaigns"},
            {"event_types": ["can't be blank"]},
        ),
        (
            {"url": "https://e.com/", "webhook_type": "audit_log",
             "sending_stream": "bulk", "domain_id": 435, "event_types": ["delivery"]},
            {"event_types": ["must be blank"], "sending_stream": ["must be blank"],
             "domain_id": ["must be blank"]},
        ),
        (
            {**SENDING, "url": "https://e.com/", "inbound_inbox_id": 42},
            {"inbound_inbox_id": ["must be blank"]},
        ),
        (
            {"url": "https://e.com/", "webhook_type": "inbound_receiving", "active": "yes"},
            {"active": ["is invalid"]},
        ),
    ],
)  # fmt: skip
async def test_create_validates_each_field_by_webhook_type(
    api: Api, fields: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    status, body, _ = await api.call("POST", body={"webhook": fields})
    assert (status, body) == (422, {"errors": errors})


async def test_the_other_types_answer_as_recorded(api: Api) -> None:
    # The Ruby SDK's recorded inbound_receiving create.
    inbound = await api.create(
        url="https://example.com/mailtrap/inbound",
        webhook_type="inbound_receiving",
        payload_format="json",
        inbound_inbox_id=42,
    )
    assert {key: inbound[key] for key in ANSWER_FIELDS if key != "id"} == {
        "url": "https://example.com/mailtrap/inbound", "active": True,
        "webhook_type": "inbound_receiving", "payload_format": "json",
        "sending_stream": None, "domain_id": None, "inbound_inbox_id": 42, "event_types": [],
    }  # fmt: skip
    audit = await api.create(url="https://example.com/audit", webhook_type="audit_log")
    assert (audit["event_types"], audit["payload_format"], audit["active"]) == ([], "json", True)
    assert inbound["signing_secret"] != audit["signing_secret"]


async def test_patch_changes_what_it_may_and_ignores_what_is_fixed(api: Api) -> None:
    created = await api.create(url="https://example.com/a", **SENDING, domain_id=435)
    path = f"/{created['id']}"
    status, body, _ = await api.call(
        "PATCH",
        path,
        {"webhook": {"active": False, "event_types": ["delivery", "bounce", "unsubscribe"]}},
    )
    assert status == 200
    assert (body["data"]["active"], body["data"]["event_types"]) == (
        False, ["delivery", "bounce", "unsubscribe"],
    )  # fmt: skip
    assert "signing_secret" not in body["data"]
    # Fixed at creation: a PATCH of them is accepted and changes nothing.
    status, body, _ = await api.call(
        "PATCH",
        path,
        {"webhook": {"sending_stream": "bulk", "webhook_type": "audit_log", "domain_id": 1}},
    )
    assert status == 200
    fixed = ("sending_stream", "webhook_type", "domain_id")
    assert [body["data"][key] for key in fixed] == ["transactional", "email_sending", 435]
    status, body, _ = await api.call("PATCH", path, {"webhook": {"url": "", "event_types": []}})
    errors = {"url": ["can't be blank", "is invalid"], "event_types": ["can't be blank"]}
    assert (status, body) == (422, {"errors": errors})
    assert api.fake.webhooks[created["id"]].url == "https://example.com/a"


async def test_unknown_ids_bad_tokens_and_bad_bodies(api: Api) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        body = {"webhook": {"active": False}} if method == "PATCH" else None
        assert (await api.call(method, "/999", body))[:2] == (404, {"error": "Not Found"})
    status, body, headers = await api.call("GET", token="not-a-token")
    assert (status, body) == (401, {"error": "Incorrect API token"})
    assert headers["WWW-Authenticate"] == 'Token realm="Application"'
    assert headers["X-Ratelimit-Limit"] == "150"
    other_account = f"{api.fake.url}/api/accounts/{api.fake.account_id + 1}/webhooks"
    status, body, _ = await api.call("GET", base=other_account)
    assert (status, body) == (403, {"errors": "Account access forbidden"})
    assert (await api.call("POST", raw=b"{not json"))[:2] == (400, {"error": "Bad Request"})
    assert (await api.call("POST", body={"url": "https://e.com"}))[0] == 400
    # The spec's other way to pass the token.
    async with api.session.get(api.base, headers={"Api-Token": api.fake.token}) as response:
        assert response.status == 200


async def test_delete_answers_the_webhook_and_it_is_gone(api: Api) -> None:
    created = await api.create(url="https://example.com/a", **SENDING)
    status, body, _ = await api.call("DELETE", f"/{created['id']}")
    assert status == 200
    assert body == {"data": {key: created[key] for key in ANSWER_FIELDS}}
    assert (await api.call("GET", f"/{created['id']}"))[0] == 404
    assert (await api.call("GET"))[1] == {"data": []}


async def test_the_rate_limit_answers_429_until_the_window_ends(api: Api) -> None:
    api.fake.rate_limit, api.fake.rate_window = 3, 1.5
    remaining = [(await api.call("GET"))[2]["X-Ratelimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    status, body, headers = await api.call("GET")
    assert (status, body) == (429, {"errors": "Rate limit exceeded"})
    assert headers["X-Ratelimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 2
    # Per token: another token has its own window (and still gets its 401).
    assert (await api.call("GET", token="someone-else"))[0] == 401
    await asyncio.sleep(int(headers["Retry-After"]) + 0.1)
    assert (await api.call("GET"))[0] == 200
    # Every request was counted and answered; none went unrecorded.
    assert [call.status for call in api.fake.api_calls] == [200, 200, 200, 429, 401, 200]


async def test_faults_make_the_api_fail_as_asked(api: Api) -> None:
    api.fake.faults.api_status = 503
    async with api.session.get(api.base) as response:
        assert response.status == 503
        assert response.content_type == "text/html"
    api.fake.faults.api_status = None
    api.fake.faults.api_drop = True
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.call("GET")
    api.fake.faults.api_drop = False
    api.fake.faults.rate_limited, api.fake.faults.retry_after = 1, 7
    status, _, headers = await api.call("GET")
    assert (status, headers["Retry-After"]) == (429, "7")
    assert (await api.call("GET"))[0] == 200


# --- the sender -----------------------------------------------------------------------


def _received_events(target: RecordingTarget, index: int) -> list[Event]:
    received = target.received[index]
    parsed = parse_events(received.body, content_type=received.headers.get("Content-Type"))
    events = [classify(item) for item in parsed]
    assert all(isinstance(event, Event) for event in events), events
    return [event for event in events if isinstance(event, Event)]


@pytest.mark.parametrize(
    ("payload_format", "content_type"),
    [("json", "application/json"), ("jsonlines", "application/jsonl")],
)
async def test_sends_signed_batches_in_the_webhooks_format(
    api: Api, target: RecordingTarget, payload_format: str, content_type: str
) -> None:
    events = ["delivery", "soft_bounce", "spam_complaint"]
    created = await api.create(url=target.url, **(SENDING | {"event_types": events}))
    if payload_format != "json":
        await api.call(
            "PATCH", f"/{created['id']}", {"webhook": {"payload_format": payload_format}}
        )
    sent = await api.fake.emit(["delivery", "soft_bounce", "spam_complaint", "open"], count=2)
    await api.fake.drain()
    assert len(target.received) == 1
    received = target.received[0]
    assert received.headers["Content-Type"] == content_type
    assert signature_matches(
        received.body, received.headers["Mailtrap-Signature"], [created["signing_secret"].encode()]
    )
    if payload_format == "json":
        assert list(orjson.loads(received.body)) == ["events"]
    else:
        assert len(received.body.splitlines()) == 6
    events = _received_events(target, 0)
    # The payload's own spellings, which the receiver maps back to canonical names.
    wires = sorted({event.data["event"] for event in events})
    assert wires == ["delivery", "soft bounce", "spam"]
    assert [event.name for event in events].count("spam_complaint") == 2
    opens = [key for key in sent if api.fake.emitted[key].event["event"] == "open"]
    assert api.fake.lost() == api.fake.unrouted() == opens
    assert api.fake.acknowledged(created["id"]) == set(sent) - set(opens)


async def test_routes_by_type_stream_event_inbox_and_activity(
    api: Api, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    transactional = await api.create(url=target.url, **SENDING)
    bulk = await api.create(url=target.url, **(SENDING | {"sending_stream": "bulk"}))
    inbound = await api.create(
        url=second_target.url, webhook_type="inbound_receiving", inbound_inbox_id=42
    )
    audit = await api.create(url=second_target.url, webhook_type="audit_log")
    paused = await api.create(url=second_target.url, **SENDING, active=False)
    await api.fake.emit(["delivery"], sending_stream="bulk")
    await api.fake.emit(["bounce", "inbound", "audit_log"], inbox_id=42)
    await api.fake.emit(["inbound"], inbox_id=7)  # another inbox
    await api.fake.drain()
    by_webhook = {
        hook["id"]: sorted(
            item.event["event"]
            for item in api.fake.emitted.values()
            if hook["id"] in item.acknowledged_by
        )
        for hook in (transactional, bulk, inbound, audit, paused)
    }
    assert by_webhook == {
        transactional["id"]: ["bounce"],
        bulk["id"]: ["delivery"],
        inbound["id"]: ["inbound.message_received"],
        audit["id"]: ["activity_log.user.updated"],
        paused["id"]: [],
    }
    assert len(api.fake.unrouted()) == 1  # the other inbox's event


async def test_reaches_the_real_receiver_which_accepts_every_event(
    api: Api, make_receiver: MakeReceiver, secret_file: Path, target: RecordingTarget
) -> None:
    # The operator's order: create, store the secret for the receiver, then point the
    # webhook at the receiver once it runs.
    created = await api.create(url="https://example.com/pending", **SENDING)
    await asyncio.to_thread(secret_file.write_text, created["signing_secret"] + "\n")
    receiver = await make_receiver()
    url = str(receiver.client.make_url(receiver.config.path))
    await api.call("PATCH", f"/{created['id']}", {"webhook": {"url": url}})
    sent = await api.fake.emit(["delivery", "bounce"], count=3)
    await api.fake.drain()
    assert api.fake.lost() == []
    assert [attempt.status for attempt in api.fake.attempts] == [200]
    assert sorted(target.event_ids()) == sorted(sent)


async def test_retries_until_200_and_counts_what_was_rejected(
    api: Api, target: RecordingTarget
) -> None:
    api.fake.sender.delay = 0.3
    created = await api.create(url=target.url, **SENDING)
    target.status = 503
    sent = await api.fake.emit(["delivery"])
    while len(target.received) < 2:
        target.arrived.clear()
        await asyncio.wait_for(target.arrived.wait(), 30)
    target.status = 200
    await api.fake.drain()
    assert [attempt.status for attempt in api.fake.attempts] == [503, 503, 200]
    assert len(api.fake.rejected()) == 2
    assert api.fake.lost() == []
    assert api.fake.acknowledged(created["id"]) == set(sent)
    # Only 200 acknowledges: Mailtrap retries a 202 too.
    target.status = 202
    again = await api.fake.emit(["delivery"])
    await api.fake.drain()
    assert api.fake.lost() == again


async def test_a_batch_that_fails_every_attempt_is_lost_and_pauses_the_webhook(
    api: Api,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/webhooks"
    created = await api.create(url=nowhere, **SENDING)
    sent = await api.fake.emit(["delivery"])
    await api.fake.drain()
    attempts = api.fake.attempts
    assert [(item.attempt, item.status) for item in attempts] == [(1, None), (2, None), (3, None)]
    assert all(item.error and "Connect" in item.error for item in attempts)
    assert api.fake.lost() == sent
    assert api.fake.rejected() == []  # nothing answered: lost, not rejected
    assert api.fake.webhooks[created["id"]].active is False


async def test_ui_edits_apply_to_later_attempts(api: Api, target: RecordingTarget) -> None:
    api.fake.sender.delay = 0.3
    created = await api.create(url=target.url, **SENDING)
    old_secret = created["signing_secret"]
    target.status = 500
    await api.fake.emit(["delivery"])
    await asyncio.wait_for(target.arrived.wait(), 30)
    new_secret = api.fake.ui_reset_secret(created["id"])
    target.status = 200
    await api.fake.drain()
    first, second = target.received
    assert signature_matches(first.body, first.headers["Mailtrap-Signature"], [old_secret.encode()])
    assert signature_matches(
        second.body, second.headers["Mailtrap-Signature"], [new_secret.encode()]
    )
    api.fake.ui_edit(created["id"], active=False)
    assert (await api.call("GET", f"/{created['id']}"))[1]["data"]["active"] is False
    await api.fake.emit(["delivery"])
    api.fake.ui_edit(created["id"], active=True, event_types=["bounce"])
    api.fake.ui_delete(created["id"])
    assert (await api.call("GET", f"/{created['id']}"))[0] == 404
    with pytest.raises(ValueError, match="does not edit"):
        api.fake.ui_edit(9, sending_stream="bulk")


async def test_an_event_sent_to_two_webhooks_is_lost_only_if_both_fail(
    api: Api, target: RecordingTarget, second_target: RecordingTarget
) -> None:
    # Rotation: old and new webhook both get each event until the old one goes.
    old = await api.create(url=target.url, **SENDING)
    new = await api.create(url=second_target.url, **SENDING)
    target.status = 401  # the receivers do not know the old secret any more
    sent = await api.fake.emit(["delivery"], count=2)
    await api.fake.drain()
    assert api.fake.lost() == []
    assert api.fake.acknowledged(new["id"]) == set(sent)
    assert api.fake.acknowledged(old["id"]) == set()
    assert {attempt.status for attempt in api.fake.rejected()} == {401}


async def test_batches_hold_at_most_500_events(api: Api, target: RecordingTarget) -> None:
    await api.create(url=target.url, **SENDING)
    await api.fake.emit(["delivery"], count=501)
    await api.fake.drain()
    assert sorted(len(item.event_ids()) for item in target.received) == [1, 500]


async def test_the_steady_sender_runs_until_stopped(api: Api, target: RecordingTarget) -> None:
    await api.create(url=target.url, **SENDING)
    api.fake.start_sender(interval=0.05, names=("delivery",))
    while len(target.received) < 3:
        target.arrived.clear()
        await asyncio.wait_for(target.arrived.wait(), 30)
    await api.fake.stop_sender()
    await api.fake.drain()
    count = len(api.fake.emitted)
    await asyncio.sleep(0.3)
    assert len(api.fake.emitted) == count >= 3
    assert api.fake.lost() == []


# --- as a process, with the control API -----------------------------------------------


def test_the_process_serves_until_sigterm_with_its_control_api(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\nsecond-token\n")
    with running_fake_mailtrap(
        account_id=42,
        token_file=token_file,
        log_path=tmp_path / "fake.log",
        extra_args=["--retry-attempts", "2", "--retry-delay", "0.05"],
    ) as fake:
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{fake.url}/api/accounts/42/webhooks",
            data=orjson.dumps({"webhook": {"url": "http://127.0.0.1:9/x", **SENDING}}),
            method="POST",
            headers={"Authorization": "Bearer second-token", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            created = orjson.loads(response.read())["data"]
        state = fake.control("GET", "state")
        assert [hook["signing_secret"] for hook in state["webhooks"]] == [created["signing_secret"]]
        emitted = fake.control("POST", "emit", {"events": ["delivery"], "count": 2})
        assert len(emitted["event_ids"]) == 2
        assert emitted["lost"] == emitted["event_ids"]  # port 9: nothing listens
        state = fake.control("GET", "state")
        assert [item["attempt"] for item in state["attempts"]] == [1, 2]
        assert state["webhooks"][0]["active"] is False  # paused after the last attempt
        edited = fake.control("PATCH", f"webhooks/{created['id']}", {"active": True})
        assert edited["data"]["active"] is True
        assert fake.control("PUT", "faults", {"api_status": 502})["api_status"] == 502
        assert fake.control("DELETE", f"webhooks/{created['id']}") == {"deleted": True}
        process = fake.process
    assert process.returncode == 0
    assert "fake Mailtrap stopped" in (tmp_path / "fake.log").read_text()
