"""The Helm chart, rendered by the real helm: no cluster needed.

It lints and renders with its defaults and with every ci/*-values.yaml; its schema
refuses wrong values; its CRD is crds/'s; its Pods meet PodSecurity "restricted";
every value is documented; the operator's environment is what settings.py reads;
the dashboard only plots metrics that exist; its RBAC has the shape the values
ask for and the README's table lists exactly its rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailtrap_operator import __version__
from mailtrap_operator import settings as operator_settings
from mailtrap_operator.metrics import OperatorMetrics
from mailtrap_operator.policy import Policy
from mailtrap_receiver.metrics import Metrics as ReceiverMetrics
from tests.helpers.chart import (
    CHART,
    CI_VALUES,
    aggregated,
    find,
    helm,
    permissions,
    render,
    rules_of,
)
from tests.helpers.cluster import REPO

SCENARIOS = [None, *CI_VALUES]
IDS = ["defaults", *(path.name.removesuffix("-values.yaml") for path in CI_VALUES)]
CRD = "mailtrapwebhooks.mailtrap.io.yaml"
DEFAULT_RECEIVER_REPOSITORY = "ghcr.io/mailtrap-webhook-operator/mailtrap-webhook-receiver"


def scenario_files(scenario: Path | None) -> list[Path]:
    return [scenario] if scenario else []


def deployment_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    return dict(deployment)


def container_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = deployment_of(docs)["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


# --- lint and render ----------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_helm_lint_passes(scenario: Path | None) -> None:
    args = ["lint", str(CHART), "--strict"]
    if scenario:
        args += ["--values", str(scenario)]
    out = helm(*args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_renders_named_and_labelled_objects(scenario: Path | None) -> None:
    docs = render(files=scenario_files(scenario), release="rel", namespace="ops")
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ServiceAccount"} & kinds
    for doc in docs:
        meta = doc["metadata"]
        assert meta["name"], doc
        assert meta["labels"]["app.kubernetes.io/instance"] == "rel", doc["kind"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", doc["kind"]
        if doc["kind"] in ("Deployment", "Service", "ServiceAccount", "ServiceMonitor"):
            assert meta["namespace"] == "ops", doc["kind"]


def test_the_ci_scenarios_cover_the_charts_options() -> None:
    # Each optional template must be rendered by at least one scenario.
    rendered = {
        doc["kind"] for scenario in SCENARIOS for doc in render(files=scenario_files(scenario))
    }
    assert rendered >= {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "ConfigMap",
        "ClusterKopfPeering",
        "KopfPeering",
        "PodDisruptionBudget",
    }


def test_the_service_monitor_scrapes_the_metrics_service_of_the_operator_pods() -> None:
    docs = render(files=[CHART / "ci" / "monitoring-values.yaml"])
    (monitor,) = find(docs, "ServiceMonitor")
    (service,) = find(docs, "Service")
    pod = deployment_of(docs)["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert port["targetPort"] == pod["spec"]["containers"][0]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_a_service_monitor_without_its_service_is_refused() -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(AssertionError, match=r"needs metrics\.service\.enabled"):
        render(values=values)


# --- values.schema.json -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 1.5}, "/replicaCount"),
        ({"replicaCas": 2}, "'replicaCas' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"tga": "1.0"}}, "'tga' not allowed"),
        ({"receiver": {"imagePullPolicy": "always"}}, "/receiver/imagePullPolicy"),
        ({"receiver": {"image": "registry.example/receiver:1"}}, "/receiver/image"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"logging": {"level": "verbose"}}, "/logging/level"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor"),
        ({"crds": {"keep": "yes"}}, "/crds/keep"),
        ({"policy": {"requireSecretLabel": "yes"}}, "/policy/requireSecretLabel"),
        ({"policy": {"allowEverything": True}}, "'allowEverything' not allowed"),
        (
            {
                "policy": {
                    "allowedIngressAnnotations": ["nginx.ingress.kubernetes.io/server-snippet"]
                }
            },
            "/policy/allowedIngressAnnotations/0",
        ),
        ({"policy": {"deniedTargetCidrs": ["10.0.0.0"]}}, "/policy/deniedTargetCidrs/0"),
        ({"policy": {"allowedPodLabels": "team"}}, "/policy/allowedPodLabels"),
    ],
)
def test_the_schema_refuses_wrong_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(AssertionError) as failure:
        render(values=values)
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert complaint in str(failure.value)


# --- the CRD ------------------------------------------------------------------------


def test_the_charts_crd_is_a_byte_copy_of_crds() -> None:
    # Refresh it: cp crds/mailtrapwebhooks.mailtrap.io.yaml charts/mailtrap-webhook-operator/files/
    assert (CHART / "files" / CRD).read_bytes() == (REPO / "crds" / CRD).read_bytes()


def test_the_rendered_crd_is_crds_with_the_charts_labels_and_keep_policy() -> None:
    source = yaml.safe_load((REPO / "crds" / CRD).read_text())
    (crd,) = find(render(), "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    (unkept,) = find(render(values={"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (unkept["metadata"].get("annotations") or {})
    assert not find(render(values={"crds": {"enabled": False}}), "CustomResourceDefinition")


def test_the_peering_crds_are_kopfs_kinds() -> None:
    crds = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    assert {(c["spec"]["names"]["kind"], c["spec"]["scope"]) for c in crds} == {
        ("ClusterKopfPeering", "Cluster"),
        ("KopfPeering", "Namespaced"),
    }


# --- PodSecurity "restricted" -------------------------------------------------------


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    """What PodSecurity's "restricted" level would refuse in a pod spec."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes") or ():
        allowed = {"configMap", "emptyDir", "secret", "projected", "downwardAPI"}
        if not set(volume) - {"name"} <= allowed:
            problems.append(f"volume {volume['name']}")
    for container in [*pod["containers"], *(pod.get("initContainers") or ())]:
        context = container.get("securityContext") or {}

        def setting(key: str, context: dict[str, Any] = context) -> Any:
            return context.get(key, pod_context.get(key))

        name = container["name"]
        if setting("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot")
        user = setting("runAsUser")
        if not isinstance(user, int) or user == 0:
            problems.append(f"{name}: a numeric non-root runAsUser")
        if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation false")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = context.get("capabilities") or {}
        if capabilities.get("drop") != ["ALL"]:
            problems.append(f"{name}: drop ALL capabilities")
        if set(capabilities.get("add") or ()) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: added capabilities")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        if any(port.get("hostPort") for port in container.get("ports") or ()):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_the_operator_pod_is_restricted(scenario: Path | None) -> None:
    pod = deployment_of(render(files=scenario_files(scenario)))["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []


def test_the_restricted_check_finds_problems() -> None:
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    assert restricted_problems(pod) == [
        "hostNetwork",
        "volume root",
        "c: runAsNonRoot",
        "c: a numeric non-root runAsUser",
        "c: seccompProfile RuntimeDefault",
        "c: allowPrivilegeEscalation false",
        "c: privileged",
        "c: drop ALL capabilities",
        "c: readOnlyRootFilesystem",
    ]


# --- values.yaml documents every key ------------------------------------------------


def undocumented(
    node: yaml.MappingNode, schema: dict[str, Any], lines: list[str], path: str
) -> Iterator[str]:
    for key, value in node.value:
        where = f"{path}{key.value}"
        above = [line.strip() for line in lines[: key.start_mark.line] if line.strip()]
        if not above or not above[-1].startswith("#"):
            yield where
        prop = (schema.get("properties") or {}).get(key.value)
        assert prop is not None, f"{where} is not in values.schema.json"
        # Maps with keys of their own (labels, resources, ...) are documented as a whole.
        if isinstance(value, yaml.MappingNode) and "properties" in prop:
            yield from undocumented(value, prop, lines, where + ".")


def without_default(schema: dict[str, Any], values: dict[str, Any], path: str) -> Iterator[str]:
    for key, prop in (schema.get("properties") or {}).items():
        if key not in values:
            yield f"{path}{key}"
        elif "properties" in prop and isinstance(values[key], dict):
            yield from without_default(prop, values[key], f"{path}{key}.")


def test_the_charts_readme_is_written_from_its_values() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart_readme.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    # Every documented key has its row, with its default.
    assert "| `policy.allowImageOverride` | bool | `false` |" in readme
    assert "| `replicaCount` | int | `1` |" in readme


def test_values_yaml_documents_every_key() -> None:
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    assert list(undocumented(root, schema, text.splitlines(), "")) == []
    # and every value the schema allows, at every level, has a default there to
    # document it; `global` is Helm's, passed to every chart, and not ours to set.
    values = yaml.safe_load(text)
    assert [key for key in without_default(schema, values, "") if key != "global"] == []


# --- the operator's environment -----------------------------------------------------


def settings_variables() -> set[str]:
    parser = operator_settings.build_parser(environ={})
    return {
        operator_settings.ENV_PREFIX + option[2:].upper().replace("-", "_")
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_the_operator_reads_every_variable_the_chart_sets(scenario: Path | None) -> None:
    docs = render(files=scenario_files(scenario))
    env = container_env(docs)
    ours = {name for name in env if name.startswith(operator_settings.ENV_PREFIX)}
    assert ours <= settings_variables(), ours - settings_variables()
    # kopf's peering identity; without it kopf looks up a user name that UID 10001 lacks.
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    values = yaml.safe_load(scenario.read_text()) if scenario else {}
    parsed = operator_settings.parse([], environ={k: v for k, v in env.items() if k in ours})
    assert parsed.namespaces == tuple(sorted(values.get("watchNamespaces", [])))
    assert parsed.standalone == (values.get("replicaCount", 1) <= 1)
    if not parsed.standalone:
        (peering,) = {doc["metadata"]["name"] for doc in docs if "KopfPeering" in doc["kind"]}
        assert parsed.peering_name == peering
    container = deployment_of(docs)["spec"]["template"]["spec"]["containers"][0]
    receiver = values.get("receiver", {})
    # The receivers run the receiver image of the operator's release (its tag), and
    # pull it alike, unless told otherwise.
    operator_tag = container["image"].rsplit(":", 1)[1]
    wanted = receiver.get("image", {})
    wanted_image = (
        f"{wanted.get('repository', DEFAULT_RECEIVER_REPOSITORY)}:"
        f"{wanted.get('tag') or operator_tag}"
    )
    assert parsed.receiver_image == wanted_image
    own_policy = container["imagePullPolicy"]
    assert parsed.receiver_image_pull_policy == receiver.get("imagePullPolicy", own_policy)
    port = container["ports"][0]["containerPort"]
    assert parsed.metrics_port == port
    # The chart's policy is the operator's: by default, the same secure defaults.
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    policy = {**chart_defaults, **values.get("policy", {})}
    for name in Policy.__dataclass_fields__:
        first, *rest = name.split("_")
        value = policy[first + "".join(word.title() for word in rest)]
        parsed_value = getattr(parsed.policy, name)
        if isinstance(parsed_value, tuple):
            parsed_value = [str(item) for item in parsed_value]
        assert parsed_value == value, name
    if not values.get("policy"):
        assert parsed.policy == Policy()


def test_the_chart_and_the_operator_default_to_the_same_receiver_image() -> None:
    parsed = operator_settings.parse([], environ=container_env(render()))
    assert parsed.receiver_image == operator_settings.DEFAULT_RECEIVER_IMAGE
    assert parsed.receiver_image == f"{DEFAULT_RECEIVER_REPOSITORY}:{__version__}"


def test_the_receiver_image_follows_the_operator_images_tag() -> None:
    docs = render(values={"image": {"tag": "1.2.3", "pullPolicy": "Never"}})
    parsed = operator_settings.parse([], environ=container_env(docs))
    assert parsed.receiver_image == f"{DEFAULT_RECEIVER_REPOSITORY}:1.2.3"
    assert parsed.receiver_image_pull_policy == "Never"


def test_the_image_tag_defaults_to_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = deployment_of(render())["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{chart['appVersion']}")
    assert chart["appVersion"] == __version__


def test_the_chart_carries_the_packages_version() -> None:
    # pyproject.toml holds the one version: the package's (and so __version__), and
    # `make chart` packages the chart with it; Chart.yaml must say the same.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == project["version"] == __version__


# --- RBAC ---------------------------------------------------------------------------


def test_watching_every_namespace_binds_a_cluster_role_and_no_role() -> None:
    docs = render()
    assert not find(docs, "Role")
    (binding,) = find(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mailtrap-mailtrap-webhook-operator",
         "namespace": "mailtrap-system"}
    ]  # fmt: skip


def test_a_namespace_list_gets_a_role_in_each_and_nothing_cluster_wide() -> None:
    docs = render(values={"watchNamespaces": ["team-a", "team-b"]})
    # Only the user roles aggregated into view and edit, which grant nothing unbound.
    assert all(aggregated(role) for role in find(docs, "ClusterRole"))
    assert not find(docs, "ClusterRoleBinding")
    cluster_rules = rules_of(render(), "ClusterRole")
    for namespace in ("team-a", "team-b"):
        assert rules_of(docs, "Role", namespace) == cluster_rules
        (binding,) = find(docs, "RoleBinding", namespace)
        assert binding["roleRef"]["kind"] == "Role"


def test_peering_adds_only_its_own_rule() -> None:
    base = permissions(rules_of(render(), "ClusterRole"))
    clusterwide = permissions(rules_of(render(values={"replicaCount": 2}), "ClusterRole"))
    assert clusterwide - base == {
        ("kopf.dev", "clusterkopfpeerings", verb) for verb in ("list", "watch", "patch")
    }
    namespaced = permissions(
        rules_of(render(values={"replicaCount": 2, "watchNamespaces": ["a"]}), "Role", "a")
    )
    assert namespaced - base == {
        ("kopf.dev", "kopfpeerings", verb) for verb in ("list", "watch", "patch")
    }


def test_namespace_users_get_mailtrapwebhooks_through_view_and_edit() -> None:
    roles = {role["metadata"]["name"]: role for role in find(render(), "ClusterRole")}
    view, edit = (
        roles["mailtrap-mailtrap-webhook-operator-view"],
        roles["mailtrap-mailtrap-webhook-operator-edit"],
    )
    assert {key for key in view["metadata"]["labels"] if "aggregate-to" in key} == {
        "rbac.authorization.k8s.io/aggregate-to-view"
    }
    assert {key for key in edit["metadata"]["labels"] if "aggregate-to" in key} == {
        "rbac.authorization.k8s.io/aggregate-to-edit",
        "rbac.authorization.k8s.io/aggregate-to-admin",
    }
    # MailtrapWebhooks only: never their status or finalizers, never another kind.
    assert permissions(view["rules"]) == {
        ("mailtrap.io", "mailtrapwebhooks", verb) for verb in ("get", "list", "watch")
    }
    assert {resource for _, resource, _ in permissions(edit["rules"])} == {"mailtrapwebhooks"}
    assert {verb for _, _, verb in permissions(edit["rules"])} >= {"create", "patch", "delete"}
    off = render(values={"rbac": {"aggregateClusterRoles": False}})
    assert not [role for role in find(off, "ClusterRole") if aggregated(role)]


def test_two_operator_pods_get_a_disruption_budget() -> None:
    assert not find(render(), "PodDisruptionBudget")
    (budget,) = find(render(values={"replicaCount": 2}), "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == deployment_of(render(values={"replicaCount": 2}))["spec"]["selector"]["matchLabels"]
    )
    assert not find(
        render(values={"replicaCount": 2, "podDisruptionBudget": {"enabled": False}}),
        "PodDisruptionBudget",
    )


def test_the_platform_may_assign_the_operators_user() -> None:
    # OpenShift's restricted SCC assigns a user id; a fixed one would be refused.
    values = {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}}
    pod = deployment_of(render(values=values))["spec"]["template"]["spec"]
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod["securityContext"])
    # Still non-root, and the container's own context is untouched.
    assert pod["securityContext"]["runAsNonRoot"] is True
    default = deployment_of(render())["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"] == default["containers"][0]["securityContext"]


def test_no_rbac_objects_when_rbac_is_off() -> None:
    kinds = {doc["kind"] for doc in render(values={"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


Row = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def row(groups: Iterable[str], resources: Iterable[str], verbs: Iterable[str]) -> Row:
    return tuple(sorted(groups)), tuple(sorted(resources)), tuple(sorted(verbs))


def readme_rbac_rows() -> list[Row]:
    """The rows of the README's permission table: (API groups, resources, verbs)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| API group | Resources | Verbs |") :].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        group, resources, verbs = (cell.strip() for cell in line.strip("|").split("|")[:3])
        rows.append(
            row(
                ["" if group == "core" else group.strip("`")],
                re.findall(r"`([^`]+)`", resources),
                (verb.strip() for verb in verbs.split(",")),
            )
        )
    return rows


def test_the_readme_lists_exactly_the_charts_rules() -> None:
    rules = [
        *rules_of(render(values={"replicaCount": 2}), "ClusterRole"),
        *(
            rule
            for rule in rules_of(
                render(values={"replicaCount": 2, "watchNamespaces": ["a"]}), "Role", "a"
            )
            if "kopfpeerings" in rule["resources"]
        ),
    ]
    chart = sorted(row(rule["apiGroups"], rule["resources"], rule["verbs"]) for rule in rules)
    assert sorted(readme_rbac_rows()) == chart


# --- the Grafana dashboard ----------------------------------------------------------


def exposed_series() -> set[str]:
    """Every series name the receiver and the operator can expose."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    names = set()
    for registry in (ReceiverMetrics().registry, OperatorMetrics().registry):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_the_dashboard_plots_only_metrics_that_exist() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    used = {name for query in queries for name in re.findall(r"\bmailtrap_[a-z_]+", query)}
    assert used
    assert used <= exposed_series(), used - exposed_series()
    # Every panel plots something, and panel ids are unique (Grafana keys on them).
    assert all(panel["targets"] for panel in dashboard["panels"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_filters_receivers_by_namespace_and_webhook() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert {"namespace", "webhook"} <= set(variables)
    # The webhook list follows the namespaces chosen, and shows resource names.
    assert "$namespace" in variables["webhook"]["query"]["query"]
    assert variables["webhook"]["regex"] == "/^(.*)-receiver$/"
    receiver_queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if "mailtrap_webhook_" in target["expr"]
    ]
    assert receiver_queries
    for query in receiver_queries:
        for selector in re.findall(r"mailtrap_webhook_[a-z_]+(\{[^}]*\})?", query):
            assert 'namespace=~"$namespace"' in selector, query
            assert 'service=~"$webhook-receiver"' in selector, query


def test_the_dashboard_configmap_carries_the_sidecar_label() -> None:
    (configmap,) = find(render(values={"dashboards": {"enabled": True}}), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name,) = configmap["data"]
    assert json.loads(configmap["data"][name])["uid"] == "mailtrap-webhooks"
