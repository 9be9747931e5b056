"""One reconcile of one MailtrapWebhook, and the reactions to its children.

`handlers` turn kopf events into calls here; this module decides what to do and
uses the others to do it: `builders` for the manifests, `kubeapi` for every
API request, `status` for what to report, the `ledger` to tell our own writes
from hand edits, `metrics` to count. The two entry points:

- `Reconciler.reconcile`: check the spec against the platform's policy
  (`policy_problem`), check that the referenced Secrets exist, opted in and
  hold the keys (`secret_problem`; their values are never read), check who
  holds each child's name (`ownership`), create or server-side apply the
  children, delete the optional ones no longer wanted, write status, post
  Events. A policy violation, a Secret problem, a child name held by someone
  else or an invalid spec is not an exception here: it becomes the Degraded
  condition, a Warning Event and the returned `Problem`, which the kopf handler
  turns into a retry (or none, when only a spec change can help). Nothing is
  applied while any of these stands, so there is never a half-applied state.
- `Reconciler.observe_child`: a child changed or disappeared. Noted at once, then
  handled by a task per owner: if the ledger says it was not us, reconcile the
  owner (drift repair); for a Deployment, refresh the owner's replica counts and
  readiness.

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
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, NamedTuple

from . import builders, ownership, policy, status
from .kubeapi import ApiError, KubeApi
from .ledger import ChildKey, ChildState, Ledger, OwnerRecord, drift
from .logs import get_logger
from .metrics import OperatorMetrics
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


# Races lost in a row before giving up for now: the object at a name changed
# between the owner check and the write (each time, the check is made again).
WRITE_ATTEMPTS: Final = 3
SECRET_PROBLEMS: Final = frozenset({"SecretMissing", "SecretKeyMissing", "SecretNotLabelled"})
# Problems for people to fix in the spec or beside it (outcome "degraded"), rather
# than the API failing (outcome "error").
DEGRADED_PROBLEMS: Final = SECRET_PROBLEMS | {"InvalidSpec", "PolicyViolation", "ChildConflict"}
MAX_RETRY_DELAY: Final = 300.0
# Creating or labelling a Secret is not watched: the retry notices it, this soon.
SECRET_RETRY_DELAY: Final = 30.0
# Why a drift repair is retried when the API would not say whether its owner lives.
UNANSWERED: Final = status.Problem(
    "ApiUnavailable", "The Kubernetes API did not answer whether the MailtrapWebhook exists."
)


def retry_delay(retry: int, problem: status.Problem | None = None) -> float:
    """Exponential backoff for failed reconciles: 5 s, 10 s, 20 s ... 5 min, or at
    most `SECRET_RETRY_DELAY` for a Secret problem."""
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
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.ledger = ledger or Ledger()
        self.clock = clock
        self.backoff = backoff
        self._background: set[asyncio.Task[None]] = set()
        # Latest unhandled state of each child, per owner; and owners being drained.
        self._inbox: dict[OwnerKey, dict[ChildKey, ChildState]] = {}
        self._draining: set[OwnerKey] = set()
        # Owners with a retry task (see the module docstring).
        self._retrying: set[OwnerKey] = set()

    # -- entry points --

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
        state = ChildState.from_body(kind=kind, body=body, deleted=event_type == "DELETED")
        if state.owner is None:
            return
        self._inbox.setdefault(state.owner, {})[state.key] = state
        if state.owner not in self._draining:
            self._draining.add(state.owner)
            self._spawn(self._drain(state.owner, find_owner, known_children))

    def on_owner_event(self, *, event_type: str | None, key: OwnerKey, managed: int) -> None:
        if event_type == "DELETED":
            self.ledger.forget_owner(key)
        self.metrics.managed_resources.set(managed)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- children's events, per owner --

    async def _drain(
        self,
        key: OwnerKey,
        find_owner: Callable[[OwnerKey], Owner | None],
        known_children: Callable[[OwnerKey], Iterable[ChildRef]],
    ) -> None:
        try:
            while pending := self._inbox.pop(key, None):
                try:
                    await self._handle_children(
                        key, list(pending.values()), find_owner, known_children
                    )
                except Exception:  # never lose the loop: later events still need handling
                    log.exception("child events not handled", namespace=key[0], name=key[1])
        finally:
            self._draining.discard(key)

    async def _handle_children(
        self,
        key: OwnerKey,
        states: list[ChildState],
        find_owner: Callable[[OwnerKey], Owner | None],
        known_children: Callable[[OwnerKey], Iterable[ChildRef]],
    ) -> None:
        owner = find_owner(key)
        if owner is None or owner.deleting:
            return
        async with self.ledger.lock(key):
            record = self.ledger.known_owner(key, uid=owner.uid)
            if record is None:
                # Not reconciled by this process yet; its resume or create handler will.
                return
            repairs: list[tuple[ChildKey, str]] = []
            rollout: status.Rollout | None = None
            for state in states:
                if state.owner_uid and state.owner_uid != owner.uid:
                    continue  # left over from an earlier object of the same name
                applied = self.ledger.applied(state.key)
                reason = drift(applied=applied, state=state)
                if reason is not None:
                    repairs.append((state.key, reason))
                elif (
                    state.rollout is not None
                    and applied is not None
                    and (state.generation or 0) >= (applied.generation or 0)
                ):
                    rollout = state.rollout
            if repairs:
                # Garbage collection deletes children after their owner: never
                # bring one back for an owner that is going away.
                if any(state.deleted for state in states):
                    alive = await self._owner_alive(owner)
                    if alive is None:  # the API did not answer: ask again later
                        record.retry = UNANSWERED
                        self._retry(key, find_owner, known_children)
                    if not alive:
                        return
                await self._repair(owner, known_children(key), repairs)
                if record.retry is not None:
                    self._retry(key, find_owner, known_children)
            elif rollout is not None:
                await self._refresh(owner, record, rollout)

    # -- the reconcile itself --

    async def _reconcile(
        self, owner: Owner, known_children: Iterable[ChildRef], trigger: str
    ) -> status.Problem | None:
        if owner.deleting:
            return None
        started = time.monotonic()
        record = self.ledger.owner(owner.key, uid=owner.uid)
        previous = record.status if record.status is not None else dict(owner.status)
        first = not record.reconciled
        problem: status.Problem | None = None
        try:
            builders.validate(owner)
            problem = policy_problem(owner, self.settings.policy)
            if problem is None:
                problem = await self._check_secrets(owner)
            if problem is None:
                await self._apply(owner, known_children, record, previous, first)
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
        if problem is not None:
            await self._report_problem(owner, record, previous, problem)
        record.reconciled = True
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
            duration_ms=round(elapsed * 1000, 1),
        )
        return problem

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
        first: bool,
    ) -> None:
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

        # Every child is checked before any is written: a name held by someone
        # else stops the whole apply (no half-applied state) and is reported.
        wanted = [(KINDS_BY_NAME[manifest["kind"]], manifest) for manifest in children.manifests]
        # ServiceMonitors are not watched: after a restart only a read can tell
        # whether one of ours is left over.
        unwanted = [
            kind
            for kind in sorted(children.unwanted, key=lambda k: k.kind)
            if kind.watched or (monitors and (first or self._applied(owner, kind) is not None))
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

        deployment: Mapping[str, Any] = {}
        for (kind, manifest), claim in zip(wanted, claims, strict=False):
            body = await self._write(owner, kind, manifest, claim)
            self.ledger.record_applied(kind=kind.kind, owner=owner.key, body=body)
            if kind is DEPLOYMENT:
                deployment = body

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

        new = status.build_status(
            previous=previous,
            generation=owner.generation,
            url=builders.service_url(owner),
            external_url=builders.external_url(owner),
            config_hash=config_hash,
            rollout=status.Rollout.from_deployment(deployment),
            problem=None,
            now=self.clock(),
        )
        await self._write_status(owner, record, previous, new)

        was_degraded = status.carried_problem(previous) is not None
        if (
            previous.get("observedGeneration") != owner.generation
            or previous.get("configHash") != config_hash
            or was_degraded
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

    # -- children: who holds each name, and writes conditioned on it --

    def _known(
        self, owner: Owner, known_children: Iterable[ChildRef]
    ) -> dict[str, ownership.Found]:
        """What kopf's children index knows at this owner's child name, by kind."""
        name = builders.child_name(owner.name)
        return {
            child.kind: ownership.Found.of(owner, uid=child.uid, owner_uid=child.owner_uid)
            for child in known_children
            if child.name == name
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
        return ownership.claim(found, owner)

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
        for _ in range(WRITE_ATTEMPTS):
            if claim.action is ownership.Action.CONFLICT:
                break
            try:
                if claim.action is ownership.Action.CREATE:
                    body = await self.api.create(manifest=manifest, kind=kind)
                else:
                    meta = {**manifest["metadata"], "uid": claim.uid}
                    body = await self.api.apply(manifest={**manifest, "metadata": meta}, kind=kind)
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
                claim = ownership.claim(await self._read_child(owner, kind), owner)
            else:
                return await self._settle_fields(kind, body)
        holder = claim.holder or "it kept changing while being written"
        raise ownership.ChildConflict(ownership.conflict_message(kind.kind, name, holder) + ".")

    async def _settle_fields(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        """A created child's fields handed to our apply, which can then remove them.

        Conditioned on the version just seen, and controllers write a new object's
        status at once: a lost race reads the object again. One that keeps losing is
        left for the next write, whose answer is folded the same way.
        """
        for _ in range(WRITE_ATTEMPTS):
            meta = body.get("metadata") or {}
            folded = ownership.fold_managed_fields(meta.get("managedFields") or (), FIELD_MANAGER)
            if folded is None:
                return body
            namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            try:
                return await self.api.set_managed_fields(
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    resource_version=str(meta.get("resourceVersion", "")),
                    entries=folded,
                )
            except ApiError as error:
                if error.status != 409:
                    raise
            fresh = await self.api.read(kind=kind, namespace=namespace, name=name)
            if fresh is None:
                break
            body = fresh
        return body

    async def _report_problem(
        self,
        owner: Owner,
        record: OwnerRecord,
        previous: Mapping[str, Any],
        problem: status.Problem,
    ) -> None:
        new = status.build_status(
            previous=previous,
            generation=owner.generation,
            url=builders.service_url(owner),
            external_url=builders.external_url(owner),
            config_hash=None,
            rollout=None,
            problem=problem,
            now=self.clock(),
        )
        if status.carried_problem(previous) != status.carried_problem(new):
            self._event(owner, "Warning", problem.reason, problem.message)
        try:
            await self._write_status(owner, record, previous, new)
        except ApiError as error:
            # The API may be what failed in the first place; the retry reports it.
            log.warning(
                "status not written",
                namespace=owner.namespace,
                name=owner.name,
                error=str(error),
            )

    async def _write_status(
        self,
        owner: Owner,
        record: OwnerRecord,
        previous: Mapping[str, Any],
        new: dict[str, Any],
    ) -> None:
        patch = status.merge_patch(previous=previous, new=new)
        if patch is not None:
            await self.api.patch_status(namespace=owner.namespace, name=owner.name, status=patch)
        record.status = new
        # Here, so that whichever write turns the rollout failed also says so once.
        message = status.new_rollout_failure(previous=previous, new=new)
        if message is not None:
            self._event(owner, "Warning", status.ROLLOUT_FAILED, message)

    # -- reactions --

    async def _repair(
        self,
        owner: Owner,
        known_children: Iterable[ChildRef],
        repairs: list[tuple[ChildKey, str]],
    ) -> None:
        for (kind, _, _), reason in repairs:
            self.metrics.drift_repairs.labels(kind=kind).inc()
            log.info(
                "child drifted", namespace=owner.namespace, name=owner.name, kind=kind, why=reason
            )
        problem = await self._reconcile(owner, known_children, "drift")
        if problem is None:
            for (kind, _, name), reason in repairs:
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
        try:
            await self._write_status(owner, record, previous, new)
        except ApiError as error:
            log.warning(
                "status not written", namespace=owner.namespace, name=owner.name, error=str(error)
            )

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

    # -- retries of reconciles that no kopf handler retries --

    def _retry(
        self,
        key: OwnerKey,
        find_owner: Callable[[OwnerKey], Owner | None],
        known_children: Callable[[OwnerKey], Iterable[ChildRef]],
    ) -> None:
        if key not in self._retrying:
            self._retrying.add(key)
            self._spawn(self._retry_loop(key, find_owner, known_children))

    async def _retry_loop(
        self,
        key: OwnerKey,
        find_owner: Callable[[OwnerKey], Owner | None],
        known_children: Callable[[OwnerKey], Iterable[ChildRef]],
    ) -> None:
        attempt = 0
        try:
            while True:
                record = self.ledger.known_owner(key)
                await asyncio.sleep(self.backoff(attempt, record.retry if record else None))
                attempt += 1
                # The latest snapshot: the spec may have changed since the failure.
                owner = find_owner(key)
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
                    await self._reconcile(owner, known_children(key), "retry")
                    if record.retry is None:
                        return
        except Exception:  # a retry lost is logged; the next event or restart reconciles
            log.exception("reconcile retries stopped", namespace=key[0], name=key[1])
        finally:
            self._retrying.discard(key)

    # -- background tasks: Events and per-owner drains --

    def _event(self, owner: Owner, event_type: str, reason: str, message: str) -> None:
        self._spawn(
            self._post_event(
                owner={"namespace": owner.namespace, "name": owner.name, "uid": owner.uid},
                event_type=event_type,
                reason=reason,
                message=message,
            )
        )

    async def _post_event(
        self, *, owner: Mapping[str, str], event_type: str, reason: str, message: str
    ) -> None:
        try:
            await self.api.post_event(
                owner=owner,
                event_type=event_type,
                reason=reason,
                message=message,
                now=self.clock(),
            )
        except ApiError as error:  # an Event lost is not worth failing anything for
            if not error.namespace_terminating:
                log.warning("event not posted", reason=reason, error=str(error))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        # The loop keeps only weak references to tasks: hold them until done.
        self._background.add(task)
        task.add_done_callback(self._background.discard)


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
