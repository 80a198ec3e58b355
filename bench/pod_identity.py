"""Time from creating a pod to its SVID in the node agent's cache: the whole Kubernetes path.

    PYTHONPATH=. .venv/bin/python bench/pod_identity.py [--pods 100] [--quick] [--api real,emulator]

On a real control plane (tests/k8s: etcd, kube-apiserver, kube-controller-manager; every herald
component as its own ServiceAccount, the agent attested with a pod-bound TokenRequest token) and,
in the same run, on the API emulator (tests/kube_emulator.py, on its own thread): the real
`herald-operator run` as a subprocess, and herald-server in Kubernetes mode with a k8s_psat agent
(`HeraldAgent`) on this process's event loop. For each pod, one at a time: from sending the pod's
create to the agent holding an SVID for it (the operator writes the WorkloadEntry, the server's
watch sees it and streams it to the node's agent, the agent mints). Baselines in the same run:
the API's own create round trip, and the same wait for a WorkloadEntry created directly (the
operator skipped), so the operator's share shows. Server and agent share this process's GIL (the
emulator too), so the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.api_targets import HERALD_NAMESPACE, insecure_kubeconfig, real_api
from bench.operator import free_port, percentile, start_operator, stop_operator
from herald_agent.agent import HeraldAgent
from herald_agent.config import config_from_mapping as agent_config
from herald_server.config import config_from_mapping as server_config
from herald_server.server import HeraldServer
from tests.k8s.api import Kube
from tests.kube_emulator import KubeCluster
from tests.server_harness import (
    add_agent_pod,
    add_node,
    agent_token,
    k8s_agent_doc,
    kube_config,
    standalone_config,
)

NODE = "node-a"
NAMESPACE = "shop"
TEMPLATE = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}"


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "yes"}},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "app:1"}],
        },
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


def node_agent(tmp: Path, server: HeraldServer, token: str) -> HeraldAgent:
    token_file = tmp / "psat-token"
    token_file.write_text(token + "\n")
    doc = k8s_agent_doc(tmp, server, token_file, tmp / "agent.sock")
    return HeraldAgent(agent_config(doc, base_dir=tmp))


@dataclass
class Setup:
    """One API, ready for the run: how to create objects, the server, the agent's token."""

    name: str
    create: Callable[[dict[str, Any]], Any]
    server: HeraldServer
    agent_token: str
    operator_kubeconfig: Path
    operator_namespace: str


@contextlib.asynccontextmanager
async def emulated(tmp: Path) -> AsyncIterator[Setup]:
    """The emulator on a thread; its TokenReview answers from a token the bench registers."""
    kube = KubeCluster().start()
    try:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        doc = standalone_config(tmp / "server")
        doc.update(
            mode="kubernetes",
            kubernetes={"namespace": HERALD_NAMESPACE, "cluster_name": "test"},
        )
        server = HeraldServer(server_config(doc, base_dir=tmp), api_client_factory=kube.api_client)
        await server.start()
        try:
            kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            agent_pod = kube.create(_emulated_agent_pod())
            kube.add_service_account_token(
                "agent-token",
                namespace=HERALD_NAMESPACE,
                service_account="herald-agent",
                pod_name=agent_pod["metadata"]["name"],
                pod_uid=agent_pod["metadata"]["uid"],
                audiences=["herald-server"],
            )
            kubeconfig = insecure_kubeconfig(kube.url, tmp / "emulator.kubeconfig")
            yield Setup(
                "emulator", kube.create, server, "agent-token", kubeconfig, HERALD_NAMESPACE
            )
        finally:
            await server.stop()
    finally:
        kube.stop()


def _emulated_agent_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"herald-agent-{NODE}", "namespace": HERALD_NAMESPACE},
        "spec": {"nodeName": NODE, "serviceAccountName": "herald-agent", "containers": []},
    }


@contextlib.asynccontextmanager
async def real(tmp: Path) -> AsyncIterator[Setup]:
    """The tests/k8s control plane; the agent's token is a pod-bound TokenRequest token."""
    with real_api(tmp) as target:
        assert target.release is not None
        kube = Kube(target.extra["plane"].admin_kubeconfig)
        try:
            kube.create_namespace(NAMESPACE)
            server = HeraldServer(
                server_config(kube_config(tmp, "server", target.release), base_dir=tmp)
            )
            await server.start()
            try:
                add_node(kube, NODE)
                token = agent_token(kube, add_agent_pod(kube, target.release, NODE))
                yield Setup(
                    "real API",
                    kube.create,
                    server,
                    token,
                    target.kubeconfigs["operator"],
                    target.namespace,
                )
            finally:
                await server.stop()
        finally:
            kube.close()


SETUPS = {"real": real, "emulator": emulated}


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


async def run(pods: int, kinds: list[str]) -> None:
    results = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="herald-bench-pod-") as name:
            async with SETUPS[kind](Path(name)) as setup:
                results.append((setup.name, *await measure(setup, Path(name), pods)))
    for name, chain, direct, creates in results:
        report(name, pods, chain, direct, creates)


async def measure(
    setup: Setup, tmp: Path, pods: int
) -> tuple[list[float], list[float], list[float]]:
    agent = node_agent(tmp, setup.server, setup.agent_token)
    port = free_port()
    operator = start_operator(
        setup.operator_kubeconfig,
        setup.operator_namespace,
        tmp,
        port,
        None,
        trust_domain="example.org",
        cluster_name="test",
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
        await asyncio.to_thread(setup.create, identity)
        for i in range(pods):
            took_create, took = await svid_after(
                agent, lambda i=i: asyncio.to_thread(setup.create, pod(f"p{i}"))
            )
            creates.append(took_create)
            chain.append(took)
            _, took = await svid_after(
                agent, lambda i=i: asyncio.to_thread(setup.create, direct_entry(f"d{i}"))
            )
            direct.append(took)
    finally:
        await agent.stop()
        stop_operator(operator, tmp)
    return chain, direct, creates


def report(
    api: str, pods: int, chain: list[float], direct: list[float], creates: list[float]
) -> None:
    print(f"{api}: pod created → SVID in the node agent's cache, {pods} pods one at a time")
    print(line("pod → operator → server → agent → SVID", chain))
    print(line("baseline: WorkloadEntry → server → agent → SVID", direct))
    print(line(f"baseline: the {api}'s create round trip", creates))
    share = statistics.median(chain) - statistics.median(direct)
    print(f"   operator's share of the median: {share * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100, help="pods to create, one at a time")
    parser.add_argument("--quick", action="store_true", help="10 pods: only shows it works")
    parser.add_argument("--api", default="real,emulator", help="comma-separated: real, emulator")
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.api.split(",") if kind.strip()]
    if not kinds or set(kinds) - set(SETUPS):
        parser.error("--api: choose from real, emulator")
    asyncio.run(run(10 if args.quick else args.pods, kinds))


if __name__ == "__main__":
    main()
