"""The reconciler's reactions when the API fails, against an in-memory stand-in.

The integration tests run the operator against a real API server, which cannot
be made to fail on cue; here `FakeApi` answers the few calls the reconciler
makes and fails them while ``down`` is set. What is checked: a child deleted
while the API is down is put back once it answers again, without any new event;
which reason a failed request is reported with; what a referenced Secret must be
(present, opted in, holding the key) and how soon a Secret problem is retried.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from mailtrap_operator.builders import secret_refs
from mailtrap_operator.kubeapi import ApiError
from mailtrap_operator.metrics import OperatorMetrics
from mailtrap_operator.reconciler import (
    MAX_RETRY_DELAY,
    SECRET_RETRY_DELAY,
    Reconciler,
    api_problem,
    retry_delay,
    secret_problem,
)
from mailtrap_operator.resources import Kind, Owner, OwnerKey, SecretInfo
from mailtrap_operator.settings import Settings
from mailtrap_operator.status import Problem
from tests.helpers.waiting import eventually

NAMESPACE, NAME = "mail", "hooks"
KEY: OwnerKey = (NAMESPACE, NAME)
OWNER = Owner(
    namespace=NAMESPACE,
    name=NAME,
    uid="uid-owner",
    generation=1,
    spec={
        "signingSecretRef": {"name": "signing"},
        "replicas": 1,
        "targets": [{"name": "a", "url": "http://a.example/"}],
    },
)


class FakeApi:
    """The calls `Reconciler` makes, on dicts; every call fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets = {"signing": SecretInfo(keys=frozenset({"signing-secret"}), opted_in=True)}
        self.status: dict[str, Any] = {}
        self.events: list[str] = []
        self.applies = 0
        self._version = 100

    def _check(self) -> None:
        if self.down:
            raise ApiError(0, "Unreachable", "ConnectionRefusedError")

    async def apply(self, *, manifest: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
        self._check()
        self.applies += 1
        self._version += 1
        body = copy.deepcopy(dict(manifest))
        body["metadata"]["resourceVersion"] = str(self._version)
        if kind.kind == "Deployment":
            body["metadata"]["generation"] = 1
        self.objects[(kind.kind, manifest["metadata"]["name"])] = body
        return body

    async def delete(self, *, kind: Kind, namespace: str, name: str) -> bool:
        self._check()
        return self.objects.pop((kind.kind, name), None) is not None

    async def read_secret(self, *, namespace: str, name: str) -> SecretInfo | None:
        self._check()
        return self.secrets.get(name)

    async def read_owner(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return {"metadata": {"name": name, "namespace": namespace, "uid": OWNER.uid}}

    async def served(self, *, kind: Kind) -> bool:
        self._check()
        return False

    async def patch_status(
        self, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._check()
        self.status.update(status)
        return {}

    async def post_event(self, *, reason: str, **_: Any) -> None:
        self._check()
        self.events.append(reason)


def _clock() -> datetime.datetime:
    return datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


@pytest.fixture
async def setup() -> Any:
    api = FakeApi()
    reconciler = Reconciler(
        settings=Settings(),
        api=api,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        clock=_clock,
        backoff=lambda attempt, problem: 0.02,
    )
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    yield api, reconciler
    await reconciler.close()


def _find_owner(key: OwnerKey) -> Owner | None:
    return OWNER if key == KEY else None


def _known(key: OwnerKey) -> tuple[tuple[str, str], ...]:
    return ()


async def test_a_child_deleted_while_the_api_is_down_comes_back_once_it_answers(
    setup: Any,
) -> None:
    api, reconciler = setup
    deployment = api.objects[("Deployment", "hooks-receiver")]
    applies = api.applies
    api.down = True
    reconciler.observe_child(
        kind="Deployment",
        event_type="DELETED",
        body=deployment,
        find_owner=_find_owner,
        known_children=_known,
    )
    await asyncio.sleep(0.2)  # several retries, all failing
    assert api.applies == applies
    api.down = False
    await eventually(lambda: api.applies > applies, within=3)
    await eventually(lambda: not reconciler._retrying, within=3)


async def test_no_retry_for_what_only_a_spec_change_can_fix(setup: Any) -> None:
    api, reconciler = setup
    deployment = api.objects[("Deployment", "hooks-receiver")]
    invalid = Owner(**{**OWNER.__dict__, "spec": {**OWNER.spec, "shutdownGracePeriod": "x"}})
    reconciler.observe_child(
        kind="Deployment",
        event_type="DELETED",
        body=deployment,
        find_owner=lambda key: invalid,
        known_children=_known,
    )
    await eventually(lambda: "InvalidSpec" in api.events, within=3)
    await asyncio.sleep(0.1)
    assert not reconciler._retrying


@pytest.mark.parametrize(
    ("error", "reason", "permanent"),
    [
        (ApiError(0, "Unreachable", "OSError"), "ApiUnavailable", False),
        (ApiError(503, "ServiceUnavailable", ""), "ApiUnavailable", False),
        (ApiError(422, "Invalid", "spec.x: bad"), "ApplyRejected", True),
        (ApiError(403, "Forbidden", 'cannot patch "deployments"'), "Forbidden", False),
    ],
)
def test_api_errors_are_reported_by_what_would_fix_them(
    error: ApiError, reason: str, permanent: bool
) -> None:
    problem = api_problem(error)
    assert (problem.reason, problem.permanent) == (reason, permanent)
    assert str(error) in problem.message
    if reason == "Forbidden":
        assert "RBAC" in problem.message


# --- Secrets -----------------------------------------------------------------------------

SPEC = {
    "signingSecretRef": {"name": "signing"},
    "basicAuthSecretRef": {"name": "basic"},
    "targets": [{"name": "a", "url": "http://a/", "signingSecretRef": {"name": "db-creds"}}],
}


def info(*keys: str, opted_in: bool = True) -> SecretInfo:
    return SecretInfo(keys=frozenset(keys), opted_in=opted_in)


def problem_of(secrets: dict[str, SecretInfo | None], *, require_label: bool = True) -> Any:
    return secret_problem(
        namespace="team-a", refs=secret_refs(SPEC), secrets=secrets, require_label=require_label
    )


def test_secrets_that_opted_in_and_hold_the_keys_are_no_problem() -> None:
    secrets = {
        "signing": info("signing-secret"),
        "basic": info("credentials"),
        "db-creds": info("signing-secret"),
    }
    assert problem_of(secrets) is None


def test_a_secret_without_the_opt_in_label_is_refused_with_the_command_that_labels_it() -> None:
    secrets = {
        "signing": info("signing-secret"),
        "basic": info("credentials"),
        "db-creds": info("password", opted_in=False),
    }
    problem = problem_of(secrets)
    assert problem.reason == "SecretNotLabelled"
    assert not problem.permanent
    assert "spec.targets[0].signingSecretRef" in problem.message
    assert (
        "kubectl -n team-a label secret db-creds mailtrap.io/webhook-secret=true" in problem.message
    )
    # Nothing about the keys of a Secret that did not opt in: no probing by reference.
    assert "signing-secret" not in problem.message
    assert "password" not in problem.message
    assert problem_of(secrets, require_label=False).reason == "SecretKeyMissing"


def test_missing_secrets_come_first_then_unlabelled_then_missing_keys() -> None:
    secrets: dict[str, SecretInfo | None] = {
        "signing": None,
        "basic": info("wrong-key"),
        "db-creds": info(opted_in=False),
    }
    problem = problem_of(secrets)
    assert problem.reason == "SecretMissing"
    assert problem.message.count(";") == 2
    assert 'Secret "signing" not found in namespace "team-a"' in problem.message
    assert 'Secret "basic" has no key "credentials"' in problem.message
    del secrets["signing"]
    assert problem_of(secrets).reason == "SecretMissing"  # not found is not found
    secrets["signing"] = info("signing-secret")
    assert problem_of(secrets).reason == "SecretNotLabelled"


def test_secret_problems_are_retried_soon_and_others_back_off_further() -> None:
    secret = Problem("SecretNotLabelled", "x")
    other = Problem("ChildConflict", "x")
    assert [retry_delay(n, secret) for n in range(6)] == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    assert max(retry_delay(n, secret) for n in range(50)) == SECRET_RETRY_DELAY
    assert max(retry_delay(n, other) for n in range(50)) == MAX_RETRY_DELAY
    assert retry_delay(3, other) == 40.0
