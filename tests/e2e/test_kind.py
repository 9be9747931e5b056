"""End to end on kind: hack/kind-e2e.sh builds the image, installs the chart on a
kind cluster, applies examples/basic.yaml and checks that a signed event sent
through a port-forward reaches a target Pod (and a badly signed one gets 401).

It needs a running Docker engine (``docker info`` must work, not just the client)
and kind. Without them it is skipped, saying which is missing; it is never faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers.cluster import REPO

pytestmark = pytest.mark.e2e


def missing() -> str | None:
    """Why this machine cannot run the e2e, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 60 s"
    if info.returncode != 0:
        said = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the Docker engine is not reachable (`docker info`: {said})"
    if shutil.which(os.environ.get("KIND", "kind")) is None:
        return "kind is not installed (or set $KIND to its path)"
    return None


@pytest.mark.timeout(1800)
def test_a_signed_event_reaches_a_target_through_the_chart_on_kind() -> None:
    reason = missing()
    if reason is not None:
        pytest.skip(f"kind e2e needs Docker and kind: {reason}")
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "kind-e2e.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "e2e: the target got:" in result.stdout, output[-8000:]
    assert '"event": "bounce"' in result.stdout
