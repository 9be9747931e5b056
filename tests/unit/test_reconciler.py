"""The reconciler against an in-memory API: failures, races, and who owns what.

The integration and security tests run the operator against a real API server,
which cannot be made to fail on cue nor to lose a race at a chosen moment; here
`tests.helpers.fakeapi.FakeApi` answers the calls the reconciler makes. What is
checked: a child deleted while the API is down is put back once it answers again;
a spec error is never retried; which reason a failed request is reported with; a
child name held by an object this resource does not control stops every write and
is reported (also when the object appears, or is replaced, between the check and
the write); created children end up owned by server-side apply; only our own
unwanted children are deleted; what a referenced Secret must be (present, opted
in, holding the key) and how soon a Secret problem is retried.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailtrap_operator.builders import secret_refs
from mailtrap_operator.contest import DRIFT_CONFLICT_ROUNDS, Contests
from mailtrap_operator.kubeapi import ApiError
from mailtrap_operator.metrics import OperatorMetrics
from mailtrap_operator.reconciler import (
    MAX_RETRY_DELAY,
    SECRET_RETRY_DELAY,
    TRANSIENT_GRACE,
    ChildRef,
    Reconciler,
    api_problem,
    retry_delay,
    secret_problem,
)
from mailtrap_operator.resources import FIELD_MANAGER, Owner, OwnerKey, SecretInfo
from mailtrap_operator.settings import Settings
from mailtrap_operator.status import SUSPENDED_MESSAGE, Problem
from tests.helpers.fakeapi import FakeApi, secret_body
from tests.helpers.waiting import eventually

NAMESPACE, NAME = "mail", "hooks"
CHILD = f"{NAME}-receiver"
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
MONITORED = Owner(**{**OWNER.__dict__, "spec": {**OWNER.spec, "serviceMonitor": {"enabled": True}}})


def _clock() -> datetime.datetime:
    return datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


def new_api() -> FakeApi:
    api = FakeApi(NAMESPACE)
    api.secrets["signing"] = secret_body("signing", {"signing-secret": "fake-1"})
    return api


def new_reconciler(
    api: FakeApi,
    backoff: Callable[[int, Problem | None], float] = lambda attempt, _: 0.02,
    **kwargs: Any,
) -> Reconciler:
    return Reconciler(
        settings=Settings(),
        api=api,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        clock=_clock,
        backoff=backoff,
        **kwargs,
    )


@pytest.fixture
async def api() -> FakeApi:
    return new_api()


@pytest.fixture
async def reconciler(api: FakeApi) -> AsyncIterator[Reconciler]:
    found = new_reconciler(api)
    yield found
    await found.close()


@pytest.fixture
async def setup(api: FakeApi, reconciler: Reconciler) -> tuple[FakeApi, Reconciler]:
    """A reconciler that has applied OWNER's children once."""
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    return api, reconciler


def _find_owner(key: OwnerKey) -> Owner | None:
    return OWNER if key == KEY else None


def _known(key: OwnerKey) -> tuple[ChildRef, ...]:
    return ()


def reconciles(reconciler: Reconciler) -> float:
    return sum(
        sample.value
        for family in reconciler.metrics.registry.collect()
        if family.name == "mailtrap_operator_reconciles"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


# --- failures and retries ------------------------------------------------------------


async def test_a_child_deleted_while_the_api_is_down_comes_back_once_it_answers(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    deployment = api.remove("Deployment", CHILD)
    writes = len(api.writes)
    api.down = True
    reconciler.observe_child(
        kind="Deployment",
        event_type="DELETED",
        body=deployment,
        find_owner=_find_owner,
        known_children=_known,
    )
    await asyncio.sleep(0.2)  # several retries, all failing
    assert len(api.writes) == writes
    api.down = False
    await eventually(lambda: ("create", "Deployment", CHILD) in api.writes[writes:], within=3)
    await eventually(lambda: not reconciler._retrying, within=3)


async def test_no_retry_for_what_only_a_spec_change_can_fix(api: FakeApi) -> None:
    waits: list[int] = []

    def backoff(attempt: int, problem: Problem | None) -> float:
        waits.append(attempt)
        return 0.01

    reconciler = new_reconciler(api, backoff)
    try:
        assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
        deployment = api.remove("Deployment", CHILD)
        invalid = Owner(**{**OWNER.__dict__, "spec": {**OWNER.spec, "shutdownGracePeriod": "x"}})
        reconciler.observe_child(
            kind="Deployment",
            event_type="DELETED",
            body=deployment,
            find_owner=lambda key: invalid,
            known_children=_known,
        )
        await eventually(lambda: "InvalidSpec" in [reason for reason, _ in api.events], within=3)
        done = reconciles(reconciler)
        # Fifty backoffs' time: a retry, had one been scheduled, would have run by now.
        await asyncio.sleep(0.5)
        assert waits == []
        assert reconciles(reconciler) == done == 2
    finally:
        await reconciler.close()


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


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # What a real API server answered (tests/security/test_takeover.py shows it).
        (ApiError(422, "Invalid", 'metadata.uid: Invalid value: "u": field is immutable'), "uid"),
        (ApiError(409, "Conflict", "uid mismatch: the provided object specified uid u"), "uid"),
        (ApiError(409, "Conflict", "the UID in the precondition (u) does not match"), "uid"),
        (ApiError(409, "AlreadyExists", 'configmaps "x" already exists'), "exists"),
        (ApiError(422, "Invalid", "spec.template: Invalid value"), "rejected"),
    ],
)
def test_lost_races_are_told_from_refusals(error: ApiError, kind: str) -> None:
    assert error.uid_mismatch is (kind == "uid")
    assert error.already_exists is (kind == "exists")
    assert error.rejected is (kind == "rejected")


async def test_a_policy_violation_stops_before_anything_is_read_or_written(
    api: FakeApi, reconciler: Reconciler
) -> None:
    evil = Owner(**{**OWNER.__dict__, "spec": {**OWNER.spec, "image": "evil.example/x:1"}})
    reads = []
    api.read_secret = lambda **kwargs: reads.append(kwargs)  # type: ignore[method-assign]
    problem = await reconciler.reconcile(owner=evil, known_children=(), trigger="create")
    assert problem is not None
    assert (problem.reason, problem.permanent) == ("PolicyViolation", True)
    assert "spec.image" in problem.message
    assert "--allow-image-override" in problem.message
    assert reads == []
    assert api.writes == []
    await eventually(lambda: ("PolicyViolation", problem.message) in api.events, within=3)


# --- who owns what ---------------------------------------------------------------------


async def test_a_name_held_by_someone_else_stops_every_write_and_is_reported(
    api: FakeApi, reconciler: Reconciler
) -> None:
    victim = api.put("Service", CHILD)
    problem = await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create")
    assert problem is not None
    assert (problem.reason, problem.permanent) == ("ChildConflict", False)
    assert "it has no controller" in problem.message
    assert f'Service "{CHILD}" exists and is not controlled' in problem.message
    assert api.writes == []  # not even the ConfigMap, which was free
    assert api.objects[("Service", CHILD)] == victim
    await eventually(lambda: ("ChildConflict", problem.message) in api.events, within=3)
    degraded = next(c for c in api.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ChildConflict")


async def test_a_leftover_of_an_earlier_resource_of_the_same_name_is_not_taken_over(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.put("Deployment", CHILD, owner_uid="uid-earlier")
    known = [ChildRef("Deployment", CHILD, "uid-leftover", "uid-earlier")]
    problem = await reconciler.reconcile(owner=OWNER, known_children=known, trigger="create")
    assert problem is not None
    assert 'its controller is an earlier MailtrapWebhook "hooks" (uid uid-earlier)' in (
        problem.message
    )
    assert api.writes == []


async def test_a_name_taken_between_the_check_and_the_create_is_checked_again(
    api: FakeApi, reconciler: Reconciler
) -> None:
    def someone_is_faster(verb: str, kind: str) -> None:
        if (verb, kind) == ("create", "Service") and ("Service", CHILD) not in api.objects:
            api.put("Service", CHILD)

    api.before_write = someone_is_faster
    problem = await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create")
    assert problem is not None
    assert problem.reason == "ChildConflict"
    assert api.objects[("Service", CHILD)]["spec"] == {"victim": True}
    assert ("apply", "Service", CHILD) not in api.writes


async def test_an_object_replaced_since_it_was_checked_is_not_written(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    # The ledger still says the ConfigMap is ours; someone else's is there now.
    del api.objects[("ConfigMap", CHILD)]
    victim = api.put("ConfigMap", CHILD)
    problem = await reconciler.reconcile(owner=OWNER, known_children=(), trigger="drift")
    assert problem is not None
    assert f'ConfigMap "{CHILD}" exists and is not controlled' in problem.message
    assert api.objects[("ConfigMap", CHILD)] == victim


async def test_children_are_written_through_the_uid_that_was_checked(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    api.writes.clear()
    known = [
        ChildRef(kind, name, body["metadata"]["uid"], OWNER.uid)
        for (kind, name), body in api.objects.items()
    ]
    assert await reconciler.reconcile(owner=OWNER, known_children=known, trigger="resume") is None
    assert sorted(api.writes) == [
        ("apply", "ConfigMap", CHILD),
        ("apply", "Deployment", CHILD),
        ("apply", "Service", CHILD),
    ]


async def test_created_children_end_up_owned_by_apply_alone(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, _ = setup
    for body in api.objects.values():
        entries = body["metadata"]["managedFields"]
        assert [(e["manager"], e["operation"]) for e in entries] == [(FIELD_MANAGER, "Apply")]


async def test_a_controller_writing_a_new_child_first_does_not_stop_the_fold(
    api: FakeApi, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = api.create

    async def create_then_a_status_write(**kwargs: Any) -> dict[str, Any]:
        body = await create(**kwargs)
        if kwargs["kind"].kind == "Deployment":  # the Deployment controller, at once
            api._store("Deployment", api.objects[("Deployment", CHILD)])
        return body

    monkeypatch.setattr(api, "create", create_then_a_status_write)
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    entries = api.objects[("Deployment", CHILD)]["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in entries] == [(FIELD_MANAGER, "Apply")]


async def test_only_our_own_unwanted_children_are_deleted(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.monitors_served = True
    assert await reconciler.reconcile(owner=MONITORED, known_children=(), trigger="create") is None
    assert ("create", "ServiceMonitor", CHILD) in api.writes
    # Switched off: ours goes, with the uid that was checked.
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="update") is None
    assert ("ServiceMonitor", CHILD) not in api.objects
    # Someone else's ServiceMonitor of that name, seen after a restart, stays.
    victim = api.put("ServiceMonitor", CHILD)
    restarted = new_reconciler(api)
    try:
        assert await restarted.reconcile(owner=OWNER, known_children=(), trigger="resume") is None
    finally:
        await restarted.close()
    assert api.objects[("ServiceMonitor", CHILD)] == victim


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


# --- drift: the drifted child alone, backoff, giving up ----------------------------------


def edited(api: FakeApi, reconciler: Reconciler, kind: str = "ConfigMap") -> None:
    """Another writer changes what we set on a child, and its watch event arrives."""
    body = api.edit(kind, CHILD)
    reconciler.observe_child(
        kind=kind, event_type="MODIFIED", body=body, find_owner=_find_owner, known_children=_known
    )


def condition_of(api: FakeApi, kind: str) -> dict[str, Any]:
    return next(c for c in api.status["conditions"] if c["type"] == kind)


async def test_a_drifted_child_alone_is_put_back_without_a_status_write(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    api.writes.clear()
    written = api.status_writes
    edited(api, reconciler)
    await eventually(lambda: api.writes == [("apply", "ConfigMap", CHILD)], within=3)
    await eventually(lambda: ("Restored", RESTORED) in api.events, within=3)
    await asyncio.sleep(0.1)
    assert api.writes == [("apply", "ConfigMap", CHILD)]
    assert api.status_writes == written  # nothing in the status changed


RESTORED = (
    f"ConfigMap {CHILD} was changed outside the operator (fields the operator sets were "
    "changed by kubectl-edit); put it back."
)


async def test_a_writer_that_keeps_undoing_repairs_is_given_up_on_and_named(
    api: FakeApi,
) -> None:
    contests = Contests(first_backoff=0.02, quiet=30.0)
    reconciler = new_reconciler(api, contests=contests)
    try:
        assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
        api.writes.clear()
        for _ in range(100):  # the other writer, every 10 ms for a second
            edited(api, reconciler)
            await asyncio.sleep(0.01)
        await eventually(lambda: condition_of(api, "Degraded")["status"] == "True", within=3)
        degraded = condition_of(api, "Degraded")
        assert degraded["reason"] == "DriftConflict"
        assert '"kubectl-edit"' in degraded["message"]
        assert f"ConfigMap {CHILD}" in degraded["message"]
        # Readiness still follows the Deployment: the receiver runs.
        assert condition_of(api, "Ready")["reason"] != "DriftConflict"
        repairs = [write for write in api.writes if write == ("apply", "ConfigMap", CHILD)]
        assert len(repairs) == DRIFT_CONFLICT_ROUNDS
        assert api.writes == repairs  # no other child was written
        # One Restored Event, counted, and one DriftConflict Warning.
        await eventually(lambda: ("Restored", RESTORED) in api.events, within=3)
        assert [reason for reason, _ in api.events if reason != "Applied"] == [
            "Restored",
            "DriftConflict",
        ]
        await eventually(lambda: DRIFT_CONFLICT_ROUNDS in api.event_counts.values(), within=3)
        assert reconciler.metrics.drift_conflicts._value.get() == 1
    finally:
        await reconciler.close()


async def test_once_the_other_writer_stops_the_child_is_put_back_and_the_conflict_clears(
    api: FakeApi,
) -> None:
    contests = Contests(first_backoff=0.01, quiet=0.3)
    reconciler = new_reconciler(api, contests=contests)
    try:
        assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
        for _ in range(30):
            edited(api, reconciler)
            await asyncio.sleep(0.01)
        await eventually(lambda: condition_of(api, "Degraded")["reason"] == "DriftConflict")
        api.writes.clear()
        await eventually(lambda: condition_of(api, "Degraded")["status"] == "False", within=3)
        assert api.writes == [("apply", "ConfigMap", CHILD)]
    finally:
        await reconciler.close()


# --- transient API failures, status writes -------------------------------------------------


async def test_the_api_failing_briefly_is_not_reported_and_lasting_is(api: FakeApi) -> None:
    now = [0.0]
    reconciler = new_reconciler(api, monotonic=lambda: now[0])
    try:
        api.down = True
        problem = await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create")
        assert problem is not None
        assert problem.reason == "ApiUnavailable"
        now[0] = TRANSIENT_GRACE - 1
        await reconciler.reconcile(owner=OWNER, known_children=(), trigger="retry")
        assert api.status == {}
        api.down = False
        await asyncio.sleep(0.05)
        assert api.events == []  # nothing said about a failure that did not last
        api.down = True
        now[0] = TRANSIENT_GRACE + 1
        await reconciler.reconcile(owner=OWNER, known_children=(), trigger="retry")
        api.down = False
        await eventually(lambda: bool(api.status), within=5)
        assert condition_of(api, "Degraded")["reason"] == "ApiUnavailable"
        # Answering again: the next reconcile clears it, and the clock starts afresh.
        assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="retry") is None
        assert condition_of(api, "Degraded")["status"] == "False"
    finally:
        await reconciler.close()


async def test_a_status_write_refused_is_retried_until_it_lands(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.throttled = True
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    assert api.status == {}
    await asyncio.sleep(0.3)
    api.throttled = False
    await eventually(lambda: api.status.get("observedGeneration") == 1, within=10)
    assert condition_of(api, "Progressing")["status"] == "True"


# --- suspend ---------------------------------------------------------------------------------


async def test_a_suspended_resource_changes_nothing_but_says_so(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    api.writes.clear()
    suspended = Owner(
        **{**OWNER.__dict__, "generation": 2, "spec": {**OWNER.spec, "suspend": True}}
    )
    assert await reconciler.reconcile(owner=suspended, known_children=(), trigger="update") is None
    assert api.writes == []
    assert condition_of(api, "Progressing")["reason"] == "Suspended"
    assert condition_of(api, "Ready")["reason"] == "Suspended"
    body = api.edit("ConfigMap", CHILD)
    reconciler.observe_child(
        kind="ConfigMap",
        event_type="MODIFIED",
        body=body,
        find_owner=lambda key: suspended,
        known_children=_known,
    )
    await asyncio.sleep(0.2)
    assert api.writes == []
    await eventually(lambda: ("Suspended", SUSPENDED_MESSAGE) in api.events, within=3)
    resumed = Owner(**{**OWNER.__dict__, "generation": 3})
    assert await reconciler.reconcile(owner=resumed, known_children=(), trigger="update") is None
    assert ("apply", "ConfigMap", CHILD) in api.writes
    assert condition_of(api, "Progressing")["reason"] != "Suspended"


# --- adoption, and replicas left to an autoscaler ----------------------------------------------


def identity(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/component": component,
    }


async def test_an_orphan_carrying_this_resources_identity_is_adopted(
    api: FakeApi, reconciler: Reconciler
) -> None:
    orphan = api.put("Deployment", CHILD, labels=identity("receiver"))
    assert await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create") is None
    assert ("apply", "Deployment", CHILD) in api.writes
    adopted = api.objects[("Deployment", CHILD)]
    assert adopted["metadata"]["uid"] == orphan["metadata"]["uid"]
    assert adopted["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


async def test_an_orphan_with_another_component_is_not_adopted(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.put("Deployment", CHILD, labels=identity("config"))
    problem = await reconciler.reconcile(owner=OWNER, known_children=(), trigger="create")
    assert problem is not None
    assert problem.reason == "ChildConflict"
    assert api.writes == []


EXTERNAL = Owner(
    **{**OWNER.__dict__, "spec": {**OWNER.spec, "replicas": 3, "replicasManagedExternally": True}}
)


async def test_replicas_left_to_an_autoscaler_are_set_once_and_never_again(
    api: FakeApi, reconciler: Reconciler
) -> None:
    assert await reconciler.reconcile(owner=EXTERNAL, known_children=(), trigger="create") is None
    deployment = api.objects[("Deployment", CHILD)]
    assert deployment["spec"]["replicas"] == 3  # the initial count
    entries = deployment["metadata"]["managedFields"]
    assert [(e["operation"], "f:spec" in e["fieldsV1"]) for e in entries] == [
        ("Update", True),
        ("Apply", False),
    ]
    deployment["spec"]["replicas"] = 7  # the autoscaler
    restarted = new_reconciler(api)
    try:
        assert (
            await restarted.reconcile(owner=EXTERNAL, known_children=(), trigger="resume") is None
        )
    finally:
        await restarted.close()
    assert api.objects[("Deployment", CHILD)]["spec"]["replicas"] == 7


async def test_handing_replicas_on_keeps_the_count_the_deployment_has(
    setup: tuple[FakeApi, Reconciler],
) -> None:
    api, reconciler = setup
    api.objects[("Deployment", CHILD)]["spec"]["replicas"] = 5  # an autoscaler, at once
    handed = Owner(**{**EXTERNAL.__dict__, "generation": 2})
    assert await reconciler.reconcile(owner=handed, known_children=(), trigger="update") is None
    # Without moving replicas out of our apply first, the apply would reset them to 1.
    assert api.objects[("Deployment", CHILD)]["spec"]["replicas"] == 5
