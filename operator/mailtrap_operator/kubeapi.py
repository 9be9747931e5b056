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
have (never keeping their values), writing the owner's status, posting Events,
and an API discovery check (cached) for optional kinds such as the Prometheus
Operator's ServiceMonitor. The other
caller, `handlers.login`, only gets kopf's own HTTP session from here
(`KubeApi.kopf_session`), so that kopf's connection pool is bounded too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import kopf
import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .resources import (
    EVENT,
    FIELD_MANAGER,
    MAILTRAP_WEBHOOK,
    OPERATOR_NAME,
    SECRET,
    Kind,
    SecretInfo,
)

# Old kopf sessions may still finish requests after a re-login; closed this much later.
_SESSION_GRACE_SECONDS: Final = 60.0
# (connect, read) seconds: one slow request must not hold a worker thread for long.
_TIMEOUT: Final = (5.0, 30.0)
_APPLY: Final = "application/apply-patch+yaml"
_MERGE: Final = "application/merge-patch+json"
_JSON: Final = "application/json"


class ApiError(Exception):
    """A failed API request: HTTP status and the server's message (never our request body)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

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


@dataclass
class KubeApi:
    """Raw, async-friendly access to the API server with the client's credentials."""

    api_client: Any
    workers: int = 8
    discovery_ttl: float = 60.0
    _executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    _served: dict[tuple[str, str], _Cached] = field(init=False, default_factory=dict)
    _kopf_session: aiohttp.ClientSession | None = field(init=False, default=None)

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
        # One pooled connection per worker thread, so no request waits for a socket.
        configuration.connection_pool_maxsize = workers
        api_client = k8s_client.ApiClient(configuration)
        api_client.user_agent = f"{OPERATOR_NAME}"
        return cls(api_client=api_client, workers=workers, discovery_ttl=discovery_ttl)

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
    ) -> tuple[int, bytes]:
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
            return int(response.status), data
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # Status 0: the request never got an answer; callers retry later.
            raise ApiError(0, "Unreachable", type(error).__name__) from None

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
        loop = asyncio.get_running_loop()
        status, data = await loop.run_in_executor(
            self._executor,
            functools.partial(self._call, method, path, query, body, content_type),
        )
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            raise _error(status, data)
        if not data:
            return {}
        decoded = orjson.loads(data)
        return decoded if isinstance(decoded, dict) else {}

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
        root = f"/apis/{kind.api_version}" if kind.group else f"/api/{kind.version}"
        result = await self._request("GET", root, missing_ok=True)
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
        event_type: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """A core/v1 Event on the owner, as ``kubectl describe`` shows them."""
        stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{owner['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": owner["namespace"],
            },
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
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._request(
            "POST",
            EVENT.path(namespace=owner["namespace"]),
            body=event,
            content_type=_JSON,
        )


def _close_later(session: aiohttp.ClientSession) -> None:
    task = asyncio.ensure_future(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()


def _error(status: int, data: bytes) -> ApiError:
    reason, message = "", ""
    with contextlib.suppress(orjson.JSONDecodeError):
        decoded = orjson.loads(data)
        if isinstance(decoded, dict):
            reason = str(decoded.get("reason") or "")
            message = str(decoded.get("message") or "")
    return ApiError(status, reason or "Error", message)
