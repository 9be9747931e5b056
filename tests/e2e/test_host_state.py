"""tests/helpers/hoststate.py sees and undoes the kinds of change a real node makes.

Each kind is made here by hand, as the kubelet, containerd, kube-proxy or a CNI
plugin would make it: a veth pair, an address on lo, an nftables table, a
cgroup with a process in it, a directory under /var/lib/cni and a sysctl. The
state captured before must list each as a difference, and `restore_to` must
leave none. Needs root, like the real node (tests/e2e/conftest.py says when it
is skipped).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.children import die_with_parent
from tests.helpers.hoststate import CGROUP_ROOT, HostState, cgroup_pids
from tests.helpers.node import take_node_slot

pytestmark = pytest.mark.e2e

SYSCTL = "net/ipv4/ip_forward"  # the ptp plugin turns it on


@pytest.fixture
def before(node_prerequisites: None) -> Iterator[HostState]:
    """The host's state; put back after the test even when the test fails. No real
    node may run meanwhile: restoring would undo its changes too."""
    with take_node_slot():
        state = HostState.capture()
        yield state
        HostState.capture().restore_to(state)


def test_every_kind_of_change_is_seen_and_undone(before: HostState) -> None:
    tag = uuid.uuid4().hex[:6]
    veth, table = f"veth{tag}", f"mailtrap-test-{tag}"
    cgroup = CGROUP_ROOT / "pids" / f"mailtrap-test-{tag}"
    subprocess.run(
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", f"peer{tag}"], check=True
    )
    subprocess.run(["ip", "address", "add", "10.244.254.9/32", "dev", "lo"], check=True)
    subprocess.run(["nft", "add", "table", "ip", table], check=True)
    cgroup.mkdir()
    sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent)
    (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
    Path("/var/lib/cni", f"mailtrap-test-{tag}").mkdir(parents=True)
    sysctl = Path("/proc/sys", SYSCTL)
    sysctl.write_text("0\n" if before.sysctls[SYSCTL].strip() == "1" else "1\n")

    changed = HostState.capture()
    seen = "\n".join(before.differences(changed))
    for expected in (veth, "10.244.254.9/32", table, cgroup.name, "/var/lib/cni", SYSCTL):
        assert expected in seen, f"{expected} not among:\n{seen}"

    assert changed.restore_to(before) == []
    assert sleeper.wait(timeout=10) != 0  # killed with its cgroup
    assert cgroup_pids([cgroup]) == set()
    assert before.differences(HostState.capture()) == []
