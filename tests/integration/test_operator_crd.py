"""The CRD on a real API server: kubectl explain helps, bad resources are refused.

No operator is needed: all of this is the API server enforcing crds/.
"""

from __future__ import annotations

import pytest

from tests.helpers.cluster import LocalCluster

pytestmark = pytest.mark.integration

HEAD = """
apiVersion: mailtrap.io/v1alpha1
kind: MailtrapWebhook
metadata: {name: NAME}
spec:
  signingSecretRef: {name: mailtrap-signing}
"""
ONE_TARGET = "  targets: [{name: a, url: 'http://a.example/'}]\n"


def test_explain_prints_descriptions_of_targets(cluster: LocalCluster, crd: None) -> None:
    out = cluster.kubectl("explain", "mailtrapwebhook.spec.targets").stdout
    assert "In-cluster HTTP endpoints that receive the events." in out
    for field in ("url", "service", "events", "format", "batchSize", "retry"):
        assert field in out
    assert "set exactly one of url or service" not in out  # rules are not descriptions
    deeper = cluster.kubectl("explain", "mtwh.spec.targets.format").stdout
    assert "cloudevents" in deeper


def test_short_name_and_category(cluster: LocalCluster, crd: None, namespace: str) -> None:
    assert cluster.kubectl("-n", namespace, "get", "mtwh").returncode == 0
    assert cluster.kubectl("-n", namespace, "get", "mailtrap").returncode == 0


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("", id="minimal"),
        # No budget is made for one replica, so its default minAvailable of 1 is fine.
        pytest.param("  replicas: 1\n", id="one-replica"),
        pytest.param(
            "  replicas: 3\n  podDisruptionBudget: {minAvailable: 2}\n", id="budget-below"
        ),
        pytest.param(
            "  replicas: 2\n  podDisruptionBudget: {enabled: false, minAvailable: 5}\n",
            id="budget-off",
        ),
        pytest.param("  ingress: {enabled: true, host: '*.hooks.example.com'}\n", id="wildcard"),
    ],
)
def test_a_valid_resource_is_accepted(
    cluster: LocalCluster, crd: None, namespace: str, spec: str
) -> None:
    text = HEAD.replace("NAME", "ok") + spec + ONE_TARGET
    out = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input_text=text)
    assert "created (server dry run)" in out.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("  targets: []\n", "should have at least 1 items", id="no-targets"),
        pytest.param("", "spec.targets: Required value", id="targets-missing"),
        pytest.param(
            "  targets: [{name: a, url: 'http://a/', service: {name: s, port: 80}}]\n",
            "set exactly one of url or service",
            id="url-and-service",
        ),
        pytest.param("  targets: [{name: a}]\n", "set exactly one of url or service", id="neither"),
        pytest.param(
            "  targets: [{name: a, url: 'http://a/'}, {name: a, url: 'http://b/'}]\n",
            'Duplicate value: {"name":"a"}',
            id="duplicate-target-names",
        ),
        pytest.param(
            "  events: [bounced]\n" + ONE_TARGET,
            'Unsupported value: "bounced"',
            id="unknown-event",
        ),
        pytest.param(
            "  targets: [{name: a, url: 'http://a/', events: [opened]}]\n",
            'Unsupported value: "opened"',
            id="unknown-target-event",
        ),
        pytest.param(
            "  ingress: {enabled: true}\n" + ONE_TARGET,
            "spec.ingress.host is required when spec.ingress.enabled is true",
            id="ingress-without-host",
        ),
        pytest.param(
            "  targets: [{name: a, url: 'ftp://a/'}]\n",
            "spec.targets[0].url",
            id="not-http",
        ),
        pytest.param(
            "  delivery: {spoolPath: /etc/mailtrap-receiver/spool.db}\n" + ONE_TARGET,
            "spoolPath must be a file in a directory of its own",
            id="spool-on-config",
        ),
        pytest.param(
            "  maxBodySize: 10\n" + ONE_TARGET,
            "must be a number of bytes of at least 1024",
            id="tiny-body-limit",
        ),
        pytest.param(
            "  allowedSourceRanges: [10.0.0.1]\n" + ONE_TARGET,
            "every entry must be a CIDR",
            id="not-a-cidr",
        ),
        pytest.param(
            "  replicas: 2\n  podDisruptionBudget: {minAvailable: 2}\n" + ONE_TARGET,
            "spec.podDisruptionBudget.minAvailable must be less than spec.replicas",
            id="budget-blocks-every-eviction",
        ),
        pytest.param(
            "  ingress: {enabled: true, host: Hooks.Example.com}\n" + ONE_TARGET,
            "spec.ingress.host must be a lower-case DNS name",
            id="host-not-lower-case",
        ),
        pytest.param(
            "  ingress: {enabled: true, host: 'hooks.example.com/x'}\n" + ONE_TARGET,
            "spec.ingress.host must be a lower-case DNS name",
            id="host-with-a-path",
        ),
        pytest.param(
            "  ingress: {enabled: true, host: 192.0.2.10}\n" + ONE_TARGET,
            "spec.ingress.host must be a lower-case DNS name",
            id="host-an-ip-address",
        ),
        pytest.param(
            "  basicAuthSecretRef: {name: ../../team-b/secrets/db-creds}\n" + ONE_TARGET,
            "spec.basicAuthSecretRef.name: Invalid value",
            id="secret-name-a-path",
        ),
        pytest.param(
            "  targets: [{name: a, url: 'http://a/', signingSecretRef: {name: s, key: ..}}]\n",
            "spec.targets[0].signingSecretRef.key: Invalid value",
            id="secret-key-dot-dot",
        ),
        pytest.param(
            "  targets: [{name: a, service: {name: kubernetes.default, port: 443}}]\n",
            "spec.targets[0].service.name: Invalid value",
            id="service-name-with-a-dot",
        ),
        pytest.param(
            "  targets: [{name: a, service: {name: s, namespace: a/b, port: 80}}]\n",
            "spec.targets[0].service.namespace: Invalid value",
            id="service-namespace-a-path",
        ),
        pytest.param(
            "  ingress: {enabled: true, host: h.example.com, tlsSecretName: ../x}\n" + ONE_TARGET,
            "spec.ingress.tlsSecretName: Invalid value",
            id="tls-secret-name-a-path",
        ),
    ],
)
def test_invalid_resources_are_rejected_with_a_clear_message(
    cluster: LocalCluster, crd: None, namespace: str, spec: str, message: str
) -> None:
    text = HEAD.replace("NAME", "bad") + spec
    result = cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=text, check=False)
    assert result.returncode != 0
    assert 'MailtrapWebhook "bad" is invalid' in result.stderr
    assert message in result.stderr
    assert cluster.kubectl("-n", namespace, "get", "mtwh", "bad", check=False).returncode != 0


def test_names_too_long_for_the_service_are_rejected(
    cluster: LocalCluster, crd: None, namespace: str
) -> None:
    text = HEAD.replace("NAME", "a" * 55) + ONE_TARGET
    result = cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=text, check=False)
    assert result.returncode != 0
    assert "at most 54 characters" in result.stderr
    fits = HEAD.replace("NAME", "a" * 54) + ONE_TARGET
    cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input_text=fits)
