"""Kubernetes' own JSON schemas, for kubeconform, made here with no download.

kubeconform's usual schema location is a website this machine cannot reach. The
same schemas come from the OpenAPI v3 documents (``api/openapi-spec/v3``, one per
API group version, CustomResourceDefinitions included) in the ``k8s.io/kubernetes``
module of the pinned Kubernetes version (hack/versions.env), which the Go module
cache holds once hack/testbins.sh has built the control plane (else ``go mod
download`` fetches it from the module proxy). `write_schemas` turns every definition that names a
kind (``x-kubernetes-group-version-kind``) into one standalone, strict JSON schema,
named as kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` template
expects (``deployment-apps-v1.json``, ``service-v1.json``), and does the same for
the openAPIV3Schema of each CRD it is given (the MailtrapWebhook CRD).

Strict, as kubeconform's own "-strict" schemas are: an object with declared
properties admits no others, so a misspelt field fails instead of being dropped.
IntOrString and Quantity take a number or a string, as the API server does.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.helpers.cluster import REPO

# Kinds whose YAML is a string or a number (``port: 80``, ``cpu: 100m``, ``cpu: 1``).
_EITHER: dict[str, list[str]] = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": ["string", "integer"],
    "io.k8s.apimachinery.pkg.api.resource.Quantity": ["string", "number"],
}
TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"


def kubernetes_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("hack/versions.env has no KUBERNETES_VERSION")


def openapi_documents() -> Path:
    """The directory of the pinned k8s.io/kubernetes module's OpenAPI v3 documents."""
    version = kubernetes_version()
    cache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(cache) / f"k8s.io/kubernetes@{version}" / "api" / "openapi-spec" / "v3"
    if not path.exists():
        with tempfile.TemporaryDirectory() as empty:
            subprocess.run(
                ["go", "mod", "download", f"k8s.io/kubernetes@{version}"],
                cwd=empty,
                env={**os.environ, "GO111MODULE": "on"},
                check=True,
                capture_output=True,
                timeout=900,
            )
    return path


def kind_file(kind: str, api_version: str) -> str:
    """kubeconform's file name for a kind: its KindSuffix is the API group's first label
    and the version (``networking.k8s.io/v1`` -> ``-networking-v1``)."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix.lower()}.json"


_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMAS = ("items", "additionalProperties", "not")


def _strict(node: Any) -> Any:
    """A schema in the form kubeconform checks: refs kept, objects closed.

    Walked by what each keyword holds (a schema, a list of schemas, a map of
    them), never by key name alone: a schema of schemas (a CRD's JSONSchemaProps)
    has properties named ``oneOf`` or ``x-kubernetes-int-or-string``.
    """
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string") is True:
        kept = {key: value for key, value in node.items() if key == "description"}
        return {**kept, "oneOf": [{"type": "string"}, {"type": "integer"}]}
    result = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            result[key] = {name: _strict(value) for name, value in node[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            result[key] = [_strict(value) for value in node[key]]
    for key in _SCHEMAS:
        if isinstance(node.get(key), dict):
            result[key] = _strict(node[key])
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


_V3_REF = "#/components/schemas/"


def _definitions() -> dict[str, Any]:
    """Every schema of every API group version, its references made local to one
    ``definitions`` block (what a standalone JSON schema holds)."""
    found: dict[str, Any] = {}
    for document in sorted(openapi_documents().glob("*__v*_openapi.json")):
        text = document.read_text().replace(_V3_REF, "#/definitions/")
        found.update(json.loads(text).get("components", {}).get("schemas", {}))
    return found


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            yield ref.removeprefix("#/definitions/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _closure(name: str, definitions: Mapping[str, Any]) -> dict[str, Any]:
    """The definitions ``name`` needs, itself included, in kubeconform's form."""
    found: dict[str, Any] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        if current in _EITHER:
            found[current] = {"type": _EITHER[current]}
            continue
        found[current] = _strict(definitions[current])
        todo.extend(_refs(definitions[current]))
    return found


def write_schemas(directory: Path, *, crds: Iterable[Mapping[str, Any]] = ()) -> Path:
    """Write a schema file per kind into ``directory``; it is returned for chaining."""
    directory.mkdir(parents=True, exist_ok=True)
    definitions = _definitions()
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or ():
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            schema = {"$ref": f"#/definitions/{name}", "definitions": _closure(name, definitions)}
            (directory / kind_file(gvk["kind"], api_version)).write_text(json.dumps(schema))
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            api_version = f"{spec['group']}/{version['name']}"
            (directory / kind_file(spec["names"]["kind"], api_version)).write_text(
                json.dumps(schema)
            )
    return directory
