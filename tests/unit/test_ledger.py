"""The operator's ledger: our own writes and other writers' fields are not drift;
changes to what we set (deletion, labels, owner reference, fields) are."""

from __future__ import annotations

import copy
from typing import Any

from mailtrap_operator.ledger import AppliedChild, ChildState, Ledger, drift
from mailtrap_operator.ownership import applied_fields
from mailtrap_operator.resources import FIELD_MANAGER

OWNER = ("mail", "hooks")


def child(
    *,
    generation: int | None = 2,
    version: str = "100",
    labels: dict[str, str] | None = None,
    ours: dict[str, Any] | None = None,
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
        "managedFields": [
            {
                "manager": "mailtrap-webhook-operator",
                "operation": "Apply",
                "time": "2026-01-01T00:00:00Z",
                "fieldsV1": OURS if ours is None else ours,
            },
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "subresource": "status",
                "time": "2026-01-01T00:00:05Z",
                "fieldsV1": {"f:status": {}},
            },
        ],
    }
    if generation is not None:
        meta["generation"] = generation
    return {"metadata": meta}


OURS = {"f:spec": {"f:replicas": {}, "f:template": {}}}
FIELDS = applied_fields([{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": OURS}],
                        FIELD_MANAGER)  # fmt: skip
APPLIED = AppliedChild(
    owner=OWNER, resource_version="100", generation=2, uid="child-uid", fields=FIELDS
)


def state(body: dict[str, Any], *, kind: str = "Deployment", deleted: bool = False) -> ChildState:
    return ChildState.from_body(kind=kind, body=body, deleted=deleted)


def taken_by(writer: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` after ``writer`` changed spec.replicas, which leaves our Apply entry."""
    body["metadata"]["managedFields"][0]["fieldsV1"] = {"f:spec": {"f:template": {}}}
    body["metadata"]["managedFields"].append(
        {
            "manager": writer,
            "operation": "Update",
            "time": "2026-01-01T00:00:09Z",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
    )
    return body


def test_state_keeps_only_what_drift_needs() -> None:
    observed = state(child())
    assert observed.key == ("Deployment", "mail", "hooks-receiver")
    assert (observed.owner, observed.owner_uid, observed.uid) == (OWNER, "u1", "child-uid")
    assert (observed.generation, observed.resource_version) == (2, "100")
    assert observed.labelled
    assert observed.fields == FIELDS
    assert observed.writer == ""  # the status writer is not a writer of what we set
    assert observed.rollout is not None
    assert state(child(), kind="ConfigMap").rollout is None


def test_our_own_write_is_not_drift() -> None:
    assert drift(applied=APPLIED, state=state(child())) is None
    # Other writers' fields (status, an annotation, replicas left to an autoscaler)
    # move the version and the generation, not the fields we set.
    assert drift(applied=APPLIED, state=state(child(version="150", generation=3))) is None


def test_a_late_event_for_an_older_version_is_not_drift() -> None:
    old = taken_by("kubectl-edit", child(generation=1, version="90"))
    assert drift(applied=APPLIED, state=state(old)) is None
    assert drift(applied=APPLIED, state=state(old, deleted=True)) is None


def test_a_field_we_set_changed_by_another_writer_is_drift_naming_it() -> None:
    edited = state(taken_by("kubectl-edit", child(generation=3, version="120")))
    assert edited.writer == "kubectl-edit"
    assert drift(applied=APPLIED, state=edited) == (
        "fields the operator sets were changed by kubectl-edit"
    )


def test_deletion_is_drift() -> None:
    assert (
        drift(applied=APPLIED, state=state(child(version="101"), deleted=True))
        == "it was deleted or lost its labels"
    )
    gone = ChildState.gone(applied=APPLIED, key=APPLIED_KEY, resource_version="130")
    assert drift(applied=APPLIED, state=gone) == "it was deleted or lost its labels"
    # A re-list older than our write of it says nothing about it.
    early = ChildState.gone(applied=APPLIED, key=APPLIED_KEY, resource_version="99")
    assert drift(applied=APPLIED, state=early) is None


def test_lost_labels_owner_or_identity_are_drift() -> None:
    assert (
        drift(applied=APPLIED, state=state(child(labels={}, version="101")))
        == "its labels were changed"
    )
    orphan = child(version="101")
    orphan["metadata"]["ownerReferences"] = []
    orphaned = state(orphan)
    assert orphaned.owner == OWNER  # still routed to its owner, by the instance label
    assert drift(applied=APPLIED, state=orphaned) == "its owner reference was removed"
    other = child(version="101")
    other["metadata"]["uid"] = "someone-elses"
    assert drift(applied=APPLIED, state=state(other)) == "it was replaced by another object"


def test_unknown_children_are_left_alone() -> None:
    assert drift(applied=None, state=state(child(generation=9, version="900"))) is None


APPLIED_KEY = ("Deployment", "mail", "hooks-receiver")


def test_records_follow_what_was_applied_and_are_forgotten_with_the_owner() -> None:
    ledger = Ledger()
    record = ledger.owner(OWNER, uid="u1")
    record.status = {"observedGeneration": 1}
    ledger.record_applied(kind="Deployment", owner=OWNER, body=child(generation=5, version="7"))
    key = ("Deployment", "mail", "hooks-receiver")
    assert ledger.applied(key) == AppliedChild(
        owner=OWNER,
        resource_version="7",
        generation=5,
        uid="child-uid",
        fields=FIELDS,
        holds_replicas=True,
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
