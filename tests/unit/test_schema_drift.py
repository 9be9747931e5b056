"""The CRD's spec schema and the receiver's config models must say the same thing.

The CRD (crds/) is the single source of truth. This walks its ``spec`` schema and
the pydantic models of config.py side by side and fails on any difference: key
names (with ``...SecretRef`` -> ``...SecretFile``), which keys are operator-only
(the CRD's, not the model's) or operator-injected (the model's, not the CRD's),
required keys, enums, defaults (where both have one), and numeric and length
bounds. Patterns the models implement as parsers (durations, quantities) are
checked by behaviour on sample strings. The CRD's event enums must also equal the
canonical names of events.py.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from mailtrap_receiver.config import (
    OPERATOR_INJECTED_KEYS,
    OPERATOR_ONLY_KEYS,
    ReceiverConfig,
    parse_byte_size,
    parse_duration,
)
from mailtrap_receiver.events import CANONICAL_EVENTS

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds/mailtrapwebhooks.mailtrap.io.yaml").read_text())
SPEC: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
DURATION_SAMPLES = [
    "500ms",
    "30s",
    "5m",
    "25h",
    "1h30m",
    "1.5s",
    "",
    "10",
    "10 s",
    "1d",
    "s",
    "1.s",
]
QUANTITY_SAMPLES = ["1Mi", "512Ki", "2Gi", "2M", "1000k", "2048", "1.5Mi", "1 Mi", "1mi", "Mi"]


def config_key(crd_key: str) -> str:
    return (
        crd_key.removesuffix("SecretRef") + "SecretFile"
        if crd_key.endswith("SecretRef")
        else crd_key
    )


def unwrap(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """The type inside Optional, list and Annotated; whether a list was crossed; and
    the metadata of Annotated layers met on the way."""
    is_list = False
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if origin is typing.Annotated:
            annotation, metadata = args[0], metadata + args[1:]
        elif origin is list:
            annotation, is_list = args[0], True
        elif origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
        else:
            return annotation, is_list, metadata


def metadata_of(field: FieldInfo) -> list[Any]:
    """A field's own constraints and those of an Optional type inside it."""
    inner_metadata = [] if unwrap(field.annotation)[1] else unwrap(field.annotation)[2]
    return [*field.metadata, *inner_metadata]


def nested_model(field: FieldInfo) -> type[BaseModel] | None:
    inner = unwrap(field.annotation)[0]
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def bounds(field: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata_of(field):
        for name in ("ge", "le", "min_length", "max_length", "pattern"):
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found


def is_parsed_with(field: FieldInfo, parser: Any) -> bool:
    return any(getattr(item, "func", None) is parser for item in metadata_of(field))


def compare(schema: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    problems: list[str] = []
    crd_props: dict[str, Any] = schema.get("properties", {})
    top = where == "spec"
    crd_keys = {
        config_key(key): key for key in crd_props if not (top and key in OPERATOR_ONLY_KEYS)
    }
    fields = {
        field.alias: field
        for field in model.model_fields.values()
        if not (top and field.alias in OPERATOR_INJECTED_KEYS)
    }
    for key in sorted(set(crd_keys) - set(fields)):
        problems.append(f"{where}.{crd_keys[key]}: in the CRD, not in {model.__name__}")
    for key in sorted(set(fields) - set(crd_keys)):
        problems.append(f"{where}.{key}: in {model.__name__}, not in the CRD")
    crd_required = {config_key(key) for key in schema.get("required", [])}
    model_required = {alias for alias, field in fields.items() if field.is_required()}
    if crd_required != model_required:
        problems.append(f"{where}: required {sorted(crd_required)} != {sorted(model_required)}")

    for key in sorted(set(crd_keys) & set(fields)):
        prop, field, path = crd_props[crd_keys[key]], fields[key], f"{where}.{key}"
        inner, is_list, _ = unwrap(field.annotation)
        if crd_keys[key].endswith("SecretRef"):
            if inner is not Path:
                problems.append(f"{path}: a SecretRef must become a file path")
            continue
        enum = prop.get("enum") or prop.get("items", {}).get("enum")
        if enum is not None:
            literal = (
                set(typing.get_args(inner)) if typing.get_origin(inner) is typing.Literal else None
            )
            if literal != set(enum):
                problems.append(f"{path}: enum {sorted(enum)} != {literal}")
        default = field.get_default(call_default_factory=True)
        if "default" in prop:
            if default is None:
                problems.append(f"{path}: the CRD has a default, the model none")
            else:
                adapter = TypeAdapter(field.rebuild_annotation())
                if adapter.validate_python(prop["default"]) != default:
                    problems.append(f"{path}: default {prop['default']!r} != {default!r}")
        problems += compare_bounds(prop, field, path)
        child = nested_model(field)
        if child is not None:
            problems += compare(prop["items"] if is_list else prop, child, path)
    return problems


def compare_bounds(prop: dict[str, Any], field: FieldInfo, path: str) -> list[str]:
    crd = {
        "ge": prop.get("minimum"),
        "le": prop.get("maximum"),
        "min_length": prop.get("minItems", prop.get("minLength")),
        "max_length": prop.get("maxItems", prop.get("maxLength", prop.get("maxProperties"))),
        "pattern": prop.get("pattern"),
    }
    model = bounds(field)
    problems = []
    for name, value in crd.items():
        if value is None:
            continue
        if name == "pattern" and "pattern" not in model:
            # The model parses this value instead: compare behaviour.
            problems += compare_parser(value, field, path)
        elif model.get(name) != value:
            problems.append(
                f"{path}: {name} {value!r} in the CRD, {model.get(name)!r} in the model"
            )
    for name in model.keys() - {name for name, value in crd.items() if value is not None}:
        if name != "min_length":  # the model may refuse empty names the CRD allows
            problems.append(f"{path}: {name} only in the model")
    return problems


def compare_parser(pattern: str, field: FieldInfo, path: str) -> list[str]:
    if not is_parsed_with(field, parse_duration):
        return [f"{path}: the CRD has pattern {pattern!r}; the model neither has it nor parses"]
    problems = []
    for sample in DURATION_SAMPLES:
        try:
            parse_duration(sample)
            parsed = True
        except ValueError:
            parsed = False
        if parsed != bool(re.fullmatch(pattern, sample)):
            problems.append(
                f"{path}: {sample!r} is {'' if parsed else 'not '}a duration to the model"
            )
    return problems


def test_the_config_models_mirror_the_crd_spec() -> None:
    assert compare(SPEC, ReceiverConfig, "spec") == []


def test_the_operator_only_keys_are_exactly_the_crd_keys_the_model_lacks() -> None:
    model_keys = {field.alias for field in ReceiverConfig.model_fields.values()}
    model_keys -= OPERATOR_INJECTED_KEYS
    crd_keys = {config_key(key) for key in SPEC["properties"]}
    assert crd_keys - model_keys == OPERATOR_ONLY_KEYS
    assert not OPERATOR_ONLY_KEYS & model_keys


def test_operator_injected_keys_are_the_models_and_never_the_crds() -> None:
    # The operator writes them from its own settings: no spec can set them.
    model_keys = {field.alias for field in ReceiverConfig.model_fields.values()}
    assert model_keys >= OPERATOR_INJECTED_KEYS
    assert not OPERATOR_INJECTED_KEYS & set(SPEC["properties"])
    assert not OPERATOR_INJECTED_KEYS & OPERATOR_ONLY_KEYS


def _int_or_string(schema: dict[str, Any], model: type[BaseModel], where: str) -> list[Any]:
    """(path, CRD property, model field) of every int-or-string key (byte sizes)."""
    found: list[Any] = []
    fields = {field.alias: field for field in model.model_fields.values()}
    for key, prop in schema.get("properties", {}).items():
        field = fields.get(key)
        if field is None:
            continue
        if prop.get("x-kubernetes-int-or-string"):
            found.append((f"{where}.{key}", prop, field))
        child = nested_model(field)
        if child is not None and prop.get("type") == "object":
            found += _int_or_string(prop, child, f"{where}.{key}")
    return found


BYTE_SIZES = _int_or_string(SPEC, ReceiverConfig, "spec")


def test_every_byte_size_is_found() -> None:
    assert {path for path, _, _ in BYTE_SIZES} == {
        "spec.maxBodySize",
        "spec.limits.minBodyRate",
        "spec.limits.maxBodyMemory",
    }


@pytest.mark.parametrize(("path", "prop", "field"), BYTE_SIZES, ids=[p for p, _, _ in BYTE_SIZES])
def test_each_byte_size_agrees_with_its_crd_rule(path: str, prop: Any, field: FieldInfo) -> None:
    # int-or-string must stay a bare anyOf in a structural schema, so the CRD states
    # the bounds in a CEL rule: "type(self) == int ? self >= N : self.matches('RE')".
    assert [branch["type"] for branch in prop["anyOf"]] == ["integer", "string"]
    assert is_parsed_with(field, parse_byte_size), path
    rule = " ".join(item["rule"] for item in prop["x-kubernetes-validations"])
    minimum_match = re.search(r"self >= (\d+)", rule)
    pattern_match = re.search(r"self\.matches\('([^']+)'\)", rule)
    assert minimum_match is not None
    assert pattern_match is not None
    minimum, pattern = int(minimum_match.group(1)), pattern_match.group(1)
    for sample in QUANTITY_SAMPLES:
        try:
            parse_byte_size(sample)
            parsed = True
        except ValueError:
            parsed = False
        assert parsed == bool(re.fullmatch(pattern, sample)), sample
    with pytest.raises(ValueError, match="byte"):
        parse_byte_size(minimum - 1)
    assert parse_byte_size(minimum) == minimum
    assert field.default == parse_byte_size(prop["default"])


def _event_enums(schema: Any, found: list[list[str]]) -> list[list[str]]:
    if isinstance(schema, dict):
        items = schema.get("items")
        if (
            schema.get("type") == "array"
            and isinstance(items, dict)
            and "delivery" in items.get("enum", ())
        ):
            found.append(items["enum"])
        for value in schema.values():
            _event_enums(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _event_enums(value, found)
    return found


def test_every_event_enum_of_the_crd_is_the_canonical_list() -> None:
    enums = _event_enums(SPEC, [])
    assert len(enums) == 2  # spec.events and targets[].events
    for enum in enums:
        assert tuple(enum) == CANONICAL_EVENTS


def _set(path: str, value: Any) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


TARGET = "properties.targets.items.properties"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("properties.maxBodyBytes", {"type": "integer"}), "spec.maxBodyBytes: in the CRD"),
        (_set("properties.path.default", "/other"), "spec.path: default"),
        (_set(f"{TARGET}.batchSize.maximum", 499), "spec.targets.batchSize: le 499"),
        (_set("properties.targets.maxItems", 31), "spec.targets: max_length 31"),
        (_set("properties.logging.properties.level.enum", ["info"]), "spec.logging.level: enum"),
        (_set("properties.targets.items.required", ["name", "url"]), "spec.targets: required"),
        (_set(f"{TARGET}.format", None), "spec.targets.format: in TargetConfig, not in the CRD"),
        (
            _set("properties.delivery.properties.dedupWindow.pattern", "^([0-9]+(ms|s|m|h))+$"),
            "spec.delivery.dedupWindow: '1.5s'",
        ),
        (
            _set("properties.delivery.properties.retry.properties.maxBackoff.default", "11m"),
            "spec.delivery.retry.maxBackoff: default",
        ),
    ],
)
def test_the_drift_check_notices_a_difference(mutate: Any, expected: str) -> None:
    # The comparison itself must be able to fail: change one thing in a copy of the CRD.
    changed = copy.deepcopy(SPEC)
    mutate(changed)
    problems = compare(changed, ReceiverConfig, "spec")
    assert any(problem.startswith(expected) for problem in problems), problems
