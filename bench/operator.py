"""Benchmark: herald-operator's cold start over 10,000 pods and its pod-event→entry latency.

Against a real control plane (etcd, kube-apiserver and kube-controller-manager from tests/k8s,
the operator as its own ServiceAccount under the chart's RBAC) and, in the same run, against the
Kubernetes API emulator (``bench/operator_emulator.py``, its own process): a real
``herald-operator run --standalone`` pointed at the API, and this driver. The driver seeds
namespaces (half labelled ``team: a``, half ``team: b``), nodes, pods (``tier: web`` or
``tier: worker``) and three ClusterSPIFFEIDs that together give every pod exactly one entry:

- ``web``: ``podSelector tier=web``, any namespace;
- ``workers-a`` / ``workers-b``: ``tier=worker`` pods in ``team=a`` / ``team=b`` namespaces.

Then it measures, watching WorkloadEntry objects on the API:

(a) cold start: from spawning the operator to the last of the pods' entries appearing;
(b) latency: once the operator is idle again, a steady stream of pod writes at ``--rate`` per
    second (create a ``tier=web`` pod, relabel an earlier one to ``tier=worker``, delete an
    earlier relabelled one), each timed from sending the write to the entry event it causes
    (created, re-sourced, gone) arriving.

The baseline is measured in the same run: seeding the pods is the API's raw create rate for the
same number of objects, written by this driver with ``--inflight`` requests in flight; it is the
floor any operator pays to write one entry per pod. CPU seconds and memory of the API's own
processes (etcd, kube-apiserver; or the emulator) and of the operator are read from /proc, to
show where the time goes and what the API server itself cost.

    PYTHONPATH=. .venv/bin/python bench/operator.py [--namespaces 500] [--pods 10000] [--rate 30]
                                       [--churn-seconds 20] [--rounds 1] [--api real,emulator]
    PYTHONPATH=. .venv/bin/python bench/operator.py --quick   # 50 namespaces, 1,000 pods, 3 s churn
    PYTHONPATH=. .venv/bin/python bench/operator.py --profile op.prof --profile-emulator emu.prof
    PYTHONPATH=. .venv/bin/python bench/operator.py --quick --operator-log op.log  # its output
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.api_targets import TARGETS, Api, Target, cpu_seconds, memory_mib

HERALD = "/apis/herald.dev/v1alpha1"
ENTRIES = f"{HERALD}/workloadentries"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)
NODES = 50


@dataclass
class Sizes:
    namespaces: int
    pods: int
    rate: float
    churn_seconds: float
    inflight: int
    profile: str | None = None
    profile_emulator: str | None = None


@dataclass
class Round:
    api: str = ""
    seed_seconds: float = 0.0
    ready_seconds: float = 0.0
    cold_seconds: float = 0.0
    api_cpu: dict[str, float] = field(default_factory=dict)
    api_rss: dict[str, float] = field(default_factory=dict)
    operator_cpu: float = 0.0
    operator_rss: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    pod_latencies: dict[str, list[float]] = field(default_factory=dict)
    quiet_seconds: float = 0.0
    prompt_seconds: float = 0.0
    churn_operator_cpu: float = 0.0
    churn_api_cpu: float = 0.0
    lost: int = 0
    operator_log: str = ""


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_operator(
    kubeconfig: Path,
    namespace: str,
    workdir: Path,
    port: int,
    profile: str | None,
    *,
    trust_domain: str = "bench.example",
    cluster_name: str = "bench",
) -> subprocess.Popen[bytes]:
    """`herald-operator run --standalone` as ``kubeconfig``'s identity, in ``namespace``."""
    command = [str(Path(sys.executable).parent / "herald-operator")]
    if profile:
        command = [sys.executable, "-m", "cProfile", "-o", profile, *command]
    return subprocess.Popen(
        [
            *command,
            "run",
            "--trust-domain",
            trust_domain,
            "--cluster-name",
            cluster_name,
            "--standalone",
            "--resync-seconds",
            "0",
            "--health-address",
            f"127.0.0.1:{port}",
        ],
        env={
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "POD_NAMESPACE": namespace,
        },
        stdout=(workdir / "operator.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop_operator(process: subprocess.Popen[bytes], workdir: Path) -> str:
    """Stop the operator; its output (at its default log level, info)."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return (workdir / "operator.log").read_text(errors="replace")


# --- the objects ---------------------------------------------------------------------------------


def namespace_name(i: int) -> str:
    return f"ns-{i:04d}"


def team_of(namespace_index: int) -> str:
    return "a" if namespace_index % 2 == 0 else "b"


def pod_object(name: str, namespace: str, tier: str, node: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"tier": tier}},
        "spec": {
            "nodeName": f"node-{node:03d}",
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "app:1"}],
        },
        "status": {"phase": "Running"},
    }


def identity(
    name: str, pod_labels: dict[str, str], namespace_labels: dict[str, str]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "spiffeIDTemplate": TEMPLATE,
        "podSelector": {"matchLabels": pod_labels},
    }
    if namespace_labels:
        spec["namespaceSelector"] = {"matchLabels": namespace_labels}
    return {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": name},
        "spec": spec,
    }


IDENTITIES = (
    identity("web", {"tier": "web"}, {}),
    identity("workers-a", {"tier": "worker"}, {"team": "a"}),
    identity("workers-b", {"tier": "worker"}, {"team": "b"}),
)


async def bounded(calls: list[Callable[[], Any]], inflight: int) -> None:
    """Run the calls with at most ``inflight`` at a time."""
    queue = iter(calls)

    async def worker() -> None:
        for call in queue:
            await call()

    await asyncio.gather(*(worker() for _ in range(inflight)))


async def seed(api: Api, sizes: Sizes, target: Target) -> float:
    """Namespaces, nodes, identities, then the pods; returns the seconds the pods took.

    A real API server admits a pod only once its namespace has a ``default`` ServiceAccount, so
    the pods wait for the controller-manager to have made them all (not timed)."""
    await bounded(
        [
            lambda i=i: api.create(
                "/api/v1/namespaces",
                {"metadata": {"name": namespace_name(i), "labels": {"team": team_of(i)}}},
            )
            for i in range(sizes.namespaces)
        ]
        + [
            lambda i=i: api.create("/api/v1/nodes", {"metadata": {"name": f"node-{i:03d}"}})
            for i in range(NODES)
        ],
        sizes.inflight,
    )
    for obj in IDENTITIES:
        await api.create(f"{HERALD}/clusterspiffeids", obj)
    if target.needs_service_accounts:
        await api.wait_default_service_accounts(sizes.namespaces)
    calls = []
    for i in range(sizes.pods):
        namespace = namespace_name(i % sizes.namespaces)
        pod = pod_object(f"pod-{i:05d}", namespace, "web" if i % 3 == 0 else "worker", i % NODES)
        calls.append(lambda ns=namespace, p=pod: api.create(f"/api/v1/namespaces/{ns}/pods", p))
    started = time.perf_counter()
    await bounded(calls, sizes.inflight)
    return time.perf_counter() - started


# --- watching entries ----------------------------------------------------------------------------

Expectation = Callable[[str, dict[str, Any]], bool]


class EntryWatch:
    """Streams WorkloadEntry events; counts the live entries, resolves what the churn awaits."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.live: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()
        self.waiters: list[tuple[Expectation, asyncio.Future[float]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        since = await self.api.resource_version(ENTRIES)
        self._task = asyncio.create_task(self._stream(since))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _stream(self, since: str) -> None:
        """Watch from ``since``, resuming where a watch ended: a real API server closes a watch
        whose reader falls behind (this driver, busy timing writes, sometimes does), and ends
        every watch after a while; a resourceVersion too old to resume from means a relist."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        while True:
            url = f"{self.api.url}{ENTRIES}?watch=true&resourceVersion={since}"
            async with self.api.session.get(url, timeout=timeout) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        since = await self._relist()
                        break
                    since = event["object"]["metadata"]["resourceVersion"]
                    self._event(event)

    async def _relist(self) -> str:
        listing = await self.api.get(ENTRIES)
        self.live = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listing["items"]}
        self._wake()
        return str(listing["metadata"]["resourceVersion"])

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _event(self, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        kind, obj = event["type"], event["object"]
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self.live.discard(key)
        else:
            self.live.add(key)
        self._wake()
        still = []
        for expected, future in self.waiters:
            if not future.done() and expected(kind, obj):
                future.set_result(now)
            elif not future.done():
                still.append((expected, future))
        self.waiters = still

    def expect(self, expected: Expectation) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((expected, future))
        return future

    async def wait_count(self, count: int) -> None:
        while len(self.live) < count:
            await self.changed.wait()


class PodEvents:
    """A plain watch of every pod: when the API server delivered each churn pod's events.

    The baseline for the churn: the same API's own delivery of the pod event that the operator
    reacts to, to a watcher that does nothing with it."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        since = await self.api.resource_version("/api/v1/pods")
        self._task = asyncio.create_task(self._stream(since))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _stream(self, since: str) -> None:
        url = f"{self.api.url}/api/v1/pods?watch=1&resourceVersion={since}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.api.session.get(url, timeout=timeout) as response:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    key = (event["type"], event["object"]["metadata"]["name"])
                    self.seen.setdefault(key, time.perf_counter())


_POD_EVENT = {"create": "ADDED", "relabel": "MODIFIED", "delete": "DELETED"}


def entry_for(pod: str, source: str | None) -> Callable[[str, dict[str, Any]], bool]:
    """An ADDED/MODIFIED entry of ``pod`` from identity ``source``, or (None) the entry gone."""

    def matches(kind: str, obj: dict[str, Any]) -> bool:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("herald.dev/pod") != pod:
            return False
        if source is None:
            return kind == "DELETED"
        return kind != "DELETED" and labels.get("herald.dev/source-name") == source

    return matches


# --- the phases ----------------------------------------------------------------------------------


async def wait_ready(session: aiohttp.ClientSession, port: int, started: float) -> float:
    while True:
        try:
            # No keep-alive: an idle connection to the health server delays its exit by ~5 s.
            ready = f"http://127.0.0.1:{port}/ready"
            async with session.get(ready, headers={"Connection": "close"}) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)


async def wait_quiet(pid: int, limit: float = 60.0) -> float:
    """Seconds until the process uses under a tenth of a core for two half-second windows."""
    started = time.perf_counter()
    quiet = 0
    while quiet < 2 and time.perf_counter() - started < limit:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.05 else 0
    return time.perf_counter() - started


async def wait_prompt(api: Api, limit: float = 120.0) -> float:
    """Seconds until the API server delivers a new pod's ADDED event within 10 ms.

    Right after 10,000 owned entries appear, a real API server delivers every pod event about
    50 ms late for a while to any watcher of all pods (the operator's and a plain one alike;
    one watching a single name is spared): its garbage collector, in the controller-manager, is
    taking them in, and pausing the controller-manager makes the delay vanish. The churn
    measures herald, so it waits until that has passed."""
    started = time.perf_counter()
    namespace = namespace_name(0)
    path = f"/api/v1/namespaces/{namespace}/pods"
    for n in itertools.count():
        name = f"probe-{n}"
        since = await api.resource_version("/api/v1/pods")
        url = f"{api.url}/api/v1/pods?watch=1&resourceVersion={since}"
        async with api.session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            sent = time.perf_counter()
            await api.create(path, pod_object(name, namespace, "probe", 0))
            async for line in response.content:
                if line.strip() and json.loads(line)["object"]["metadata"]["name"] == name:
                    break
            took = time.perf_counter() - sent
        await api.delete(f"{path}/{name}", grace_seconds=0)
        if took < 0.010 or time.perf_counter() - started > limit:
            return time.perf_counter() - started
        await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def churn(
    api: Api, watch: EntryWatch, sizes: Sizes
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Pod writes at ``sizes.rate``/s: seconds from each write to its entry event, and to the
    pod's own event at a plain watcher (the API's share), by write."""
    latencies: dict[str, list[float]] = {"create": [], "relabel": [], "delete": []}
    pod_latencies: dict[str, list[float]] = {"create": [], "relabel": [], "delete": []}
    sent_at: dict[tuple[str, str], tuple[str, float]] = {}
    pods = PodEvents(api)
    await pods.start()
    created: list[tuple[str, str, int]] = []  # name, namespace, namespace index
    relabelled: list[tuple[str, str]] = []
    pending: list[asyncio.Task[None]] = []
    numbers = itertools.count()

    async def timed(op: str, pod: str, write: Callable[[], Any], expected: Expectation) -> None:
        future = watch.expect(expected)
        sent = time.perf_counter()
        sent_at[(_POD_EVENT[op], pod)] = (op, sent)
        await write()
        try:
            seen = await asyncio.wait_for(future, 10.0)
        except TimeoutError:
            return
        latencies[op].append(seen - sent)

    def create() -> None:
        n = next(numbers)
        index = n % sizes.namespaces
        name, namespace = f"churn-{n:06d}", namespace_name(index)
        created.append((name, namespace, index))
        obj = pod_object(name, namespace, "web", n % NODES)
        path = f"/api/v1/namespaces/{namespace}/pods"
        pending.append(
            asyncio.create_task(
                timed("create", name, lambda: api.create(path, obj), entry_for(name, "web"))
            )
        )

    def relabel() -> None:
        name, namespace, index = created.pop(0)
        relabelled.append((name, namespace))
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        patch = {"metadata": {"labels": {"tier": "worker"}}}
        source = f"workers-{team_of(index)}"
        pending.append(
            asyncio.create_task(
                timed("relabel", name, lambda: api.patch(path, patch), entry_for(name, source))
            )
        )

    def delete() -> None:
        name, namespace = relabelled.pop(0)
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        pending.append(
            asyncio.create_task(
                # Grace 0: a real API server keeps a pod until its kubelet confirms the stop.
                timed(
                    "delete",
                    name,
                    lambda: api.delete(path, grace_seconds=0),
                    entry_for(name, None),
                )
            )
        )

    # A pod is relabelled about a second after its creation, deleted a second after that.
    lag = max(3, int(sizes.rate / 3))
    started = time.perf_counter()
    for tick in range(int(sizes.rate * sizes.churn_seconds)):
        await asyncio.sleep(max(0.0, started + tick / sizes.rate - time.perf_counter()))
        step = tick % 3
        if step == 1 and len(created) > lag:
            relabel()
        elif step == 2 and len(relabelled) > lag:
            delete()
        else:
            create()
    await asyncio.gather(*pending)
    await pods.stop()
    for key, (op, sent) in sent_at.items():
        if key in pods.seen:
            pod_latencies[op].append(pods.seen[key] - sent)
    done = sum(len(values) for values in latencies.values())
    return latencies, pod_latencies, len(pending) - done


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


async def run_round(sizes: Sizes, api_kind: str) -> Round:
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as name:
        workdir = Path(name)
        make = TARGETS[api_kind]
        profile = sizes.profile_emulator if api_kind == "emulator" else None
        with make(workdir, profile) if profile else make(workdir) as target:
            return await _measure(sizes, target, workdir)


async def _measure(sizes: Sizes, target: Target, workdir: Path) -> Round:
    operator: subprocess.Popen[bytes] | None = None
    try:
        async with target.session(sizes.inflight) as session:
            api = Api(session, target.url)
            result = Round(api=target.name, seed_seconds=await seed(api, sizes, target))
            watch = EntryWatch(api)
            await watch.start()
            port = free_port()
            api_cpu = target.cpu()
            started = time.perf_counter()
            operator = start_operator(
                target.kubeconfigs["operator"], target.namespace, workdir, port, sizes.profile
            )
            ready = asyncio.create_task(wait_ready(session, port, started))
            try:
                async with asyncio.timeout(900):
                    await watch.wait_count(sizes.pods)
            except TimeoutError:
                raise RuntimeError(f"{len(watch.live)} of {sizes.pods} entries") from None
            result.cold_seconds = time.perf_counter() - started
            result.ready_seconds = await ready
            result.operator_cpu = cpu_seconds(operator.pid)
            result.api_cpu = _spent(api_cpu, target.cpu())
            # The churn measures the steady state: after the start's status writes, Kopf's
            # backlog of entry events and the registrar's heap settling, and after the API's own
            # work on 10,000 new objects (a real controller-manager's garbage collector takes
            # some seconds to take in 10,000 owned entries; meanwhile the API server's events
            # reach every watcher about 50 ms late, operator or not).
            result.quiet_seconds = max(
                await asyncio.gather(
                    wait_quiet(operator.pid), *(wait_quiet(pid) for pid in target.pids.values())
                )
            )
            result.prompt_seconds = await wait_prompt(api)
            before = cpu_seconds(operator.pid), sum(target.cpu().values())
            result.latencies, result.pod_latencies, result.lost = await churn(api, watch, sizes)
            result.churn_operator_cpu = cpu_seconds(operator.pid) - before[0]
            result.churn_api_cpu = sum(target.cpu().values()) - before[1]
            result.api_rss = target.memory("VmHWM")
            result.operator_rss = memory_mib(operator.pid, "VmHWM")
            await watch.stop()
            result.operator_log = stop_operator(operator, workdir)
            operator = None
    finally:
        if operator is not None:
            sys.stderr.write(stop_operator(operator, workdir)[-5000:])
    return result


# --- reporting -----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(sizes: Sizes, rounds: list[Round]) -> None:
    print(
        f"\n{sizes.pods:,} pods in {sizes.namespaces} namespaces, {NODES} nodes, "
        f"3 ClusterSPIFFEIDs; churn {sizes.rate:g} writes/s for {sizes.churn_seconds:g} s"
    )
    print(
        "| API | round | baseline: pods created/s | cold start s | entries/s "
        "| entries/s ÷ baseline | /ready s | operator CPU s | API CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for api in dict.fromkeys(r.api for r in rounds):
        mine = [r for r in rounds if r.api == api]
        rows = []
        for number, r in enumerate(mine, 1):
            base = sizes.pods / r.seed_seconds
            rate = sizes.pods / r.cold_seconds
            api_cpu = sum(r.api_cpu.values())
            rows.append(
                (base, r.cold_seconds, rate, rate / base, r.ready_seconds, r.operator_cpu, api_cpu)
            )
            print(
                f"| {api} | {number} | {base:,.0f} | {r.cold_seconds:.1f} | {rate:,.0f} "
                f"| {rate / base:.1%} | {r.ready_seconds:.1f} | {r.operator_cpu:.1f} "
                f"| {api_cpu:.1f} |"
            )
        m = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(
            f"| **{api}** | **median** | **{m[0]:,.0f}** | **{m[1]:.1f}** | **{m[2]:,.0f}** "
            f"| **{m[3]:.1%}** | **{m[4]:.1f}** | **{m[5]:.1f}** | **{m[6]:.1f}** |"
        )
    print(
        "\n| API | write → entry event | count | p50 ms | p99 ms | max ms "
        "| baseline: write → the pod's own event, p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for api in dict.fromkeys(r.api for r in rounds):
        mine = [r for r in rounds if r.api == api]
        everything: list[float] = []
        baseline: list[float] = []
        for op in ("create", "relabel", "delete"):
            values = [v for r in mine for v in r.latencies.get(op, [])]
            own = [v for r in mine for v in r.pod_latencies.get(op, [])]
            everything += values
            baseline += own
            top = max(values, default=float("nan"))
            print(
                f"| {api} | {op} | {len(values)} | {percentile(values, 0.5) * 1e3:.1f} "
                f"| {percentile(values, 0.99) * 1e3:.1f} | {top * 1e3:.1f} "
                f"| {percentile(own, 0.5) * 1e3:.1f} / {percentile(own, 0.99) * 1e3:.1f} |"
            )
        print(
            f"| {api} | **all** | **{len(everything)}** "
            f"| **{percentile(everything, 0.5) * 1e3:.1f}** "
            f"| **{percentile(everything, 0.99) * 1e3:.1f}** "
            f"| **{max(everything, default=float('nan')) * 1e3:.1f}** "
            f"| **{percentile(baseline, 0.5) * 1e3:.1f} / "
            f"{percentile(baseline, 0.99) * 1e3:.1f}** |"
        )
    print("\n| API | process | CPU s, cold start | peak RSS MiB |")
    print("|---|---|---|---|")
    for r in rounds:
        for process, cpu in r.api_cpu.items():
            print(f"| {r.api} | {process} | {cpu:.1f} | {r.api_rss[process]:.0f} |")
        print(f"| {r.api} | herald-operator | {r.operator_cpu:.1f} | {r.operator_rss:.0f} |")
    for api in dict.fromkeys(r.api for r in rounds):
        mine = [r for r in rounds if r.api == api]
        quiet = statistics.median(r.quiet_seconds for r in mine)
        prompt = statistics.median(r.prompt_seconds for r in mine)
        operator_cpu = statistics.median(r.churn_operator_cpu for r in mine)
        api_cpu = statistics.median(r.churn_api_cpu for r in mine)
        print(
            f"\n{api}: the churn started once the operator and the API were idle, {quiet:.1f} s "
            f"after the cold start, and the API delivered a new pod's event within 10 ms, "
            f"{prompt:.1f} s after that; during it, operator CPU "
            f"{operator_cpu / sizes.churn_seconds:.0%} of a core, API CPU "
            f"{api_cpu / sizes.churn_seconds:.0%}"
        )
    lost = sum(r.lost for r in rounds)
    if lost:
        print(f"\n{lost} writes saw no entry event within 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=500)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=30.0, help="churn writes per second")
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--inflight", type=int, default=8, help="driver requests in flight")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="50 namespaces, 1,000 pods, 3 s")
    parser.add_argument("--profile", metavar="FILE", help="run the operator under cProfile")
    parser.add_argument("--profile-emulator", metavar="FILE", help="the emulator, likewise")
    parser.add_argument("--operator-log", metavar="FILE", help="write the operator's output here")
    parser.add_argument(
        "--api",
        default="real,emulator",
        help="comma-separated: real (tests/k8s control plane), emulator; each gets --rounds",
    )
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.api.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(TARGETS))
    if unknown or not kinds:
        parser.error(
            f"--api: unknown {', '.join(unknown) or '(none given)'}; choose from real, emulator"
        )
    if args.quick:
        args.namespaces, args.pods, args.churn_seconds = 50, 1_000, 3.0
    sizes = Sizes(
        args.namespaces,
        args.pods,
        args.rate,
        args.churn_seconds,
        args.inflight,
        args.profile,
        args.profile_emulator,
    )
    rounds = []
    for number in range(1, args.rounds + 1):
        for kind in kinds:
            print(f"round {number}/{args.rounds} on the {kind} API ...", flush=True)
            rounds.append(asyncio.run(run_round(sizes, kind)))
    report(sizes, rounds)
    if args.operator_log:
        Path(args.operator_log).write_text("".join(r.operator_log for r in rounds))


if __name__ == "__main__":
    main()
