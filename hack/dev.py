"""``make dev``: the whole product on this machine, with no Docker, until Ctrl-C.

1. a local Kubernetes control plane (etcd, kube-apiserver, controller manager,
   scheduler, and kwok's simulated node; tests/helpers/cluster.py);
2. the MailtrapWebhook CRD from crds/;
3. the operator, as a local process;
4. examples/local/mailtrapwebhook.yaml and its signing Secret (from
   examples/local/secret.txt), in namespace ``demo``, reconciled to Ready;
5. the receiver Deployment the operator made, run as a local process from its
   pod template (tests/helpers/podrunner.py: the kubelet's part);
6. an echo target on 127.0.0.1 that prints every event it gets;
7. ``mailtrap-receiver send-test``, which signs and posts a delivery event as
   Mailtrap's "Run Test" button does; the event is printed when it arrives.

Then it keeps running so you can try things (it prints the commands), until
Ctrl-C or SIGTERM, which stop every process it started and delete its files.
tests/integration/test_dev.py runs this script the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/helpers, which the demo shares with the tests

import yaml  # noqa: E402

from tests.helpers.cluster import ClusterError, LocalCluster, local_cluster  # noqa: E402
from tests.helpers.kube import get, install_crd, wait_until  # noqa: E402
from tests.helpers.operator import start_operator, wait_ready  # noqa: E402
from tests.helpers.podrunner import start_pod_template  # noqa: E402

NAMESPACE = "demo"
EXAMPLE = REPO / "examples" / "local" / "mailtrapwebhook.yaml"
SECRET_FILE = REPO / "examples" / "local" / "secret.txt"
BIN_DIR = Path(sys.executable).parent


class Stopped(Exception):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stopped


def say(text: str = "") -> None:
    print(text, flush=True)


# --- the echo target --------------------------------------------------------------


class EchoTarget:
    """An HTTP server on loopback that answers 200 and queues what it received."""

    def __init__(self, port: int) -> None:
        self.received: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def echo_port() -> int:
    """9000 as in the example, unless something else has it."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9000)) != 0:
            return 9000
    return 0


def show(path: str, headers: dict[str, str], body: bytes) -> None:
    data = json.loads(body)
    events = data["events"] if isinstance(data, dict) and "events" in data else [data]
    for event in events if isinstance(events, list) else [events]:
        say(
            f"arrived at the echo target: {event.get('event')} {event.get('event_id')} "
            f"(POST {path}, X-Mailtrap-Event: {headers.get('X-Mailtrap-Event')}, "
            f"Idempotency-Key: {headers.get('Idempotency-Key')})"
        )
        say(json.dumps(event, indent=2))


# --- the demo ---------------------------------------------------------------------


def kubectl_hint(cluster: LocalCluster) -> str:
    return f"KUBECONFIG={cluster.admin_kubeconfig} {cluster.binary('kubectl')}"


def run(stack: contextlib.ExitStack, workdir: Path) -> None:
    say("Starting a local Kubernetes control plane (etcd, kube-apiserver, ... and kwok)")
    cluster = stack.enter_context(local_cluster(workdir=workdir / "cluster"))
    say(f"  kube-apiserver {cluster.version} at {cluster.server}")

    install_crd(cluster)
    say("Applied the MailtrapWebhook CRD from crds/")

    target = EchoTarget(echo_port())
    stack.callback(target.close)
    say(f"Echo target listening at {target.url}")

    operator = start_operator(
        kubeconfig=cluster.admin_kubeconfig,
        log_path=workdir / "operator.log",
        # The echo target is on loopback, which receivers may not reach by default
        # (a Pod's loopback is its own); here everything runs on this one machine.
        env={
            "MAILTRAP_OPERATOR_LOG_FORMAT": "console",
            "MAILTRAP_OPERATOR_DENIED_TARGET_CIDRS": "169.254.0.0/16,fe80::/10",
        },
    )
    stack.callback(operator.stop)
    say(f"Operator running (pid {operator.pid}, log {workdir / 'operator.log'})")

    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "mailtrap-signing",
        f"--from-file=signing-secret={SECRET_FILE}",
    )  # fmt: skip
    # The opt-in that lets MailtrapWebhooks use the Secret (README: Security).
    cluster.kubectl(
        "-n", NAMESPACE, "label", "secret", "mailtrap-signing", "mailtrap.io/webhook-secret=true"
    )
    resource = yaml.safe_load(EXAMPLE.read_text())
    resource["spec"]["targets"][0]["url"] = target.url
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input_text=json.dumps(resource))
    name = resource["metadata"]["name"]
    say(f"Applied {EXAMPLE.relative_to(REPO)} in namespace {NAMESPACE}; waiting for Ready")
    wait_ready(cluster, NAMESPACE, name)
    say(cluster.kubectl("-n", NAMESPACE, "get", "mtwh", "-o", "wide").stdout.rstrip())

    deployment = wait_until(
        lambda: get(cluster, "deployment", f"{name}-receiver", namespace=NAMESPACE),
        what="the receiver Deployment",
    )
    pod = start_pod_template(cluster=cluster, deployment=deployment, workdir=workdir / "receiver")
    stack.callback(pod.stop)
    webhook_url = pod.url("webhook", resource["spec"].get("path", "/webhooks/mailtrap"))
    say(f"Receiver running from the Deployment's pod template at {webhook_url}")
    say(f"  (pid {pod.process.pid}, log {pod.log_path})")

    send_test = [
        str(BIN_DIR / "mailtrap-receiver"), "send-test", "--url", webhook_url,
        "--secret-file", str(SECRET_FILE),
    ]  # fmt: skip
    say("Sending a signed test event, as Mailtrap's Run Test button does:")
    say(f"  $ mailtrap-receiver send-test --url {webhook_url} --secret-file {SECRET_FILE}")
    sent = subprocess.run(
        [*send_test, "--event", "delivery"], capture_output=True, text=True, timeout=60
    )
    say("  " + (sent.stdout + sent.stderr).strip().replace("\n", "\n  "))
    if sent.returncode != 0:
        raise RuntimeError("send-test failed; see the receiver's log: " + str(pod.log_path))
    try:
        path, headers, body = target.received.get(timeout=60)
    except queue.Empty:
        # queue.Empty says nothing by itself: name what did not happen, and where to look.
        raise RuntimeError(
            f"the event did not reach the echo target within 60 s; see {pod.log_path}"
        ) from None
    show(path, headers, body)

    say()
    say("Everything is running. Try:")
    say(f"  {' '.join(send_test)} --event bounce")
    say(f"  {kubectl_hint(cluster)} -n {NAMESPACE} get mtwh,deploy,cm,svc")
    say("Ctrl-C stops everything.")
    while True:
        with contextlib.suppress(queue.Empty):
            show(*target.received.get(timeout=1))


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short and leave processes behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.parse_args(argv)
    # Python leaves SIGINT ignored when it starts with it ignored (nohup, a background
    # job, some CI runners), and then Ctrl-C would never stop the demo: install the
    # handler whatever was inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="mailtrap-dev-"))
    stack = contextlib.ExitStack()
    code = 0
    try:
        run(stack, workdir)
    except (KeyboardInterrupt, Stopped):
        say("\nStopping")
    # A command that hangs (TimeoutExpired) or an event that never arrives (queue.Empty)
    # is a failed demo like the others: say so, and still clean up below.
    except (
        ClusterError,
        RuntimeError,
        AssertionError,
        subprocess.CalledProcessError,
        subprocess.TimeoutExpired,
        queue.Empty,
    ) as error:
        say(f"\nThe demo failed: {error}")
        if isinstance(error, subprocess.CalledProcessError):
            say(error.stderr or "")
        code = 1
    finally:
        with signals_ignored():
            stack.close()
            shutil.rmtree(workdir, ignore_errors=True)
    say("Stopped: every process the demo started has exited, and its files are gone.")
    return code


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
