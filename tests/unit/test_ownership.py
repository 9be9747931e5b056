"""Who controls the object at a child's name, and the managedFields fold: pure functions.

The API server's side of both (uid preconditions refused, managedFields honoured)
is proven on a real one in tests/security/test_takeover.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailtrap_operator.ownership import Action, Controller, Found, claim, fold_managed_fields
from mailtrap_operator.resources import API_VERSION, KIND, Owner

OWNER = Owner(namespace="team-a", name="payments", uid="uid-payments", generation=1, spec={})


def found(controller: Controller | None, uid: str = "uid-child") -> Found:
    return Found(uid=uid, controller=controller)


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
    assert fold_managed_fields(entries, "op") is None
    status = [entry("op", "Update", {"f:status": {}}, subresource="status")]
    assert fold_managed_fields(status, "op") is None


def test_a_creates_update_entry_becomes_our_apply_entry() -> None:
    entries = [entry("op", "Update", {"f:data": {"f:a": {}}})]
    assert fold_managed_fields(entries, "op") == [entry("op", "Apply", {"f:data": {"f:a": {}}})]


def test_update_fields_join_our_apply_entry_and_others_stay_as_they_are() -> None:
    kubectl = entry("kubectl", "Update", {"f:metadata": {"f:labels": {"f:x": {}}}})
    entries = [
        entry("op", "Apply", {"f:data": {"f:a": {}}, "f:metadata": {}}),
        kubectl,
        entry("op", "Update", {"f:data": {"f:b": {}}, "f:spec": {".": {}}}),
    ]
    folded = fold_managed_fields(entries, "op")
    assert folded == [
        entry(
            "op", "Apply", {"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {}, "f:spec": {".": {}}}
        ),
        kubectl,
    ]
    assert entries[0]["fieldsV1"] == {"f:data": {"f:a": {}}, "f:metadata": {}}  # not mutated
