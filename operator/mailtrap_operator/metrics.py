"""The operator's own Prometheus metrics and the small HTTP server that serves them.

`reconciler` counts and times every reconcile, drift repairs and the children it
stopped repairing; `resync` counts its re-lists; `handlers` keep the gauge of
managed resources; `cli` starts `serve` next to kopf, on the metrics port, with
``/metrics`` and ``/healthz`` (200 once kopf is up and watching).

Label sets are bounded: outcomes and kinds are fixed lists, never names of
resources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PREFIX: Final = "mailtrap_operator_"
OUTCOMES: Final = ("success", "degraded", "error")
# What started a resync: its period, or the API server answering again after an outage.
RESYNC_TRIGGERS: Final = ("period", "recovery")


class OperatorMetrics:
    """All metrics in a registry of their own, so tests can run several side by side."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            f"{PREFIX}reconciles",
            "Reconciles of MailtrapWebhook resources, by outcome "
            "(success; degraded: a Secret problem, an invalid spec, a policy violation or "
            "a child conflict; error: the API failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}reconcile_duration_seconds",
            "Time one reconcile took, from reading Secrets to writing status.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.managed_resources = Gauge(
            f"{PREFIX}managed_resources",
            "MailtrapWebhook resources this operator currently watches.",
            registry=self.registry,
        )
        self.drift_repairs = Counter(
            f"{PREFIX}drift_repairs",
            "Children put back after they were changed or deleted by hand, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.drift_conflicts = Gauge(
            f"{PREFIX}drift_conflicts",
            "Children the operator stopped putting back because another writer keeps "
            "changing them (DriftConflict).",
            registry=self.registry,
        )
        self.resyncs = Counter(
            f"{PREFIX}resyncs",
            "Re-lists of every child and MailtrapWebhook, compared with what the operator "
            "applied, by trigger (period; recovery: the API server answering again).",
            ["trigger"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.reconciles.labels(outcome=outcome)
        for trigger in RESYNC_TRIGGERS:
            self.resyncs.labels(trigger=trigger)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(
    *, metrics: OperatorMetrics, host: str, port: int, healthy: Callable[[], bool]
) -> web.AppRunner:
    """Start ``/metrics`` and ``/healthz``; the caller cleans up the returned runner."""

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_: web.Request) -> web.Response:
        if healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
