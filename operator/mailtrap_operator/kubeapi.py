"""The one module that talks to the Kubernetes API (besides kopf's own watching).

`KubeApi` wraps the official ``kubernetes`` client's ``ApiClient`` for raw
requests: it keeps authentication (in-cluster ServiceAccount or a kubeconfig,
``KUBECONFIG`` honoured), TLS and connection pooling, but skips its model
classes, which cost more CPU than the requests themselves at a thousand
resources. Calls are blocking, so they run on a small dedicated thread pool and
the rest of the operator awaits them.

`reconciler` makes every request: reads, creates and server-side applies of
children (each conditioned on the owner check of `ownership`), deletion of
children no longer wanted, reading which keys the Secrets a spec references
have (never keeping their values), writing the owner's status, and an API
discovery check (cached) for optional kinds such as the Prometheus Operator's
ServiceMonitor. `resync` lists children and owners, `recorder` posts and
patches Events. The other caller, `handlers.login`, only gets kopf's own HTTP
session from here (`KubeApi.kopf_session`), so that kopf's connection pool is
bounded too.

Transient failures (no answer, 408, 429, 5xx) are retried here, a few times
within `RETRY_BUDGET` seconds, after the server's ``Retry-After`` when it sends
one (an API server limiting requests in flight does), else after a jittered
backoff; what still fails raises `ApiError` with `ApiError.transient` set, for
`reconciler` to wait out. `Connectivity` follows whether the API server answers,
from our requests and from kopf's (a trace on its session): `resync` re-lists
everything soon after an outage ends, since watches miss what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import kopf
import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from mailtrap_receiver.retry import backoff, parse_retry_after

from .logs import get_logger
from .resources import (
    EVENT,
    FIELD_MANAGER,
    MAILTRAP_WEBHOOK,
    OPERATOR_NAME,
    SECRET,
    Kind,
    SecretInfo,
)
from .status import timestamp

# Old kopf sessions may still finish requests after a re-login; closed this much later.
_SESSION_GRACE_SECONDS: Final = 60.0
# (connect, read) seconds: one slow request must not hold a worker thread for long.
_TIMEOUT: Final = (5.0, 30.0)
_APPLY: Final = "application/apply-patch+yaml"
_MERGE: Final = "application/merge-patch+json"
_JSON: Final = "application/json"
# Answers worth asking again: none at all (status 0), a timeout, throttling, and the
# server's own trouble (etcd unavailable, a restart under way).
TRANSIENT_STATUSES: Final = frozenset({0, 408, 429, 500, 502, 503, 504})
# Retries of one request, and the seconds they may take in all; what still fails is
# the caller's to retry later (the reconciler waits it out, see reconciler).
RETRIES: Final = 4
RETRY_BUDGET: Final = 15.0
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 5.0
# Objects per page of a LIST: a thousand Deployments with their managedFields in one
# answer would be tens of megabytes at once.
LIST_PAGE: Final = 250

log = get_logger(__name__)


class ApiError(Exception):
    """A failed API request: HTTP status and the server's message (never our request body)."""

    def __init__(
        self, status: int, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # seconds the server asked us to wait, if it did
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    @property
    def transient(self) -> bool:
        """No answer, or an answer that says "later": asking again may well work."""
        return self.status in TRANSIENT_STATUSES

    @property
    def namespace_terminating(self) -> bool:
        """Nothing can be created in a namespace that is being deleted: not worth a retry."""
        return self.status == 403 and "is being terminated" in self.message

    @property
    def forbidden(self) -> bool:
        """RBAC refused the operator: a permission to grant, not an outage to wait out."""
        return self.status == 403 and not self.namespace_terminating

    @property
    def rejected(self) -> bool:
        """The server refused the object itself: retrying the same request cannot help."""
        return self.status in (400, 422) and not self.uid_mismatch

    @property
    def already_exists(self) -> bool:
        """A create found the name taken."""
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def uid_mismatch(self) -> bool:
        """A write conditioned on a uid met another object (or none) at that name.

        Server-side apply with ``metadata.uid`` answers 422 (uid is immutable) when
        another object is there, 409 when none is; a delete with a uid precondition,
        409.
        """
        if self.status == 422:
            return "metadata.uid" in self.message
        return self.status == 409 and "uid" in self.message.lower()


@dataclass
class _Cached:
    value: bool
    expires: float


class Connectivity:
    """Whether the API server answers: down from the first request that got no
    answer (or a 5xx), up again at the next answer, when the listeners hear how
    long the outage lasted. Fed by our requests and by kopf's (`trace`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self._listeners: list[Callable[[float], None]] = []

    def add_listener(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)

    def observe(self, status: int) -> None:
        if status == 0 or 500 <= status < 600:
            if self.down_since is None:
                self.down_since = self.clock()
                log.warning("kubernetes api not answering", status=status)
            return
        if self.down_since is None:
            return
        outage = self.clock() - self.down_since
        self.down_since = None
        log.info("kubernetes api answering again", outage_seconds=round(outage, 1))
        for listener in self._listeners:
            listener(outage)

    def trace(self) -> aiohttp.TraceConfig:
        """What kopf's requests (watches included) tell about the API server."""
        config = aiohttp.TraceConfig()

        async def answered(_: Any, __: SimpleNamespace, params: Any) -> None:
            self.observe(int(params.response.status))

        async def failed(_: Any, __: SimpleNamespace, params: Any) -> None:
            # Cancelled requests (kopf stopping a watch) say nothing about the server.
            if isinstance(params.exception, OSError | aiohttp.ClientError | TimeoutError):
                self.observe(0)

        config.on_request_end.append(answered)
        config.on_request_exception.append(failed)
        return config


@dataclass
class KubeApi:
    """Raw, async-friendly access to the API server with the client's credentials."""

    api_client: Any
    workers: int = 8
    discovery_ttl: float = 60.0
    _executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    _served: dict[tuple[str, str], _Cached] = field(init=False, default_factory=dict)
    _kopf_session: aiohttp.ClientSession | None = field(init=False, default=None)
    connectivity: Connectivity = field(default_factory=Connectivity)
    # Waits between retries of a request: the first, and the most (see `_request`).
    backoff: tuple[float, float] = (FIRST_BACKOFF, MAX_BACKOFF)

    def __post_init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="kubeapi"
        )

    @classmethod
    def from_environment(cls, *, workers: int = 8, discovery_ttl: float = 60.0) -> KubeApi:
        """In a Pod, the ServiceAccount; elsewhere ``$KUBECONFIG`` or ``~/.kube/config``."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls.with_configuration(configuration, workers=workers, discovery_ttl=discovery_ttl)

    @classmethod
    def with_configuration(
        cls, configuration: Any, *, workers: int = 8, discovery_ttl: float = 60.0, **kwargs: Any
    ) -> KubeApi:
        """A client of the API server that ``configuration`` describes."""
        # One pooled connection per worker thread, so no request waits for a socket.
        configuration.connection_pool_maxsize = workers
        # urllib3 would sleep out a Retry-After in the worker thread itself, holding
        # it; answers are retried here instead (`_request`), and only connections
        # that fail before any answer (a pooled one the server closed) by urllib3.
        configuration.retries = urllib3.util.Retry(
            total=2, status=0, redirect=0, respect_retry_after_header=False, raise_on_status=False
        )
        api_client = k8s_client.ApiClient(configuration)
        api_client.user_agent = f"{OPERATOR_NAME}"
        return cls(api_client=api_client, workers=workers, discovery_ttl=discovery_ttl, **kwargs)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.api_client.close()

    async def close_sessions(self) -> None:
        if self._kopf_session is not None:
            await self._kopf_session.close()
            self._kopf_session = None

    # -- kopf's own connection --

    def kopf_session(self, info: kopf.ConnectionInfo, *, limit: int) -> kopf.AiohttpSession:
        """kopf's HTTP session, like its own but with a bounded connection pool.

        kopf's default pool is unbounded: with a thousand resources handled at
        once it opened hundreds of TLS connections, each with a 256 KiB buffer,
        which was most of the operator's memory. Watches hold one connection
        each, so ``limit`` must leave room for them and for requests.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="kopf")
            auth = info.as_aiohttp_basic_auth()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
            auth=auth,
            proxy=info.proxy_url,
            trust_env=info.trust_env,
            trace_configs=[self.connectivity.trace()],
        )
        loop = asyncio.get_running_loop()
        if self._kopf_session is not None:
            loop.call_later(_SESSION_GRACE_SECONDS, _close_later, self._kopf_session)
        self._kopf_session = session
        return kopf.AiohttpSession(
            server=info.server,
            default_namespace=info.default_namespace,
            priority=info.priority,
            expiration=info.expiration,
            aiohttp_session=session,
        )

    # -- transport --
    #
    # Bodies: bytes for server-side apply (sent as they are), JSON-able objects
    # for JSON content types (the client serialises those itself).

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str | None,
    ) -> tuple[int, bytes, str | None]:
        headers = {"Accept": _JSON}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, _, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        if query:
            url = f"{url}?{urlencode(query)}"
        try:
            response = self.api_client.call_api(
                method, url, header_params=headers, body=body, _request_timeout=_TIMEOUT
            )
            data: bytes = response.read() or b""
            return int(response.status), data, response.headers.get("Retry-After")
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # Status 0: the request never got an answer.
            return 0, type(error).__name__.encode(), None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One request, retried while it fails transiently (see the module docstring).

        Every request here may be sent twice: reads, applies, merge patches and
        deletes with preconditions are idempotent, and a create that did happen
        answers AlreadyExists the second time, which its callers handle.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        attempt = 0
        while True:
            status, data, retry_after = await loop.run_in_executor(
                self._executor,
                functools.partial(self._call, method, path, query, body, content_type),
            )
            self.connectivity.observe(status)
            if status == 404 and missing_ok:
                return None
            if 200 <= status < 300:
                break
            error = _error(status, data, retry_after)
            attempt += 1
            if not error.transient or attempt > RETRIES:
                raise error
            # Never sooner than the server asked; a longer wait than the budget is
            # left to the caller, with the server's Retry-After in the error.
            delay = max(
                backoff(failures=attempt, initial=self.backoff[0], maximum=self.backoff[1]),
                error.retry_after or 0.0,
            )
            if time.monotonic() + delay - started > RETRY_BUDGET:
                raise error
            await asyncio.sleep(delay)
        if not data:
            return {}
        decoded = orjson.loads(data)
        return decoded if isinstance(decoded, dict) else {}

    async def list_objects(
        self, *, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a kind (in one namespace, or all when None), page by page;
        and the resourceVersion the first page was read at."""
        items: list[dict[str, Any]] = []
        version = ""
        query = {"limit": str(LIST_PAGE)}
        if label_selector:
            query["labelSelector"] = label_selector
        while True:
            page = await self._request("GET", kind.list_path(namespace=namespace), query=query)
            meta = (page or {}).get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            items.extend((page or {}).get("items") or ())
            token = meta.get("continue")
            if not token:
                return items, version
            query = {**query, "continue": str(token)}

    # -- children --
    #
    # Every write of a child is conditioned on what the reconciler verified (see
    # `ownership`): a create fails if the name is taken, an apply or a delete if the
    # object at the name is no longer the one seen.

    async def read(self, *, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when there is none."""
        return await self._request(
            "GET", kind.path(namespace=namespace, name=name), missing_ok=True
        )

    async def create(self, *, manifest: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
        """Create an object; `ApiError.already_exists` when the name is taken."""
        result = await self._request(
            "POST",
            kind.path(namespace=manifest["metadata"]["namespace"]),
            query={"fieldManager": FIELD_MANAGER},
            body=dict(manifest),
            content_type=_JSON,
        )
        return result or {}

    async def apply(self, *, manifest: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
        """Server-side apply with our field manager, forcing fields of objects we control.

        The manifest carries ``metadata.uid``: the API server then refuses the apply
        (`ApiError.uid_mismatch`) unless that very object is at the name.
        """
        meta = manifest["metadata"]
        result = await self._request(
            "PATCH",
            kind.path(namespace=meta["namespace"], name=meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=orjson.dumps(manifest),
            content_type=_APPLY,
        )
        return result or {}

    async def set_managed_fields(
        self,
        *,
        kind: Kind,
        namespace: str,
        name: str,
        resource_version: str,
        entries: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Replace an object's managedFields, if it is still at ``resource_version``."""
        result = await self._request(
            "PATCH",
            kind.path(namespace=namespace, name=name),
            body={"metadata": {"resourceVersion": resource_version, "managedFields": entries}},
            content_type=_MERGE,
        )
        return result or {}

    async def delete(self, *, kind: Kind, namespace: str, name: str, uid: str) -> bool:
        """Delete the object ``uid`` at a name; False when it is gone, or another object
        is there now. Its dependents go in the background."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": uid},
        }
        try:
            result = await self._request(
                "DELETE",
                kind.path(namespace=namespace, name=name),
                body=body,
                content_type=_JSON,
                missing_ok=True,
            )
        except ApiError as error:
            if error.uid_mismatch:
                return False
            raise
        return result is not None

    # -- inputs --

    async def read_secret(self, *, namespace: str, name: str) -> SecretInfo | None:
        """A Secret's key names and opt-in label, or None when it does not exist.

        A GET of one named Secret (the operator may not list or watch them). The
        values arrive in the answer and go no further than this method.
        """
        result = await self._request(
            "GET", SECRET.path(namespace=namespace, name=name), missing_ok=True
        )
        return None if result is None else SecretInfo.from_body(result)

    async def read_owner(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.read(kind=MAILTRAP_WEBHOOK, namespace=namespace, name=name)

    async def served(self, *, kind: Kind) -> bool:
        """Whether the API server serves a kind (discovery, cached for ``discovery_ttl``)."""
        cache_key = (kind.api_version, kind.plural)
        now = time.monotonic()
        cached = self._served.get(cache_key)
        if cached is not None and cached.expires > now:
            return cached.value
        result = await self._request("GET", kind.api_root, missing_ok=True)
        value = result is not None and any(
            item.get("name") == kind.plural for item in result.get("resources") or ()
        )
        self._served[cache_key] = _Cached(value, now + self.discovery_ttl)
        return value

    # -- outputs on the owner --

    async def patch_status(
        self, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; None when the owner is gone."""
        return await self._request(
            "PATCH",
            MAILTRAP_WEBHOOK.path(namespace=namespace, name=name) + "/status",
            body={"status": dict(status)},
            content_type=_MERGE,
            missing_ok=True,
        )

    async def post_event(
        self,
        *,
        owner: Mapping[str, str],
        name: str,
        event_type: str,
        reason: str,
        message: str,
        count: int,
        first: datetime.datetime,
        last: datetime.datetime,
    ) -> None:
        """A core/v1 Event on the owner, as ``kubectl describe`` shows them. Named by
        the caller, so one sent twice (a retry after no answer) is made once."""
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": owner["namespace"]},
            "involvedObject": {
                "apiVersion": MAILTRAP_WEBHOOK.api_version,
                "kind": MAILTRAP_WEBHOOK.kind,
                "name": owner["name"],
                "namespace": owner["namespace"],
                "uid": owner["uid"],
            },
            "type": event_type,
            "reason": reason,
            # The API server caps messages at 1 KiB.
            "message": message[:1000],
            "source": {"component": OPERATOR_NAME},
            "firstTimestamp": timestamp(first),
            "lastTimestamp": timestamp(last),
            "count": count,
        }
        try:
            await self._request(
                "POST", EVENT.path(namespace=owner["namespace"]), body=event, content_type=_JSON
            )
        except ApiError as error:
            if not error.already_exists:
                raise

    async def patch_event(
        self, *, namespace: str, name: str, count: int, last: datetime.datetime
    ) -> bool:
        """Count one more occurrence on an Event; False when it is gone (expired)."""
        result = await self._request(
            "PATCH",
            EVENT.path(namespace=namespace, name=name),
            body={"count": count, "lastTimestamp": timestamp(last)},
            content_type=_MERGE,
            missing_ok=True,
        )
        return result is not None


def _close_later(session: aiohttp.ClientSession) -> None:
    task = asyncio.ensure_future(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()


def _error(status: int, data: bytes, retry_after: str | None = None) -> ApiError:
    if status == 0:  # no answer: the data is the name of the error
        return ApiError(0, "Unreachable", data.decode(errors="replace"))
    reason, message = "", ""
    with contextlib.suppress(orjson.JSONDecodeError):
        decoded = orjson.loads(data)
        if isinstance(decoded, dict):
            reason = str(decoded.get("reason") or "")
            message = str(decoded.get("message") or "")
    wait = parse_retry_after(retry_after, now=time.time())
    return ApiError(status, reason or "Error", message, retry_after=wait)
