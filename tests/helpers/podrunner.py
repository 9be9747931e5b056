"""Run a Deployment's pod template as a local process: what the kubelet would run.

The local cluster's nodes are simulated, so no container ever starts there. This
runs the container of a Deployment the operator created, as the kubelet would, but
as a local process, to prove that the operator and the program agree on every
path, port, flag and key:

- the command is resolved in the venv's bin directory (the image's PATH);
- env comes from the spec, downward-API fields resolved from the pod metadata;
- each mounted ConfigMap and Secret is fetched from the cluster and written to a
  temp dir (only the projected ``items`` when listed, with their ``mode`` or the
  volume's ``defaultMode``), each emptyDir is a temp dir;
- the working directory and HOME are an empty directory with mode 0555, read-only
  mounts' directories get 0555 too, and TMPDIR is the emptyDir mounted at /tmp (the
  read-only directory without one), as with ``readOnlyRootFilesystem``. Modes do not
  stop root, which the tests may run as: `PodProcess.stray_writes` lists what the
  process wrote there anyway, and `running_pod_template` fails on any;
- mount paths are rewritten to those dirs in args, env values and the text of the
  materialised ConfigMap files (the receiver config names secret files and the
  spool by their in-Pod paths);
- each named container port gets a free loopback port, passed by appending the
  flag that already carries it in args (``--port 8080`` -> ``--port <free>``),
  plus ``--host 127.0.0.1``;
- it waits until the readinessProbe's path answers 200 on its mapped port.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.children import die_with_parent, free_port, stop_process
from tests.helpers.cluster import LocalCluster
from tests.helpers.kube import get

BIN_DIR = Path(sys.executable).parent
# Flags for ports the args do not mention: the receiver's defaults.
DEFAULT_PORT_FLAGS = {"webhook": "--port", "metrics": "--metrics-port"}


@dataclass
class PodProcess:
    """One container of a pod template, running locally."""

    process: subprocess.Popen[bytes]
    command: list[str]
    ports: dict[str, int]  # container port name -> local port
    mounts: dict[str, Path]  # in-Pod mount path -> local directory
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    # Directories the container may not write to, and what they held at the start.
    read_only: dict[Path, dict[Path, float]] = field(default_factory=dict)

    def url(self, port: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, timeout: float = 30.0) -> int:
        return stop_process(self.process, timeout=timeout)

    def stray_writes(self) -> list[Path]:
        """Files created or changed in the read-only directories since the start."""
        changed: list[Path] = []
        for directory, before in self.read_only.items():
            now = _snapshot(directory)
            changed += [path for path, mtime in now.items() if before.get(path) != mtime]
        return sorted(changed)


def _snapshot(directory: Path) -> dict[Path, float]:
    return {path: path.stat().st_mtime for path in directory.rglob("*")}


def _rewriter(mounts: Mapping[str, Path]) -> Any:
    """Replace in-Pod mount paths by local dirs, in one pass (a local dir may itself
    be under /tmp, which must not be rewritten again), whole path segments only."""
    by_path = {path.rstrip("/"): str(local) for path, local in mounts.items()}
    alternatives = "|".join(re.escape(path) for path in sorted(by_path, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.\-/])({alternatives})(?=/|$|[^\w.\-])")

    def rewrite(text: str) -> str:
        return pattern.sub(lambda match: by_path[match.group(1)], text)

    return rewrite


def _field(pod_meta: Mapping[str, Any], path: str) -> str:
    if path in ("metadata.namespace", "metadata.name", "metadata.uid"):
        return str(pod_meta[path.split(".", 1)[1]])
    for prefix in ("metadata.labels", "metadata.annotations"):
        if path.startswith(prefix + "['") and path.endswith("']"):
            key = path[len(prefix) + 2 : -2]
            return str(pod_meta[prefix.split(".")[1]].get(key, ""))
    raise AssertionError(f"the pod runner cannot resolve fieldRef {path}")


# The API server's default for ConfigMap and Secret volumes' defaultMode.
DEFAULT_MODE = 0o644


def _write_items(
    directory: Path,
    data: Mapping[str, bytes],
    items: list[dict[str, Any]] | None,
    default_mode: int,
) -> dict[Path, int]:
    """Write the projected keys; the mode each file gets once the config is rewritten."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = items or [{"key": key, "path": key} for key in data]
    modes: dict[Path, int] = {}
    for item in wanted:
        if item["key"] not in data:
            raise AssertionError(f"key {item['key']} missing from the mounted object")
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[item["key"]])
        modes[target] = int(item.get("mode", default_mode))
    return modes


def _materialise(
    cluster: LocalCluster,
    namespace: str,
    volume: Mapping[str, Any],
    directory: Path,
) -> tuple[str | None, dict[Path, int]]:
    """Write one volume's files into ``directory``: the kind of volume (None for an
    emptyDir) and the mode of each file written."""
    if "configMap" in volume:
        source = volume["configMap"]
        obj = get(cluster, "configmap", source["name"], namespace=namespace)
        assert obj is not None, f"ConfigMap {source['name']} is missing"
        data = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
        mode = int(source.get("defaultMode", DEFAULT_MODE))
        return "configMap", _write_items(directory, data, source.get("items"), mode)
    if "secret" in volume:
        source = volume["secret"]
        obj = get(cluster, "secret", source["secretName"], namespace=namespace)
        assert obj is not None, f"Secret {source['secretName']} is missing"
        data = {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
        mode = int(source.get("defaultMode", DEFAULT_MODE))
        return "secret", _write_items(directory, data, source.get("items"), mode)
    if "emptyDir" in volume:
        directory.mkdir(parents=True, exist_ok=True)
        return None, {}
    raise AssertionError(f"the pod runner does not support volume {volume}")


def _port_flags(args: list[str], ports: list[dict[str, Any]]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for port in ports:
        number = str(port["containerPort"])
        for index, arg in enumerate(args):
            if arg.startswith("--") and "=" in arg and arg.split("=", 1)[1] == number:
                flags[port["name"]] = arg.split("=", 1)[0]
            elif arg.startswith("--") and index + 1 < len(args) and args[index + 1] == number:
                flags[port["name"]] = arg
        flags.setdefault(port["name"], DEFAULT_PORT_FLAGS[port["name"]])
    return flags


def start_pod_template(
    *,
    cluster: LocalCluster,
    deployment: Mapping[str, Any],
    workdir: Path,
    container: str | None = None,
    ready_timeout: float = 60.0,
) -> PodProcess:
    namespace = deployment["metadata"]["namespace"]
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    spec = next(c for c in pod_spec["containers"] if container is None or c["name"] == container)
    pod_meta = {
        "namespace": namespace,
        "name": f"{deployment['metadata']['name']}-local",
        "uid": "00000000-0000-0000-0000-000000000000",
        "labels": template["metadata"].get("labels") or {},
        "annotations": template["metadata"].get("annotations") or {},
    }

    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes") or ()}
    mounts: dict[str, Path] = {}
    config_dirs: list[Path] = []
    modes: dict[Path, int] = {}
    read_only_mounts: list[Path] = []
    for mount in spec.get("volumeMounts") or ():
        local = workdir / "mounts" / mount["name"]
        kind, written = _materialise(cluster, namespace, volumes[mount["name"]], local)
        modes.update(written)
        mounts[mount["mountPath"]] = local
        if kind == "configMap":
            config_dirs.append(local)
        if mount.get("readOnly"):
            read_only_mounts.append(local)
    rewrite = _rewriter(mounts)
    # The config names its secret files and spool by in-Pod paths: point them here.
    for directory in config_dirs:
        for path in directory.rglob("*"):
            if path.is_file():
                path.write_text(rewrite(path.read_text()))
    for path, mode in modes.items():
        path.chmod(mode)
    # The image's root filesystem, as far as the process can tell: its working
    # directory and HOME, empty and read-only.
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    for directory in [root, *read_only_mounts]:
        for sub in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
            sub.chmod(0o555)

    env = {
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(root),
        # /tmp in the Pod is its emptyDir; without one, the read-only root.
        "TMPDIR": str(mounts.get("/tmp", root)),
        "LANG": "C.UTF-8",
    }
    for item in spec.get("env") or ():
        if "value" in item:
            env[item["name"]] = rewrite(str(item["value"]))
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[item["name"]] = _field(pod_meta, item["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise AssertionError(f"the pod runner cannot resolve env {item}")

    args = [rewrite(arg) for arg in spec.get("args") or ()]
    command = [str(BIN_DIR / spec["command"][0]), *spec["command"][1:], *args]
    ports = {port["name"]: free_port() for port in spec.get("ports") or ()}
    for name, flag in _port_flags(list(spec.get("args") or ()), spec.get("ports") or []).items():
        command += [flag, str(ports[name])]
    command += ["--host", "127.0.0.1"]

    log_path = workdir / f"{spec['name']}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=root,
            preexec_fn=die_with_parent,
        )
    read_only = {directory: _snapshot(directory) for directory in [root, *read_only_mounts]}
    pod = PodProcess(process, command, ports, mounts, log_path, env, read_only)

    probe = (spec.get("readinessProbe") or {}).get("httpGet")
    assert probe, "the container has no HTTP readinessProbe to wait for"
    port = probe["port"]
    if isinstance(port, int):
        port = next(p["name"] for p in spec["ports"] if p["containerPort"] == port)
    ready_url = pod.url(port, probe.get("path", "/"))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{command} exited with {process.returncode}:\n{pod.log()}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(ready_url, timeout=2) as response,  # noqa: S310
        ):
            if response.status == 200:
                return pod
        time.sleep(0.1)
    pod.stop()
    raise AssertionError(f"{ready_url} was not ready in {ready_timeout}s:\n{pod.log()}")


@contextlib.contextmanager
def running_pod_template(**kwargs: Any) -> Iterator[PodProcess]:
    pod = start_pod_template(**kwargs)
    try:
        yield pod
    finally:
        pod.stop()
    # Only when the test itself passed: its own failure says more.
    stray = pod.stray_writes()
    assert not stray, f"the container wrote outside its writable mounts: {stray}"
