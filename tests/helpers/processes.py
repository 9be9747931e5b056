"""Start the real receiver process on loopback and stop it, whatever happens.

`start_receiver` runs ``python -m mailtrap_receiver serve`` (the interpreter running
the tests, so the project's venv) on free loopback ports, waits until ``/readyz``
answers 200, and returns a `ReceiverProcess`; `running_receiver` is the same as a
context manager that always kills the process on exit. Its output goes to a log
file whose text is included in every failure, so a receiver that did not start
says why; `start_receiver_async` does the same without blocking the test's event
loop. `dlq` runs the ``dlq`` command as its own process. Used by the integration
tests (the crash test restarts the receiver on the same ports), the operator's
pod-template runner and ``hack/dev.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.children import die_with_parent, free_port

__all__ = [
    "ReceiverProcess",
    "dlq",
    "free_port",
    "http_status",
    "running_receiver",
    "start_receiver",
    "start_receiver_async",
    "write_config",
]


@dataclass
class ReceiverProcess:
    """A running ``mailtrap-receiver serve`` and where to reach it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    metrics_port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    def url(self, path: str = "/webhooks/mailtrap") -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, *, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL if it does not come)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def write_config(path: Path, config: Mapping[str, object]) -> Path:
    """Write a receiver config file (JSON, which is also YAML)."""
    path.write_text(json.dumps(config, indent=2))
    return path


def start_receiver(
    *,
    config: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    metrics_port: int | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    ready_timeout: float = 60.0,
) -> ReceiverProcess:
    """Start the receiver and wait until it is ready; raise with its log if it is not."""
    port = free_port(host) if port is None else port
    metrics_port = free_port(host) if metrics_port is None else metrics_port
    log_path = config.with_suffix(".log") if log_path is None else log_path
    command = [
        sys.executable,
        "-m",
        "mailtrap_receiver",
        "serve",
        "--config",
        str(config),
        "--host",
        host,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent,
        )
    receiver = ReceiverProcess(process, host, port, metrics_port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the receiver exited with {process.returncode}:\n{receiver.log()}")
        if http_status(receiver.admin_url + "/readyz", timeout=1.0) == 200:
            return receiver
        time.sleep(0.05)
    receiver.kill()
    raise RuntimeError(f"the receiver was not ready in {ready_timeout}s:\n{receiver.log()}")


async def start_receiver_async(**kwargs: Any) -> ReceiverProcess:
    """`start_receiver` off the event loop: a test's loop keeps serving its targets
    while the receiver starts (and resumes delivering to them)."""
    return await asyncio.to_thread(start_receiver, **kwargs)


async def dlq(*args: str) -> str:
    """Run ``mailtrap-receiver dlq ARGS`` as its own process; its output (it must
    exit 0)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailtrap_receiver",
        "dlq",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode:
        raise AssertionError(f"dlq {' '.join(args)} exited {process.returncode}: {err.decode()}")
    return out.decode()


@contextlib.contextmanager
def running_receiver(**kwargs: Any) -> Iterator[ReceiverProcess]:
    """`start_receiver` as a context: the process is killed on the way out, always."""
    receiver = start_receiver(**kwargs)
    try:
        yield receiver
    finally:
        receiver.kill()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(receiver: ReceiverProcess) -> Samples:
    """Every sample on the receiver's /metrics, by name and labels."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(receiver.admin_url + "/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when there is none (not counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
