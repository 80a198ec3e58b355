"""Time from creating a pod to its SVID in the node agent's cache: the whole Kubernetes path.

    PYTHONPATH=. .venv/bin/python bench/pod_identity.py [--pods 100] [--quick]

The API emulator (tests/kube_emulator.py, on its own thread), the real `herald-operator run` as
a subprocess, and herald-server in Kubernetes mode with a k8s_psat agent (`HeraldAgent`) on this
process's event loop. For each pod, one at a time: from sending the pod's create to the agent
holding an SVID for it (the operator writes the WorkloadEntry, the server's watch sees it and
streams it to the node's agent, the agent mints). Baselines in the same run: the emulator's own
create round trip, and the same wait for a WorkloadEntry created directly (the operator
skipped), so the operator's share shows. The emulator, server and agent share this process's
GIL, so the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.operator import free_port, percentile, start_operator, stop_operator
from herald_agent.agent import HeraldAgent
from herald_agent.config import config_from_mapping as agent_config
from herald_server.config import config_from_mapping as server_config
from herald_server.server import HeraldServer
from tests.kube_emulator import KubeCluster
from tests.server_harness import add_agent_pod, add_node, k8s_agent_doc, kube_config

NODE = "node-a"
NAMESPACE = "shop"
TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "yes"}},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": name,
            "containers": [{"name": "app", "image": "app:1"}],
        },
        "status": {"phase": "Running"},
    }


def direct_entry(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "spiffeID": f"spiffe://example.org/direct/{name}",
            "nodeName": NODE,
            "selectors": [f"k8s:pod-uid:{name}"],
        },
    }


def node_agent(tmp: Path, server: HeraldServer) -> HeraldAgent:
    token_file = tmp / "psat-token"
    token_file.write_text("agent-token\n")
    doc = k8s_agent_doc(tmp, server, token_file, tmp / "agent.sock")
    return HeraldAgent(agent_config(doc, base_dir=tmp))


async def svid_after(
    agent: HeraldAgent, create: Callable[[], Awaitable[object]]
) -> tuple[float, float]:
    """Seconds the create call took, and from sending it to one more SVID in the agent."""
    manager = agent.manager
    assert manager is not None
    target = manager.svid_count + 1
    with manager.subscribe() as changes:
        started = time.perf_counter()
        await create()
        created = time.perf_counter()
        while manager.svid_count < target:
            await asyncio.wait_for(changes.wait(), 30)
        return created - started, time.perf_counter() - started


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"http://127.0.0.1:{port}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("herald-operator did not become ready")


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"   {label:50} p50 {statistics.median(ms):7.1f} ms   p90 {percentile(ms, 0.9):7.1f} ms"
        f"   p99 {percentile(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms"
    )


async def run(pods: int) -> None:
    kube = KubeCluster().start()
    try:
        with tempfile.TemporaryDirectory(prefix="herald-bench-pod-") as name:
            chain, direct, creates = await measure(kube, Path(name), pods)
    finally:
        kube.stop()
    report(pods, chain, direct, creates)


async def measure(
    kube: KubeCluster, tmp: Path, pods: int
) -> tuple[list[float], list[float], list[float]]:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    server = HeraldServer(
        server_config(kube_config(tmp, "server"), base_dir=tmp),
        api_client_factory=kube.api_client,
    )
    await server.start()
    add_node(kube, NODE)
    add_agent_pod(kube, NODE, "agent-token")
    agent = node_agent(tmp, server)
    port = free_port()
    operator = start_operator(
        kube.url, tmp, port, None, trust_domain="example.org", cluster_name="test"
    )
    chain: list[float] = []
    direct: list[float] = []
    creates: list[float] = []
    try:
        await agent.start()
        await wait_ready(port)
        identity = {
            "apiVersion": "herald.dev/v1alpha1",
            "kind": "ClusterSPIFFEID",
            "metadata": {"name": "bench"},
            "spec": {
                "spiffeIDTemplate": TEMPLATE,
                "podSelector": {"matchLabels": {"bench": "yes"}},
            },
        }
        await asyncio.to_thread(kube.create, identity)
        for i in range(pods):
            took_create, took = await svid_after(
                agent, lambda i=i: asyncio.to_thread(kube.create, pod(f"p{i}"))
            )
            creates.append(took_create)
            chain.append(took)
            _, took = await svid_after(
                agent, lambda i=i: asyncio.to_thread(kube.create, direct_entry(f"d{i}"))
            )
            direct.append(took)
    finally:
        await agent.stop()
        stop_operator(operator, tmp)
        await server.stop()
    return chain, direct, creates


def report(pods: int, chain: list[float], direct: list[float], creates: list[float]) -> None:
    print(f"pod created → SVID in the node agent's cache, {pods} pods one at a time")
    print(line("pod → operator → server → agent → SVID", chain))
    print(line("baseline: WorkloadEntry → server → agent → SVID", direct))
    print(line("baseline: the emulator's create round trip", creates))
    share = statistics.median(chain) - statistics.median(direct)
    print(f"   operator's share of the median: {share * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100, help="pods to create, one at a time")
    parser.add_argument("--quick", action="store_true", help="10 pods: only shows it works")
    args = parser.parse_args()
    asyncio.run(run(10 if args.quick else args.pods))


if __name__ == "__main__":
    main()
