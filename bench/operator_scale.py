"""How long the operator takes to reconcile N MailtrapWebhooks created at once, and its memory.

Starts a local control plane (tests/helpers/cluster.py) with enough simulated
nodes, the real operator as a local process (admin kubeconfig), creates N
resources with several kubectl processes in parallel, and prints when all were
reconciled (children applied, status written) and Ready, with the operator's
peak resident set size (VmHWM). The per-resource ratio against a small first
batch on the same machine says whether the cost grows linearly.

    .venv/bin/python bench/operator_scale.py --count 1000

A batch that is not all Ready within --timeout ends the run with exit status 1 and
what it reached, rather than timings and rates computed from a run that never ended.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.cluster import LocalCluster, _kwok_node, local_cluster
from tests.helpers.kube import get, install_crd, secret_manifest
from tests.helpers.operator import start_operator


class TimedOut(Exception):
    """A batch was not all reconciled and Ready in time; the message says how far it got."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _resource(index: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "mailtrap.io/v1alpha1",
        "kind": "MailtrapWebhook",
        "metadata": {"name": f"hook-{index:05d}"},
        "spec": {
            "signingSecretRef": {"name": "signing"},
            "replicas": replicas,
            "targets": [{"name": "a", "url": f"http://t{index}.example/events"}],
        },
    }


def _counts(cluster: LocalCluster, namespace: str) -> tuple[int, int]:
    reconciled = ready = 0
    for obj in get(cluster, "mtwh", namespace=namespace)["items"]:
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            continue
        if not status.get("configHash"):
            continue
        reconciled += 1
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
        ready += conditions.get("Ready") == "True"
    return reconciled, ready


def run_batch(
    cluster: LocalCluster,
    *,
    namespace: str,
    count: int,
    replicas: int,
    writers: int,
    timeout: float,
) -> dict[str, float]:
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        input_text=secret_manifest("signing", {"signing-secret": "fake"}),
    )
    chunks = [list(range(start, count, writers)) for start in range(writers)]
    started = time.monotonic()

    def create(indexes: list[int]) -> None:
        items = [_resource(index, replicas) for index in indexes]
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        cluster.kubectl("-n", namespace, "create", "-f", "-", input_text=text)

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        list(pool.map(create, chunks))
    created = time.monotonic() - started
    reconciled_at = 0.0
    while True:
        reconciled, ready = _counts(cluster, namespace)
        now = time.monotonic() - started
        if reconciled == count and not reconciled_at:
            reconciled_at = now
        if ready == count:
            return {"created": created, "reconciled": reconciled_at, "ready": now}
        if now > timeout:
            # Timings and per-resource rates of an unfinished batch would be made up.
            raise TimedOut(
                f"{namespace}: after {now:.0f}s only {reconciled} of {count} MailtrapWebhooks "
                f"were reconciled and {ready} Ready"
            )
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=_positive, default=1000)
    parser.add_argument("--baseline", type=_positive, default=100, help="size of the first batch")
    parser.add_argument("--replicas", type=_positive, default=1)
    parser.add_argument("--writers", type=_positive, default=8, help="parallel kubectl processes")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds a batch may take to be all Ready"
    )
    args = parser.parse_args()

    with local_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        pods = (args.count + args.baseline) * args.replicas
        for index in range(1, pods // 400 + 2):
            node = json.dumps(_kwok_node(f"kwok-node-{index}"))
            cluster.kubectl("apply", "-f", "-", input_text=node)
        install_crd(cluster)
        operator = start_operator(
            kubeconfig=cluster.admin_kubeconfig, log_path=Path(tmp) / "operator.log"
        )
        try:
            results = {}
            for label, count in (("baseline", args.baseline), ("main", args.count)):
                results[label] = run_batch(
                    cluster,
                    namespace=f"bench-{label}",
                    count=count,
                    replicas=args.replicas,
                    writers=args.writers,
                    timeout=args.timeout,
                )
                timing = results[label]
                print(
                    f"{label}: {count} MailtrapWebhooks created in {timing['created']:.1f}s, "
                    f"all reconciled at {timing['reconciled']:.1f}s, "
                    f"all Ready at {timing['ready']:.1f}s "
                    f"({count / max(timing['reconciled'], 0.001):.1f} reconciled/s)",
                    flush=True,
                )
            peak = operator.memory_kib("VmHWM") / 1024
            rss = operator.memory_kib("VmRSS") / 1024
            base = results["baseline"]["reconciled"] / args.baseline
            main_rate = results["main"]["reconciled"] / args.count
            print(f"operator peak RSS {peak:.0f} MiB, now {rss:.0f} MiB")
            print(f"seconds per resource, main/baseline: {main_rate / base:.2f}")
        except TimedOut as error:
            tail = "\n".join(operator.log().splitlines()[-20:])
            print(f"FAILED: timed out. {error}\noperator log, last lines:\n{tail}", file=sys.stderr)
            return 1
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
