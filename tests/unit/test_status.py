"""The operator's status logic: conditions, their transition times, counts and patches."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from mailtrap_operator import status
from mailtrap_operator.status import Problem, Rollout

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)
URL = "http://hooks-receiver.mail.svc:80/webhooks/mailtrap"


def build(
    previous: dict[str, Any] | None = None,
    *,
    rollout: Rollout | None = None,
    problem: Problem | None = None,
    generation: int = 1,
    now: datetime.datetime = T0,
    external: str | None = None,
) -> dict[str, Any]:
    return status.build_status(
        previous=previous or {},
        generation=generation,
        url=URL,
        external_url=external,
        config_hash="abc123",
        rollout=rollout,
        problem=problem,
        now=now,
    )


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def rollout(*, desired: int = 2, ready: int = 2, updated: int | None = None) -> Rollout:
    updated = desired if updated is None else updated
    return Rollout(desired=desired, current=updated, ready=ready, updated=updated, observed=True)


def test_ready_when_every_wanted_pod_is_ready() -> None:
    result = build(rollout=rollout())
    assert conditions(result) == {
        "Ready": ("True", "ReceiverReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert (result["replicas"], result["readyReplicas"]) == (2, 2)
    assert result["observedGeneration"] == 1
    assert result["url"] == URL
    assert result["configHash"] == "abc123"
    assert all(c["observedGeneration"] == 1 for c in result["conditions"])


def test_not_ready_while_pods_are_not() -> None:
    result = build(rollout=rollout(ready=1))
    assert conditions(result)["Ready"] == ("False", "PodsNotReady")
    assert conditions(result)["Progressing"] == ("True", "RollingOut")
    ready = status.condition(result, "Ready")
    assert ready is not None
    assert ready["message"] == "1/2 receiver Pods are Ready."
    assert result["readyReplicas"] == 1


def test_no_deployment_yet_is_deploying() -> None:
    result = build(rollout=None)
    assert conditions(result)["Ready"] == ("False", "Deploying")
    assert conditions(result)["Progressing"] == ("True", "Deploying")


def test_scaled_to_zero_is_not_ready() -> None:
    result = build(rollout=rollout(desired=0, ready=0))
    assert conditions(result)["Ready"] == ("False", "ScaledToZero")


def test_a_problem_is_degraded_and_not_ready_with_its_message() -> None:
    problem = Problem("SecretMissing", 'Secret "s" not found in namespace "mail".')
    previous = build(rollout=rollout())
    result = build(previous, problem=problem, now=T1)
    assert conditions(result) == {
        "Ready": ("False", "SecretMissing"),
        "Progressing": ("False", "Blocked"),
        "Degraded": ("True", "SecretMissing"),
    }
    degraded = status.condition(result, "Degraded")
    assert degraded is not None
    assert '"s"' in degraded["message"]
    # Counts come from before: the running Pods did not go anywhere.
    assert result["readyReplicas"] == 2
    assert result["configHash"] == "abc123"
    assert status.carried_problem(result) == Problem(problem.reason, problem.message)


def test_transition_time_moves_only_when_the_status_does() -> None:
    first = build(rollout=rollout(ready=1), now=T0)
    same = build(first, rollout=rollout(ready=1), now=T1)
    assert same == first
    flipped = build(first, rollout=rollout(ready=2), now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times["Ready"] == "2026-01-02T03:09:05Z"
    assert times["Degraded"] == "2026-01-02T03:04:05Z"  # still False: unchanged


def test_refresh_keeps_the_generation_problem_and_urls() -> None:
    problem = Problem("SecretMissing", "gone")
    previous = build(problem=problem, generation=4, external="https://h/p")
    refreshed = status.refresh_status(previous=previous, rollout=rollout(ready=0), now=T1)
    assert refreshed["observedGeneration"] == 4
    assert refreshed["externalURL"] == "https://h/p"
    assert conditions(refreshed)["Degraded"] == ("True", "SecretMissing")
    assert refreshed["readyReplicas"] == 0


def test_rollout_from_a_deployment() -> None:
    deployment = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "readyReplicas": 2,
            "updatedReplicas": 1,
        },
    }
    seen = Rollout.from_deployment(deployment)
    assert seen == Rollout(desired=2, current=3, ready=2, updated=1, observed=False)
    assert not seen.complete
    assert Rollout.from_deployment({"spec": {"replicas": 1}}).ready == 0


@pytest.mark.parametrize(
    ("previous", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "externalURL": "x"}, {"a": 1}, {"externalURL": None}),
        ({}, {"a": [1]}, {"a": [1]}),
    ],
)
def test_merge_patch(previous: dict[str, Any], new: dict[str, Any], patch: Any) -> None:
    assert status.merge_patch(previous=previous, new=new) == patch


def _deployment(*conditions: dict[str, str], observed: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": observed,
            "replicas": 3,
            "readyReplicas": 2,
            "updatedReplicas": 1,
            "conditions": list(conditions),
        },
    }


DEADLINE = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "hooks-receiver-5d9c" has timed out progressing.',
}
QUOTA = {
    "type": "ReplicaFailure",
    "status": "True",
    "reason": "FailedCreate",
    "message": 'pods "hooks-receiver-5d9c-x" is forbidden: exceeded quota: pods',
}
AVAILABLE = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}


@pytest.mark.parametrize("failed", [DEADLINE, QUOTA], ids=["deadline", "replica-failure"])
def test_a_failed_rollout_is_degraded_with_the_deployments_message(failed: dict[str, str]) -> None:
    seen = Rollout.from_deployment(_deployment(AVAILABLE, failed))
    assert seen.failure == f"{failed['reason']}: {failed['message']}"
    result = build(rollout=seen)
    assert conditions(result) == {
        "Ready": ("True", "ReceiverReady"),  # the old Pods still serve
        "Progressing": ("False", "RolloutFailed"),
        "Degraded": ("True", "RolloutFailed"),
    }
    degraded = status.condition(result, "Degraded")
    assert degraded is not None
    assert failed["message"] in degraded["message"]
    assert status.new_rollout_failure(previous={}, new=result) == degraded["message"]
    assert status.new_rollout_failure(previous=result, new=result) is None


def test_a_rollout_that_progresses_or_is_not_observed_yet_has_not_failed() -> None:
    progressing = {**DEADLINE, "status": "True", "reason": "ReplicaSetUpdated"}
    assert Rollout.from_deployment(_deployment(AVAILABLE, progressing)).failure == ""
    quota_gone = {**QUOTA, "status": "False"}
    assert Rollout.from_deployment(_deployment(quota_gone)).failure == ""
    # A new template resets the controller's conditions once observed: until then
    # the old ones are about the old template.
    assert Rollout.from_deployment(_deployment(DEADLINE, observed=2)).failure == ""


def test_a_rollout_failure_is_not_carried_once_the_deployment_recovers() -> None:
    failed = build(rollout=Rollout.from_deployment(_deployment(DEADLINE)))
    assert status.carried_problem(failed) is None
    recovered = status.refresh_status(previous=failed, rollout=rollout(), now=T1)
    assert conditions(recovered) == {
        "Ready": ("True", "ReceiverReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status.new_rollout_failure(previous=failed, new=recovered) is None


def test_a_reconcile_problem_outranks_a_rollout_failure() -> None:
    seen = Rollout.from_deployment(_deployment(DEADLINE))
    problem = Problem("SecretMissing", "gone")
    assert conditions(build(rollout=seen, problem=problem))["Degraded"] == (
        "True",
        "SecretMissing",
    )


def test_long_deployment_messages_are_cut() -> None:
    long = {**QUOTA, "message": "x" * 5000}
    assert len(Rollout.from_deployment(_deployment(long)).failure) <= 512


def test_suspended_says_so_and_readiness_still_follows_the_deployment() -> None:
    ready = build(rollout=rollout())
    result = status.build_status(
        previous=ready,
        generation=2,
        url=URL,
        external_url=None,
        config_hash=None,
        rollout=None,
        problem=None,
        now=T1,
        suspend=True,
    )
    assert conditions(result) == {
        "Ready": ("True", "Suspended"),
        "Progressing": ("False", "Suspended"),
        "Degraded": ("False", "Suspended"),
    }
    assert status.suspended(result)
    assert not status.suspended(ready)
    assert result["configHash"] == "abc123"
    # The Deployment's changes still show, and it stays suspended.
    refreshed = status.refresh_status(previous=result, rollout=rollout(ready=1), now=T1)
    assert conditions(refreshed)["Ready"] == ("False", "Suspended")
    assert "1/2 receiver Pods are Ready." in refreshed["conditions"][0]["message"]


def test_a_drift_conflict_is_degraded_while_the_receiver_stays_ready() -> None:
    conflict = Problem("DriftConflict", 'changed by "hpa"', permanent=True, applied=True)
    result = build(rollout=rollout(), problem=conflict)
    assert conditions(result) == {
        "Ready": ("True", "ReceiverReady"),
        "Progressing": ("False", "DriftConflict"),
        "Degraded": ("True", "DriftConflict"),
    }
    carried = status.carried_problem(result)
    assert carried is not None
    assert carried.applied
    refreshed = status.refresh_status(previous=result, rollout=rollout(ready=1), now=T1)
    assert conditions(refreshed)["Degraded"] == ("True", "DriftConflict")
    assert conditions(refreshed)["Ready"] == ("False", "PodsNotReady")
