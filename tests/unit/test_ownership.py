"""Who controls the object at a child's name, and what managedFields say: pure functions.

The API server's side (uid preconditions refused, managedFields honoured, a field
changed by another writer leaving our "Apply" entry) is proven on a real one in
tests/security/test_takeover.py and tests/faults.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailtrap_operator.ownership import (
    REPLICAS,
    Action,
    Controller,
    Found,
    applied_fields,
    claim,
    last_writer,
    owns,
    settle_managed_fields,
)
from mailtrap_operator.resources import API_VERSION, KIND, Owner

OWNER = Owner(namespace="team-a", name="payments", uid="uid-payments", generation=1, spec={})


IDENTITY = {
    "app.kubernetes.io/managed-by": "mailtrap-webhook-operator",
    "app.kubernetes.io/instance": "payments",
    "app.kubernetes.io/component": "receiver",
}


def found(
    controller: Controller | None, uid: str = "uid-child", labels: dict[str, str] | None = None
) -> Found:
    return Found(uid=uid, controller=controller, labels=labels or {})


def test_a_free_name_is_created() -> None:
    assert claim(None, OWNER).action is Action.CREATE


def test_an_object_this_resource_controls_is_applied_through_its_uid() -> None:
    ours = found(Controller(API_VERSION, KIND, "payments", "uid-payments"))
    assert claim(ours, OWNER).action is Action.APPLY
    assert claim(ours, OWNER).uid == "uid-child"


@pytest.mark.parametrize(
    ("controller", "holder"),
    [
        (None, "it has no controller"),
        (
            Controller("apps/v1", "Deployment", "payments", "u"),
            'its controller is Deployment "payments"',
        ),
        (Controller(API_VERSION, KIND, "other", "u"), 'its controller is MailtrapWebhook "other"'),
        (
            Controller(API_VERSION, KIND, "payments", "uid-earlier"),
            'an earlier MailtrapWebhook "payments" (uid uid-earlier)',
        ),
        # The same kind from another group is someone else's.
        (Controller("example.com/v1", KIND, "payments", "uid-payments"), "its controller is"),
    ],
)
def test_anything_else_is_a_conflict_that_says_who_holds_it(
    controller: Controller | None, holder: str
) -> None:
    result = claim(found(controller), OWNER)
    assert result.action is Action.CONFLICT
    assert holder in result.holder


def test_an_orphan_with_this_resources_identity_is_adopted_through_its_uid() -> None:
    adopted = claim(found(None, labels=IDENTITY), OWNER, component="receiver")
    assert (adopted.action, adopted.uid) == (Action.ADOPT, "uid-child")
    assert adopted.writes


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("app.kubernetes.io/managed-by", "helm"),
        ("app.kubernetes.io/instance", "other"),
        ("app.kubernetes.io/component", "config"),
    ],
)
def test_an_orphan_without_all_of_the_identity_is_a_conflict(label: str, value: str) -> None:
    labels = {**IDENTITY, label: value}
    result = claim(found(None, labels=labels), OWNER, component="receiver")
    assert result.action is Action.CONFLICT
    assert "identity labels" in result.holder


def test_an_object_with_another_controller_is_never_adopted_whatever_its_labels() -> None:
    other = Controller(API_VERSION, KIND, "payments", "uid-earlier")
    result = claim(found(other, labels=IDENTITY), OWNER, component="receiver")
    assert result.action is Action.CONFLICT


def test_found_reads_the_controller_reference_only() -> None:
    body: dict[str, Any] = {
        "metadata": {
            "uid": "uid-child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u1"},
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": "payments",
                    "uid": "uid-payments",
                    "controller": True,
                },
            ],
        }
    }
    assert claim(Found.from_body(body), OWNER).action is Action.APPLY
    body["metadata"]["ownerReferences"][1]["controller"] = False
    assert claim(Found.from_body(body), OWNER).action is Action.CONFLICT


# --- managedFields --------------------------------------------------------------------


def entry(manager: str, operation: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
        **extra,
    }


def test_nothing_to_fold_without_an_update_entry_of_ours() -> None:
    entries = [entry("op", "Apply", {"f:a": {}}), entry("kubectl", "Update", {"f:b": {}})]
    assert settle_managed_fields(entries, "op") is None
    status = [entry("op", "Update", {"f:status": {}}, subresource="status")]
    assert settle_managed_fields(status, "op") is None


def test_a_creates_update_entry_becomes_our_apply_entry() -> None:
    entries = [entry("op", "Update", {"f:data": {"f:a": {}}})]
    assert settle_managed_fields(entries, "op") == [entry("op", "Apply", {"f:data": {"f:a": {}}})]


def test_update_fields_join_our_apply_entry_and_others_stay_as_they_are() -> None:
    kubectl = entry("kubectl", "Update", {"f:metadata": {"f:labels": {"f:x": {}}}})
    entries = [
        entry("op", "Apply", {"f:data": {"f:a": {}}, "f:metadata": {}}),
        kubectl,
        entry("op", "Update", {"f:data": {"f:b": {}}, "f:spec": {".": {}}}),
    ]
    folded = settle_managed_fields(entries, "op")
    assert folded == [
        entry(
            "op", "Apply", {"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {}, "f:spec": {".": {}}}
        ),
        kubectl,
    ]
    assert entries[0]["fieldsV1"] == {"f:data": {"f:a": {}}, "f:metadata": {}}  # not mutated


def test_fields_handed_on_leave_our_apply_entry_for_an_update_entry() -> None:
    created = [entry("op", "Update", {"f:spec": {"f:replicas": {}, "f:x": {}}}, time="t1")]
    settled = settle_managed_fields(created, "op", keep=[REPLICAS])
    assert settled == [
        entry("op", "Update", {"f:spec": {"f:replicas": {}}}, time="t1"),
        entry("op", "Apply", {"f:spec": {"f:x": {}}}, time="t1"),
    ]
    assert settle_managed_fields(settled, "op", keep=[REPLICAS]) is None  # settled stays
    assert not owns(settled, "op", REPLICAS)
    # An apply entry that holds them (replicas set by the operator until now).
    applied = [entry("op", "Apply", {"f:spec": {"f:replicas": {}, "f:x": {}}})]
    assert owns(applied, "op", REPLICAS)
    handed = settle_managed_fields(applied, "op", keep=[REPLICAS])
    assert handed == [
        entry("op", "Apply", {"f:spec": {"f:x": {}}}),
        entry("op", "Update", {"f:spec": {"f:replicas": {}}}),
    ]
    # A parent left empty goes too: {"f:spec": {}} would read as owning spec itself.
    only = settle_managed_fields(
        [entry("op", "Apply", {"f:spec": {"f:replicas": {}}})], "op", keep=[REPLICAS]
    )
    assert only == [entry("op", "Apply", {}), entry("op", "Update", {"f:spec": {"f:replicas": {}}})]


def test_the_digest_of_our_fields_moves_only_with_our_fields() -> None:
    ours = entry("op", "Apply", {"f:data": {"f:a": {}, "f:b": {}}})
    theirs = entry("kubectl-edit", "Update", {"f:metadata": {"f:annotations": {"f:x": {}}}})
    digest = applied_fields([ours], "op")
    assert applied_fields([ours, theirs], "op") == digest
    assert applied_fields([entry("op", "Apply", {"f:data": {"f:b": {}, "f:a": {}}})], "op") == (
        digest
    )
    taken = [entry("op", "Apply", {"f:data": {"f:b": {}}}), theirs]
    assert applied_fields(taken, "op") != digest
    assert applied_fields([theirs], "op") == ""


def test_the_last_writer_is_the_latest_other_manager_status_writers_aside() -> None:
    entries = [
        entry("op", "Apply", {}, time="2026-01-01T00:00:09Z"),
        entry("kubectl-edit", "Update", {}, time="2026-01-01T00:00:01Z"),
        entry("kube-controller-manager", "Update", {}, time="2026-01-01T00:00:05Z",
              subresource="scale"),
        entry("kube-controller-manager", "Update", {}, time="2026-01-01T00:00:08Z",
              subresource="status"),
    ]  # fmt: skip
    assert last_writer(entries, "op") == "kube-controller-manager (scale)"
    assert last_writer(entries[:1], "op") == ""
