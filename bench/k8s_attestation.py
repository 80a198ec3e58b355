"""k8s workload attestations per second against a 110-pod kubelet list, for ``bench/agent.py``.

A local HTTPS kubelet stand-in (aiohttp, its own CA, a bearer token) serves a node's worth of
pods (`tests/kubelet_pods.py`, ~3 KB each). As root with a writable cgroup v2 hierarchy, five
``sleep`` processes run in kubelet-shaped cgroups of five listed pods (systemd driver,
containerd) and `K8sAttestor` attests them by pid: the real path, /proc included. Otherwise the
attestor reads a stand-in /proc (``proc_root``) whose cgroup files name those pods and whose stat
files are this process's: the cgroup parsing and pod lookup with fixed pod UIDs. The summary says
which one ran. The pod list is cached for the kubelet client's default ``max_age`` (1 s), so
every second of attestations includes one real fetch.

Baselines, measured in the same run: for a fetch, ``json.loads`` of the same body alone (what
any client must at least do with it); for attestations, reading the two /proc files the
attestor needs and finding the pod in a dict by UID, in a plain loop.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import random
import shutil
import ssl
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from herald_agent.attestors.k8s import K8sAttestor
from herald_agent.attestors.kubelet import KubeletClient, KubeletConfig
from herald_agent.attestors.proc import PROC_ROOT
from tests.kubelet_pods import NODE, Pod, pod_list, random_pod

TOKEN = "kubelet-bench-token"  # noqa: S105 - the stand-in kubelet's bearer token
PODS = 110
WORKLOADS = 5
CONCURRENCY = 50
FETCH_SAMPLES = 30
CGROUP_V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass
class K8sResult:
    """Medians over rounds, with the baselines measured next to them."""

    mode: str
    body_bytes: int
    fetch_open: float
    fetch_handshake: float
    json_loads: float
    sequential: list[float]
    concurrent: list[float]
    floor: list[float]

    def summary(self) -> str:
        sequential, concurrent, floor = (
            statistics.median(v) for v in (self.sequential, self.concurrent, self.floor)
        )
        return "\n".join(
            [
                f"\n5. k8s attestation, {PODS}-pod list ({self.body_bytes:,} bytes), {self.mode}",
                f"   /pods fetch, open connection:      {self.fetch_open * 1000:6.2f} ms  "
                f"(json.loads alone {self.json_loads * 1000:.2f} ms)",
                f"   /pods fetch with a TLS handshake:  {self.fetch_handshake * 1000:6.2f} ms",
                f"   attestations/s, one at a time:     {sequential:8.0f}   "
                f"floor (/proc reads + dict lookup) {floor:8.0f}   ratio {sequential / floor:5.1%}",
                f"   attestations/s, {CONCURRENCY} concurrent:     {concurrent:8.0f}   "
                f"ratio {concurrent / floor:5.1%}",
            ]
        )


# The kubelet stand-in


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


def kubelet_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA file for the client and the server's TLS context (a leaf for the node and 127.0.0.1)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubelet-ca")])
    ca = (
        _certificate("kubelet-ca", ca_key, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName(NODE), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        _certificate(NODE, key, ca_name, ca_key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (directory / n for n in ("ca.crt", "kubelet.crt", "kubelet.key"))
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


@asynccontextmanager
async def kubelet(body: bytes, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Serve ``body`` on https://127.0.0.1:<port>/pods to ``Bearer TOKEN``; yields the port."""

    async def pods(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return aiohttp.web.Response(status=401)
        return aiohttp.web.Response(body=body, content_type="application/json")

    app = aiohttp.web.Application()
    app.router.add_get("/pods", pods)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only through the asyncio server
    assert isinstance(server, asyncio.Server)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


# Where the workloads run


def _v2_root() -> Path | None:
    if os.geteuid() != 0:
        return None
    for root in CGROUP_V2_ROOTS:
        if (root / "cgroup.subtree_control").exists() and os.access(root, os.W_OK):
            return root
    return None


def _pod_cgroup(root: Path, pod: Pod) -> Path:
    uid = pod.uid.replace("-", "_")
    return (
        root
        / "kubepods.slice"
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{uid}.slice"
        / f"cri-containerd-{pod.containers[0].container_id}.scope"
    )


@contextmanager
def workloads(pods: list[Pod], tmp: Path) -> Iterator[tuple[list[int], str, str]]:
    """(pids, proc_root, what they are): processes in the pods' cgroups, or a stand-in /proc."""
    root = _v2_root()
    if root is None:
        yield _standin_proc(pods, tmp), str(tmp / "proc"), "stand-in /proc, fixed pod UIDs"
        return
    made: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for pod in pods:
            cgroup = _pod_cgroup(root, pod)
            for directory in reversed([cgroup, *cgroup.parents]):
                if not directory.exists():
                    directory.mkdir()
                    made.append(directory)
            proc = subprocess.Popen(["sleep", "600"])
            procs.append(proc)
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        yield [p.pid for p in procs], PROC_ROOT, f"real processes in cgroup v2 pod cgroups ({root})"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for directory in reversed(made):
            directory.rmdir()


def _standin_proc(pods: list[Pod], tmp: Path) -> list[int]:
    stat = Path(f"{PROC_ROOT}/{os.getpid()}/stat").read_bytes()
    pids = []
    for n, pod in enumerate(pods, start=1):
        directory = tmp / "proc" / str(n)
        directory.mkdir(parents=True)
        (directory / "stat").write_bytes(stat)
        (directory / "cgroup").write_text(f"0::/{_pod_cgroup(Path('/'), pod).relative_to('/')}\n")
        pids.append(n)
    return pids


# Measurements


async def rate(work: Callable[[int], Awaitable[object]], seconds: float, batch: int = 1) -> float:
    """Completed ``work(i)`` per second, ``batch`` at a time, over about ``seconds``."""
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        await asyncio.gather(*(work(done + k) for k in range(batch)))
        done += batch
    return done / elapsed


def floor_rate(pids: list[int], proc_root: str, by_uid: dict[str, object], seconds: float) -> float:
    """The two /proc reads an attestation needs and a dict lookup, per second."""
    uids = list(by_uid)
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        pid = pids[done % len(pids)]
        with open(f"{proc_root}/{pid}/stat", "rb") as stat:
            stat.read()
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8") as cgroup:
            cgroup.read()
        by_uid.get(uids[done % len(uids)])
        done += 1
    return done / elapsed


async def fetch_times(config: KubeletConfig, fresh: bool) -> float:
    """Median /pods fetch: on one open connection, or a new client (TLS handshake) each time."""
    samples = []
    client = KubeletClient(config)
    for _ in range(FETCH_SAMPLES):
        if fresh:
            await client.close()
            client = KubeletClient(config)
        started = time.perf_counter()
        await client.pods(newer_than=time.monotonic())
        samples.append(time.perf_counter() - started)
    await client.close()
    return statistics.median(samples)


def prepare(directory: Path) -> tuple[list[Pod], bytes, Path, ssl.SSLContext, float]:
    """The workloads' pods, the list body, the kubelet's CA file and TLS context, and how long
    ``json.loads`` of the body takes alone."""
    rng = random.Random(11)
    pods = [random_pod(i, rng) for i in range(WORKLOADS)]
    body = pod_list(pods, filler=PODS)
    directory.mkdir()
    (directory / "token").write_text(TOKEN)
    ca_file, context = kubelet_tls(directory)
    started = time.perf_counter()
    for _ in range(FETCH_SAMPLES):
        json.loads(body)
    return pods, body, ca_file, context, (time.perf_counter() - started) / FETCH_SAMPLES


async def measure_k8s(tmp: Path, seconds: float, rounds: int) -> K8sResult:
    directory = tmp / "kubelet"
    pods, body, ca_file, context, loads = prepare(directory)
    by_uid: dict[str, object] = {p.uid: p for p in pods}
    async with kubelet(body, context) as port:
        config = KubeletConfig(port=port, token_path=str(directory / "token"), ca_path=str(ca_file))
        fetch_open = await fetch_times(config, fresh=False)
        fetch_handshake = await fetch_times(config, fresh=True)
        with workloads(pods, tmp) as (pids, proc_root, mode):
            client = KubeletClient(config)
            attestor = K8sAttestor(client, proc_root=proc_root)
            if not await attestor.attest(pids[0]):
                raise RuntimeError("the k8s attestor found no pod for the first workload")

            def attest(i: int) -> Awaitable[object]:
                return attestor.attest(pids[i % WORKLOADS])

            sequential, concurrent, floor = [], [], []
            for _ in range(rounds):
                sequential.append(await rate(attest, seconds))
                concurrent.append(await rate(attest, seconds, CONCURRENCY))
                floor.append(floor_rate(pids, proc_root, by_uid, seconds))
            await client.close()
    shutil.rmtree(directory)
    return K8sResult(
        mode, len(body), fetch_open, fetch_handshake, loads, sequential, concurrent, floor
    )
