"""An operator given a list of namespaces acts in those and leaves the others alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import apply, example, get
from tests.helpers.operator import OperatorProcess, wait_ready

pytestmark = pytest.mark.integration

WATCHED = "operator-scope-watched"
IGNORED = "operator-scope-ignored"
OPERATOR_ARGS = ["--namespaces", WATCHED]


@pytest.fixture
def namespaces(cluster: LocalCluster) -> Iterator[None]:
    for name in (WATCHED, IGNORED):
        cluster.kubectl("create", "namespace", name)
    try:
        yield
    finally:
        for name in (WATCHED, IGNORED):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_only_the_given_namespaces_are_reconciled(
    cluster: LocalCluster, namespaces: None, operator: OperatorProcess
) -> None:
    # The ignored one first: had the operator seen it, it would have handled it first.
    apply(cluster, example("basic.yaml"), namespace=IGNORED)
    apply(cluster, example("basic.yaml"), namespace=WATCHED)
    wait_ready(cluster, WATCHED, "transactional")

    ignored = get(cluster, "mtwh", "transactional", namespace=IGNORED)
    assert "status" not in ignored
    annotations = ignored["metadata"].get("annotations") or {}
    assert not [key for key in annotations if key.startswith("operator.mailtrap.io/")]
    assert get(cluster, "deployment", "transactional-receiver", namespace=IGNORED) is None
    assert operator.metric("mailtrap_operator_managed_resources") == 1
