"""herald-server in Kubernetes mode against the API emulator: k8s_psat attestation, entries from
WorkloadEntry objects, the CA Secret, the bundle ConfigMap, and leader election across replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from herald_core.bundle import Bundle
from herald_core.csr import make_csr
from herald_core.keys import generate_key
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import bundle_from_proto
from herald_core.x509svid import load_pem_certs, parse_der_chain, verify_chain
from herald_server.server import HeraldServer
from tests.kube_emulator import KubeCluster
from tests.server_harness import (
    NS,
    AgentCredentials,
    add_agent_pod,
    add_node,
    admin_stub,
    leaf_of,
    start_kubernetes_server,
    tls_channel,
    utcnow,
    workload_entry,
)


@pytest.fixture
def kube(kube_emulator: KubeCluster) -> KubeCluster:
    return kube_emulator


pytestmark = pytest.mark.timeout(90)
TD = TrustDomain("example.org")


async def psat_attest(server: HeraldServer, token: str, cluster: str = "test") -> AgentCredentials:
    key = generate_key()
    async with tls_channel(server) as channel:
        stub: Any = agent_pb2_grpc.NodeAttestationStub(channel)
        response = await stub.AttestAgent(
            agent_pb2.AttestAgentRequest(
                k8s_psat=agent_pb2.K8sPsatParams(cluster=cluster, token=token),
                csr=make_csr(key, SpiffeId.parse("spiffe://example.org/x")),
            )
        )
    chain = [c for der in response.svid.cert_chain for c in parse_der_chain(der)]
    return AgentCredentials(
        SpiffeId.parse(response.svid.spiffe_id), key, chain, bundle_from_proto(response.bundle)
    )


async def eventually(check: Any, within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(
    kube: KubeCluster, tmp_path: Path
) -> AsyncIterator[tuple[KubeCluster, HeraldServer]]:
    server = await start_kubernetes_server(kube, tmp_path)
    yield kube, server
    await server.stop()


async def test_psat_attestation_and_node_scoped_entries(
    cluster: tuple[KubeCluster, HeraldServer],
) -> None:
    kube, server = cluster
    uid_a = add_node(kube, "node-a")
    add_node(kube, "node-b")
    add_agent_pod(kube, "node-a", "token-a")
    agent = await psat_attest(server, "token-a")
    assert agent.spiffe_id == SpiffeId.parse(
        f"spiffe://example.org/herald/agent/k8s_psat/test/{uid_a}"
    )
    kube.create(workload_entry("web", "node-a", "/ns/shop/sa/web"))
    kube.create(workload_entry("db", "node-b", "/ns/shop/sa/db"))
    await eventually(lambda: server.store.cache.get("shop.db") is not None)
    stream = agent.stub(server).SyncEntries(agent_pb2.SyncEntriesRequest())
    first = await asyncio.wait_for(stream.read(), 5)
    assert [e.id for e in first.entries] == ["shop.web"]
    stream.cancel()

    stub = agent.stub(server)
    results = await stub.BatchSignX509SVID(
        agent_pb2.BatchSignX509SVIDRequest(
            params=[
                agent_pb2.X509SVIDParams(
                    entry_id=entry_id,
                    csr=make_csr(generate_key(), SpiffeId.parse(f"spiffe://example.org{path}")),
                )
                for entry_id, path in [
                    ("shop.web", "/ns/shop/sa/web"),
                    ("shop.db", "/ns/shop/sa/db"),
                ]
            ]
        )
    )
    web, db = results.results
    assert web.status.code == 0
    assert str(verify_chain([leaf_of(web)], agent.bundle.x509_authorities, now=utcnow())) == (
        "spiffe://example.org/ns/shop/sa/web"
    )
    assert db.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], "node-b's entry"

    kube.delete("v1", "Node", "node-a")
    await eventually(lambda: not server.store.nodes.has_uid(uid_a))  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetBundle(agent_pb2.GetBundleRequest())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no longer exists" in (info.value.details() or "")
    await agent.close()


@pytest.mark.parametrize(
    ("setup", "cluster_name", "message"),
    [
        ({"audiences": ["kubernetes"]}, "test", "service account token is not valid"),
        ({"service_account": "default"}, "test", "may not attest as a herald agent"),
        ({"namespace": "other"}, "test", "may not attest as a herald agent"),
        ({"pod_name": None, "pod_uid": None}, "test", "not bound to a pod"),
        ({"pod_uid": "not-the-pods-uid"}, "test", "no longer exists"),
        ({}, "prod", "does not attest nodes of cluster 'prod'"),
    ],
)
async def test_psat_refusals(
    cluster: tuple[KubeCluster, HeraldServer],
    setup: dict[str, Any],
    cluster_name: str,
    message: str,
) -> None:
    kube, server = cluster
    add_node(kube, "node-a")
    add_agent_pod(kube, "node-a", "token", **setup)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await psat_attest(server, "token", cluster=cluster_name)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert message in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await psat_attest(server, "never-issued")
    assert info.value.details() == "service account token is not valid"


async def test_ca_secret_bundle_configmap_lease_and_read_only_entries(
    cluster: tuple[KubeCluster, HeraldServer],
) -> None:
    kube, server = cluster
    secret = kube.get("v1", "Secret", "herald-ca", NS)
    assert secret is not None
    assert "ca-state.json" in secret["data"]
    configmap = await eventually(lambda: kube.get("v1", "ConfigMap", "herald-bundle", NS))
    roots = load_pem_certs(configmap["data"]["bundle.pem"].encode())
    assert tuple(roots) == server.ca.bundle().x509_authorities
    spiffe = Bundle.from_spiffe_jwks(TD, configmap["data"]["bundle.spiffe"])
    assert spiffe.sequence_number == server.ca.bundle().sequence_number
    assert json.loads(configmap["data"]["bundle.spiffe"])["spiffe_refresh_hint"] == 300
    lease = kube.get("coordination.k8s.io/v1", "Lease", "herald-server-leader", NS)
    assert lease is not None
    assert lease["spec"]["holderIdentity"]
    channel, admin = admin_stub(server)
    async with channel:
        request = admin_pb2.CreateEntryRequest()
        request.entry.spiffe_id = "spiffe://example.org/x"
        request.entry.parent_id = "spiffe://example.org/y"
        request.entry.selectors.add(type="unix", value="uid:1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CreateEntry(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "custom resources" in (info.value.details() or "")


async def test_replicas_share_the_ca_and_one_leads(kube: KubeCluster, tmp_path: Path) -> None:
    first = await start_kubernetes_server(kube, tmp_path, "a")
    second = await start_kubernetes_server(kube, tmp_path, "b")
    try:
        assert first.ca.bundle() == second.ca.bundle(), "one trust domain, one CA"
        leaders = [s for s in (first, second) if s._is_leader()]
        assert len(leaders) == 1
        add_node(kube, "node-a")
        add_agent_pod(kube, "node-a", "token-a")
        agent = await psat_attest(second, "token-a")
        assert verify_chain(agent.chain, first.ca.bundle().x509_authorities, now=utcnow()) == (
            agent.spiffe_id
        )
        await agent.close()
        follower = second if leaders[0] is first else first
        await leaders[0].stop()
        await eventually(follower._is_leader, within=15)
    finally:
        for server in (first, second):
            if server._grpc_servers:
                await server.stop()
