"""What a real Kubernetes node changes on this machine, and putting it back.

A kubelet, containerd, kube-proxy and the CNI plugins change the host they run on:
sysctls, nftables tables (iptables-nft's and kube-proxy's), network interfaces and
routes, mounts, cgroups, and files in well-known directories. `HostState.capture`
records all of that; `HostState.restore_to` undoes what the node is known to do
(it touches only the kinds of change listed above: new mounts under the node's
work directory or in the network-namespace directories, new veth interfaces, new
nftables tables, new cgroups, new entries in `NODE_PATHS`, changed sysctls), and
`differences` lists whatever still differs, the check that nothing was left.

Used by tests/helpers/node.py (capture before the node starts, restore when it
stops, also for a run that died: see its journal) and by .ci/run, which records
the state before the tests and checks it after them (``python -m
tests.helpers.hoststate save FILE`` / ``check FILE``), together with
`leftover_processes`: processes that still carry the run's marker variable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Sysctl subtrees the kubelet (vm.overcommit_memory, kernel.panic*, kernel.keys.*),
# kube-proxy (net.ipv4.*, net.netfilter.*) and the CNI plugins (ip_forward) write.
# Per-interface entries come and go with their interfaces and are left out.
SYSCTL_ROOTS = (
    "vm",
    "kernel",
    "net/ipv4",
    "net/ipv6/conf/all",
    "net/ipv6/conf/default",
    "net/netfilter",
    "net/bridge",
    "net/core",
)
_PER_INTERFACE = ("net/ipv4/conf/", "net/ipv4/neigh/")
# Written by the kernel itself all the time.
_VOLATILE_SYSCTLS = frozenset({"kernel/ns_last_pid"})

# Where the kubelet, containerd, the CNI plugins and iptables put files whatever
# their configuration says: the node points everything else into its own directory.
NODE_PATHS = (
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/kube-proxy",
    "/run/containerd",
    "/run/netns",
    "/run/kubernetes",
    "/run/xtables.lock",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/etc/kubernetes",
)
# Mount points under these are a node's own (network namespaces of its Pods).
_NETNS_DIRS = ("/run/netns/", "/var/run/netns/")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class HostState:
    sysctls: dict[str, str] = field(default_factory=dict)
    # "family name" -> the table as `nft list table` prints it; None: no nft here.
    nft_tables: dict[str, str] | None = None
    links: dict[str, str] = field(default_factory=dict)  # name -> kind ("" if plain)
    addresses: list[str] = field(default_factory=list)  # "<link> <address>/<prefix>"
    routes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    paths: dict[str, list[str]] = field(default_factory=dict)  # path -> entries; absent: missing

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            sysctls=_sysctls(),
            nft_tables=_nft_tables(),
            links=_links(),
            addresses=_addresses(),
            routes=_routes(),
            mounts=_mounts(),
            cgroups=_cgroups(),
            paths=_paths(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostState:
        return cls(**json.loads(text))

    def differences(self, now: HostState) -> list[str]:
        """What differs in ``now`` from this state, one line per change."""
        found: list[str] = []
        for key, value in sorted(self.sysctls.items()):
            if key in now.sysctls and now.sysctls[key] != value:
                found.append(f"sysctl {key}: {value.strip()!r} -> {now.sysctls[key].strip()!r}")
        if self.nft_tables is not None and now.nft_tables is not None:
            for table in sorted(set(self.nft_tables) | set(now.nft_tables)):
                if table not in now.nft_tables:
                    found.append(f"nftables table {table}: removed")
                elif table not in self.nft_tables:
                    found.append(f"nftables table {table}: added")
                elif now.nft_tables[table] != self.nft_tables[table]:
                    found.append(f"nftables table {table}: changed")
        found += _set_changes("network interface", self.links, now.links)
        found += _set_changes("address", self.addresses, now.addresses)
        found += _set_changes("route", self.routes, now.routes)
        found += _set_changes("mount", self.mounts, now.mounts)
        found += _set_changes("cgroup", self.cgroups, now.cgroups)
        for path in NODE_PATHS:
            before, after = self.paths.get(path), now.paths.get(path)
            if before is None and after is not None:
                found.append(f"path {path}: created")
            elif before is not None and after is None:
                found.append(f"path {path}: removed")
            elif before is not None and after is not None:
                found += _set_changes(f"entry of {path}", before, after)
        return found

    def restore_to(self, before: HostState, *, workdir: Path | None = None) -> list[str]:
        """Undo what a node changed since ``before`` (this being the state now); returns
        what could not be undone. Processes still in a new cgroup are killed first."""
        problems: list[str] = []
        new_cgroups = sorted(set(self.cgroups) - set(before.cgroups), key=len, reverse=True)
        problems += kill_cgroup_processes(CGROUP_ROOT / c for c in new_cgroups)
        for mount in sorted(set(self.mounts) - set(before.mounts), key=len, reverse=True):
            ours = mount.startswith(_NETNS_DIRS) or (
                workdir is not None and Path(mount).is_relative_to(workdir)
            )
            if ours:
                problems += _run(["umount", "--lazy", mount])
        for name, kind in self.links.items():
            if name not in before.links and kind == "veth":
                problems += _run(["ip", "link", "delete", name], missing_ok=True)
        for address in sorted(set(self.addresses) - set(before.addresses)):
            link, cidr = address.split()
            if link in before.links:
                problems += _run(["ip", "address", "delete", cidr, "dev", link])
        if self.nft_tables is not None and before.nft_tables is not None:
            for table in sorted(set(self.nft_tables) | set(before.nft_tables)):
                text = self.nft_tables.get(table)
                if before.nft_tables.get(table) == text:
                    continue
                if text is not None:
                    problems += _run(["nft", "delete", "table", *table.split()])
                if table in before.nft_tables:
                    problems += _run(["nft", "-f", "-"], stdin=before.nft_tables[table])
        for cgroup in new_cgroups:
            with contextlib.suppress(FileNotFoundError):
                try:
                    (CGROUP_ROOT / cgroup).rmdir()
                except OSError as error:
                    problems.append(f"cgroup {cgroup}: {error}")
        for path in NODE_PATHS:
            problems += _restore_path(Path(path), before.paths.get(path))
        for key, value in before.sysctls.items():
            if self.sysctls.get(key, value) != value:
                try:
                    Path("/proc/sys", key).write_text(value)
                except OSError as error:
                    problems.append(f"sysctl {key}: {error}")
        return problems


def _set_changes(what: str, before: Iterable[str], after: Iterable[str]) -> list[str]:
    old, new = set(before), set(after)
    return [f"{what} {item}: added" for item in sorted(new - old)] + [
        f"{what} {item}: removed" for item in sorted(old - new)
    ]


def _run(command: list[str], *, stdin: str | None = None, missing_ok: bool = False) -> list[str]:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode == 0 or (missing_ok and "Cannot find" in result.stderr):
        return []
    return [f"{' '.join(command)}: {result.stderr.strip() or result.returncode}"]


# --- capturing ----------------------------------------------------------------------


def _sysctls() -> dict[str, str]:
    found: dict[str, str] = {}
    proc = Path("/proc/sys")
    for root in SYSCTL_ROOTS:
        for directory, _, files in os.walk(proc / root):
            relative = os.path.relpath(directory, proc) + "/"
            if relative.startswith(_PER_INTERFACE) and relative.split("/")[3] not in (
                "all",
                "default",
            ):
                continue
            for name in files:
                path = Path(directory, name)
                key = str(path.relative_to(proc))
                if key in _VOLATILE_SYSCTLS or not path.stat().st_mode & 0o200:
                    continue
                with contextlib.suppress(OSError):
                    found[key] = path.read_text()
    return found


def _nft_tables() -> dict[str, str] | None:
    if shutil.which("nft") is None:
        return None
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    tables: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        _, family, name = line.split()
        shown = subprocess.run(
            ["nft", "list", "table", family, name], capture_output=True, text=True, check=True
        )
        tables[f"{family} {name}"] = shown.stdout
    return tables


def _links() -> dict[str, str]:
    out = subprocess.run(["ip", "-j", "-d", "link"], capture_output=True, text=True, check=True)
    return {
        link["ifname"]: (link.get("linkinfo") or {}).get("info_kind", "")
        for link in json.loads(out.stdout)
    }


def _addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "address"], capture_output=True, text=True, check=True)
    return sorted(
        f"{link['ifname']} {info['local']}/{info['prefixlen']}"
        for link in json.loads(out.stdout)
        for info in link.get("addr_info", ())
    )


def _routes() -> list[str]:
    found = []
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", family, "route"], capture_output=True, text=True, check=True)
        found += [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return found


def _mounts() -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    # The fifth field is the mount point (spaces and the like octal-escaped).
    return sorted({line.split()[4] for line in text.splitlines()})


def _cgroups() -> list[str]:
    found = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        for directory, _, _ in os.walk(hierarchy):
            if directory != str(hierarchy):
                found.append(os.path.relpath(directory, CGROUP_ROOT))
    return found


def _paths() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in map(Path, NODE_PATHS):
        if path.is_dir() and not path.is_symlink():
            found[str(path)] = sorted(entry.name for entry in path.iterdir())
        elif path.exists() or path.is_symlink():
            found[str(path)] = []
    return found


# --- restoring ----------------------------------------------------------------------


def _restore_path(path: Path, before: list[str] | None) -> list[str]:
    if not (path.exists() or path.is_symlink()):
        return []
    try:
        if before is None:
            _remove(path)
        elif path.is_dir() and not path.is_symlink():
            for entry in path.iterdir():
                if entry.name not in before:
                    _remove(entry)
    except OSError as error:
        return [f"path {path}: {error}"]
    return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def cgroup_pids(cgroups: Iterable[Path]) -> set[int]:
    """Every process in these cgroups (each hierarchy's directory of that name)."""
    pids: set[int] = set()
    for cgroup in cgroups:
        for directory, _, _ in os.walk(cgroup):
            with contextlib.suppress(OSError):
                procs = Path(directory, "cgroup.procs").read_text().split()
                pids.update(int(pid) for pid in procs)
    return pids


def kill_cgroup_processes(cgroups: Iterable[Path], *, timeout: float = 20.0) -> list[str]:
    """SIGKILL every process in the cgroups until none is left."""
    groups = list(cgroups)
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(groups):
        if time.monotonic() > deadline:
            return [f"processes {sorted(pids)} outlived SIGKILL in {groups}"]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return []


# --- processes of a run ---------------------------------------------------------------


def leftover_processes(marker: str) -> list[str]:
    """Processes (other than this one and its parents) whose environment holds
    ``marker`` (NAME=value): started by the run that exported it, still running."""
    needle = marker.encode() + b"\0"
    mine = set(_ancestors(os.getpid()))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes() + b"\0":
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def _ancestors(pid: int) -> Iterator[int]:
    while pid > 0:
        yield pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        pid = int(stat.rsplit(")", 1)[1].split()[1])


def main(argv: list[str]) -> int:
    """``save FILE``: record the state; ``check FILE [MARKER]``: fail (and say what) if
    the state differs from FILE's, or if a process carries MARKER (NAME=value)."""
    if len(argv) >= 2 and argv[0] == "save":
        Path(argv[1]).write_text(HostState.capture().to_json())
        return 0
    if len(argv) >= 2 and argv[0] == "check":
        before = HostState.from_json(Path(argv[1]).read_text())
        problems = before.differences(HostState.capture())
        if len(argv) > 2:
            # A process told to stop may take a moment to go.
            deadline = time.monotonic() + 20
            while (running := leftover_processes(argv[2])) and time.monotonic() < deadline:
                time.sleep(1)
            problems += [f"still running: {line}" for line in running]
        for line in problems:
            print(f"hoststate: {line}", file=sys.stderr)
        return 1 if problems else 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
