"""Small synchronous helpers for tests that drive the local cluster with kubectl.

`get` reads objects as JSON, `apply` sends manifests, `install_crd` applies the
MailtrapWebhook CRD, and `wait_until` polls a check until it holds (returning what
it returned) or a generous deadline passes, failing with what was being waited for
and the last value seen. Tests assert
that things happen, never how fast.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.helpers.cluster import REPO, LocalCluster

T = TypeVar("T")


def get(cluster: LocalCluster, *args: str, namespace: str | None = None) -> Any:
    """``kubectl get ... -o json`` as data; None when the object does not exist."""
    ns = ["-n", namespace] if namespace else []
    result = cluster.kubectl(*ns, "get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {' '.join(args)} failed: {result.stderr}")
    return json.loads(result.stdout)


def apply(cluster: LocalCluster, text: str, *, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=text)


def wait_until(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 90.0,
    interval: float = 0.25,
) -> T:
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (AssertionError, KeyError, IndexError, TypeError) as error:
            # Not there yet (a field not written so far); the last one is reported.
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


def condition(obj: Any, kind: str) -> dict[str, Any]:
    for item in ((obj or {}).get("status") or {}).get("conditions") or ():
        if item.get("type") == kind:
            return dict(item)
    return {}


SECRET_OPT_IN = {"mailtrap.io/webhook-secret": "true"}


def secret_manifest(name: str, data: dict[str, str], *, opted_in: bool = True) -> str:
    """A Secret; labelled so that MailtrapWebhooks may use it, unless ``opted_in`` is
    False (the operator then refuses it)."""
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    metadata: dict[str, Any] = {"name": name}
    if opted_in:
        metadata["labels"] = dict(SECRET_OPT_IN)
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": encoded})


def example(name: str) -> str:
    """The text of a file in examples/."""
    return (REPO / "examples" / name).read_text()


CRD_FILE = REPO / "crds" / "mailtrapwebhooks.mailtrap.io.yaml"


def install_crd(cluster: LocalCluster) -> None:
    """The MailtrapWebhook CRD from crds/, Established and its schema published."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/mailtrapwebhooks.mailtrap.io", "--timeout=60s"
    )
    # Established comes before the schema is published in the OpenAPI document.
    wait_until(
        lambda: cluster.kubectl("explain", "mailtrapwebhook.spec", check=False).returncode == 0,
        what="the CRD's schema in kubectl explain",
    )
