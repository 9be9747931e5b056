"""bench/receiver_durable.py still runs: a one-second round, with its real processes.

It is a smoke test of the script, not a performance test: it asserts what the run
reports (every accepted event forwarded, a ratio printed), never how fast.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[3] / "bench" / "receiver_durable.py"


def test_the_durable_benchmark_runs() -> None:
    if shutil.which("wrk") is None:
        # `make setup` installs wrk; in CI (.ci/run sets MAILTRAP_CI) a missing wrk
        # is a broken setup, and a skip there would hide that this never ran.
        if os.environ.get("MAILTRAP_CI"):
            pytest.fail("wrk is not installed, though MAILTRAP_CI is set: make setup should have")
        pytest.skip("wrk is not installed (make setup installs it, or: apt-get install wrk)")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--duration", "1", "--rounds", "1", "--bodies", "20000"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"ratio receiver/bare \(req/s, medians\): \d+\.\d\d", done.stdout)
    forwarded = re.search(r"forwarded (\d+) of (\d+) accepted events", done.stdout)
    assert forwarded is not None, done.stdout
    assert int(forwarded.group(1)) == int(forwarded.group(2)) > 0
    assert "delivery: ON" in done.stdout
