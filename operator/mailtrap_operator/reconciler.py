"""One reconcile of one MailtrapWebhook, and the reactions to its children.

`handlers` turn kopf events into calls here, and `resync` what it finds by
listing; this module decides what to do and uses the others to do it:
`builders` for the manifests, `kubeapi` for every API request, `status` for
what to report, the `ledger` to tell our own writes from other writers',
`contest` to back off from a writer that keeps undoing a repair, `recorder` for
Events, `metrics` to count. The entry points:

- `Reconciler.reconcile`: check the spec against the platform's policy
  (`policy_problem`), check that the referenced Secrets exist, opted in and
  hold the keys (`secret_problem`; their values are never read), check who
  holds each child's name (`ownership`: ours, an orphan of ours to adopt, or
  someone else's), create or server-side apply the children, delete the
  optional ones no longer wanted, write status, record Events. A policy
  violation, a Secret problem, a child name held by someone else or an invalid
  spec is not an exception here: it becomes the Degraded condition, a Warning
  Event and the returned `Problem`, which the kopf handler turns into a retry
  (or none, when only a spec change can help). Nothing is applied while any of
  these stands, so there is never a half-applied state. With ``spec.suspend``
  only the status is written.
- `Reconciler.observe_child` (and `Reconciler.observe_states`, for a resync): a
  child changed or disappeared. Noted at once, then handled by a task per owner:
  if the ledger says someone else changed what we set, that child alone is
  applied again (a drift repair), unless `contest` says to wait, or to give up
  (``DriftConflict``); for a Deployment, the owner's replica counts and
  readiness are refreshed.

Transient API failures (no answer, 429, 5xx; `kubeapi` has already retried
them) are not reported until they have lasted `TRANSIENT_GRACE` seconds: an API
server restarting or throttling must not flip every resource to Degraded and
add a status write and an Event to each exactly when it is overloaded. Status
writes that fail are retried in the background until they land (`_flush_status`).

Secrets are not watched (that would take reading every Secret in the cluster):
the receivers re-read their mounted secret files, so a changed value needs no
reconcile, and a missing or unlabelled Secret is retried often enough
(`retry_delay`, at most `SECRET_RETRY_DELAY`) that creating or labelling it
makes the resource Ready soon without anyone touching it.

kopf retries the reconciles of its own handlers. Drift repairs have no handler
to retry them, so when they meet a problem a retry may solve (the API
unreachable, say, while a child was deleted) a task per owner retries with the
same backoff until a reconcile succeeds, the owner goes away or a spec change
is needed.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, NamedTuple

from mailtrap_receiver.retry import backoff as jittered_backoff

from . import builders, ownership, policy, status
from .contest import Action, Contests, Verdict
from .kubeapi import ApiError, KubeApi
from .ledger import ChildKey, ChildState, Ledger, OwnerRecord, drift, newer
from .logs import get_logger
from .metrics import OperatorMetrics
from .recorder import EventRecorder
from .resources import (
    DEPLOYMENT,
    FIELD_MANAGER,
    KINDS_BY_NAME,
    SECRET_OPT_IN_LABEL,
    SECRET_OPT_IN_VALUE,
    SERVICE_MONITOR,
    Kind,
    Owner,
    OwnerKey,
    SecretInfo,
)
from .settings import Settings

log = get_logger(__name__)


class ChildRef(NamedTuple):
    """A child as kopf's children index holds it, under its controller's key."""

    kind: str
    name: str
    uid: str
    owner_uid: str  # the controller MailtrapWebhook's uid


class Lookups(NamedTuple):
    """kopf's indexes, as the handlers hand them over: the owner at a key, and the
    children the watches know of an owner."""

    find_owner: Callable[[OwnerKey], Owner | None]
    known_children: Callable[[OwnerKey], Iterable[ChildRef]]


# Races lost in a row before giving up for now: the object at a name changed
# between the owner check and the write (each time, the check is made again).
WRITE_ATTEMPTS: Final = 3
SECRET_PROBLEMS: Final = frozenset({"SecretMissing", "SecretKeyMissing", "SecretNotLabelled"})
API_UNAVAILABLE: Final = "ApiUnavailable"
# Problems for people to fix in the spec or beside it (outcome "degraded"), rather
# than the API failing (outcome "error").
DEGRADED_PROBLEMS: Final = SECRET_PROBLEMS | {
    "InvalidSpec",
    "PolicyViolation",
    "ChildConflict",
    status.DRIFT_CONFLICT,
}
MAX_RETRY_DELAY: Final = 300.0
# Creating or labelling a Secret is not watched: the retry notices it, this soon.
SECRET_RETRY_DELAY: Final = 30.0
# The API failing: retried sooner than a problem people must fix, since it is
# not reported for this long (an API server restart, throttling).
API_RETRY_DELAY: Final = 30.0
TRANSIENT_GRACE: Final = 60.0
# Readiness refreshed from the Deployment at most this often per resource: a
# Deployment scaled back and forth (another writer, a flapping autoscaler) cannot
# turn into a stream of status writes.
STATUS_REFRESH_INTERVAL: Final = 2.0
# Status writes that failed: the first retry after this long, doubling up to the cap.
STATUS_RETRY_FIRST: Final = 1.0
STATUS_RETRY_MAX: Final = 30.0
# Why a drift repair is retried when the API would not say whether its owner lives.
UNANSWERED: Final = status.Problem(
    API_UNAVAILABLE, "The Kubernetes API did not answer whether the MailtrapWebhook exists."
)

_rng = random.Random()  # noqa: S311 - jitter needs no crypto strength


def retry_delay(retry: int, problem: status.Problem | None = None) -> float:
    """Backoff for failed reconciles: 5 s, 10 s, 20 s ... 5 min; at most
    `SECRET_RETRY_DELAY` for a Secret problem; for the API failing, 1 s doubling up
    to `API_RETRY_DELAY`, jittered so that many resources do not retry together, and
    never before the server's Retry-After."""
    if problem is not None and problem.reason == API_UNAVAILABLE:
        delay = min(API_RETRY_DELAY, 2.0 ** min(retry, 10)) * _rng.uniform(1.0, 1.5)
        return max(delay, problem.retry_after or 0.0)
    cap = MAX_RETRY_DELAY
    if problem is not None and problem.reason in SECRET_PROBLEMS:
        cap = SECRET_RETRY_DELAY
    return float(min(cap, 5.0 * 2 ** min(retry, 10)))


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Holds what reconciles share: settings, the API, the ledger and the metrics."""

    def __init__(
        self,
        *,
        settings: Settings,
        api: KubeApi,
        metrics: OperatorMetrics,
        ledger: Ledger | None = None,
        clock: Callable[[], datetime.datetime] = _utcnow,
        backoff: Callable[[int, status.Problem | None], float] = retry_delay,
        monotonic: Callable[[], float] = time.monotonic,
        contests: Contests | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.ledger = ledger or Ledger()
        self.clock = clock
        self.backoff = backoff
        self.monotonic = monotonic
        self.contests = contests or Contests()
        self.events = EventRecorder(api, spawn=self._spawn, clock=monotonic, wallclock=clock)
        self.lookups: Lookups | None = None
        # uids of children kopf's index still holds that a re-list no longer found
        # (deleted while the watch was down): not trusted as ours (see `resync`).
        self.stale_children: frozenset[str] = frozenset()
        self._background: set[asyncio.Task[None]] = set()
        # Latest unhandled state of each child, per owner; and owners being drained.
        self._inbox: dict[OwnerKey, dict[ChildKey, ChildState]] = {}
        self._draining: set[OwnerKey] = set()
        # Children whose drift waits (backoff, or a child given up on), and when the
        # owner's next look at them is due (monotonic).
        self._deferred: dict[OwnerKey, dict[ChildKey, ChildState]] = {}
        self._refreshes: dict[OwnerKey, ChildState] = {}  # Deployment states held back
        self._wakes: dict[OwnerKey, float] = {}
        # Owners with a retry task (see the module docstring), and with a status
        # write being retried.
        self._retrying: set[OwnerKey] = set()
        self._status_retrying: set[OwnerKey] = set()

    # -- entry points --

    def bind(self, lookups: Lookups) -> None:
        """kopf's indexes, for the work done later in the background (retries,
        backoffs, a resync's findings), which must see the latest of each owner."""
        self.lookups = lookups

    async def reconcile(
        self, *, owner: Owner, known_children: Iterable[ChildRef], trigger: str
    ) -> status.Problem | None:
        """Bring the children and status in line with the owner's spec."""
        async with self.ledger.lock(owner.key):
            return await self._reconcile(owner, known_children, trigger)

    def observe_child(
        self,
        *,
        kind: str,
        event_type: str | None,
        body: Mapping[str, Any],
        find_owner: Callable[[OwnerKey], Owner | None],
        known_children: Callable[[OwnerKey], Iterable[ChildRef]],
    ) -> None:
        """Note a child's new state and return at once; a task per owner handles it.

        kopf's worker for the child is free (and its body garbage) right away,
        instead of waiting for the owner's lock while a reconcile runs: with a
        thousand resources created at once, that waiting held thousands of bodies.
        Only the latest state of each child matters, so newer ones replace older.
        """
        self.bind(Lookups(find_owner, known_children))
        state = ChildState.from_body(kind=kind, body=body, deleted=event_type == "DELETED")
        if state.owner is not None:
            self.observe_states(state.owner, [state])

    def observe_states(self, key: OwnerKey, states: Iterable[ChildState]) -> None:
        """Children's states to handle, as `observe_child` does (a resync's findings)."""
        inbox = self._inbox.setdefault(key, {})
        for state in states:
            inbox[state.key] = state
        if inbox and key not in self._draining:
            self._draining.add(key)
            self._spawn(self._drain(key))

    def on_owner_event(self, *, event_type: str | None, key: OwnerKey, managed: int) -> None:
        if event_type == "DELETED":
            self.forget_owner(key)
        self.metrics.managed_resources.set(managed)

    def forget_owner(self, key: OwnerKey) -> None:
        """The owner is gone: nothing of it is kept."""
        self.ledger.forget_owner(key)
        self.contests.forget_owner(key)
        self.events.forget(key)
        self._deferred.pop(key, None)
        self._refreshes.pop(key, None)
        self._wakes.pop(key, None)
        self.metrics.drift_conflicts.set(self.contests.given_up())

    async def ensure_status(self, *, owner: Owner) -> None:
        """Write the status again if the one the API server has (``owner.status``, as
        a re-list read it) is not the one the operator last built."""
        record = self.ledger.known_owner(owner.key, uid=owner.uid)
        if record is None or record.status is None or owner.key in self._status_retrying:
            return
        if status.merge_patch(previous=owner.status, new=record.status) is None:
            return
        async with self.ledger.lock(owner.key):
            if record is not self.ledger.known_owner(owner.key, uid=owner.uid):
                return
            if (
                owner.resource_version
                and record.written_version
                and newer(record.written_version, owner.resource_version)
            ):
                return  # read before our last write landed
            log.info("status out of date", namespace=owner.namespace, name=owner.name)
            record.written = dict(owner.status)
            await self._flush_status(owner, record)

    def catch_up(self, owner: Owner) -> None:
        """A resync found the owner's last reconcile failed in a way a retry may fix:
        make sure a retry comes, whoever was to make it (kopf gives up on a handler
        whose own writes keep failing, as under heavy throttling)."""
        record = self.ledger.known_owner(owner.key, uid=owner.uid)
        if record is not None and record.retry is not None:
            self._retry(owner)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- children's events, per owner --

    async def _drain(self, key: OwnerKey) -> None:
        try:
            while pending := self._inbox.pop(key, None):
                try:
                    await self._handle_children(key, list(pending.values()))
                except Exception:  # never lose the loop: later events still need handling
                    log.exception("child events not handled", namespace=key[0], name=key[1])
        finally:
            self._draining.discard(key)

    async def _handle_children(self, key: OwnerKey, states: list[ChildState]) -> None:
        if self.lookups is None:
            return
        owner = self.lookups.find_owner(key)
        if owner is None or owner.deleting:
            return
        async with self.ledger.lock(key):
            record = self.ledger.known_owner(key, uid=owner.uid)
            if record is None:
                # Not reconciled by this process yet; its resume or create handler will.
                return
            suspend = builders.suspended(owner)
            repairs: list[tuple[ChildState, str]] = []
            gave_up = False
            rollout: status.Rollout | None = None
            rolled: ChildState | None = None
            now = self.monotonic()
            for state in states:
                if state.owner_uid and state.owner_uid != owner.uid:
                    continue  # left over from an earlier object of the same name
                applied = self.ledger.applied(state.key)
                reason = None if suspend else drift(applied=applied, state=state)
                if reason is None:
                    if (
                        state.rollout is not None
                        and applied is not None
                        and (state.generation or 0) >= (applied.generation or 0)
                    ):
                        rollout, rolled = state.rollout, state
                    continue
                verdict = self.contests.drifted(
                    state.key,
                    owner=key,
                    generation=owner.generation,
                    now=now,
                    writer=state.writer,
                    deleted=state.deleted,
                )
                if verdict.action is Action.REPAIR:
                    repairs.append((state, reason))
                    continue
                self._defer(key, state, verdict.delay)
                if verdict.action is Action.GIVE_UP:
                    gave_up = True
                    log.warning(
                        "stopped repairing a child that another writer keeps changing",
                        namespace=owner.namespace,
                        name=owner.name,
                        kind=state.key[0],
                        writer=verdict.writer,
                        repairs=verdict.rounds,
                    )
            if rollout is not None:
                record.rollout = rollout
            if repairs or gave_up:
                # Garbage collection deletes children after their owner, and orphans
                # them for `kubectl delete --cascade=orphan`: never bring one back, nor
                # its owner reference, for an owner that is going away.
                if any(state.deleted or not state.owner_uid for state, _ in repairs):
                    alive = await self._owner_alive(owner)
                    if alive is None:  # the API did not answer: ask again later
                        record.retry = UNANSWERED
                        self._retry(owner)
                    if not alive:
                        return
                await self._repair(owner, record, repairs)
                if record.retry is not None:
                    self._retry(owner)
            elif rolled is not None and rollout is not None:
                wait = record.written_at + STATUS_REFRESH_INTERVAL - now
                if wait > 0:
                    self._refreshes[key] = rolled
                    self._wake_in(key, wait)
                else:
                    await self._refresh(owner, record, rollout)

    # -- the reconcile itself --

    async def _reconcile(
        self,
        owner: Owner,
        known_children: Iterable[ChildRef],
        trigger: str,
        *,
        only: frozenset[str] | None = None,
    ) -> status.Problem | None:
        """A reconcile: of every child, or (``only``) of those kinds, for a repair."""
        if owner.deleting:
            return None
        started = time.monotonic()
        record = self.ledger.owner(owner.key, uid=owner.uid)
        if record.written is None:
            record.written = dict(owner.status)
        previous = record.status if record.status is not None else dict(owner.status)
        first = not record.reconciled
        problem: status.Problem | None = None
        transient = False
        try:
            if builders.suspended(owner):
                await self._suspend(owner, record, previous)
            else:
                builders.validate(owner)
                problem = policy_problem(owner, self.settings.policy)
                if problem is None:
                    problem = await self._check_secrets(owner)
                if problem is None:
                    problem = await self._apply(
                        owner, known_children, record, previous, first=first, only=only
                    )
        except builders.SpecError as error:
            problem = status.Problem("InvalidSpec", str(error), permanent=True)
        except ownership.ChildConflict as error:
            # Retried: the other object may go (garbage collection of a leftover).
            problem = status.Problem("ChildConflict", str(error))
        except ApiError as error:
            if error.namespace_terminating:
                # The namespace controller deletes children before their owner;
                # putting them back is neither possible nor wanted.
                log.info("namespace terminating", namespace=owner.namespace, name=owner.name)
                record.retry = None  # nothing left to retry
                return None
            problem = api_problem(error)
            transient = error.transient
        if problem is not None and not problem.applied:
            await self._problem(owner, record, previous, problem, transient=transient)
        else:
            record.failing_since = None
        record.reconciled = True
        if only is None and (problem is None or problem.applied):
            record.generation = owner.generation
        record.retry = problem if problem is not None and not problem.permanent else None

        elapsed = time.monotonic() - started
        if problem is None:
            outcome = "success"
        elif problem.reason in DEGRADED_PROBLEMS:
            outcome = "degraded"
        else:
            outcome = "error"
        self.metrics.reconciles.labels(outcome=outcome).inc()
        self.metrics.reconcile_duration.observe(elapsed)
        log.info(
            "reconciled",
            namespace=owner.namespace,
            name=owner.name,
            generation=owner.generation,
            trigger=trigger,
            outcome=outcome,
            reason=problem.reason if problem else None,
            only=sorted(only) if only is not None else None,
            duration_ms=round(elapsed * 1000, 1),
        )
        return problem

    async def _problem(
        self,
        owner: Owner,
        record: OwnerRecord,
        previous: Mapping[str, Any],
        problem: status.Problem,
        *,
        transient: bool,
    ) -> None:
        """Report a problem, unless it is the API failing for less than
        `TRANSIENT_GRACE` seconds so far (then only log it: the retry comes soon)."""
        now = self.monotonic()
        if not transient:
            record.failing_since = None
        else:
            if record.failing_since is None:
                record.failing_since = now
            if now - record.failing_since < TRANSIENT_GRACE:
                log.info(
                    "kubernetes api failing, retrying before reporting it",
                    namespace=owner.namespace,
                    name=owner.name,
                    error=problem.message,
                    failing_seconds=round(now - record.failing_since, 1),
                )
                return
        new = self._status(owner, previous, config_hash=None, rollout=None, problem=problem)
        await self._write_status(owner, record, previous, new)

    async def _suspend(
        self, owner: Owner, record: OwnerRecord, previous: Mapping[str, Any]
    ) -> None:
        """spec.suspend: nothing changes but the status, which says so."""
        self.contests.forget_owner(owner.key)
        self._deferred.pop(owner.key, None)
        new = self._status(
            owner, previous, config_hash=None, rollout=record.rollout, problem=None, suspend=True
        )
        if not status.suspended(previous):
            self._event(owner, "Normal", status.SUSPENDED, status.SUSPENDED_MESSAGE)
        await self._write_status(owner, record, previous, new)

    async def _check_secrets(self, owner: Owner) -> status.Problem | None:
        """What is wrong with the Secrets the spec references, if anything."""
        refs = builders.secret_refs(owner.spec)
        names = sorted({ref.name for ref in refs})
        found = await asyncio.gather(
            *(self.api.read_secret(namespace=owner.namespace, name=name) for name in names)
        )
        return secret_problem(
            namespace=owner.namespace,
            refs=refs,
            secrets=dict(zip(names, found, strict=True)),
            require_label=self.settings.policy.require_secret_label,
        )

    async def _apply(
        self,
        owner: Owner,
        known_children: Iterable[ChildRef],
        record: OwnerRecord,
        previous: Mapping[str, Any],
        *,
        first: bool,
        only: frozenset[str] | None,
    ) -> status.Problem | None:
        """Apply the children (``only`` those kinds, for a repair) and write status;
        the DriftConflict of children given up on, if any."""
        config = builders.build_config(
            spec=owner.spec,
            namespace=owner.namespace,
            denied_target_ranges=self.settings.policy.denied_target_cidrs,
        )
        config_text = builders.render_config(config=config, owner=owner)
        config_hash = builders.config_hash(config_text=config_text)
        monitors = await self.api.served(kind=SERVICE_MONITOR)
        children = builders.build_children(
            owner=owner,
            default_image=self.settings.receiver_image,
            config_text=config_text,
            config_hash=config_hash,
            service_monitors_available=monitors,
            image_pull_policy=self.settings.receiver_image_pull_policy or None,
        )
        # Children another writer keeps changing are left alone (`contest`).
        held = self.contests.held(owner.key, generation=owner.generation)
        held_kinds = {key[0] for key in held}

        # Every child is checked before any is written: a name held by someone
        # else stops the whole apply (no half-applied state) and is reported.
        wanted = [
            (KINDS_BY_NAME[manifest["kind"]], manifest)
            for manifest in children.manifests
            if manifest["kind"] not in held_kinds and (only is None or manifest["kind"] in only)
        ]
        # ServiceMonitors are not watched: after a restart only a read can tell
        # whether one of ours is left over. A repair deletes nothing.
        unwanted = [
            kind
            for kind in sorted(children.unwanted, key=lambda k: k.kind)
            if only is None
            and (kind.watched or (monitors and (first or self._applied(owner, kind) is not None)))
        ]
        known = self._known(owner, known_children)
        claims = await asyncio.gather(
            *(self._claim(owner, kind, known) for kind, _ in wanted),
            *(self._claim(owner, kind, known, read=not kind.watched) for kind in unwanted),
        )
        conflicts = [
            ownership.conflict_message(kind.kind, builders.child_name(owner.name), claim.holder)
            for (kind, _), claim in zip(wanted, claims, strict=False)
            if claim.action is ownership.Action.CONFLICT
        ]
        if conflicts:
            raise ownership.ChildConflict("; ".join(conflicts) + ".")

        for (kind, manifest), claim in zip(wanted, claims, strict=False):
            body = await self._write(owner, kind, manifest, claim)
            self.ledger.record_applied(kind=kind.kind, owner=owner.key, body=body)
            if kind is DEPLOYMENT:
                record.rollout = status.Rollout.from_deployment(body)

        name = builders.child_name(owner.name)
        for kind, claim in zip(unwanted, claims[len(wanted) :], strict=True):
            if claim.action is not ownership.Action.APPLY:
                continue  # nothing there, or not ours to delete
            self.ledger.forget_child((kind.kind, owner.namespace, name))
            if await self.api.delete(
                kind=kind, namespace=owner.namespace, name=name, uid=claim.uid
            ):
                log.info(
                    "deleted unwanted child",
                    namespace=owner.namespace,
                    name=owner.name,
                    kind=kind.kind,
                )

        problem = drift_conflict(held, quiet=self.contests.quiet)
        new = self._status(
            owner, previous, config_hash=config_hash, rollout=record.rollout, problem=problem
        )
        await self._write_status(owner, record, previous, new)
        if only is not None:
            return problem

        was_degraded = status.carried_problem(previous) is not None
        if (
            previous.get("observedGeneration") != owner.generation
            or previous.get("configHash") != config_hash
            or (was_degraded and problem is None)
        ):
            kinds = ", ".join(manifest["kind"] for manifest in children.manifests)
            self._event(
                owner,
                "Normal",
                "Applied",
                f"Applied {kinds} for generation {owner.generation} "
                f"(receiver config {config_hash[:12]}).",
            )
        if children.skipped_service_monitor and previous.get("observedGeneration") != (
            owner.generation
        ):
            self._event(
                owner,
                "Warning",
                "ServiceMonitorSkipped",
                "spec.serviceMonitor.enabled is true but the cluster does not serve "
                "monitoring.coreos.com/v1 ServiceMonitors (is the Prometheus Operator installed?).",
            )
        return problem

    # -- children: who holds each name, and writes conditioned on it --

    def _known(
        self, owner: Owner, known_children: Iterable[ChildRef]
    ) -> dict[str, ownership.Found]:
        """What kopf's children index knows at this owner's child name, by kind."""
        name = builders.child_name(owner.name)
        return {
            child.kind: ownership.Found.of(owner, uid=child.uid, owner_uid=child.owner_uid)
            for child in known_children
            if child.name == name and child.uid not in self.stale_children
        }

    def _applied(self, owner: Owner, kind: Kind) -> ownership.Found | None:
        """What this process last applied at the child name, if anything."""
        applied = self.ledger.applied((kind.kind, owner.namespace, builders.child_name(owner.name)))
        if applied is None or not applied.uid:
            return None
        return ownership.Found.of(owner, uid=applied.uid, owner_uid=owner.uid)

    async def _claim(
        self,
        owner: Owner,
        kind: Kind,
        known: Mapping[str, ownership.Found],
        *,
        read: bool = True,
    ) -> ownership.Claim:
        """Whose object is at the child name, from the index, the ledger, or a read.

        The index holds only labelled children with a MailtrapWebhook controller,
        and may lag behind our own writes (which the ledger has): anything neither
        knows is read, unless ``read`` is off (an unwanted watched kind, which the
        index would hold if it were ours).
        """
        found = known.get(kind.kind) or self._applied(owner, kind)
        if found is None and read:
            found = await self._read_child(owner, kind)
        return ownership.claim(found, owner, component=builders.COMPONENTS[kind])

    async def _read_child(self, owner: Owner, kind: Kind) -> ownership.Found | None:
        body = await self.api.read(
            kind=kind, namespace=owner.namespace, name=builders.child_name(owner.name)
        )
        return None if body is None else ownership.Found.from_body(body)

    async def _write(
        self, owner: Owner, kind: Kind, manifest: Mapping[str, Any], claim: ownership.Claim
    ) -> dict[str, Any]:
        """Create or apply one child as ``claim`` allows; when the object at its name
        changed in between (a create finds it taken, an apply finds another uid),
        check again and go by the new answer."""
        name = builders.child_name(owner.name)
        keep = self._handed_on(owner, kind)
        for _ in range(WRITE_ATTEMPTS):
            if claim.action is ownership.Action.CONFLICT:
                break
            try:
                if claim.action is ownership.Action.CREATE:
                    body = await self.api.create(
                        manifest=builders.creation_manifest(owner, manifest), kind=kind
                    )
                else:
                    if keep:
                        await self._hand_on(owner, kind, claim.uid, keep)
                    meta = {**manifest["metadata"], "uid": claim.uid}
                    body = await self.api.apply(manifest={**manifest, "metadata": meta}, kind=kind)
                    if claim.action is ownership.Action.ADOPT:
                        log.info(
                            "adopted child",
                            namespace=owner.namespace,
                            name=owner.name,
                            kind=kind.kind,
                        )
            except ApiError as error:
                if not (error.already_exists or error.uid_mismatch):
                    raise
                log.info(
                    "child changed hands",
                    namespace=owner.namespace,
                    name=owner.name,
                    kind=kind.kind,
                )
                self.ledger.forget_child((kind.kind, owner.namespace, name))
                found = await self._read_child(owner, kind)
                claim = ownership.claim(found, owner, component=builders.COMPONENTS[kind])
            else:
                return await self._settle_fields(kind, body, keep)
        holder = claim.holder or "it kept changing while being written"
        raise ownership.ChildConflict(ownership.conflict_message(kind.kind, name, holder) + ".")

    def _handed_on(self, owner: Owner, kind: Kind) -> tuple[ownership.FieldPath, ...]:
        """Fields of a child that another controller owns, which applies leave out."""
        if kind is DEPLOYMENT and builders.replicas_external(owner.spec):
            return (ownership.REPLICAS,)
        return ()

    async def _hand_on(
        self, owner: Owner, kind: Kind, uid: str, keep: tuple[ownership.FieldPath, ...]
    ) -> None:
        """Before an apply that leaves out fields our apply used to set, move them out
        of our "Apply" entry: server-side apply would otherwise remove them (and a
        Deployment without replicas has one), instead of leaving them to whoever sets
        them now. Read first, unless the ledger knows we do not hold them."""
        name = builders.child_name(owner.name)
        applied = self.ledger.applied((kind.kind, owner.namespace, name))
        if applied is not None and applied.uid == uid and not applied.holds_replicas:
            return
        for _ in range(WRITE_ATTEMPTS):
            body = await self.api.read(kind=kind, namespace=owner.namespace, name=name)
            meta = (body or {}).get("metadata") or {}
            if meta.get("uid") != uid:
                return  # the apply, conditioned on uid, finds out what is there
            settled = ownership.settle_managed_fields(
                meta.get("managedFields") or (), FIELD_MANAGER, keep=keep
            )
            if settled is None:
                return
            try:
                await self.api.set_managed_fields(
                    kind=kind,
                    namespace=owner.namespace,
                    name=name,
                    resource_version=str(meta.get("resourceVersion", "")),
                    entries=settled,
                )
            except ApiError as error:
                if error.status != 409:
                    raise
            else:
                log.info(
                    "handed fields on", namespace=owner.namespace, name=owner.name, kind=kind.kind
                )
                return

    async def _settle_fields(
        self, kind: Kind, body: dict[str, Any], keep: tuple[ownership.FieldPath, ...]
    ) -> dict[str, Any]:
        """A created child's fields handed to our apply, which can then remove them
        (but those at ``keep``, left to another controller).

        Conditioned on the version just seen, and controllers write a new object's
        status at once: a lost race reads the object again. One that keeps losing is
        left for the next write, whose answer is folded the same way.
        """
        for _ in range(WRITE_ATTEMPTS):
            meta = body.get("metadata") or {}
            settled = ownership.settle_managed_fields(
                meta.get("managedFields") or (), FIELD_MANAGER, keep=keep
            )
            if settled is None:
                return body
            namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            try:
                return await self.api.set_managed_fields(
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    resource_version=str(meta.get("resourceVersion", "")),
                    entries=settled,
                )
            except ApiError as error:
                if error.status != 409:
                    raise
            fresh = await self.api.read(kind=kind, namespace=namespace, name=name)
            if fresh is None:
                break
            body = fresh
        return body

    # -- status --

    def _status(
        self,
        owner: Owner,
        previous: Mapping[str, Any],
        *,
        config_hash: str | None,
        rollout: status.Rollout | None,
        problem: status.Problem | None,
        suspend: bool = False,
    ) -> dict[str, Any]:
        """The status for the owner's current generation (`status.build_status`)."""
        return status.build_status(
            previous=previous,
            generation=owner.generation,
            url=builders.service_url(owner),
            external_url=builders.external_url(owner),
            config_hash=config_hash,
            rollout=rollout,
            problem=problem,
            now=self.clock(),
            suspend=suspend,
        )

    async def _write_status(
        self,
        owner: Owner,
        record: OwnerRecord,
        previous: Mapping[str, Any],
        new: dict[str, Any],
    ) -> None:
        """Make ``new`` the status, and say in an Event what newly went wrong."""
        record.status = new
        # Here, so that whichever write reports a problem (or a failed rollout)
        # first also says so once.
        problem = status.carried_problem(new)
        if problem is not None and problem != status.carried_problem(previous):
            self._event(owner, "Warning", problem.reason, problem.message)
        message = status.new_rollout_failure(previous=previous, new=new)
        if message is not None:
            self._event(owner, "Warning", status.ROLLOUT_FAILED, message)
        await self._flush_status(owner, record)

    async def _flush_status(self, owner: Owner, record: OwnerRecord) -> None:
        """Write what the status lacks; if that fails, a task retries until it lands."""
        error = await self._write_lacking(owner, record)
        if error is not None:
            log.warning(
                "status not written, retrying",
                namespace=owner.namespace,
                name=owner.name,
                error=str(error),
            )
            self._retry_status(owner, error.retry_after)

    async def _write_lacking(self, owner: Owner, record: OwnerRecord) -> ApiError | None:
        """Patch the status with what the API server's lacks, if anything; the error
        if that failed."""
        if record.status is None:
            return None
        patch = status.merge_patch(previous=record.written or {}, new=record.status)
        if patch is None:
            return None
        try:
            body = await self.api.patch_status(
                namespace=owner.namespace, name=owner.name, status=patch
            )
        except ApiError as error:
            return error
        record.written = record.status
        record.written_version = _version(body)
        record.written_at = self.monotonic()
        return None

    def _retry_status(self, owner: Owner, retry_after: float | None) -> None:
        if owner.key not in self._status_retrying:
            self._status_retrying.add(owner.key)
            self._spawn(self._status_retry_loop(owner, retry_after))

    async def _status_retry_loop(self, first: Owner, retry_after: float | None) -> None:
        key = first.key
        failures = 0
        try:
            while True:
                failures += 1
                await asyncio.sleep(
                    jittered_backoff(
                        failures=failures,
                        initial=STATUS_RETRY_FIRST,
                        maximum=STATUS_RETRY_MAX,
                        retry_after=retry_after,
                    )
                )
                owner = self._latest(first)
                if owner is None or owner.deleting:
                    return
                async with self.ledger.lock(key):
                    record = self.ledger.known_owner(key, uid=owner.uid)
                    if record is None:
                        return
                    error = await self._write_lacking(owner, record)
                    if error is None:
                        log.info("status up to date", namespace=key[0], name=key[1])
                        return
                    retry_after = error.retry_after
        except Exception:  # the next resync writes it (`ensure_status`)
            log.exception("status retries stopped", namespace=key[0], name=key[1])
        finally:
            self._status_retrying.discard(key)

    # -- reactions --

    async def _repair(
        self, owner: Owner, record: OwnerRecord, repairs: list[tuple[ChildState, str]]
    ) -> None:
        """Apply the drifted children again (all of them when the spec moved on since
        the last full reconcile), and write status: a child given up on shows there."""
        for state, reason in repairs:
            self.metrics.drift_repairs.labels(kind=state.key[0]).inc()
            log.info(
                "child drifted",
                namespace=owner.namespace,
                name=owner.name,
                kind=state.key[0],
                why=reason,
            )
        only = frozenset(state.key[0] for state, _ in repairs)
        problem = await self._reconcile(
            owner,
            self._known_children(owner.key),
            "drift",
            only=only if record.generation == owner.generation else None,
        )
        now = self.monotonic()
        for state, _ in repairs:
            self.contests.repaired(state.key, now=now)
        self.metrics.drift_conflicts.set(self.contests.given_up())
        if problem is None or problem.applied:
            for state, reason in repairs:
                kind, _, name = state.key
                self._event(
                    owner,
                    "Normal",
                    "Restored",
                    f"{kind} {name} was changed outside the operator ({reason}); put it back.",
                )

    async def _refresh(self, owner: Owner, record: OwnerRecord, rollout: status.Rollout) -> None:
        previous = record.status if record.status is not None else dict(owner.status)
        if "observedGeneration" not in previous:
            return
        new = status.refresh_status(previous=previous, rollout=rollout, now=self.clock())
        await self._write_status(owner, record, previous, new)

    async def _owner_alive(self, owner: Owner) -> bool | None:
        """Whether the owner still exists and is not being deleted; None if unknown."""
        try:
            body = await self.api.read_owner(namespace=owner.namespace, name=owner.name)
        except ApiError:
            return None
        if body is None:
            return False
        meta = body.get("metadata") or {}
        return bool(meta.get("uid") == owner.uid and not meta.get("deletionTimestamp"))

    # -- drift that waits: backoff, or a child given up on --

    def _defer(self, key: OwnerKey, state: ChildState, delay: float) -> None:
        self._deferred.setdefault(key, {})[state.key] = state
        self._wake_in(key, delay)

    def _wake_in(self, key: OwnerKey, delay: float) -> None:
        due = self.monotonic() + delay
        current = self._wakes.get(key)
        if current is not None and current <= due:
            return
        self._wakes[key] = due
        self._spawn(self._wake(key, due))

    async def _wake(self, key: OwnerKey, due: float) -> None:
        await asyncio.sleep(max(0.0, due - self.monotonic()))
        if self._wakes.get(key) != due:
            return  # an earlier wake took over
        del self._wakes[key]
        deferred = self._deferred.pop(key, {})
        now = self.monotonic()
        ready: list[ChildState] = []
        refresh = self._refreshes.pop(key, None)
        if refresh is not None and refresh.key not in self._inbox.get(key, {}):
            ready.append(refresh)
        for child, state in deferred.items():
            left = self.contests.recheck(child, now=now)
            if left > 0:
                self._defer(key, state, left)
            elif child not in self._inbox.get(key, {}):  # a newer state supersedes it
                ready.append(state)
        self.observe_states(key, ready)

    # -- retries of reconciles that no kopf handler retries --

    def _retry(self, owner: Owner) -> None:
        if owner.key not in self._retrying:
            self._retrying.add(owner.key)
            self._spawn(self._retry_loop(owner))

    async def _retry_loop(self, first: Owner) -> None:
        key = first.key
        attempt = 0
        try:
            while True:
                record = self.ledger.known_owner(key)
                await asyncio.sleep(self.backoff(attempt, record.retry if record else None))
                attempt += 1
                # The latest snapshot: the spec may have changed since the failure.
                owner = self._latest(first)
                if owner is None or owner.deleting:
                    return
                async with self.ledger.lock(key):
                    record = self.ledger.known_owner(key, uid=owner.uid)
                    if record is None or record.retry is None:
                        return  # forgotten, or another reconcile succeeded meanwhile
                    # A child may have gone with its owner (garbage collection)
                    # while kopf's index still holds the owner.
                    alive = await self._owner_alive(owner)
                    if alive is False:
                        return
                    if alive is None:
                        continue
                    await self._reconcile(owner, self._known_children(key), "retry")
                    if record.retry is None:
                        return
        except Exception:  # a retry lost is logged; the next event or resync reconciles
            log.exception("reconcile retries stopped", namespace=key[0], name=key[1])
        finally:
            self._retrying.discard(key)

    # -- background tasks --

    def _latest(self, owner: Owner) -> Owner | None:
        """The latest snapshot of an owner from kopf's index (``owner`` when unbound)."""
        return self.lookups.find_owner(owner.key) if self.lookups is not None else owner

    def _known_children(self, key: OwnerKey) -> Iterable[ChildRef]:
        return self.lookups.known_children(key) if self.lookups is not None else ()

    def _event(self, owner: Owner, event_type: str, reason: str, message: str) -> None:
        self.events.record(owner, event_type, reason, message)

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a loop of the operator's (the resync) until `close`."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        # The loop keeps only weak references to tasks: hold them until done.
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _version(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")


def drift_conflict(held: Mapping[ChildKey, Verdict], *, quiet: float) -> status.Problem | None:
    """The DriftConflict of the children given up on, naming who keeps changing them."""
    if not held:
        return None
    parts = []
    for (kind, _, name), verdict in sorted(held.items()):
        writer = f'"{verdict.writer}"' if verdict.writer else "another writer"
        hint = (
            " (to leave replicas to an autoscaler, set spec.replicasManagedExternally)"
            if kind == DEPLOYMENT.kind
            else ""
        )
        parts.append(
            f"{kind} {name}: fields the operator sets keep being changed by {writer} "
            f"({verdict.rounds} repairs undone){hint}"
        )
    return status.Problem(
        status.DRIFT_CONFLICT,
        "; ".join(parts) + ". The operator stopped putting them back until the spec changes, "
        f"the child is deleted, or no change comes for {quiet:.0f} s.",
        permanent=True,
        applied=True,
    )


def api_problem(error: ApiError) -> status.Problem:
    """What a failed request means for the resource, named so people know what to fix."""
    if error.rejected:
        return status.Problem(
            "ApplyRejected", f"The Kubernetes API answered {error}", permanent=True
        )
    if error.forbidden:
        # Retried all the same: granting the permission must not need a spec change.
        return status.Problem(
            "Forbidden",
            f"The Kubernetes API refused the operator ({error}): "
            "check the operator's RBAC (the chart's ClusterRole or Roles).",
        )
    return status.Problem("ApiUnavailable", f"The Kubernetes API answered {error}")


def policy_problem(owner: Owner, rules: policy.Policy) -> status.Problem | None:
    """The spec's violations of the platform's policy, as one permanent problem: only
    a spec change (or other operator settings, after a restart) can fix it."""
    violations = policy.check(owner.spec, namespace=owner.namespace, policy=rules)
    if not violations:
        return None
    message = "; ".join(str(violation) for violation in violations) + "."
    return status.Problem("PolicyViolation", message, permanent=True)


def secret_problem(
    *,
    namespace: str,
    refs: Iterable[builders.SecretRef],
    secrets: Mapping[str, SecretInfo | None],
    require_label: bool,
) -> status.Problem | None:
    """What is wrong with the referenced Secrets (by name in ``secrets``), if anything.

    A Secret counts only once whoever may write it opted in with the label (unless
    the platform turned that off): a tenant who may not read a Secret must not get
    the receiver to use it. Nothing is said about the keys of a Secret that did not
    opt in, so referencing one tells nothing about it.
    """
    missing: dict[str, str] = {}
    unlabelled: dict[str, str] = {}
    messages: list[str] = []
    for ref in refs:
        secret = secrets.get(ref.name)
        if secret is None:
            missing.setdefault(ref.name, ref.field)
        elif require_label and not secret.opted_in:
            unlabelled.setdefault(ref.name, ref.field)
        elif ref.key not in secret.keys:
            messages.append(
                f'Secret "{ref.name}" has no key "{ref.key}" (referenced by {ref.field})'
            )
    label = f"{SECRET_OPT_IN_LABEL}={SECRET_OPT_IN_VALUE}"
    messages = [
        *(
            f'Secret "{name}" not found in namespace "{namespace}" (referenced by {where})'
            for name, where in sorted(missing.items())
        ),
        *(
            f'Secret "{name}" (referenced by {where}) is not labelled {label}: whoever '
            f'may write it allows its use with "kubectl -n {namespace} label secret {name} '
            f'{label}"'
            for name, where in sorted(unlabelled.items())
        ),
        *messages,
    ]
    if not messages:
        return None
    if missing:
        reason = "SecretMissing"
    elif unlabelled:
        reason = "SecretNotLabelled"
    else:
        reason = "SecretKeyMissing"
    return status.Problem(reason, "; ".join(messages) + ".")
