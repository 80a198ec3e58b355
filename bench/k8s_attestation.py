"""k8s workload attestations per second against a 110-pod kubelet list, for ``bench/agent.py``.

A local HTTPS kubelet stand-in (the k8s attestor tests' aiohttp ``FakeKubelet``, its own CA, a
bearer token) serves a node's worth of pods (`tests/kubelet_pods.py`, ~3 KB each). As root with
a writable cgroup v2 hierarchy, five ``sleep`` processes run in kubelet-shaped cgroups of five
listed pods (systemd driver, containerd) and `K8sAttestor` attests them by pid: the real path,
/proc included. Otherwise the attestor reads a stand-in /proc (``proc_root``) whose cgroup files
name those pods and whose stat files are this process's: the cgroup parsing and pod lookup with
fixed pod UIDs. The summary says which one ran. The pod list is cached for the kubelet client's
default ``max_age`` (1 s), so every second of attestations includes one real fetch.

Baselines, measured in the same run: for a fetch, ``json.loads`` of the same body alone (what
any client must at least do with it); for attestations, reading the two /proc files the
attestor needs and finding the pod in a dict by UID, in a plain loop.
"""

from __future__ import annotations

import asyncio
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

from herald_agent.attestors.k8s import K8sAttestor
from herald_agent.attestors.kubelet import KubeletClient, KubeletConfig
from herald_agent.attestors.proc import PROC_ROOT
from tests.fake_kubelet import TOKEN, FakeKubelet, Tls, make_tls, site_port
from tests.kubelet_pods import Pod, pod_list, random_pod

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


# The kubelet stand-in: the one the k8s attestor's tests use


@asynccontextmanager
async def kubelet(body: bytes, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Serve ``body`` on https://127.0.0.1:<port>/pods to ``Bearer TOKEN``; yields the port."""
    app = aiohttp.web.Application()
    app.router.add_get("/pods", FakeKubelet(body).pods)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield site_port(site)
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


def prepare(directory: Path) -> tuple[list[Pod], bytes, Tls, float]:
    """The workloads' pods, the list body, the kubelet's TLS files and context, and how long
    ``json.loads`` of the body takes alone."""
    rng = random.Random(11)
    pods = [random_pod(i, rng) for i in range(WORKLOADS)]
    body = pod_list(pods, filler=PODS)
    directory.mkdir()
    (directory / "token").write_text(TOKEN)
    tls = make_tls(directory)
    started = time.perf_counter()
    for _ in range(FETCH_SAMPLES):
        json.loads(body)
    return pods, body, tls, (time.perf_counter() - started) / FETCH_SAMPLES


async def measure_k8s(tmp: Path, seconds: float, rounds: int) -> K8sResult:
    directory = tmp / "kubelet"
    pods, body, tls, loads = prepare(directory)
    by_uid: dict[str, object] = {p.uid: p for p in pods}
    async with kubelet(body, tls.server) as port:
        config = KubeletConfig(
            port=port, token_path=str(directory / "token"), ca_path=str(tls.ca_file)
        )
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
