"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

`ControlPlane.start()` lays out a work directory (PKI, etcd data, logs, kubeconfigs), starts the
three processes on free loopback ports, and returns once ``/readyz`` answers 200 and the
controllers have made the ``default`` ServiceAccount and ``kube-root-ca.crt`` ConfigMap. The API
server runs as a cluster would: secure serving only, ``--authorization-mode=Node,RBAC``,
``NodeRestriction`` and ``ServiceAccount`` admission, a ServiceAccount issuer and signing key,
TokenRequest/TokenReview. Control-plane identities (admin, controller-manager, kubelets later)
come from a static token file; herald's components get ServiceAccount tokens (tests/k8s/install.py)
so the RBAC under test is the chart's.

For a person: ``python -m tests.k8s.controlplane up [--dir DIR]`` starts one, installs herald's
CRDs and RBAC, prints the kubeconfigs, and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import secrets
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.binaries import ensure_binaries
from tests.k8s.pki import KeyPair, TestCa, write_rsa_key
from tests.k8s.processes import ManagedProcess

ISSUER = "https://kubernetes.default.svc.cluster.local"
"""The ServiceAccount token issuer, and the API server's own audience (kubeadm's default)."""
SERVICE_CIDR = "10.0.0.0/24"
_CONTROLLERS = (
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    # For the chart's install tests: Deployments and DaemonSets make their ReplicaSets and pods
    # (which stay Pending: there is no scheduler or kubelet), PodDisruptionBudgets get a status.
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "disruption-controller",
)
_SERVING_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


class ControlPlaneError(Exception):
    """The control plane did not come up (or went down); the message carries the logs."""


@dataclass(frozen=True)
class StaticUser:
    """A control-plane identity from the API server's ``--token-auth-file``."""

    name: str
    groups: tuple[str, ...]
    token: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    """A kubeconfig for ``user`` authenticating with a bearer ``token``."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "herald-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "herald-test", "user": user}}],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``workdir``; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        bin_dir: Path | None = None,
        *,
        ready_timeout: float = 90.0,
        port: int = 0,
        nodes: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.ready_timeout = ready_timeout
        self.port = port
        self.nodes = tuple(nodes)
        self.url = ""
        self.processes: dict[str, ManagedProcess] = {}
        self.users: dict[str, StaticUser] = {}
        self.ca: TestCa | None = None
        self.serving: KeyPair | None = None
        self.etcd_url = ""
        self.sa_key_file = workdir / "pki" / "service-accounts.key"
        self.admin_kubeconfig = workdir / "kubeconfigs" / "admin.kubeconfig"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        bin_dir = self.bin_dir or ensure_binaries()
        self.bin_dir = bin_dir
        try:
            self._prepare()
            self._start_etcd(bin_dir)
            self._start_apiserver(bin_dir)
            self._start_controller_manager(bin_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process, newest first; raises if any pid outlives SIGKILL."""
        for process in reversed(list(self.processes.values())):
            # A few seconds' grace: a controller-manager whose API server restarted can sit on
            # SIGTERM, and a test control plane has nothing to flush.
            process.stop(grace=3)

    def logs(self, lines: int = 25) -> str:
        return "\n".join(p.tail(lines) for p in self.processes.values())

    def fail(self, message: str) -> ControlPlaneError:
        return ControlPlaneError(f"{message}\n{self.logs()}")

    # --- pieces -----------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "start() first"
        return self.ca.ca_file

    @property
    def admin_token(self) -> str:
        return self.users["admin"].token

    def _prepare(self) -> None:
        pki = self.workdir / "pki"
        self.ca = TestCa.create(pki, "herald-test-ca")
        write_rsa_key(self.sa_key_file)
        self.port = self.port or free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.serving = self.ca.issue(
            pki,
            "kube-apiserver",
            dns_names=_SERVING_NAMES,
            ip_addresses=("127.0.0.1", str(ipaddress.ip_network(SERVICE_CIDR)[1])),
        )
        for name, groups in (
            ("admin", ("system:masters",)),
            ("system:kube-controller-manager", ()),
        ):
            self.add_static_user(name, groups)
        for node in self.nodes:
            self.add_static_user(f"system:node:{node}", ("system:nodes",))
        self.admin_kubeconfig = write_kubeconfig(
            self.admin_kubeconfig, self.url, self.ca_file, self.admin_token, "admin"
        )

    def add_static_user(self, name: str, groups: Sequence[str]) -> StaticUser:
        """A token-file identity; takes effect for processes started afterwards."""
        user = StaticUser(name, tuple(groups), secrets.token_urlsafe(24))
        self.users[name] = user
        lines = [f'{u.token},{u.name},{u.name},"{",".join(u.groups)}"' for u in self.users.values()]
        token_file = self.workdir / "pki" / "tokens.csv"
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)
        return user

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log").start()
        self.processes[name] = process
        return process

    def _start_etcd(self, bin_dir: Path) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=herald-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=herald-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, "etcd /health", lambda: _etcd_healthy(self.etcd_url))

    def _apiserver_argv(self, bin_dir: Path) -> list[str]:
        pki = self.workdir / "pki"
        assert self.serving is not None
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Loopback cannot back the kubernetes Service's endpoints; nothing here needs them yet.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.serving.cert_file}",
            f"--tls-private-key-file={self.serving.key_file}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.sa_key_file}",
            f"--service-account-signing-key-file={self.sa_key_file}",
            f"--api-audiences={ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={pki / 'apiserver'}",
        ]

    def _start_apiserver(self, bin_dir: Path) -> None:
        apiserver = self._spawn("kube-apiserver", self._apiserver_argv(bin_dir))
        self._wait(apiserver, "kube-apiserver /readyz", lambda: self._get("/readyz") == 200)

    def restart_apiserver(self, down_for: float = 0.0) -> None:
        """Kill the API server (etcd keeps the data), wait ``down_for`` seconds, start it again.

        Killed, not stopped: with the controller-manager's watches open a SIGTERM takes over 20 s.
        """
        assert self.bin_dir is not None
        self.processes.pop("kube-apiserver").stop(grace=0)
        time.sleep(down_for)
        self._start_apiserver(self.bin_dir)

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """``name``'s process stopped (SIGSTOP) while the block runs: its controllers fall
        behind on cue, as an overloaded or partitioned controller-manager does."""
        process = self.processes[name]
        process.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.signal(signal.SIGCONT)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, as its periodic compaction would; the revision."""
        status = _etcd_post(self.etcd_url, "/v3/maintenance/status", {})
        revision = int(status["header"]["revision"])
        _etcd_post(self.etcd_url, "/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def expire_watches(self) -> None:
        """Make every resourceVersion a client holds too old (a real ``410 Gone``): a write moves
        etcd's revision past them, etcd is compacted, and the restarted API server's watch caches
        start from the new revision, so a watch resumed from an older one is refused."""
        marker = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "herald-test-expiry", "namespace": "kube-system"},
            "data": {"at": str(time.monotonic_ns())},
        }
        status, _ = self._admin_request(
            "PUT", "/api/v1/namespaces/kube-system/configmaps/herald-test-expiry", marker
        )
        if status == 404:
            self._admin_request("POST", "/api/v1/namespaces/kube-system/configmaps", marker)
        self.compact_etcd()
        self.restart_apiserver()

    def _start_controller_manager(self, bin_dir: Path) -> None:
        user = self.users["system:kube-controller-manager"]
        kubeconfig = write_kubeconfig(
            self.workdir / "kubeconfigs" / "controller-manager.kubeconfig",
            self.url,
            self.ca_file,
            user.token,
            user.name,
        )
        manager = self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials",
                f"--root-ca-file={self.ca_file}",
                f"--service-account-private-key-file={self.sa_key_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--controllers={','.join(_CONTROLLERS)}",
                "--concurrent-gc-syncs=5",
            ],
        )
        self._wait(
            manager,
            "the default ServiceAccount and kube-root-ca.crt (controllers running)",
            lambda: (
                self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200
                and self._get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt") == 200
            ),
        )

    def _wait(self, process: ManagedProcess, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not ready():
            if not process.alive():
                raise self.fail(f"{process.name} exited before {what} was ready")
            if time.monotonic() > deadline:
                raise self.fail(f"{what} not ready after {self.ready_timeout:.0f} s")
            time.sleep(0.2)

    def _admin_request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """An admin call: status and body (0 when nothing answers)."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - https to our own loopback server
            self.url + path, data=data, headers=headers, method=method
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (OSError, ssl.SSLError):
            return 0, b""

    def _get(self, path: str) -> int:
        return self._admin_request("GET", path)[0]

    def kubeconfig_for(self, name: str, token: str) -> Path:
        """A kubeconfig file for ``token`` (named ``name`` in ``workdir/kubeconfigs``)."""
        return write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{name}.kubeconfig", self.url, self.ca_file, token, name
        )

    def version(self) -> dict[str, Any]:
        status, body = self._admin_request("GET", "/version")
        if status != 200:
            raise self.fail(f"GET /version answered {status}")
        return dict(json.loads(body))


def _etcd_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:  # noqa: S310 - loopback
            return bool(json.load(response).get("health") == "true")
    except (OSError, ValueError):
        return False


def _etcd_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A call to etcd's JSON gateway on its loopback client URL."""
    request = urllib.request.Request(  # noqa: S310 - http to our own loopback etcd
        url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return dict(json.load(response))


@contextlib.contextmanager
def running(workdir: Path | None = None) -> Iterator[ControlPlane]:
    """A started control plane in ``workdir`` (a temporary directory if None), stopped after."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herald-k8s-")))
        plane = ControlPlane(workdir).start()
        try:
            yield plane
        finally:
            plane.stop()


def _up(args: argparse.Namespace) -> int:
    from tests.k8s.install import install_crds, install_herald

    workdir = Path(args.dir).resolve() if args.dir else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    with running(workdir) as plane:
        install_crds(plane)
        release = install_herald(plane, namespace="herald")
        took = time.monotonic() - started
        print(f"control plane up in {took:.1f} s: {plane.version()['gitVersion']}")
        print(f"export KUBECONFIG={plane.admin_kubeconfig}")
        for component, path in release.kubeconfigs.items():
            print(f"herald-{component} ServiceAccount: {path}")
        print(f"logs: {plane.workdir / 'logs'}; Ctrl-C stops it", flush=True)
        while not stopping:
            time.sleep(0.5)
            for process in plane.processes.values():
                if not process.alive():
                    print(plane.fail(f"{process.name} exited"), file=sys.stderr)
                    return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.k8s.controlplane", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a control plane with herald's CRDs and RBAC")
    up.add_argument("--dir", help="work directory to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
