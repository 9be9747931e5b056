"""``make dev`` as a newcomer runs it: a signed event arrives, and stopping it
leaves nothing behind.

``make dev`` is ``make setup`` (the venv and the test binaries, which CI's
``make setup`` has done) followed by ``.venv/bin/python hack/dev.py``; this runs
the second part the same way, reads its output until the echo target printed the
event, then stops it as a person would: Ctrl-C (SIGINT to the whole foreground
process group) or SIGTERM to the script alone. Every process it started (the
control plane, the operator, the receiver) must be gone, and its files too.

The Ctrl-C case starts the demo with SIGINT ignored, as a shell does for ``nohup``
and background jobs and some CI runners do for everything: Ctrl-C must stop it all
the same. Whatever happens, the test kills the demo's whole process group before
it returns, so a failed or timed-out run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.cluster import REPO
from tests.helpers.kube import wait_until

pytestmark = pytest.mark.integration


def descendants(pid: int) -> set[int]:
    """Every living process whose parent chain leads to ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left of the demo: its process group and every descendant
    (the control plane's processes run in sessions of their own)."""
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_make_dev_shows_a_signed_event_arriving_and_stops_everything(stop: str) -> None:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "hack" / "dev.py")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would give it
        # What nohup, a background job or a CI runner hands down.
        preexec_fn=ignore_sigint if stop == "ctrl-c" else None,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def until(pattern: str) -> str:
        def seen() -> str | None:
            while not lines.empty():
                output.append(lines.get())
            text = "".join(output)
            assert process.poll() is None or re.search(pattern, text), text
            return text if re.search(pattern, text) else None

        return wait_until(seen, what=f"{pattern!r} from hack/dev.py", timeout=240)

    try:
        until(r"Ctrl-C stops everything")
        started = descendants(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started}
    finally:
        if process.poll() is None:
            if stop == "ctrl-c":
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=120)
        finally:
            kill_group(process.pid)
    reader.join(timeout=10)  # the rest of its output
    text = until(r"Stopped:")

    assert "HTTP 200" in text  # the receiver's answer to send-test
    arrived = re.search(r"arrived at the echo target: .*?\n(\{\n.*?\n\})\n", text, re.DOTALL)
    assert arrived is not None, text
    event = json.loads(arrived.group(1))
    assert event["event"] == "delivery"
    assert event["event_id"]
    assert code == 0, text

    # What was running (names as /proc shows them, cut to 15 characters) has exited.
    assert names >= {
        "etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok",
        "mailtrap-operat", "mailtrap-receiv",
    }, names  # fmt: skip
    wait_until(
        lambda: not [pid for pid in started if alive(pid)],
        what="every process hack/dev.py started to exit",
        timeout=30,
    )
    workdir = re.search(r"log (/\S+)/operator\.log", text)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
