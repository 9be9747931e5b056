"""Every manifest the project makes, checked by kubeconform against Kubernetes' schemas.

What is checked: the chart rendered by the real helm with its defaults and with each
``ci/*-values.yaml``; the examples (MailtrapWebhooks against the CRD's own schema,
and their Secrets); and, for each example MailtrapWebhook, the children the
operator's builders make of it. The schemas are the pinned Kubernetes version's
(tests/helpers/kubeschemas.py), strict: a field Kubernetes does not know fails.

Kinds of other projects' CRDs (the Prometheus Operator's ServiceMonitor and
PrometheusRule, kopf's peerings) have no schema here and are skipped by name: the
API server checks them in tests/integration/test_chart_install.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailtrap_operator import builders
from mailtrap_operator.resources import Owner
from tests.helpers.chart import CI_VALUES, render
from tests.helpers.cluster import REPO
from tests.helpers.cluster import testbins_dir as binaries
from tests.helpers.kubeschemas import TEMPLATE, write_schemas

FOREIGN_KINDS = ("ServiceMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering")
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    crd = yaml.safe_load((REPO / "crds" / "mailtrapwebhooks.mailtrap.io.yaml").read_text())
    return write_schemas(tmp_path_factory.mktemp("schemas"), crds=[crd])


def kubeconform(schemas: Path, docs: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [
            str(binaries() / "kubeconform"), "-strict", "-summary", "-verbose", "-output", "json",
            "-schema-location", f"{schemas}/{TEMPLATE}", "-skip", ",".join(FOREIGN_KINDS),
            str(manifest),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout)
    problems = [
        f"{item['kind']} {item['name']}: {item['msg']}"
        for item in report["resources"]
        if item["status"] not in ("statusValid", "statusSkipped")
    ]
    assert not problems, "\n".join(problems)
    assert done.returncode == 0, done.stderr
    return report


def checked(report: dict[str, Any]) -> set[str]:
    return {item["kind"] for item in report["resources"] if item["status"] == "statusValid"}


@pytest.mark.parametrize(
    "scenario",
    [None, *CI_VALUES],
    ids=["defaults", *(path.name.removesuffix("-values.yaml") for path in CI_VALUES)],
)
def test_the_charts_manifests_are_valid(
    schemas: Path, scenario: Path | None, tmp_path: Path
) -> None:
    docs = render(files=[scenario] if scenario else [], include_crds=True)
    report = kubeconform(schemas, docs, tmp_path)
    assert {"Deployment", "ServiceAccount", "ClusterRole"} & checked(report)
    assert report["summary"]["valid"] >= len(docs) - sum(
        doc["kind"] in FOREIGN_KINDS for doc in docs
    )


def example_webhooks() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "MailtrapWebhook":
                found.append((path.name, doc))
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_examples_are_valid(schemas: Path, path: Path, tmp_path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    report = kubeconform(schemas, docs, tmp_path)
    assert "MailtrapWebhook" in checked(report)


@pytest.mark.parametrize(
    ("name", "resource"), example_webhooks(), ids=[name for name, _ in example_webhooks()]
)
def test_the_children_of_each_example_are_valid(
    schemas: Path, name: str, resource: dict[str, Any], tmp_path: Path
) -> None:
    resource = json.loads(json.dumps(resource))
    resource["metadata"].update(
        namespace=resource["metadata"].get("namespace") or "mail",
        uid="00000000-0000-0000-0000-000000000001",
        generation=1,
    )
    owner = Owner.from_body(resource)
    config = builders.build_config(spec=owner.spec, namespace=owner.namespace)
    text = builders.render_config(config=config, owner=owner)
    children = builders.build_children(
        owner=owner,
        default_image="registry.example/mailtrap-webhook-receiver:1",
        config_text=text,
        config_hash=builders.config_hash(config_text=text),
        service_monitors_available=True,
    )
    report = kubeconform(schemas, list(children.manifests), tmp_path)
    assert {"ConfigMap", "Service", "Deployment"} <= checked(report)


def test_a_misspelt_field_fails(schemas: Path, tmp_path: Path) -> None:
    # The check is strict: a field Kubernetes does not know is an error, not dropped.
    docs = render()
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        kubeconform(schemas, [deployment], tmp_path)
    # And a CRD instance is held to the CRD's own schema.
    _, webhook = example_webhooks()[0]
    webhook = json.loads(json.dumps(webhook))
    webhook["spec"]["targets"][0]["batchSize"] = "ten"
    with pytest.raises(AssertionError, match="batchSize"):
        kubeconform(schemas, [webhook], tmp_path)
