"""The operator's ledger: our own writes are not drift, hand edits are."""

from __future__ import annotations

import copy
from typing import Any

from mailtrap_operator.ledger import AppliedChild, ChildState, Ledger, drift

OWNER = ("mail", "hooks")


def child(
    *, generation: int | None = 2, version: str = "100", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "hooks-receiver",
        "namespace": "mail",
        "uid": "child-uid",
        "resourceVersion": version,
        "labels": labels
        if labels is not None
        else {
            "app.kubernetes.io/managed-by": "mailtrap-webhook-operator",
            "app.kubernetes.io/instance": "hooks",
        },
        "ownerReferences": [
            {
                "apiVersion": "mailtrap.io/v1alpha1",
                "kind": "MailtrapWebhook",
                "name": "hooks",
                "uid": "u1",
                "controller": True,
            }
        ],
    }
    if generation is not None:
        meta["generation"] = generation
    return {"metadata": meta}


APPLIED = AppliedChild(owner=OWNER, resource_version="100", generation=2)
APPLIED_NO_GENERATION = AppliedChild(owner=OWNER, resource_version="100", generation=None)


def state(body: dict[str, Any], *, kind: str = "Deployment", deleted: bool = False) -> ChildState:
    return ChildState.from_body(kind=kind, body=body, deleted=deleted)


def test_state_keeps_only_what_drift_needs() -> None:
    observed = state(child())
    assert observed.key == ("Deployment", "mail", "hooks-receiver")
    assert (observed.owner, observed.owner_uid) == (OWNER, "u1")
    assert (observed.generation, observed.resource_version) == (2, "100")
    assert observed.labelled
    assert observed.rollout is not None
    assert state(child(), kind="ConfigMap").rollout is None


def test_our_own_write_is_not_drift() -> None:
    assert drift(applied=APPLIED, state=state(child())) is None
    # Status updates by the Deployment controller change the version, not the generation.
    assert drift(applied=APPLIED, state=state(child(version="150"))) is None


def test_a_late_event_for_an_older_version_is_not_drift() -> None:
    assert drift(applied=APPLIED, state=state(child(generation=1, version="90"))) is None
    older = state(child(generation=None, version="90"), kind="ConfigMap")
    assert drift(applied=APPLIED_NO_GENERATION, state=older) is None


def test_a_newer_generation_is_a_hand_edit() -> None:
    assert (
        drift(applied=APPLIED, state=state(child(generation=3, version="120")))
        == "its spec was changed"
    )


def test_a_newer_version_of_an_object_without_generation_is_a_hand_edit() -> None:
    newer = state(child(generation=None, version="101"), kind="ConfigMap")
    assert drift(applied=APPLIED_NO_GENERATION, state=newer) == "it was changed"


def test_deletion_is_drift() -> None:
    assert (
        drift(applied=APPLIED, state=state(child(), deleted=True))
        == "it was deleted or lost its labels"
    )


def test_lost_labels_or_owner_are_hand_edits() -> None:
    assert drift(applied=APPLIED, state=state(child(labels={}))) == "its labels were changed"
    orphan = child()
    orphan["metadata"]["ownerReferences"] = []
    orphaned = state(orphan)
    assert orphaned.owner == OWNER  # still routed to its owner, by the instance label
    assert drift(applied=APPLIED, state=orphaned) == "its owner reference was removed"


def test_unknown_children_are_left_alone() -> None:
    assert drift(applied=None, state=state(child(generation=9))) is None


def test_records_follow_what_was_applied_and_are_forgotten_with_the_owner() -> None:
    ledger = Ledger()
    record = ledger.owner(OWNER, uid="u1")
    record.status = {"observedGeneration": 1}
    ledger.record_applied(kind="Deployment", owner=OWNER, body=child(generation=5, version="7"))
    key = ("Deployment", "mail", "hooks-receiver")
    assert ledger.applied(key) == AppliedChild(
        owner=OWNER, resource_version="7", generation=5, uid="child-uid"
    )
    assert ledger.children_of(OWNER) == (key,)
    assert ledger.owner(OWNER, uid="u1") is record
    ledger.forget_owner(OWNER)
    assert ledger.applied(key) is None
    assert ledger.known_owner(OWNER) is None


def test_a_new_object_with_the_same_name_starts_afresh() -> None:
    ledger = Ledger()
    ledger.owner(OWNER, uid="u1").status = {"observedGeneration": 1}
    ledger.record_applied(kind="ConfigMap", owner=OWNER, body=child(generation=None))
    fresh = ledger.owner(OWNER, uid="u2")
    assert fresh.status is None
    assert ledger.children_of(OWNER) == ()
    assert ledger.known_owner(OWNER, uid="u1") is None


def test_forgetting_a_child_unlinks_it_from_its_owner() -> None:
    ledger = Ledger()
    ledger.record_applied(kind="Ingress", owner=OWNER, body=copy.deepcopy(child()))
    ledger.forget_child(("Ingress", "mail", "hooks-receiver"))
    assert ledger.children_of(OWNER) == ()


async def test_one_lock_per_owner() -> None:
    ledger = Ledger()
    lock = ledger.lock(OWNER)
    assert ledger.lock(OWNER) is lock
    assert ledger.lock(("mail", "other")) is not lock
