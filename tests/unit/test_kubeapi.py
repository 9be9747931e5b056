"""kubeapi's transport against a real HTTP server on loopback: transient failures
retried after the server's Retry-After, refusals not retried, lists paged, and
`Connectivity` telling an outage's end (from our requests and from kopf's session).

The API server's own answers (429 with Retry-After under --max-requests-inflight,
a restart) are met for real in tests/faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client as k8s_client

from mailtrap_operator.kubeapi import RETRIES, ApiError, Connectivity, KubeApi
from mailtrap_operator.resources import CONFIG_MAP, MAILTRAP_WEBHOOK
from tests.helpers.children import free_port


class Server:
    """Answers each request with the next of ``answers`` (status, headers), then 200."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.requests: list[tuple[float, str]] = []
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), request.path_qs))
        if self.answers:
            status, headers = self.answers.pop(0)
            body = {"kind": "Status", "reason": "TooManyRequests", "message": "slow down"}
            return web.json_response(body, status=status, headers=headers)
        if request.query.get("limit"):  # a list of three ConfigMaps, two pages
            token = request.query.get("continue")
            names = ["c"] if token else ["a", "b"]
            meta = {} if token else {"continue": "next", "resourceVersion": "42"}
            items = [{"metadata": {"name": name}} for name in names]
            return web.json_response({"metadata": meta, "items": items})
        return web.json_response({"metadata": {"name": "x", "resourceVersion": "7"}})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    found = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


def client(port: int, backoff: tuple[float, float] = (0.01, 0.05)) -> KubeApi:
    """Our client of a server on loopback; retries sooner than the operator's, but for
    what the server asks (Retry-After)."""
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return KubeApi.with_configuration(configuration, workers=2, backoff=backoff)


@pytest.fixture
async def api(server: Server) -> AsyncIterator[KubeApi]:
    found = client(server.port)
    yield found
    found.close()


async def test_throttling_is_waited_out_as_long_as_the_server_asks(
    server: Server, api: KubeApi
) -> None:
    server.answers = [(429, {"Retry-After": "2"}), (503, {})]
    body = await api.read(kind=CONFIG_MAP, namespace="mail", name="x")
    assert body is not None
    assert body["metadata"]["resourceVersion"] == "7"
    (first, _), (second, _), (third, _) = server.requests
    assert second - first >= 2.0  # Retry-After honoured
    assert third - second < 1.0  # no Retry-After: the (here very) short backoff


async def test_what_keeps_failing_raises_a_transient_error_with_the_wait_asked(
    server: Server, api: KubeApi
) -> None:
    server.answers = [(429, {"Retry-After": "0"})] * (RETRIES + 1)
    with pytest.raises(ApiError) as caught:
        await api.read(kind=CONFIG_MAP, namespace="mail", name="x")
    assert caught.value.transient
    assert caught.value.retry_after == 0.0
    assert len(server.requests) == RETRIES + 1


async def test_refusals_are_not_retried(server: Server, api: KubeApi) -> None:
    server.answers = [(403, {})]
    with pytest.raises(ApiError) as caught:
        await api.patch_status(namespace="mail", name="x", status={"url": "u"})
    assert caught.value.forbidden
    assert not caught.value.transient
    assert len(server.requests) == 1


async def test_lists_are_read_page_by_page(server: Server, api: KubeApi) -> None:
    items, version = await api.list_objects(kind=CONFIG_MAP, namespace=None, label_selector="app=x")
    assert [item["metadata"]["name"] for item in items] == ["a", "b", "c"]
    assert version == "42"
    assert server.requests[0][1] == "/api/v1/configmaps?limit=250&labelSelector=app%3Dx"
    assert "continue=next" in server.requests[1][1]
    await api.list_objects(kind=MAILTRAP_WEBHOOK, namespace="mail")
    assert server.requests[2][1].startswith("/apis/mailtrap.io/v1alpha1/namespaces/mail/")


async def test_an_outage_ends_with_the_first_answer_after_it(server: Server) -> None:
    outages: list[float] = []
    dead = client(free_port())  # nothing listens there
    dead.connectivity.add_listener(outages.append)
    try:
        with pytest.raises(ApiError) as caught:
            await dead.read(kind=CONFIG_MAP, namespace="mail", name="x")
        assert (caught.value.status, caught.value.transient) == (0, True)
        assert dead.connectivity.down_since is not None
        assert outages == []
        dead.api_client.configuration.host = f"http://127.0.0.1:{server.port}"
        await dead.read(kind=CONFIG_MAP, namespace="mail", name="x")
        assert len(outages) == 1
        assert dead.connectivity.down_since is None
    finally:
        dead.close()


async def test_kopfs_requests_tell_the_same(server: Server) -> None:
    connectivity = Connectivity()
    outages: list[float] = []
    connectivity.add_listener(outages.append)
    async with aiohttp.ClientSession(trace_configs=[connectivity.trace()]) as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{free_port()}/")
        assert connectivity.down_since is not None
        response: Any = await session.get(f"http://127.0.0.1:{server.port}/")
        response.release()
    assert len(outages) == 1
    # A cancelled request (kopf stopping a watch) says nothing about the server.
    async with aiohttp.ClientSession(trace_configs=[connectivity.trace()]) as session:
        server.answers = []
        task = asyncio.ensure_future(session.get(f"http://127.0.0.1:{server.port}/"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert connectivity.down_since is None
