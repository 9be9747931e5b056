"""A real Kubernetes node on this machine, joined to a local control plane.

`RealNode` runs containerd (Debian's, with runc), a kubelet and kube-proxy (built
by hack/testbins.sh at the pinned Kubernetes version) against a `LocalCluster`
started without kwok, so Pods are real containers: images imported into
containerd (`import_images`, from hack/images.sh's archives; Pods use
``imagePullPolicy: Never``, there is no registry), the pause image built from
hack/pause/pause.go, Pod networking by the CNI plugins ``ptp`` and ``host-local``
(a /24 routed from the host, so the host reaches Pod IPs), Services by kube-proxy
(nftables mode), and `kubectl logs`/`exec` through the kubelet (the node is named
``localhost``; the API server calls it with the admin certificate). The node can
be cordoned and drained like any other.

Everything is confined as far as the programs allow: their files, sockets, Pod
logs, network namespaces and CNI state live in the work directory; their
processes, and every container, in cgroups of their own; the kubelet's and
kube-proxy's ports on loopback. What they change on the host anyway (sysctls,
nftables tables, veth interfaces, /var/log/containers, /var/lib/cni, /run/containerd,
mounts, cgroups, the API server's address) is recorded by
tests/helpers/hoststate.py before the node starts and put back after it stops:
``restore()`` kills every process left in the node's cgroups, puts the host back
and returns what still differs (`real_node_cluster` fails on it). The node is made
for hosts with cgroup v1 hierarchies (v1 or hybrid, as these machines have).

A journal written before anything changes (``~/.cache/mailtrap-webhook/node/``)
lets the next node clean up after a test process that was killed outright; a lock
there keeps two nodes from running on one machine at once.

Pods reach the API server at the ``kubernetes`` Service, whose endpoint is the API
server's address, which Kubernetes refuses to be loopback: the node's control plane
listens on `API_ADDRESS`, a host-local address put on ``lo`` for the node's
lifetime (never routed anywhere). Pods get a resolv.conf naming their own
loopback, so a lookup fails at once instead of leaving the machine; targets are
addressed by IP. An nftables guard (`guard_table`) drops anything of the node's
that would leave the machine all the same.

Used by the real-node fixture of tests/e2e (tests/e2e/conftest.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.helpers.children import die_with_parent, free_port
from tests.helpers.cluster import (
    REPO,
    SERVICE_CIDR,
    ClusterError,
    Daemons,
    LocalCluster,
    local_cluster,
    testbins_dir,
)
from tests.helpers.hoststate import CGROUP_ROOT, HostState, cgroup_pids
from tests.helpers.processes import http_status

NODE_NAME = "localhost"
# The node's API server listens here (on lo): host-local, outside every Pod range.
API_ADDRESS = "10.244.255.1"
# One /24 on this node (host-local IPAM); no other cluster's Pods are routed here.
NODE_POD_CIDR = "10.244.0.0/24"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
K8S_NAMESPACE = "k8s.io"  # containerd's namespace of the CRI plugin
STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "mailtrap-webhook/node"
)
GUARD_TABLE = "mailtrap-node-guard"
# Pods must never resolve names through the host's resolver (traffic off the machine).
RESOLV_CONF = "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n"


# What the tests found out about the node and the images (kubelet version, image
# digests, users): tests/e2e/conftest.py prints it at the end of the run.
FACTS: list[str] = []


class NodeError(ClusterError):
    """The node could not start or did not leave the host as it found it."""


@dataclass(frozen=True)
class Image:
    """An image hack/images.sh built: its reference and its docker-archive."""

    ref: str
    archive: Path


def build_images(*names: str) -> dict[str, Image]:
    """hack/images.sh's images by name (operator, receiver, pause): built from this
    checkout when they changed, else taken from its cache."""
    out = subprocess.run(
        [str(REPO / "hack" / "images.sh"), *names],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if out.returncode != 0:
        raise NodeError(f"hack/images.sh failed:\n{out.stderr[-5000:]}")
    found = {}
    for line in out.stdout.splitlines():
        name, ref, archive = line.split()
        found[name] = Image(ref, Path(archive))
    return found


# --- cgroups ------------------------------------------------------------------------


def _v1_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies mounted here (cpu, memory, pids, ..., name=systemd)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[0] == "cgroup":
            found.append(Path(before.split()[4]))
    return sorted(found)


def _make_cgroup(hierarchy: Path, name: str) -> None:
    path = hierarchy / name
    path.mkdir(exist_ok=True)
    # A new cpuset has no CPUs or memory nodes: no process could join it.
    for key in ("cpuset.cpus", "cpuset.mems"):
        if (hierarchy / key).exists():
            (path / key).write_text((hierarchy / key).read_text())


# --- journal ------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def take_node_slot() -> IO[str]:
    """The machine's one slot for a real node (or for a test that changes what a node
    changes), held until the returned file is closed."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lock = (STATE_DIR / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise NodeError(
            f"a real node runs on this machine ({STATE_DIR / 'lock'} is held)"
        ) from None
    return lock


def _journal_path(cgroup: str) -> Path:
    return STATE_DIR / f"{cgroup}.json"


def _write_journal(
    cgroup: str, workdir: Path, before: HostState, processes: Sequence[int] = ()
) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "start_time": _start_time(os.getpid()),
        "cgroup": cgroup,
        "workdir": str(workdir),
        # The control plane's, which may outlive a killed parent: (pid, start time).
        "processes": [(pid, _start_time(pid)) for pid in processes],
        "before": json.loads(before.to_json()),
    }
    tmp = _journal_path(cgroup).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(_journal_path(cgroup))


def recover_dead_nodes() -> list[str]:
    """Put the host back for each node whose test process died without stopping it;
    what was done, one line each."""
    done = []
    for journal in sorted(STATE_DIR.glob("mailtrap-node-*.json")):
        record = json.loads(journal.read_text())
        if _start_time(record["pid"]) == record["start_time"]:
            continue  # its process still runs (and holds the lock: never reached)
        before = HostState.from_json(json.dumps(record["before"]))
        workdir = Path(record["workdir"])
        # The node's own processes are in its cgroups (restore_to kills those).
        for pid, start_time in record["processes"]:
            if _start_time(pid) == start_time:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        problems = HostState.capture().restore_to(before, workdir=workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        journal.unlink()
        done.append(f"cleaned up after node {record['cgroup']} of dead process {record['pid']}")
        done += [f"  could not: {problem}" for problem in problems]
    return done


# --- configuration ------------------------------------------------------------------


def _toml(value: Any) -> str:
    # JSON strings, numbers and booleans are TOML's too (this config has no others).
    return json.dumps(value)


def containerd_config(*, workdir: Path, pause_image: str) -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    runc = f"{cri[:-1]}.containerd.runtimes.runc]"
    return "\n".join(
        [
            "version = 2",
            f"root = {_toml(str(workdir / 'root'))}",
            f"state = {_toml(str(workdir / 'state'))}",
            # Snapshotters this node never uses, and tracing: nothing more to start.
            "disabled_plugins = "
            + _toml(
                [
                    "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing",
                ]
            ),
            "[grpc]",
            f"address = {_toml(str(workdir / 'containerd.sock'))}",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"path = {_toml(str(workdir / 'opt'))}",
            cri,
            f"sandbox_image = {_toml(pause_image)}",
            # Root without CAP_SYS_RESOURCE cannot lower a score; AppArmor is absent.
            "restrict_oom_score_adj = true",
            "disable_apparmor = true",
            "netns_mounts_under_state_dir = true",
            'stream_server_address = "127.0.0.1"',
            'stream_server_port = "0"',
            f"{cri[:-1]}.containerd]",
            'snapshotter = "overlayfs"',
            'default_runtime_name = "runc"',
            runc,
            'runtime_type = "io.containerd.runc.v2"',
            f"{runc[:-1]}.options]",
            "SystemdCgroup = false",
            f"Root = {_toml(str(workdir / 'runc'))}",
            f"{cri[:-1]}.cni]",
            f"bin_dir = {_toml(CNI_BIN_DIR)}",
            f"conf_dir = {_toml(str(workdir / 'net.d'))}",
            "",
        ]
    )


def cni_config(*, workdir: Path) -> dict[str, Any]:
    """ptp gives each Pod a veth pair and a host route; no masquerade: Pods never
    talk to anything off this machine."""
    return {
        "cniVersion": "1.0.0",
        "name": "mailtrap-node",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "ipam"),
                },
            }
        ],
    }


def guard_table() -> str:
    """nftables rules that keep the node's traffic on this machine whatever else goes
    wrong: a ClusterIP that kube-proxy did not translate, or anything from a Pod
    routed anywhere but to another Pod or the host, is dropped."""
    return f"""table ip {GUARD_TABLE} {{
  chain postrouting {{
    type filter hook postrouting priority 200; policy accept;
    ip daddr {SERVICE_CIDR} drop
    ip saddr {NODE_POD_CIDR} oifname != "veth*" oifname != "lo" drop
  }}
}}
"""


def kubelet_config(
    *, workdir: Path, ca_file: Path, cgroup: str, port: int, healthz_port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        # The API server (admin certificate, so authorized) is the only caller.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup}",
        # These machines mount cgroup v1 (hybrid); the kubelet refuses it unless told.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{workdir / 'containerd' / 'containerd.sock'}",
        "podLogsDir": str(workdir / "pod-logs"),
        "resolvConf": str(workdir / "resolv.conf"),
        # A shared test machine: evict only when truly short, never collect images
        # (they were imported, and cannot be pulled again).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 50,
        "serializeImagePulls": False,
    }


def kube_proxy_config(*, kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Its own nftables table, deleted whole at stop.
        "mode": "nftables",
        "clusterCIDR": NODE_POD_CIDR,
        "nodePortAddresses": ["primary"],
        # 0: leave the host's conntrack settings alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


# --- the node -----------------------------------------------------------------------


@dataclass
class RealNode:
    """containerd, kubelet and kube-proxy joined to a cluster on `API_ADDRESS`:
    ``prepare()`` the host before that cluster starts, ``start()`` the node in it,
    ``stop()`` the node, and ``restore()`` the host once the cluster has stopped."""

    bin_dir: Path
    workdir: Path
    cluster: LocalCluster | None = None
    kubelet_version: str = ""
    cgroup: str = field(default_factory=lambda: f"mailtrap-node-{uuid.uuid4().hex[:8]}")
    _before: HostState | None = None
    _daemons: Daemons | None = None
    _lock: IO[str] | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def _daemon_cgroup(self) -> str:
        # containerd, its shims, the kubelet and kube-proxy; the containers are in
        # the kubelet's cgroup root (``cgroup``).
        return f"{self.cgroup}.daemons"

    # -- lifecycle --

    def prepare(self) -> None:
        """Take the machine's one node slot, clean up after dead runs, record the
        host's state (and a journal of it), and add `API_ADDRESS`."""
        self._take_lock()
        try:
            for line in recover_dead_nodes():
                print(f"node: {line}")
            self._before = HostState.capture()
            _write_journal(self.cgroup, self.workdir, self._before)
            subprocess.run(
                ["ip", "address", "add", f"{API_ADDRESS}/32", "dev", "lo"],
                check=True,
                capture_output=True,
            )
        except BaseException:
            self.restore()
            raise

    def start(self, cluster: LocalCluster, *, pause: Image, timeout: float = 180.0) -> None:
        self.cluster = cluster
        assert self._before is not None, "prepare() first"
        _write_journal(self.cgroup, self.workdir, self._before, cluster.daemon_pids())
        try:
            self._start(cluster, pause, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, cluster: LocalCluster, pause: Image, deadline: float) -> None:
        daemons = self._daemons = Daemons(self.workdir)
        for hierarchy in _v1_hierarchies():
            _make_cgroup(hierarchy, self.cgroup)
        _make_cgroup(CGROUP_ROOT / "pids", self._daemon_cgroup)
        subprocess.run(["nft", "-f", "-"], input=guard_table(), text=True, check=True)

        runtime = self.workdir / "containerd"
        (runtime / "net.d").mkdir(parents=True, exist_ok=True)
        (runtime / "net.d" / "10-mailtrap-node.conflist").write_text(
            json.dumps(cni_config(workdir=runtime))
        )
        (runtime / "config.toml").write_text(
            containerd_config(workdir=runtime, pause_image=pause.ref)
        )
        self._spawn("containerd", ["containerd", "--config", str(runtime / "config.toml")])
        daemons.wait("containerd", lambda: self.ctr("version").returncode == 0, deadline)
        self.import_images([pause.archive])

        (self.workdir / "resolv.conf").write_text(RESOLV_CONF)
        kubelet = self.workdir / "kubelet"
        kubelet.mkdir(exist_ok=True)
        config = kubelet_config(
            workdir=self.workdir,
            ca_file=cluster.ca_file,
            cgroup=self.cgroup,
            port=free_port(),
            healthz_port=free_port(),
        )
        (kubelet / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={kubelet / 'config.yaml'}",
                f"--kubeconfig={cluster.admin_kubeconfig}",
                f"--root-dir={kubelet / 'root'}",
                f"--cert-dir={kubelet / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )
        daemons.wait("kubelet", self._node_ready, deadline)
        node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
        self.kubelet_version = node["status"]["nodeInfo"]["kubeletVersion"]

        healthz = free_port()
        proxy = kube_proxy_config(
            kubeconfig=cluster.admin_kubeconfig, healthz_port=healthz, metrics_port=free_port()
        )
        (self.workdir / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy))
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.workdir / 'kube-proxy.yaml'}"],
        )
        daemons.wait(
            "kube-proxy",
            lambda: http_status(f"http://127.0.0.1:{healthz}/healthz") == 200,
            deadline,
        )

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL); containers stop in ``restore()``."""
        if self._daemons is not None:
            self._daemons.stop()
            self._daemons = None

    def restore(self) -> list[str]:
        """Kill every process left in the node's cgroups and put the host back as
        ``prepare()`` found it; what still differs (nothing, normally)."""
        problems: list[str] = []
        try:
            self.stop()
            if self._before is not None:
                now = HostState.capture()
                problems += now.restore_to(self._before, workdir=self.workdir)
                problems += self._before.differences(HostState.capture())
                _journal_path(self.cgroup).unlink(missing_ok=True)
                self._before = None
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        return problems

    # -- use --

    def ctr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """containerd's own client, in the CRI's namespace."""
        return subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", K8S_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=check,
        )

    def import_images(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", str(archive), check=True)

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's first process (``containerd://<id>`` or the id)."""
        task = self.ctr("task", "ls", check=True).stdout
        wanted = container_id.removeprefix("containerd://")
        for line in task.splitlines()[1:]:
            task_id, pid, *_ = line.split()
            if task_id == wanted:
                return int(pid)
        raise NodeError(f"no running task {wanted}:\n{task}")

    def processes(self) -> set[int]:
        """Every process of the node: its daemons, their shims and every container."""
        return cgroup_pids(
            [CGROUP_ROOT / "pids" / self.cgroup, CGROUP_ROOT / "pids" / self._daemon_cgroup]
        )

    # -- internals --

    def _take_lock(self) -> None:
        self._lock = take_node_slot()

    def _spawn(self, name: str, command: list[str]) -> None:
        assert self._daemons is not None
        procs = CGROUP_ROOT / "pids" / self._daemon_cgroup / "cgroup.procs"

        def preexec() -> None:
            die_with_parent()
            procs.write_text(str(os.getpid()))

        self._daemons.spawn(name, command, preexec=preexec)

    def _node_ready(self) -> bool:
        assert self.cluster is not None
        out = self.cluster.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return out.stdout.strip() == "True"


@dataclass(frozen=True)
class NodeCluster:
    """What the real-node fixture hands the tests."""

    cluster: LocalCluster
    node: RealNode
    images: dict[str, Image]


@contextlib.contextmanager
def real_node_cluster(
    *,
    pause: Image,
    workdir: Path | None = None,
    keep_logs: Path | None = None,
    audit: bool = False,
) -> Iterator[tuple[LocalCluster, RealNode]]:
    """A control plane without kwok and a real node joined to it, for a ``with``
    block, its sandbox image ``pause`` imported. Fails on leaving the host changed."""
    owned = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="mailtrap-node-"))
    (work / "cluster").mkdir(parents=True, exist_ok=True)
    (work / "node").mkdir(exist_ok=True)
    node = RealNode(bin_dir=testbins_dir(), workdir=work / "node")
    problems: list[str] = []
    node.prepare()
    try:
        with local_cluster(
            workdir=work / "cluster", keep_logs=keep_logs, kwok=False, audit=audit, host=API_ADDRESS
        ) as cluster:
            try:
                node.start(cluster, pause=pause)
                yield cluster, node
            finally:
                node.stop()
    finally:
        problems = node.restore()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in (work / "node").glob("*.log"):
                shutil.copy(log, keep_logs / f"node-{log.name}")
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    if problems:
        raise NodeError("the node left the host changed:\n" + "\n".join(problems))
