"""Attack 4: the operator as a way to every Secret in the cluster.

Before (issue 10): the chart granted get, list and watch on every Secret in the
cluster and the operator watched them all, so every Secret's data streamed into it
(and a tenant's reference was enough to have one mounted). Now the chart grants
``get`` on Secrets and nothing more, the operator reads only the Secrets a
MailtrapWebhook references, one GET each in its namespace, and uses one only if it
opted in with the label mailtrap.io/webhook-secret=true.
"""

from __future__ import annotations

import pytest

from tests.helpers.canary import canary
from tests.helpers.chart import account
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import condition, get
from tests.helpers.operator import OperatorProcess, wait_ready
from tests.security.conftest import OPERATOR_ACCOUNT, RELEASE_NAMESPACE, Tenant
from tests.security.tenancy import degraded, put_secret, signing_secret, webhook

pytestmark = pytest.mark.integration

OPERATOR = account(RELEASE_NAMESPACE, OPERATOR_ACCOUNT)


def test_the_charts_operator_may_get_secrets_and_neither_list_nor_watch_them(
    cluster: LocalCluster, release: object
) -> None:
    def can(*args: str) -> str:
        result = cluster.kubectl("auth", "can-i", *args, "--as", OPERATOR, check=False)
        return result.stdout.strip()

    assert can("get", "secrets", "-A") == "yes"
    for verb in ("list", "watch", "create", "update", "patch", "delete"):
        assert can(verb, "secrets", "-A") == "no", verb
        assert can(verb, "secrets", "-n", RELEASE_NAMESPACE) == "no", verb


def test_the_operator_reads_only_referenced_secrets_by_name(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant, other_team: str
) -> None:
    seen = len(cluster.audit_events(username=OPERATOR))
    put_secret(cluster, other_team, "db-creds", {"password": canary("team-b-db")})
    put_secret(cluster, tenant.namespace, "unrelated", {"token": canary("unrelated")})
    signing_secret(cluster, tenant.namespace)
    targets = [{"name": "a", "url": "http://a.example/", "signingSecretRef": {"name": "signing"}}]
    assert tenant.apply(webhook("hooks", targets=targets)).returncode == 0
    wait_ready(cluster, tenant.namespace, "hooks")

    # This test's namespaces only: a resource of an earlier module whose namespace is
    # still being deleted is resumed by this module's operator, which reads its own
    # referenced Secret there, as it should.
    requests = [
        event
        for event in cluster.audit_events(username=OPERATOR)[seen:]
        if (event.get("objectRef") or {}).get("resource") == "secrets"
        and event["objectRef"].get("namespace") in (tenant.namespace, other_team)
    ]
    assert requests, "the operator did not read the referenced Secret"
    for event in requests:
        ref = event["objectRef"]
        assert (event["verb"], ref.get("namespace"), ref.get("name")) == (
            "get",
            tenant.namespace,
            "signing",
        )
    # Nor did it ever, in this whole session, list or watch Secrets anywhere.
    everything = cluster.audit_events(username=OPERATOR)
    assert not [
        event
        for event in everything
        if (event.get("objectRef") or {}).get("resource") == "secrets"
        and event["verb"] in ("list", "watch")
    ]


def test_a_secret_that_did_not_opt_in_is_refused_until_its_owners_label_it(
    cluster: LocalCluster, operator: OperatorProcess, tenant: Tenant
) -> None:
    put_secret(
        cluster, tenant.namespace, "signing", {"signing-secret": canary("signing")}, opted_in=False
    )
    assert tenant.apply(webhook("hooks")).returncode == 0
    obj = degraded(cluster, tenant.namespace, "hooks", "SecretNotLabelled")
    message = condition(obj, "Degraded")["message"]
    command = f"kubectl -n {tenant.namespace} label secret signing mailtrap.io/webhook-secret=true"
    assert command in message
    assert get(cluster, "deployment", "hooks-receiver", namespace=tenant.namespace) is None

    # Whoever may write the Secret opts in; the retry (at most 30 s apart) notices it.
    cluster.kubectl("-n", tenant.namespace, "label", "secret", "signing",
                    "mailtrap.io/webhook-secret=true")  # fmt: skip
    obj = wait_ready(cluster, tenant.namespace, "hooks")
    assert obj["metadata"]["generation"] == 1  # nobody touched the resource
