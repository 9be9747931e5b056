"""Child processes of the tests: free loopback ports, death with the parent, stopping.

Every helper that starts a real process (`cluster`, `processes`, `operator`,
`podrunner`) starts it with `die_with_parent`, so a test run killed outright leaves
nothing behind, and stops it with `stop_process` (or its own stricter variant).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from typing import Final


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# The process that imports this module is the one that starts the children.
_SPAWNER: Final = os.getpid()


def die_with_parent() -> None:
    """For ``preexec_fn``: Linux sends the child SIGTERM when the test process dies
    (SIGKILL leaves no chance for teardown)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # A parent that died between fork and prctl never sends the signal: such a child
    # (an API server found orphaned after a killed run, retrying a gone etcd) must
    # not start at all.
    if os.getppid() != _SPAWNER:
        os._exit(1)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 30.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)
