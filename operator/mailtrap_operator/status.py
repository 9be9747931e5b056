"""Pure status logic: what a MailtrapWebhook's ``status`` should say.

`reconciler` calls `build_status` after each reconcile (with the problem it
met, if any) and `refresh_status` when only the receiver Deployment's status
moved, then writes the difference that `merge_patch` computes through
`kubeapi`. Nothing here performs I/O; the clock comes in as an argument.

Conditions follow the Kubernetes conventions: ``Ready``, ``Progressing`` and
``Degraded``, each with a CamelCase reason, a message for people,
``observedGeneration``, and a ``lastTransitionTime`` that only moves when the
condition's status does.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
# Every status carries these, in this order.
CONDITION_TYPES: Final = (READY, PROGRESSING, DEGRADED)
# Degraded because the Deployment says its rollout failed: read from the
# Deployment each time, never carried over like a reconcile's problem.
ROLLOUT_FAILED: Final = "RolloutFailed"
# Degraded because another writer keeps changing fields of a child: the rest is
# applied, and readiness still follows the Deployment (see `contest`).
DRIFT_CONFLICT: Final = "DriftConflict"
# spec.suspend: the operator changes nothing; readiness still follows the Deployment.
SUSPENDED: Final = "Suspended"
SUSPENDED_MESSAGE: Final = (
    "spec.suspend is true: the operator changes none of the receiver's objects until it is unset."
)
# Deployment messages are people's reading, but an admission webhook's can be long.
_MAX_MESSAGE: Final = 512


@dataclass(frozen=True)
class Problem:
    """Why the spec could not be (fully) applied; it becomes the Degraded condition."""

    reason: str
    message: str
    permanent: bool = False  # retrying cannot help until the spec changes
    # The spec is applied except where the message says: readiness still follows
    # the Deployment (a DriftConflict).
    applied: bool = False
    retry_after: float | None = None  # seconds the API server asked us to wait


@dataclass(frozen=True)
class Rollout:
    """The parts of a Deployment's spec and status that readiness depends on."""

    desired: int
    current: int
    ready: int
    updated: int
    observed: bool  # the Deployment controller has seen the latest template
    # Why the Deployment controller gave up on the rollout (its reason and
    # message), empty while it has not: Progressing=False with
    # ProgressDeadlineExceeded, or ReplicaFailure=True (quota, admission...).
    failure: str = ""

    @classmethod
    def from_deployment(cls, body: Mapping[str, Any]) -> Rollout:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        return cls(
            desired=int(spec.get("replicas", 1)),
            current=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            observed=observed,
            # Conditions of a template the controller has not seen yet are stale.
            failure=_rollout_failure(status.get("conditions") or ()) if observed else "",
        )

    @property
    def complete(self) -> bool:
        return (
            self.observed
            and self.updated >= self.desired
            and self.current == self.updated
            and self.ready >= self.desired
        )


def _rollout_failure(conditions: Iterable[Mapping[str, Any]]) -> str:
    for item in conditions:
        kind, value, reason = item.get("type"), item.get("status"), item.get("reason")
        if (
            kind == "Progressing" and value == "False" and reason == "ProgressDeadlineExceeded"
        ) or (kind == "ReplicaFailure" and value == "True"):
            message = str(item.get("message") or "").strip()
            text = f"{reason or kind}: {message}" if message else str(reason or kind)
            return text[:_MAX_MESSAGE]
    return ""


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in status.get("conditions") or ():
        if item.get("type") == kind:
            return dict(item)
    return None


def carried_problem(status: Mapping[str, Any]) -> Problem | None:
    """The problem a previous status reported, to keep it when only replicas moved."""
    degraded = condition(status, DEGRADED)
    if degraded is None or degraded.get("status") != "True":
        return None
    if degraded.get("reason") == ROLLOUT_FAILED:
        return None  # the Deployment's to report again, or not once it recovers
    reason = str(degraded.get("reason", ""))
    return Problem(reason, str(degraded.get("message", "")), applied=reason == DRIFT_CONFLICT)


def suspended(status: Mapping[str, Any]) -> bool:
    """Whether a status says the resource is suspended."""
    progressing = condition(status, PROGRESSING)
    return progressing is not None and progressing.get("reason") == SUSPENDED


def _condition(
    previous: Mapping[str, Any],
    *,
    kind: str,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any]:
    text = "True" if value else "False"
    before = condition(previous, kind)
    changed = before is None or before.get("status") != text or not before.get("lastTransitionTime")
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            timestamp(now) if changed or before is None else before["lastTransitionTime"]
        ),
        "observedGeneration": generation,
    }


def _pods(count: int) -> str:
    return f"{count} receiver Pod" + ("" if count == 1 else "s")


def build_status(
    *,
    previous: Mapping[str, Any],
    generation: int,
    url: str,
    external_url: str | None,
    config_hash: str | None,
    rollout: Rollout | None,
    problem: Problem | None,
    now: datetime.datetime,
    suspend: bool = False,
) -> dict[str, Any]:
    """The whole status for one observed generation.

    Without a rollout (the Deployment is not known yet, or the reconcile stopped
    before it), replica counts are carried over from ``previous``.
    """
    conditions = []
    if suspend:
        if rollout is not None:
            value, _, counts = _readiness(rollout)
        else:
            before = condition(previous, READY) or {}
            value, counts = before.get("status") == "True", ""
        ready = (value, SUSPENDED, f"{SUSPENDED_MESSAGE} {counts}".strip())
        progressing = (False, SUSPENDED, SUSPENDED_MESSAGE)
        degraded = (False, SUSPENDED, SUSPENDED_MESSAGE)
    elif problem is not None and problem.applied:
        ready = _readiness(rollout) if rollout else (False, problem.reason, problem.message)
        progressing = (False, problem.reason, problem.message)
        degraded = (True, problem.reason, problem.message)
    elif problem is not None:
        ready = (False, problem.reason, problem.message)
        progressing = (False, "Blocked", f"Not applied: {problem.message}")
        degraded = (True, problem.reason, problem.message)
    else:
        degraded = (False, "AsExpected", "The spec is applied.")
        if rollout is None:
            ready = (False, "Deploying", "Waiting for the receiver Deployment.")
            progressing = (True, "Deploying", "Waiting for the receiver Deployment.")
        elif rollout.failure:
            # The old Pods may well still serve (maxUnavailable is 0): Ready says so.
            message = f"The receiver Deployment's rollout failed: {rollout.failure}"
            ready = _readiness(rollout)
            progressing = (False, ROLLOUT_FAILED, message)
            degraded = (True, ROLLOUT_FAILED, message)
        else:
            ready = _readiness(rollout)
            progressing = _progress(rollout)
    for kind, (value, reason, message) in zip(
        CONDITION_TYPES, (ready, progressing, degraded), strict=True
    ):
        conditions.append(
            _condition(
                previous,
                kind=kind,
                value=value,
                reason=reason,
                message=message,
                generation=generation,
                now=now,
            )
        )

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "replicas": rollout.current if rollout else int(previous.get("replicas") or 0),
        "readyReplicas": rollout.ready if rollout else int(previous.get("readyReplicas") or 0),
        "url": url,
    }
    if external_url:
        status["externalURL"] = external_url
    hash_value = config_hash if config_hash is not None else previous.get("configHash")
    if hash_value:
        status["configHash"] = hash_value
    return status


def new_rollout_failure(*, previous: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The message of a rollout failure ``new`` reports and ``previous`` did not, if any:
    what deserves a Warning Event."""
    after = condition(new, DEGRADED)
    if after is None or after.get("status") != "True" or after.get("reason") != ROLLOUT_FAILED:
        return None
    before = condition(previous, DEGRADED)
    if before is not None and (before.get("reason"), before.get("message")) == (
        after.get("reason"),
        after.get("message"),
    ):
        return None
    return str(after.get("message") or "")


def refresh_status(
    *, previous: Mapping[str, Any], rollout: Rollout, now: datetime.datetime
) -> dict[str, Any]:
    """The status after the Deployment's status moved: same generation, same problem."""
    return build_status(
        previous=previous,
        generation=int(previous.get("observedGeneration") or 0),
        url=str(previous.get("url") or ""),
        external_url=previous.get("externalURL"),
        config_hash=previous.get("configHash"),
        rollout=rollout,
        problem=carried_problem(previous),
        now=now,
        suspend=suspended(previous),
    )


def _readiness(rollout: Rollout) -> tuple[bool, str, str]:
    if rollout.desired == 0:
        return False, "ScaledToZero", "spec.replicas is 0: no receiver Pod runs."
    counts = f"{rollout.ready}/{rollout.desired} receiver Pods are Ready."
    if rollout.ready >= rollout.desired:
        return True, "ReceiverReady", counts
    return False, "PodsNotReady", counts


def _progress(rollout: Rollout) -> tuple[bool, str, str]:
    if rollout.complete:
        return False, "RolloutComplete", f"{_pods(rollout.desired)} run the current spec."
    return (
        True,
        "RollingOut",
        f"{rollout.updated}/{rollout.desired} receiver Pods run the current spec, "
        f"{rollout.ready} Ready.",
    )


def merge_patch(*, previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch from ``previous`` to ``new`` (top level), or None when equal."""
    patch: dict[str, Any] = {
        key: copy.deepcopy(value) for key, value in new.items() if previous.get(key) != value
    }
    for key in previous:
        if key not in new:
            patch[key] = None  # merge-patch null removes the key
    return patch or None
