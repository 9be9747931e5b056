"""The CRD and the operator's builders state some facts twice: they must agree.

Defaults the builders fall back to when a field is unset (an object created
before a default existed, or a unit test's bare spec), the name length and
pattern the CRD's CEL rule enforces for the children's names, the directories
the spool must keep away from, and when a PodDisruptionBudget exists. Names that
end up in API paths (Secret references) are refused by the CRD's patterns and, if
one got through, escaped by `Kind.path`. The CRD
cannot be evaluated here (no CEL interpreter), so the rules are read as text;
tests/integration/test_operator_crd.py checks that the API server applies them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailtrap_operator import builders
from mailtrap_operator.resources import SECRET, SERVICE, Owner

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds/mailtrapwebhooks.mailtrap.io.yaml").read_text())
ROOT = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]


def field(path: str) -> dict[str, Any]:
    """The schema of a dotted spec path; ``[]`` steps into a list's items."""
    schema: dict[str, Any] = SPEC
    for part in path.split("."):
        schema = schema["items"] if part == "[]" else schema["properties"][part]
    return schema


def rules(schema: dict[str, Any]) -> list[dict[str, str]]:
    return list(schema.get("x-kubernetes-validations") or ())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("replicas", builders.DEFAULT_REPLICAS),
        ("path", builders.DEFAULT_PATH),
        ("delivery.spoolPath", builders.DEFAULT_SPOOL_PATH),
        ("shutdownGracePeriod", builders.DEFAULT_SHUTDOWN_GRACE),
        ("signingSecretRef.key", builders.DEFAULT_SIGNING_KEY),
        ("targets.[].signingSecretRef.key", builders.DEFAULT_SIGNING_KEY),
        ("basicAuthSecretRef.key", builders.DEFAULT_BASIC_AUTH_KEY),
        ("serviceMonitor.interval", builders.DEFAULT_SCRAPE_INTERVAL),
        ("podDisruptionBudget.minAvailable", builders.DEFAULT_MIN_AVAILABLE),
        ("podDisruptionBudget.enabled", True),
        ("ingress.enabled", False),
        ("networkPolicy.enabled", False),
        ("serviceMonitor.enabled", False),
    ],
)
def test_crd_defaults_are_the_builders_fallbacks(path: str, value: object) -> None:
    assert field(path)["default"] == value


def test_optional_children_are_off_or_on_by_default_like_the_crd_says() -> None:
    owner = Owner(namespace="n", name="x", uid="u", generation=1, spec={})
    assert builders.build_ingress(owner) is None
    assert builders.build_network_policy(owner) is None
    assert builders.build_service_monitor(owner) is None
    pdb = builders.build_pod_disruption_budget(owner)  # two replicas by default
    assert pdb is not None
    assert pdb["spec"]["minAvailable"] == builders.DEFAULT_MIN_AVAILABLE


def test_the_name_rule_is_the_builders_name_check() -> None:
    (rule,) = rules(ROOT)
    assert f"self.metadata.name.size() <= {builders.MAX_NAME_LENGTH}" in rule["rule"]
    assert f"matches('{builders.NAME_PATTERN.pattern}')" in rule["rule"]
    assert f"at most {builders.MAX_NAME_LENGTH} characters" in " ".join(rule["message"].split())
    assert builders.MAX_NAME_LENGTH + len(builders.child_name("")) == 63  # a DNS label


def test_the_spool_rule_reserves_the_builders_mount_directories() -> None:
    schema = field("delivery.spoolPath")
    (rule,) = rules(schema)
    listed = re.search(r"\[('[^\]]*')\]\.all\(r", rule["rule"])
    assert listed is not None
    reserved = tuple(item.strip().strip("'") for item in listed.group(1).split(","))
    assert reserved == (builders.CONFIG_DIR, builders.SECRETS_DIR, builders.TMP_DIR)
    for directory in reserved:
        assert directory in schema["description"]
        assert directory in rule["message"]


def test_the_budget_rule_guards_exactly_the_budgets_the_builders_make() -> None:
    (rule,) = [r for r in rules(SPEC) if "podDisruptionBudget" in r["rule"]]
    text = " ".join(rule["rule"].split())
    # The builders make a budget only above one replica and when enabled.
    assert "self.replicas <= 1" in text
    assert "!self.podDisruptionBudget.enabled" in text
    assert "self.podDisruptionBudget.minAvailable < self.replicas" in text
    for replicas in range(5):
        spec = {"replicas": replicas, "podDisruptionBudget": {"minAvailable": replicas}}
        owner = Owner(namespace="n", name="x", uid="u", generation=1, spec=spec)
        made = builders.build_pod_disruption_budget(owner) is not None
        assert made == (replicas > 1)  # and then the rule refuses minAvailable == replicas


HOST_PATTERN = re.compile(
    re.search(r"matches\('([^']+)'\)", rules(field("ingress.host"))[0]["rule"]).group(1)  # type: ignore[union-attr]
)


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("hooks.example.com", True),
        ("*.example.com", True),
        ("localhost", True),
        ("a-b.c1.example", True),
        ("Hooks.example.com", False),
        ("hooks.example.com.", False),
        ("https://hooks.example.com", False),
        ("hooks.example.com/path", False),
        ("hooks_example.com", False),
        ("*example.com", False),
        ("a.*.example.com", False),
        ("-hooks.example.com", False),
        ("a" * 64 + ".example.com", False),
        ("hooks.example.com:443", False),
    ],
)
def test_the_ingress_host_rule_accepts_dns_names_only(host: str, valid: bool) -> None:
    # The API server also refuses an IP address, with isIP(), which has no twin here.
    assert bool(HOST_PATTERN.fullmatch(host)) is valid


def _nodes(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        found += _nodes(sub, f"{path}.{key}")
    if "items" in schema:
        found += _nodes(schema["items"], f"{path}[]")
    return found


def test_every_field_and_list_item_has_a_description_for_kubectl_explain() -> None:
    missing = [
        path
        for path, schema in _nodes(ROOT, "")
        if not schema.get("description") and path != ".metadata"  # metadata: the API's own
    ]
    assert missing == []


# --- names that end up in API paths and host names -------------------------------------

SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
SECRET_REFS = ["signingSecretRef", "basicAuthSecretRef", "targets.[].signingSecretRef"]


@pytest.mark.parametrize("ref", SECRET_REFS)
def test_secret_refs_take_only_secret_names_and_keys(ref: str) -> None:
    # The operator reads these Secrets by name: a name is one path segment.
    assert field(f"{ref}.name")["pattern"] == SUBDOMAIN
    assert field(f"{ref}.key")["pattern"] == SECRET_KEY
    assert field(f"{ref}.name")["maxLength"] == field(f"{ref}.key")["maxLength"] == 253


def test_every_secret_ref_of_the_spec_is_checked() -> None:
    refs = [path for path, _ in _nodes(SPEC, "") if path.endswith("SecretRef")]
    assert sorted(path.lstrip(".").replace("[]", ".[]") for path in refs) == sorted(SECRET_REFS)
    assert field("ingress.tlsSecretName")["pattern"] == SUBDOMAIN


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mailtrap-signing", True),
        ("hooks.example.tls", True),
        ("a", True),
        ("../../team-b/secrets/db-creds", False),
        ("..", False),
        ("a/b", False),
        ("Signing", False),
        ("-signing", False),
        ("signing.", False),
        ("a..b", False),
        ("", False),
    ],
)
def test_the_secret_name_pattern(name: str, valid: bool) -> None:
    assert bool(re.fullmatch(SUBDOMAIN, name)) is valid


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("signing-secret", True),
        ("tls.crt", True),
        (".dockerconfigjson", True),
        ("a..b", True),
        ("A_B", True),
        (".", False),
        ("..", False),
        ("..data", False),
        ("a/b", False),
        ("", False),
    ],
)
def test_the_secret_key_pattern_is_kubernetes_own(key: str, valid: bool) -> None:
    # Kubernetes' IsConfigMapKey: [-._a-zA-Z0-9]+, but not ".", ".." nor "..anything".
    assert bool(re.fullmatch(SECRET_KEY, key)) is valid


def test_service_targets_are_dns_labels() -> None:
    service = field("targets.[].service")["properties"]
    assert service["name"]["pattern"] == r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
    assert service["namespace"]["pattern"] == r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


@pytest.mark.parametrize(
    "name", ["../../team-b/secrets/db-creds", "a/b", "a?watch=1", "a#b", "%2e%2e"]
)
def test_api_paths_keep_any_name_inside_its_namespace(name: str) -> None:
    path = SECRET.path(namespace="team-a", name=name)
    prefix = "/api/v1/namespaces/team-a/secrets/"
    assert path.startswith(prefix)
    assert "/" not in path[len(prefix) :]
    assert "?" not in path
    assert "#" not in path


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_api_paths_refuse_dot_segments(name: str) -> None:
    with pytest.raises(ValueError, match="not an object or namespace name"):
        SERVICE.path(namespace="team-a", name=name)
    with pytest.raises(ValueError, match="not an object or namespace name"):
        SERVICE.path(namespace=name)
