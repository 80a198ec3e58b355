"""The Kubernetes API a benchmark drives: the emulator in its own process, or a real control plane.

Both give the driver the same things: an `Api` with admin credentials, a kubeconfig for each
herald component (on the real API, its own ServiceAccount under the chart's RBAC; on the emulator,
anyone), the namespace herald runs in, and the pids whose CPU and memory are the API's own cost
(the emulator; or etcd and kube-apiserver, with the controller-manager beside them).

    with real_api(workdir) as target: ...       # tests/k8s: etcd + kube-apiserver + controllers
    with emulator_api(workdir) as target: ...   # bench/operator_emulator.py in a subprocess
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.k8s.controlplane import ControlPlane
from tests.k8s.install import HeraldRelease, install_crds, install_herald

ROOT = Path(__file__).resolve().parents[1]
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
HERALD_NAMESPACE = "herald"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (children it waited for included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Target:
    """One API to benchmark against; see the module docstring."""

    name: str
    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool
    kubeconfigs: dict[str, Path]
    namespace: str
    pids: dict[str, int]
    release: HeraldRelease | None = None
    # A real API server admits a pod only once its namespace's default ServiceAccount exists.
    needs_service_accounts: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def session(self, inflight: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=inflight + 8, ssl=self.ssl)
        return aiohttp.ClientSession(connector=connector, headers=self.headers)

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def memory(self, field_name: str = "VmRSS") -> dict[str, float]:
        return {name: memory_mib(pid, field_name) for name, pid in self.pids.items()}


def insecure_kubeconfig(url: str, path: Path) -> Path:
    """A kubeconfig for the emulator, which serves plain HTTP and takes any token."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}],
                "current-context": "emu",
            }
        )
    )
    return path


@contextlib.contextmanager
def emulator_api(workdir: Path, profile: str | None = None) -> Iterator[Target]:
    """The API emulator served alone in its own process (so no GIL is shared with it)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "operator_emulator.py"), *filter(None, [profile])],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the emulator did not start")
        kubeconfig = insecure_kubeconfig(url, workdir / "emulator.kubeconfig")
        yield Target(
            name="emulator",
            url=url,
            headers={},
            ssl=False,
            kubeconfigs=dict.fromkeys(("server", "operator", "agent"), kubeconfig),
            namespace=HERALD_NAMESPACE,
            pids={"emulator": process.pid},
        )
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def real_api(workdir: Path) -> Iterator[Target]:
    """etcd, kube-apiserver and kube-controller-manager (tests/k8s), herald's CRDs and RBAC; each
    herald component gets its own ServiceAccount's kubeconfig."""
    plane = ControlPlane(workdir / "control-plane").start()
    try:
        install_crds(plane)
        release = install_herald(plane, namespace=HERALD_NAMESPACE, release="herald")
        yield Target(
            name="real API",
            url=plane.url,
            headers={"Authorization": f"Bearer {plane.admin_token}"},
            ssl=ssl.create_default_context(cafile=str(plane.ca_file)),
            kubeconfigs=dict(release.kubeconfigs),
            namespace=release.namespace,
            pids={name: p.pid for name, p in plane.processes.items()},
            release=release,
            needs_service_accounts=True,
            extra={"plane": plane},
        )
    finally:
        plane.stop()


TARGETS = {"emulator": emulator_api, "real": real_api}


class Api:
    """The few calls a benchmark driver makes, as the target's admin."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url + path, json=obj) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 201:
                raise RuntimeError(f"POST {path}: {response.status} {body.get('message')}")
            return body

    async def patch(self, path: str, patch: dict[str, Any]) -> None:
        data = json.dumps(patch)
        async with self.session.patch(self.url + path, data=data, headers=MERGE_PATCH) as response:
            if response.status != 200:
                raise RuntimeError(f"PATCH {path}: {response.status} {await response.text()}")

    async def delete(self, path: str, *, grace_seconds: int | None = None) -> None:
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        async with self.session.delete(self.url + path, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"DELETE {path}: {response.status} {await response.text()}")

    async def get(self, path: str, attempts: int = 50) -> dict[str, Any]:
        """The answer to a GET; retried while the API server asks to (429: a fresh CRD's storage
        is still initializing, or it sheds load)."""
        for _ in range(attempts - 1):
            async with self.session.get(self.url + path) as response:
                if response.status != 429:
                    body: dict[str, Any] = await response.json()
                    return body
                await asyncio.sleep(float(response.headers.get("Retry-After", "0.2")))
        async with self.session.get(self.url + path) as response:
            last: dict[str, Any] = await response.json()
            return last

    async def resource_version(self, path: str) -> str:
        listing = await self.get(path)
        if "resourceVersion" not in listing.get("metadata", {}):
            raise RuntimeError(f"GET {path}: {listing.get('message', listing)}")
        return str(listing["metadata"]["resourceVersion"])

    async def wait_default_service_accounts(self, count: int, polls: int = 600) -> None:
        """Until ``count`` namespaces have their ``default`` ServiceAccount (pods need it); the
        API is polled every 0.2 s, at most ``polls`` times."""
        path = "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault"
        for _ in range(polls):
            if len((await self.get(path)).get("items") or []) >= count:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"fewer than {count} default ServiceAccounts after {polls * 0.2:.0f} s")
