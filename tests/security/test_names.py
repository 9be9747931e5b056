"""Attack 3: a tenant probes another namespace through names that end up in URLs.

Before (issue 10): ``signingSecretRef.name: ../../team-b/secrets/db-creds`` went
into the Secret's URL as it was, and the Degraded message told the tenant whether
team-b's Secret existed and which keys it had. Now the API server refuses such a
name, and if one got through another way, the operator's request for it stays in
the resource's namespace and finds nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailtrap_operator.kubeapi import ApiError
from tests.helpers.canary import canary
from tests.helpers.chart import account
from tests.helpers.cluster import LocalCluster
from tests.security.conftest import OPERATOR_ACCOUNT, RELEASE_NAMESPACE, Tenant
from tests.security.tenancy import operator_client, put_secret, webhook

pytestmark = pytest.mark.integration


def probes(other: str) -> list[tuple[dict[str, Any], str]]:
    path = f"../../{other}/secrets/db-creds"
    return [
        ({"signingSecretRef": {"name": path}}, "spec.signingSecretRef.name"),
        ({"basicAuthSecretRef": {"name": path}}, "spec.basicAuthSecretRef.name"),
        (
            {"targets": [{"name": "a", "url": "http://a/", "signingSecretRef": {"name": path}}]},
            "spec.targets[0].signingSecretRef.name",
        ),
        ({"signingSecretRef": {"name": "signing", "key": ".."}}, "spec.signingSecretRef.key"),
        (
            {"targets": [{"name": "a", "service": {"name": "db", "namespace": f"{other}/x",
                                                   "port": 80}}]},
            "spec.targets[0].service.namespace",
        ),
    ]  # fmt: skip


def test_the_api_server_refuses_names_that_are_paths(
    cluster: LocalCluster, crd: None, tenant: Tenant, other_team: str
) -> None:
    put_secret(cluster, other_team, "db-creds", {"password": canary("team-b-db")})
    for spec, field in probes(other_team):
        result = tenant.apply(webhook("probe", **spec))
        assert result.returncode != 0, spec
        assert f"{field}: Invalid value" in result.stderr, result.stderr
        assert tenant.kubectl("get", "mtwh", "probe").returncode != 0


def test_a_name_that_got_through_stays_in_its_namespace(
    cluster: LocalCluster, release: dict[str, Any], tenant: Tenant, other_team: str, tmp_path: Any
) -> None:
    # As the operator would read it, with the chart's ServiceAccount: nothing is found,
    # although team-b's Secret exists and the operator may read it.
    put_secret(cluster, other_team, "db-creds", {"password": canary("team-b-db")})
    kubeconfig = cluster.serviceaccount_kubeconfig(
        namespace=RELEASE_NAMESPACE, name=OPERATOR_ACCOUNT, path=tmp_path / "sa.kubeconfig"
    )
    api = operator_client(kubeconfig)
    user = account(RELEASE_NAMESPACE, OPERATOR_ACCOUNT)
    seen = len(cluster.audit_events(username=user))
    probe = f"../../{other_team}/secrets/db-creds"

    async def read() -> tuple[object, object]:
        direct = await api.read_secret(namespace=other_team, name="db-creds")
        try:
            return direct, await api.read_secret(namespace=tenant.namespace, name=probe)
        except ApiError as error:
            return direct, error

    try:
        direct, found = asyncio.run(read())
    finally:
        api.close()
    assert direct is not None  # the operator may read it: only the escaping stops the probe
    # The API server takes the escaped name as a name (or a subresource) in the
    # tenant's namespace: not found there, or not a thing the operator may get.
    assert found is None or (isinstance(found, ApiError) and found.status in (403, 404)), found
    assert other_team not in str(found)
    requests = cluster.audit_events(username=user)[seen:]
    assert [(event.get("objectRef") or {}).get("namespace") for event in requests] == [
        other_team,
        tenant.namespace,
    ]
    assert requests[1]["responseStatus"]["code"] in (403, 404)
