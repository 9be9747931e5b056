"""Command line of ``mailtrap-operator``: settings in, kopf running with our handlers.

`main` parses `settings`, configures `logs`, connects `kubeapi` (in-cluster
ServiceAccount, else ``$KUBECONFIG``), starts the `metrics` server
(``/metrics`` and ``/healthz``) and runs kopf with the handlers registered by
importing `handlers`, until SIGTERM or SIGINT. ``mailtrap-operator mailtrap ...``
is the one subcommand: what exists on Mailtrap's side (`mailtrap.commands`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import kopf

from . import __version__, handlers, logs, metrics
from .kubeapi import KubeApi
from .mailtrap import commands as mailtrap_commands
from .reconciler import Reconciler
from .settings import Settings, parse

log = logs.get_logger(__name__)


async def run(settings: Settings) -> None:
    """Run the operator until kopf stops (on a signal, or when it cannot go on)."""
    api = KubeApi.from_environment(
        workers=settings.api_workers, discovery_ttl=settings.discovery_ttl
    )
    operator_metrics = metrics.OperatorMetrics()
    reconciler = Reconciler(settings=settings, api=api, metrics=operator_metrics)
    ready = asyncio.Event()
    runner = await metrics.serve(
        metrics=operator_metrics,
        host=settings.metrics_host,
        port=settings.metrics_port,
        healthy=ready.is_set,
    )
    log.info(
        "starting",
        version=__version__,
        namespaces=list(settings.namespaces) or "all",
        receiver_image=settings.receiver_image,
        peering=settings.peering_name or "standalone",
        metrics_port=settings.metrics_port,
    )
    try:
        await kopf.operator(
            settings=handlers.kopf_settings(settings),
            memo=kopf.Memo(reconciler=reconciler),
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=settings.standalone,
            peering_name=settings.peering_name or None,
            priority=settings.priority,
            ready_flag=ready,
        )
    finally:
        await reconciler.close()
        await runner.cleanup()
        await api.close_sessions()
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["mailtrap"]:
        return mailtrap_commands.main(args[1:])
    settings = parse(args)
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    asyncio.run(run(settings))
    return 0
