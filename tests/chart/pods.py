"""A kubelet stand-in: one container of an installed pod template, run as a process on this host.

The control plane has no kubelet yet, so `start_container` does for one container what a kubelet
would, from the objects as the chart installed them (read back from the API): it resolves the
env (values, downward API fields), expands ``$(VAR)`` in command and args, and materialises each
volume the container mounts: ConfigMaps from the API, emptyDirs and hostPaths as empty
directories, projected ServiceAccount tokens by TokenRequest for the pod's ServiceAccount with the
volume's audience and lifetime, and the automounted ServiceAccount volume when the pod asks for
one. The API server is reached as pods reach it, through ``KUBERNETES_SERVICE_HOST``/``_PORT``.

Mount points under ``/run`` (``/var/run/secrets/...``, the agent's socket directory) are kept at
their exact paths: the process runs in a private mount namespace with a tmpfs on ``/run`` holding
them, because the Kubernetes client reads its in-cluster token from a fixed path. Every other
mount point becomes a temporary directory, and only those paths are rewritten, in the arguments,
the env and the mounted ConfigMap files; everything else runs exactly as rendered. That needs
root (``unshare --mount``); callers skip without it. What is not reproduced: the image itself
(herald runs from this checkout's .venv), the pod's uid, network namespace and resource limits.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.k8s.api import Kube
from tests.k8s.binaries import ROOT
from tests.k8s.processes import ManagedProcess

VENV_BIN = ROOT / ".venv" / "bin"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
Obj = dict[str, Any]


@dataclass
class Pod:
    """Where the container "runs": the pod's identity as the downward API reports it."""

    name: str
    namespace: str
    service_account: str
    node_name: str = ""
    host_ip: str = "127.0.0.1"
    bound: Obj | None = None
    """A real Pod object the tokens are bound to (k8s_psat checks the pod and its node)."""
    hosts: dict[str, str] = field(default_factory=dict)
    """Extra /etc/hosts entries, name → address (cluster DNS names of Services)."""


@dataclass
class Container:
    """A started container: its process, and where its volumes live on this host."""

    process: ManagedProcess
    volumes: dict[str, Path]
    argv: list[str]
    env: dict[str, str]


def _field(pod: Pod, path: str) -> str:
    known = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.hostIP": pod.host_ip,
        "status.podIP": "127.0.0.1",
    }
    assert path in known, f"downward API field {path} is not emulated"
    return known[path]


def _env(container: Obj, pod: Pod) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _VAR_REF.sub(lambda m: env.get(m[1], m[0]), var["value"])
        else:
            env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
    return env


def _write_configmap(kube: Kube, namespace: str, source: Obj, target: Path) -> None:
    configmap = kube.get("v1", "ConfigMap", source["name"], namespace)
    assert configmap is not None, f"ConfigMap {namespace}/{source['name']} does not exist"
    data = configmap.get("data") or {}
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        (target / item["path"]).write_text(data[item["key"]])


def _token(kube: Kube, pod: Pod, source: Obj) -> str:
    audience = source.get("audience")
    return kube.token(
        pod.namespace,
        pod.service_account,
        audiences=[audience] if audience else [],
        seconds=int(source.get("expirationSeconds", 3607)),
        bound_pod=pod.bound,
    )


def _volume(kube: Kube, pod: Pod, volume: Obj, target: Path) -> None:
    target.mkdir(parents=True)
    if "configMap" in volume:
        _write_configmap(kube, pod.namespace, volume["configMap"], target)
    elif "projected" in volume:
        for source in volume["projected"]["sources"]:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                (target / token["path"]).write_text(_token(kube, pod, token))
            else:
                _write_configmap(kube, pod.namespace, source["configMap"], target)
    else:
        assert {"emptyDir", "hostPath"} & set(volume), f"volume kind of {volume} not emulated"


def _rewrite(text: str, mounts: list[tuple[str, Path]]) -> str:
    for mount, local in mounts:
        text = re.sub(rf"(?<![\w/.-]){re.escape(mount)}(?=/|\b|$)", str(local), text)
    return text


def start_container(
    kube: Kube,
    template: Obj,
    container_name: str,
    pod: Pod,
    workdir: Path,
    *,
    api_port: int,
) -> Container:
    """Start ``container_name`` of the pod ``template`` (a Deployment's or DaemonSet's)."""
    spec = template["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == container_name]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    local: dict[str, Path] = {}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        assert "subPath" not in mount, "subPath mounts are not emulated"
        name = mount["name"]
        if name not in local:
            local[name] = workdir / "volumes" / name
            _volume(kube, pod, volumes[name], local[name])
        mounts[mount["mountPath"]] = local[name]
    if spec.get("automountServiceAccountToken", True):
        sa = workdir / "volumes" / "kube-api-access"
        _volume(
            kube,
            pod,
            {"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            sa,
        )
        _write_configmap(kube, pod.namespace, {"name": "kube-root-ca.crt"}, sa)
        (sa / "namespace").write_text(pod.namespace)
        mounts[SERVICE_ACCOUNT_DIR] = sa

    # /run paths stay exact (tmpfs in the mount namespace); the rest become local directories,
    # except /tmp, which TMPDIR points at (its local directory is itself under /tmp).
    in_run = {path: src for path, src in mounts.items() if path.startswith(("/run/", "/var/run/"))}
    rewritten = sorted(
        ((path, src) for path, src in mounts.items() if path not in in_run and path != "/tmp"),
        key=lambda item: -len(item[0]),
    )
    for _, src in rewritten:
        for config in src.iterdir():
            if config.is_file() and config.suffix in (".yaml", ".yml"):
                config.write_text(_rewrite(config.read_text(), rewritten))

    env = _env(container, pod)
    env |= {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(api_port),
    }
    if "/tmp" in mounts:
        env["TMPDIR"] = str(mounts["/tmp"])  # the emptyDir on /tmp, where tempfile looks
    env = {key: _rewrite(value, rewritten) for key, value in env.items()}

    def expand(arg: str) -> str:
        return _rewrite(_VAR_REF.sub(lambda m: env.get(m[1], m[0]), arg), rewritten)

    argv = [expand(arg) for arg in [*container.get("command", []), *container.get("args", [])]]
    binary = VENV_BIN / argv[0]
    assert binary.exists(), f"{argv[0]} is not in {VENV_BIN}"
    argv[0] = str(binary)

    script = ["mount -t tmpfs -o mode=0755 tmpfs /run"]
    for path, src in sorted(in_run.items()):
        target = "/run/" + path.removeprefix("/var").removeprefix("/run/")
        script += [f"mkdir -p {shlex.quote(target)}", f"mount --bind {src} {shlex.quote(target)}"]
    if pod.hosts:
        hosts = workdir / "hosts"
        shutil.copyfile("/etc/hosts", hosts)
        with hosts.open("a") as out:
            out.writelines(f"{address} {name}\n" for name, address in pod.hosts.items())
        script.append(f"mount --bind {hosts} /etc/hosts")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    script.append(f'exec env -i {env_args} "$@"')
    wrapper = ["unshare", "--mount", "--propagation", "private", "--"]
    wrapper += ["sh", "-ec", "\n".join(script), container_name, *argv]
    process = ManagedProcess(container_name, wrapper, workdir / f"{container_name}.log").start()
    return Container(process, local, argv, env)


def can_run_containers() -> str | None:
    """Why containers cannot be emulated here, or None when they can."""
    if os.geteuid() != 0:
        return "the kubelet stand-in needs root (unshare --mount, tmpfs on /run)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None
