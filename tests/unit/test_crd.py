"""The CRD and the operator's builders state some facts twice: they must agree.

Defaults the builders fall back to when a field is unset (an object created
before a default existed, or a unit test's bare spec), the name length and
pattern the CRD's CEL rule enforces for the children's names, the directories
the spool must keep away from, and when a PodDisruptionBudget exists. The CRD
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
from mailtrap_operator.resources import Owner

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
