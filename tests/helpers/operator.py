"""Run the real operator as a local process against the test control plane.

`start_operator` runs the ``mailtrap-operator`` console script of the venv running
the tests, with ``KUBECONFIG`` pointing at the kubeconfig it is given (the admin's
today; the Helm chart's ServiceAccount through
``LocalCluster.serviceaccount_kubeconfig``), on a free metrics port, and waits
until ``/healthz`` answers 200. `OperatorProcess` reads its metrics, its log and
its peak memory (VmHWM), and stops it with SIGTERM as Kubernetes would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.children import die_with_parent, free_port, stop_process
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import condition, get, wait_until

BIN_DIR = Path(sys.executable).parent


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted((labels or {}).items()))
        series = f"{name}{{{wanted}}}" if wanted else name
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def memory_kib(self, field: str = "VmHWM") -> int:
        """A memory figure of the process from /proc (VmHWM: peak resident set size)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def stop(self, *, timeout: float = 30.0) -> int:
        return stop_process(self.process, timeout=timeout)


def start_operator(
    *,
    kubeconfig: Path,
    log_path: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> OperatorProcess:
    metrics_port = free_port()
    command = [
        str(BIN_DIR / "mailtrap-operator"),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        *args,
    ]
    environment = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MAILTRAP_OPERATOR_LOG_FORMAT": "json",
        **(env or {}),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            preexec_fn=die_with_parent,
        )
    operator = OperatorProcess(process, metrics_port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not operator.alive():
            raise RuntimeError(f"the operator exited with {process.returncode}:\n{operator.log()}")
        with contextlib.suppress(OSError):
            if operator.get("/healthz")[0] == 200:
                return operator
        time.sleep(0.2)
    operator.stop()
    raise RuntimeError(f"the operator was not healthy in {ready_timeout}s:\n{operator.log()}")


@contextlib.contextmanager
def running_operator(**kwargs: object) -> Iterator[OperatorProcess]:
    operator = start_operator(**kwargs)  # type: ignore[arg-type]
    try:
        yield operator
    finally:
        operator.stop()


# --- reading what the operator did ----------------------------------------------------

CHILD_KINDS = (
    "configmap",
    "service",
    "deployment",
    "ingress",
    "poddisruptionbudget",
    "networkpolicy",
)
HASH_ANNOTATION = "mailtrap.io/config-hash"


def reconciled(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The resource once its status describes its current generation, else None."""
    obj = get(cluster, "mailtrapwebhook", name, namespace=namespace)
    if obj is None:
        return None
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return obj if condition(obj, "Ready") else None


def wait_reconciled(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_until(
        lambda: reconciled(cluster, namespace, name),
        what=f"MailtrapWebhook {namespace}/{name} to be reconciled",
    )


def wait_ready(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = reconciled(cluster, namespace, name)
        return obj if obj and condition(obj, "Ready").get("status") == "True" else None

    return wait_until(ready, what=f"MailtrapWebhook {namespace}/{name} to be Ready")


def config_hash(cluster: LocalCluster, namespace: str, name: str) -> str | None:
    """The config-hash annotation on the pod template of the receiver Deployment."""
    deployment = get(cluster, "deployment", f"{name}-receiver", namespace=namespace)
    if deployment is None:
        return None
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get(HASH_ANNOTATION)
    return str(value) if value else None


def events(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """Events about one MailtrapWebhook, oldest first."""
    found = get(
        cluster,
        "events",
        "--field-selector",
        f"involvedObject.kind=MailtrapWebhook,involvedObject.name={name}",
        namespace=namespace,
    )
    items: list[dict[str, Any]] = (found or {}).get("items") or []
    return sorted(items, key=lambda event: event.get("lastTimestamp") or "")
