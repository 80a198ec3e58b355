"""The Kubernetes path end to end on the real API, every component as its own ServiceAccount.

A ClusterSPIFFEID and a pod live in the real API server; the registrar (Kopf) turns the pod into
a WorkloadEntry; herald-server in Kubernetes mode streams it to the k8s_psat agent of the pod's
node (attested with a pod-bound TokenRequest token and a real TokenReview); a process placed in
the pod's cgroup runs `herald-agent api fetch x509` and the agent's k8s attestor identifies it
through /proc/<pid>/cgroup and a local HTTPS kubelet stand-in, which admits the agent's token by
TokenReview and SubjectAccessReview as a kubelet does. When the pod is deleted, its entry and
SVID go too. (A real kubelet and its containers come with the cluster tests.)
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from herald_agent.agent import HeraldAgent
from herald_agent.config import config_from_mapping as agent_config
from herald_operator.registrar import RegistrarConfig
from herald_server.config import config_from_mapping as server_config
from herald_server.server import HeraldServer
from tests.fake_kubelet import FakeKubelet, KubeletWebhook, Tls, make_tls, site_port
from tests.integration.test_registrar import Operator, cluster_identity
from tests.k8s.api import Kube
from tests.k8s.install import HeraldRelease
from tests.kubelet_pods import NODE, Container, Pod, hex64, pod_list
from tests.pod_cgroups import CgroupMaker, v2_pod_cgroup
from tests.server_harness import (
    add_agent_pod,
    add_node,
    agent_token,
    k8s_agent_doc,
    kube_config,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HERALD_AGENT = Path(sys.executable).parent / "herald-agent"
SERVICE_ACCOUNT = "checkout"
IMAGE = "registry.example.com/shop/checkout:1.0"


@dataclass
class Kubelet:
    body: FakeKubelet
    tls: Tls
    port: int
    token_file: Path


@pytest.fixture
async def kubelet(kube: Kube, tmp_path: Path) -> AsyncIterator[Kubelet]:
    tls = make_tls(tmp_path)
    token_file = tmp_path / "kubelet-token"
    fake = FakeKubelet(pod_list([]), webhook=KubeletWebhook(kube, NODE))
    app = aiohttp.web.Application()
    app.router.add_get("/pods", fake.pods)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    await site.start()
    try:
        yield Kubelet(fake, tls, site_port(site), token_file)
    finally:
        await runner.cleanup()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="herald-k8s-path-") as name:
        yield Path(name)


def workload_pod(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "checkout-1", "namespace": namespace, "labels": {"app": "checkout"}},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": SERVICE_ACCOUNT,
            "containers": [{"name": "app", "image": IMAGE}],
        },
    }


def node_agent(
    tmp_path: Path, server: HeraldServer, kubelet: Kubelet, sock: Path, token: str
) -> HeraldAgent:
    token_file = tmp_path / "psat-token"
    token_file.write_text(token + "\n")
    doc = k8s_agent_doc(tmp_path, server, token_file, sock)
    doc["workload_attestors"] = {
        "k8s": {
            "kubelet_secure_port": kubelet.port,
            "kubelet_ca_path": str(kubelet.tls.ca_file),
            "token_path": str(kubelet.token_file),
            "node_name": NODE,
        }
    }
    config = agent_config(doc, base_dir=tmp_path)
    return HeraldAgent(config, backoff_base=0.05)


async def fetch_in(cgroup: Path | None, sock: Path) -> tuple[int, str, str]:
    """`herald-agent api fetch x509` run by a process that first moves itself into ``cgroup``."""
    fetch = f"exec {HERALD_AGENT} api fetch x509 -output json -socketPath {sock}"
    script = fetch if cgroup is None else f"echo $$ > {cgroup}/cgroup.procs && {fetch}"
    process = await asyncio.create_subprocess_exec(
        "sh", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def wait_until(predicate: Any, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def test_a_pod_gets_its_identity_through_the_whole_chain(
    kube: Kube,
    release: HeraldRelease,
    tmp_path: Path,
    kubelet: Kubelet,
    socket_dir: Path,
    cgroups: CgroupMaker,
) -> None:
    shop = kube.create_namespace(f"{release.namespace}-shop")
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": shop},
        }
    )
    server = HeraldServer(
        server_config(kube_config(tmp_path, "server", release), base_dir=tmp_path)
    )
    await server.start()
    add_node(kube, NODE)
    psat = agent_token(kube, add_agent_pod(kube, release, NODE))
    # The agent calls its kubelet with its ServiceAccount's token; the kubelet asks the API.
    kubelet.token_file.write_text(kube.token(release.namespace, release.service_account("agent")))
    created = kube.create(workload_pod(shop))
    container_id = hex64(random.Random())
    listed = Pod(
        name="checkout-1",
        namespace=shop,
        uid=created["metadata"]["uid"],
        service_account=SERVICE_ACCOUNT,
        containers=[Container("app", IMAGE, container_id)],
    )
    kubelet.body.body = pod_list([listed], filler=20)
    sock = socket_dir / "agent.sock"
    agent = node_agent(tmp_path, server, kubelet, sock, psat)
    operator = Operator(
        release.kubeconfigs["operator"],
        RegistrarConfig(trust_domain="example.org", cluster_name="test"),
    )
    try:
        await agent.start()
        await asyncio.to_thread(operator.start)
        kube.create(cluster_identity("checkout", podSelector={"matchLabels": {"app": "checkout"}}))
        manager = agent.manager
        assert manager is not None
        await wait_until(lambda: manager.svid_count == 1)

        cgroup = v2_pod_cgroup(cgroups, listed.uid, container_id)
        code, out, err = await fetch_in(cgroup, sock)
        assert code == 0, err
        svids = json.loads(out)["svids"]
        assert [s["spiffe_id"] for s in svids] == [
            f"spiffe://example.org/ns/{shop}/sa/{SERVICE_ACCOUNT}"
        ]

        # A process outside the pod has no identity here.
        code, out, err = await fetch_in(None, sock)
        assert code == 1
        assert "no identity issued" in err

        # The pod goes: its entry goes with it (ownerReference), and so does the SVID.
        kube.delete("v1", "Pod", "checkout-1", shop)
        await wait_until(lambda: manager.svid_count == 0)
        code, out, err = await fetch_in(cgroup, sock)
        assert code == 1
        assert "no identity issued" in err
    finally:
        await asyncio.to_thread(operator.stop)
        await agent.stop()
        await server.stop()
