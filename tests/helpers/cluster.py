"""A real, local Kubernetes control plane for tests and for ``make dev``.

``LocalCluster`` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (simulated nodes that mark Pods Running and Ready) as
child processes on free loopback ports, with certificates generated for the run
and an admin client certificate. Garbage collection, Deployment -> ReplicaSet ->
Pod, the scheduler and RBAC all behave as in a real cluster; only the kubelet is
simulated. The binaries come from ``hack/testbins.sh`` (env, PATH, official
download, or a build from the Go module proxy).

Used by the session fixture in ``tests/conftest.py`` and by ``hack/dev.py``. It
hands out kubeconfigs for the admin and, through TokenRequest, for any
ServiceAccount, so the operator can run with exactly the chart's RBAC, and
(``audit=True``) an audit log of what ServiceAccounts asked and were allowed.
With ``kwok=False`` it has no node at all: tests/helpers/node.py joins a real
kubelet to it, which the API server calls (for logs and exec) with the admin
certificate. `Daemons` starts and stops the long-running children of both.

For fault injection (tests/faults), `ApiServerFaults` SIGKILLs kube-apiserver and
starts it again on the same port (optionally with other flags, such as
``--max-requests-inflight=5``), and runs a second API server on the same etcd that
serves requests while the first is down, as in a highly available control plane.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.helpers.children import die_with_parent, free_port

REPO = Path(__file__).resolve().parents[2]
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


# Metadata (who, what, the decision and the status code; never bodies) of requests
# made with ServiceAccount tokens: the chart's RBAC tests run the operator so. The
# control plane's own components use the admin certificate and are not recorded.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class ClusterError(RuntimeError):
    """The control plane could not be started; the message carries the logs' tail."""


def testbins_dir() -> Path:
    """The directory of test binaries, obtained (and cached) by hack/testbins.sh."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "testbins.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


# --- certificates -----------------------------------------------------------------


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _Pki:
    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    admin_cert: bytes
    admin_key: bytes
    sa_key: bytes
    sa_pub: bytes


def _make_pki(host: str) -> _Pki:
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mailtrap-test-ca"))
        .issuer_name(_name("mailtrap-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: Sequence[x509.GeneralName] = ()
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _pem_cert(builder.sign(ca_key, hashes.SHA256())), _pem_key(key)

    server_cert, server_key = leaf(
        _name("kube-apiserver"),
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address(host)),
            x509.IPAddress(next(ipaddress.ip_network(SERVICE_CIDR).hosts())),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
        ],
    )
    admin_cert, admin_key = leaf(
        _name("mailtrap-test-admin", "system:masters"),
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _Pki(
        ca_cert=_pem_cert(ca),
        server_cert=server_cert,
        server_key=server_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        sa_key=_pem_key(sa_key),
        sa_pub=sa_pub,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- processes --------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Daemons:
    """Long-running children, each in its own process group and logging to
    ``<workdir>/<name>.log``: the control plane's here, the real node's in node.py."""

    workdir: Path
    _procs: list[_Proc] = field(default_factory=list)

    def spawn(
        self, name: str, command: Sequence[str], *, preexec: Callable[[], None] = die_with_parent
    ) -> None:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            preexec_fn=preexec,
            start_new_session=True,
        )
        self._procs.append(_Proc(name, popen, log_path, log))

    def wait(self, name: str, ready: Callable[[], bool], deadline: float) -> None:
        """Until ``ready()``; a daemon that exits meanwhile fails it, with its log."""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.popen.poll() is not None:
                    raise ClusterError(
                        f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                    )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        waited = next((p for p in self._procs if p.name == name), None)
        raise ClusterError(f"{name} not ready in time:\n{waited.tail() if waited else ''}")

    def pids(self) -> list[int]:
        return [proc.popen.pid for proc in self._procs if proc.popen.poll() is None]

    def stop(self) -> None:
        """SIGTERM each, last started first; SIGKILL what is left after 10 s."""
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self._procs):
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
            proc.log.close()
        self._procs.clear()


@dataclass
class LocalCluster:
    """A control plane of real Kubernetes binaries; start() it, then stop() it."""

    bin_dir: Path
    workdir: Path
    # The API server's address. Loopback, except for a real node's cluster: the
    # `kubernetes` Service's endpoint is this address, and Endpoints may not be
    # loopback (node.py puts a host-local address on lo for it).
    host: str = "127.0.0.1"
    api_port: int = 0
    version: str = ""
    # Record what ServiceAccounts ask the API server (and what it decided), so a
    # test can prove which permissions the operator really uses. Off by default.
    audit: bool = False
    # kwok and its simulated node; off for a cluster whose node is real (node.py).
    kwok: bool = True
    _daemons: Daemons | None = None

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    # -- lifecycle --

    def start(self, *, timeout: float = 120.0) -> None:
        try:
            self._start(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, *, timeout: float) -> None:
        self._daemons = Daemons(self.workdir)
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        pki = _make_pki(self.host)
        files = {
            "ca.crt": pki.ca_cert,
            "apiserver.crt": pki.server_cert,
            "apiserver.key": pki.server_key,
            "admin.crt": pki.admin_cert,
            "admin.key": pki.admin_key,
            "sa.key": pki.sa_key,
            "sa.pub": pki.sa_pub,
        }
        for name, data in files.items():
            (pki_dir / name).write_bytes(data)
            (pki_dir / name).chmod(0o600)

        deadline = time.monotonic() + timeout
        etcd_port, peer_port = free_port(), free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd}",
                f"--advertise-client-urls={etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                # A throwaway store: fsync buys nothing here and costs seconds.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"{etcd}/health"), deadline)

        self.api_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
                f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
                f"--client-ca-file={pki_dir / 'ca.crt'}",
                f"--service-account-key-file={pki_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                # As hardened clusters do: setting blockOwnerDeletion needs update
                # on the owner's finalizers, so the chart's RBAC is tested for it.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # `kubectl logs` and `exec` on a real node (node.py): the API server
                # reaches its kubelet as the admin, at the node's name (localhost).
                f"--kubelet-client-certificate={pki_dir / 'admin.crt'}",
                f"--kubelet-client-key={pki_dir / 'admin.key'}",
                "--kubelet-preferred-address-types=Hostname",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                *self._audit_flags(),
            ],
        )
        self._write_kubeconfig(
            self.admin_kubeconfig,
            user={
                "client-certificate-data": _b64(pki.admin_cert),
                "client-key-data": _b64(pki.admin_key),
            },
        )
        admin_ctx = self._admin_ssl_context()
        self._wait(
            "kube-apiserver",
            lambda: _http_ok(f"{self.server}/readyz", context=admin_ctx),
            deadline,
        )
        version_url = f"{self.server}/version"
        with urllib.request.urlopen(version_url, context=admin_ctx) as resp:  # noqa: S310
            self.version = json.load(resp)["gitVersion"]

        kubeconfig = str(self.admin_kubeconfig)
        kcm_port, sched_port = free_port(), free_port()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                "--use-service-account-credentials=false",
                # Without a cloud, cidr allocation and route controllers only complain.
                "--controllers=*,-nodeipam,-route,-cloud-node-lifecycle,-service-lb-controller",
                "--concurrent-gc-syncs=10",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
            ],
        )
        if self.kwok:
            self._spawn(
                "kwok",
                [
                    f"--kubeconfig={kubeconfig}",
                    f"--config={REPO / 'hack' / 'kwok-stages.yaml'}",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    f"--cidr={POD_CIDR}",
                    "--node-lease-duration-seconds=40",
                ],
            )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed, made at start
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            self._wait(
                name, lambda p=port: _http_ok(f"https://127.0.0.1:{p}/healthz", insecure), deadline
            )
        if self.kwok:
            self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(_kwok_node("kwok-node-0")))
            self._wait("kwok", self._node_ready, deadline)
        # Pods are refused until the service account controller made "default".
        self._wait("kube-controller-manager", self._default_sa_exists, deadline)

    def stop(self) -> None:
        if self._daemons is not None:
            self._daemons.stop()

    def daemon_pids(self) -> list[int]:
        """The control plane's running processes."""
        return self._daemons.pids() if self._daemons is not None else []

    # -- audit --

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        # The log backend writes each event before the request returns ("blocking"),
        # so a test reads what happened right after it happened.
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}"]

    def audit_events(self, *, username: str) -> list[dict[str, Any]]:
        """Every finished request of one user (ServiceAccounts only), oldest first."""
        if not self.audit_log.exists():
            return []
        found = []
        with self.audit_log.open() as log:
            for line in log:
                event = json.loads(line)
                if (event.get("user") or {}).get("username") == username:
                    found.append(event)
        return found

    # -- clients and credentials --

    def kubectl(
        self,
        *args: str,
        input_text: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary("kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}"]
        result = subprocess.run(
            [*cmd, *args], input=input_text, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def serviceaccount_kubeconfig(
        self, *, namespace: str, name: str, path: Path, expiration_seconds: int = 7200
    ) -> Path:
        """A kubeconfig carrying a bound token of the ServiceAccount (TokenRequest)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        out = self.kubectl(
            "create",
            "--raw",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            "-f",
            "-",
            input_text=json.dumps(request),
        )
        token = json.loads(out.stdout)["status"]["token"]
        self._write_kubeconfig(path, user={"token": token})
        return path

    def _write_kubeconfig(self, path: Path, *, user: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.ca_file.read_bytes()),
                    },
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.workdir / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    # -- internals --

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self._daemons is not None
        self._daemons.spawn(name, [self.binary(name), *args])

    def _wait(self, name: str, ready: Callable[[], bool], deadline: float) -> None:
        assert self._daemons is not None
        self._daemons.wait(name, ready, deadline)

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            "kwok-node-0",
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return out.stdout.strip() == "True"

    def _default_sa_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0


# --- fault injection -----------------------------------------------------------------


def _with_flags(args: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``args`` with each ``--flag=value`` of ``extra`` replacing a flag of that name."""
    names = {flag.split("=", 1)[0] for flag in extra}
    return [arg for arg in args if arg.split("=", 1)[0] not in names] + list(extra)


@dataclass
class ApiServerFaults:
    """The kube-apiserver of a running `LocalCluster`, to kill and start again.

    Made once per cluster, while its API server runs: it keeps the flags that
    server was started with, so every restart starts from them.
    """

    cluster: LocalCluster
    flags: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.flags = [str(arg) for arg in list(self._proc().popen.args)[1:]]  # type: ignore[arg-type]

    @property
    def _procs(self) -> list[_Proc]:
        assert self.cluster._daemons is not None, "the cluster is not running"
        return self.cluster._daemons._procs

    def _index(self) -> int:
        return next(i for i, p in enumerate(self._procs) if p.name == "kube-apiserver")

    def _proc(self) -> _Proc:
        return self._procs[self._index()]

    def kill(self) -> None:
        """SIGKILL kube-apiserver, as a crash or the loss of its node would, and wait
        until it is gone. Everything else (etcd, controllers, kwok) keeps running."""
        proc = self._proc()
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(timeout=30)

    def start(self, *, extra_args: Sequence[str] = (), timeout: float = 90.0) -> None:
        """Start kube-apiserver again (after `kill`) on the same port, with the same
        certificates and etcd, and its first flags plus ``extra_args`` (replacing
        flags of the same name); return once it is ready."""
        cluster, procs = self.cluster, self._procs
        index = self._index()
        old = procs[index]
        if old.popen.poll() is None:
            raise ClusterError("kube-apiserver is still running: kill it first")
        old.log.close()
        del procs[index]
        cluster._spawn("kube-apiserver", _with_flags(self.flags, extra_args))
        procs.insert(index, procs.pop())  # stopped in the same order
        context = cluster._admin_ssl_context()
        cluster._wait(
            "kube-apiserver",
            lambda: _http_ok(f"{cluster.server}/readyz", context=context),
            time.monotonic() + timeout,
        )

    def restart(self, *, extra_args: Sequence[str] = (), down: float = 0.0) -> None:
        """`kill`, stay down ``down`` seconds, then `start`."""
        self.kill()
        time.sleep(down)
        self.start(extra_args=extra_args)

    @contextlib.contextmanager
    def peer(self, *, timeout: float = 90.0) -> Iterator[str]:
        """A second kube-apiserver on the same etcd, on a port of its own (not
        audited), for the length of a ``with`` block, as highly available control
        planes have: its URL, for ``kubectl --server``."""
        cluster = self.cluster
        port = free_port()
        flags = _with_flags(self.flags, [f"--secure-port={port}"])
        peer = Daemons(cluster.workdir)
        server = f"https://127.0.0.1:{port}"
        try:
            peer.spawn(
                "kube-apiserver-peer",
                [cluster.binary("kube-apiserver"), *(f for f in flags if "--audit-" not in f)],
            )
            context = cluster._admin_ssl_context()
            peer.wait(
                "kube-apiserver-peer",
                lambda: _http_ok(f"{server}/readyz", context=context),
                time.monotonic() + timeout,
            )
            yield server
        finally:
            peer.stop()


def _kwok_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "500"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "500"},
        },
    }


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_cluster(
    *,
    workdir: Path | None = None,
    keep_logs: Path | None = None,
    audit: bool = False,
    kwok: bool = True,
    host: str = "127.0.0.1",
) -> Iterator[LocalCluster]:
    """Start a cluster for the duration of a ``with`` block; always stops and cleans up."""
    owned = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="mailtrap-cluster-"))
    cluster = LocalCluster(bin_dir=testbins_dir(), workdir=work, audit=audit, kwok=kwok, host=host)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, keep_logs / log.name)
        if owned:
            shutil.rmtree(work, ignore_errors=True)
