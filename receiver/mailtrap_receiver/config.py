"""The receiver's configuration: one file whose keys mirror the CRD spec.

The operator writes the receiver part of a ``MailtrapWebhook`` spec into a ConfigMap
and the receiver reads it here with `load_config`. The keys are the CRD's, in
camelCase, with one rule: every ``...SecretRef`` of the CRD (a Secret name and key)
becomes ``...SecretFile`` here, holding the path of a mounted file
(``signingSecretFile``, ``basicAuthSecretFile``, ``targets[].signingSecretFile``). A
relative path is resolved against the directory of the config file. Keys that only
shape the Kubernetes objects (`OPERATOR_ONLY_KEYS`) are not accepted; one key has no
twin in the CRD, as the operator writes it from its own settings
(`OPERATOR_INJECTED_KEYS`: ``deniedTargetRanges``).

Every key may be overridden from the environment: ``MAILTRAP_RECEIVER_<KEY>``, with
``__`` between nesting levels and list indexes as numbers
(``MAILTRAP_RECEIVER_LOGGING__FORMAT=console``,
``MAILTRAP_RECEIVER_TARGETS__0__URL=http://...``). Key names match without regard
to case or underscores, and values are parsed as YAML (``true``, ``5``, ``[a, b]``).

Validation happens once, at start, and a `ConfigError` names each bad key by its
path (``targets[0].url: ...``). ``tests/unit/test_schema_drift.py`` walks these
models and the CRD's schema and fails when they differ.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, TypeAlias, Union, get_args, get_origin

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .events import MAX_FIELD_LENGTH, EventName
from .parsing import MAX_EVENTS, MAX_JSON_DEPTH
from .spoolfile import DEAD_LETTER_RETENTION, MAX_DEAD_LETTERS

ENV_PREFIX: Final = "MAILTRAP_RECEIVER_"

# Spec keys the operator turns into Kubernetes objects; they mean nothing to a
# receiver process, so a config file that carries them was written by mistake.
OPERATOR_ONLY_KEYS: Final[frozenset[str]] = frozenset(
    {
        "replicas",
        "replicasManagedExternally",
        "image",
        "imagePullPolicy",
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "podAnnotations",
        "podLabels",
        "ingress",
        "podDisruptionBudget",
        "networkPolicy",
        "serviceMonitor",
        "suspend",
    }
)

# Keys only the operator writes, from its own settings rather than the spec: the CRD
# has no such field, so whoever writes a MailtrapWebhook cannot set them.
OPERATOR_INJECTED_KEYS: Final[frozenset[str]] = frozenset({"deniedTargetRanges"})

_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"([0-9]+)(Ki|Mi|Gi|k|M|G)?")
_QUANTITY_UNITS: Final = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ConfigError(Exception):
    """A config problem, with the path of each bad key (``targets[0].url``)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{key}: {message}" for key, message in self.problems))

    @classmethod
    def one(cls, key: str, message: str) -> ConfigError:
        return cls([(key, message)])


def parse_duration(value: object) -> float:
    """Seconds of a duration such as ``500ms``, ``30s``, ``5m``, ``25h`` or ``1h30m``."""
    if not isinstance(value, str) or _DURATION.fullmatch(value) is None:
        raise ValueError("expected a duration such as 500ms, 30s, 5m or 25h")
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value)
    )


def parse_byte_size(value: object) -> int:
    """Bytes of an integer (at least 1024, as the CRD says) or a quantity like ``1Mi``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1024:
            raise ValueError("must be at least 1024 bytes")
        return value
    if isinstance(value, str) and (match := _QUANTITY.fullmatch(value)) is not None:
        size = int(match.group(1)) * _QUANTITY_UNITS[match.group(2)]
        if size < 1:
            raise ValueError("must be at least 1 byte")
        return size
    raise ValueError("expected a number of bytes or a quantity such as 512Ki or 1Mi")


IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(value: object) -> IPNetwork:
    """A CIDR range; host bits may be set (``10.1.2.3/8``), as Kubernetes' isCIDR allows."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("expected a CIDR such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("expected a CIDR such as 10.0.0.0/8") from None


def _resolve_secret_path(value: Path, info: ValidationInfo) -> Path:
    if value.is_absolute():
        return value
    base = (info.context or {}).get("base_dir")
    return (Path(base) if base is not None else Path.cwd()) / value


Seconds = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
CIDR = Annotated[IPNetwork, PlainValidator(parse_cidr)]
SecretFilePath = Annotated[Path, AfterValidator(_resolve_secret_path)]
EventFilter = Annotated[list[EventName], Field(max_length=12)]


class _Model(BaseModel):
    # Frozen: the config is read once and shared by every part of the receiver.
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class ServiceRef(_Model):
    """A Service, resolved to ``<scheme>://<name>.<namespace>.svc:<port><path>``."""

    # DNS labels, as the CRD says: they become a host name, and nothing else.
    name: Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    namespace: Annotated[
        str | None, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    ] = None
    port: Annotated[int, Field(ge=1, le=65535)]
    path: Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=1024)] = "/"
    scheme: Literal["http", "https"] = "http"


class TargetRetry(_Model):
    """A target's own retry policy; unset fields come from ``delivery.retry``."""

    max_attempts: Annotated[int | None, Field(ge=1, le=1000)] = None
    initial_backoff: Seconds | None = None
    max_backoff: Seconds | None = None


class RetryPolicy(_Model):
    """The default retry policy of every target."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 20
    initial_backoff: Seconds = 1.0
    max_backoff: Seconds = 600.0


class TargetConfig(_Model):
    """One destination for forwarded events: exactly one of ``url`` or ``service``."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    url: Annotated[str | None, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] = None
    service: ServiceRef | None = None
    events: EventFilter = []
    format: Literal["mailtrap", "cloudevents"] = "mailtrap"
    batch_size: Annotated[int, Field(ge=1, le=500)] = 1
    timeout: Seconds = 10.0
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    headers: Annotated[dict[str, str], Field(max_length=32)] = {}
    retry: TargetRetry | None = None
    signing_secret_file: SecretFilePath | None = None

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if _HEADER_NAME.fullmatch(name) is None:
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of {name} holds a line break")
        return headers

    @model_validator(mode="after")
    def _one_destination(self) -> TargetConfig:
        if (self.url is None) == (self.service is None):
            raise ValueError("set exactly one of url or service")
        return self

    def effective_retry(self, default: RetryPolicy) -> RetryPolicy:
        """This target's retry policy, with unset fields taken from ``default``."""
        if self.retry is None:
            return default
        return default.model_copy(
            update={
                name: value for name, value in self.retry.model_dump().items() if value is not None
            }
        )


class DeliveryConfig(_Model):
    """How events are acknowledged, stored and retried."""

    ack: Literal["durable", "delivered"] = "durable"
    spool_path: Annotated[str, Field(pattern=r"^/[^\s]+$", max_length=512)] = (
        "/var/spool/mailtrap-receiver/spool.db"
    )
    dedup_window: Seconds = 25 * 3600.0
    max_pending_events: Annotated[int, Field(ge=1)] = 1_000_000
    max_dead_letters: Annotated[int, Field(ge=1)] = MAX_DEAD_LETTERS
    dead_letter_retention: Seconds = DEAD_LETTER_RETENTION
    retry: RetryPolicy = RetryPolicy()


class LimitsConfig(_Model):
    """What one client may hold open or send to the webhook port (see the README's
    "The webhook port on the open internet": each limit and what crossing it gets)."""

    header_timeout: Seconds = 5.0
    idle_timeout: Seconds = 620.0
    max_connections: Annotated[int, Field(ge=1)] = 2048
    body_timeout: Seconds = 30.0
    min_body_rate: ByteSize = 16 * 1024
    max_body_reads_per_source: Annotated[int, Field(ge=1)] = 32
    max_body_memory: ByteSize = 64 * 1024 * 1024
    max_events_per_request: Annotated[int, Field(ge=1, le=100_000)] = MAX_EVENTS
    # Below orjson's 254 levels, which storing and forwarding an event rely on.
    max_json_depth: Annotated[int, Field(ge=2, le=200)] = MAX_JSON_DEPTH
    max_field_length: Annotated[int, Field(ge=36, le=65536)] = MAX_FIELD_LENGTH


class LoggingConfig(_Model):
    """Receiver logs."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    redact_emails: bool = False


class ReceiverConfig(_Model):
    """The whole receiver config: the receiver keys of the CRD spec."""

    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", max_length=256)] = (
        "/webhooks/mailtrap"
    )
    signing_secret_file: SecretFilePath
    events: EventFilter = []
    targets: Annotated[list[TargetConfig], Field(min_length=1, max_length=32)]
    delivery: DeliveryConfig = DeliveryConfig()
    shutdown_grace_period: Seconds = 30.0
    basic_auth_secret_file: SecretFilePath | None = None
    allowed_source_ranges: Annotated[list[CIDR], Field(max_length=64)] = []
    trusted_proxy_ranges: Annotated[list[CIDR], Field(max_length=64)] = []
    max_body_size: ByteSize = 1024 * 1024
    max_in_flight_requests: Annotated[int, Field(ge=1)] = 1024
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    # Written by the operator (OPERATOR_INJECTED_KEYS): addresses targets may not be
    # at, checked after name resolution (see egress).
    denied_target_ranges: Annotated[list[CIDR], Field(max_length=256)] = []

    @field_validator("targets")
    @classmethod
    def _unique_target_names(cls, targets: list[TargetConfig]) -> list[TargetConfig]:
        names = [target.name for target in targets]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique: {', '.join(duplicates)}")
        return targets


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> ReceiverConfig:
    """Read, override from the environment, and validate a YAML or JSON config file."""
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as error:
        raise ConfigError.one("config", f"cannot read {file}: {error.strerror}") from None
    try:
        data = orjson.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError.one("config", f"{file} is not valid YAML or JSON: {error}") from None
    # absolute(), not resolve(): a mounted ConfigMap file is a symlink into a
    # timestamped directory that Kubernetes swaps, and secrets beside it are
    # addressed through the stable name.
    return parse_config(
        {} if data is None else data,
        base_dir=file.absolute().parent,
        environ=os.environ if environ is None else environ,
    )


def parse_config(
    data: object,
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ReceiverConfig:
    """Validate already-decoded config data (plus environment overrides, if given)."""
    if not isinstance(data, dict):
        raise ConfigError.one("config", "must be a mapping of keys to values")
    operator_only = sorted(OPERATOR_ONLY_KEYS.intersection(data))
    if operator_only:
        raise ConfigError(
            [
                (key, "is an operator-only key; the receiver does not accept it")
                for key in operator_only
            ]
        )
    data = apply_env_overrides(data, environ or {})
    try:
        return ReceiverConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError([_describe(item) for item in error.errors()]) from None


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``MAILTRAP_RECEIVER_...`` variable applied."""
    names = sorted(name for name in environ if name.startswith(ENV_PREFIX))
    if not names:
        return data
    result: dict[str, Any] = orjson.loads(orjson.dumps(data, default=str))
    for name in names:
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            raise ConfigError.one(name, "value is not valid YAML") from None
        _set_by_env_path(result, name, name[len(ENV_PREFIX) :].split("__"), value)
    return result


def _set_by_env_path(data: dict[str, Any], env_name: str, segments: list[str], value: Any) -> None:
    model: type[BaseModel] | None = ReceiverConfig
    node: Any = data
    where = ""
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if isinstance(node, list):
            if not segment.isdigit() or int(segment) >= len(node):
                raise ConfigError.one(env_name, f"{where} has no item {segment}")
            index = int(segment)
            where += f"[{index}]"
            if last:
                node[index] = value
                return
            node = node[index]
            continue
        if model is None or not isinstance(node, dict):
            raise ConfigError.one(env_name, f"{where} has no nested keys")
        key = _match_key(model, segment)
        if key is None or key in OPERATOR_ONLY_KEYS:
            raise ConfigError.one(
                env_name, f"no receiver config key {segment!r} in {where or 'the top level'}"
            )
        where = f"{where}.{key}" if where else key
        if last:
            node[key] = value
            return
        field_model, is_list = _nested_model(model, key)
        if is_list:
            child = node.get(key)
            if not isinstance(child, list):
                raise ConfigError.one(env_name, f"{where} has no items to override")
        else:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError.one(env_name, f"{where} is not a mapping")
        node, model = child, field_model


def _normalise(name: str) -> str:
    return name.replace("_", "").lower()


def _match_key(model: type[BaseModel], segment: str) -> str | None:
    wanted = _normalise(segment)
    for field in model.model_fields.values():
        if field.alias is not None and _normalise(field.alias) == wanted:
            return field.alias
    return None


def _nested_model(model: type[BaseModel], alias: str) -> tuple[type[BaseModel] | None, bool]:
    """The model inside a field (through Optional and list), and whether it is a list."""
    for field in model.model_fields.values():
        if field.alias != alias:
            continue
        annotation: Any = field.annotation
        is_list = False
        while True:
            origin = get_origin(annotation)
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            if origin is list:
                is_list = True
                annotation = args[0]
            elif origin in (Union, UnionType) and len(args) == 1:
                annotation = args[0]
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation, is_list
        return None, is_list
    return None, False


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (key path, message), never echoing the value itself."""
    location = error.get("loc", ())
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    kind = error.get("type")
    if kind == "missing":
        return path, "required key is missing"
    if kind == "extra_forbidden":
        parent = ".".join(str(part) for part in location[:-1] if not isinstance(part, int))
        return path, "unknown key" + _suggestion(str(location[-1]), parent)
    message = str(error.get("msg", "invalid value"))
    return path or "config", message.removeprefix("Value error, ")


def _suggestion(key: str, parent: str) -> str:
    model: type[BaseModel] | None = ReceiverConfig
    for part in parent.split(".") if parent else ():
        model = _nested_model(model, part)[0] if model is not None else None
    if model is None:
        return ""
    known = [field.alias for field in model.model_fields.values() if field.alias is not None]
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
