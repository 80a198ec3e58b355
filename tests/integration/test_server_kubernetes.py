"""herald-server in Kubernetes mode against the real API, as its release's ServiceAccount:
k8s_psat attestation with pod-bound TokenRequest tokens and a real TokenReview, entries from
WorkloadEntry objects, the CA Secret, the bundle ConfigMap, and Lease leadership across replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
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
from tests.k8s.api import Kube, wait_for
from tests.k8s.install import HeraldRelease
from tests.server_harness import (
    AgentCredentials,
    add_agent_pod,
    add_node,
    admin_stub,
    agent_token,
    leaf_of,
    start_kubernetes_server,
    tls_channel,
    utcnow,
    workload_entry,
)

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
async def server(release: HeraldRelease, tmp_path: Path) -> AsyncIterator[HeraldServer]:
    started = await start_kubernetes_server(release, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
def shop(kube: Kube, release: HeraldRelease) -> str:
    """A workload namespace of the test's own (a deleted namespace lingers while it empties)."""
    name = f"{release.namespace}-shop"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


async def test_psat_attestation_and_node_scoped_entries(
    kube: Kube, release: HeraldRelease, server: HeraldServer, shop: str
) -> None:
    uid_a = add_node(kube, "node-a")
    add_node(kube, "node-b")
    agent = await psat_attest(server, agent_token(kube, add_agent_pod(kube, release, "node-a")))
    assert agent.spiffe_id == SpiffeId.parse(
        f"spiffe://example.org/herald/agent/k8s_psat/test/{uid_a}"
    )
    kube.create(workload_entry("web", "node-a", "/ns/shop/sa/web", shop))
    kube.create(workload_entry("db", "node-b", "/ns/shop/sa/db", shop))
    await eventually(lambda: server.store.cache.get(f"{shop}.db") is not None)
    stream = agent.stub(server).SyncEntries(agent_pb2.SyncEntriesRequest())
    first = await asyncio.wait_for(stream.read(), 5)
    assert [e.id for e in first.entries] == [f"{shop}.web"]
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
                    (f"{shop}.web", "/ns/shop/sa/web"),
                    (f"{shop}.db", "/ns/shop/sa/db"),
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


def _other_namespace_pod(kube: Kube, release: HeraldRelease) -> dict[str, Any]:
    """A pod on node-a in another namespace, under a ServiceAccount named like the agent's."""
    namespace = f"{release.namespace}-other"
    account = release.service_account("agent")
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        }
    )
    return add_agent_pod(kube, release, "node-a", namespace=namespace)


def _unbound_token(kube: Kube, release: HeraldRelease) -> str:
    add_agent_pod(kube, release, "node-a")
    return kube.token(release.namespace, release.service_account("agent"), audiences=[AUDIENCE])


def _token_of_a_replaced_pod(kube: Kube, release: HeraldRelease) -> str:
    pod = add_agent_pod(kube, release, "node-a")
    token = agent_token(kube, pod)
    kube.delete("v1", "Pod", pod["metadata"]["name"], release.namespace)
    wait_for(
        lambda: kube.get("v1", "Pod", pod["metadata"]["name"], release.namespace) is None,
        what="the pod to go",
    )
    add_agent_pod(kube, release, "node-a")
    return token


AUDIENCE = "herald-server"
TOKENS: dict[str, Callable[[Kube, HeraldRelease], str]] = {
    "for another audience": lambda kube, release: agent_token(
        kube, add_agent_pod(kube, release, "node-a"), audiences=["kubernetes"]
    ),
    "of another ServiceAccount": lambda kube, release: agent_token(
        kube, add_agent_pod(kube, release, "node-a", service_account="default")
    ),
    "from another namespace": lambda kube, release: agent_token(
        kube, _other_namespace_pod(kube, release)
    ),
    "not bound to a pod": _unbound_token,
    "of a pod that was replaced": _token_of_a_replaced_pod,
}


@pytest.mark.parametrize(
    ("token", "cluster_name", "message"),
    [
        ("for another audience", "test", "service account token is not valid"),
        ("of another ServiceAccount", "test", "may not attest as a herald agent"),
        ("from another namespace", "test", "may not attest as a herald agent"),
        ("not bound to a pod", "test", "not bound to a pod"),
        # The API server itself refuses a token whose pod is gone (its UID no longer matches).
        ("of a pod that was replaced", "test", "service account token is not valid"),
        ("of another ServiceAccount", "prod", "does not attest nodes of cluster 'prod'"),
    ],
)
async def test_psat_refusals(
    kube: Kube,
    release: HeraldRelease,
    server: HeraldServer,
    token: str,
    cluster_name: str,
    message: str,
) -> None:
    add_node(kube, "node-a")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await psat_attest(server, TOKENS[token](kube, release), cluster=cluster_name)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert message in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await psat_attest(server, "never-issued")
    assert info.value.details() == "service account token is not valid"


async def test_ca_secret_bundle_configmap_lease_and_read_only_entries(
    kube: Kube, release: HeraldRelease, server: HeraldServer
) -> None:
    names, ns = release.names, release.namespace
    secret = kube.get("v1", "Secret", names["caSecret"], ns)
    assert secret is not None
    assert "ca-state.json" in secret["data"]
    configmap = await eventually(lambda: kube.get("v1", "ConfigMap", names["bundleConfigMap"], ns))
    roots = load_pem_certs(configmap["data"]["bundle.pem"].encode())
    assert tuple(roots) == server.ca.bundle().x509_authorities
    spiffe = Bundle.from_spiffe_jwks(TD, configmap["data"]["bundle.spiffe"])
    assert spiffe.sequence_number == server.ca.bundle().sequence_number
    assert json.loads(configmap["data"]["bundle.spiffe"])["spiffe_refresh_hint"] == 300
    lease = kube.get("coordination.k8s.io/v1", "Lease", names["leaderLease"], ns)
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


async def test_replicas_share_the_ca_and_one_leads(
    kube: Kube, release: HeraldRelease, tmp_path: Path
) -> None:
    first = await start_kubernetes_server(release, tmp_path, "a")
    second = await start_kubernetes_server(release, tmp_path, "b")
    try:
        assert first.ca.bundle() == second.ca.bundle(), "one trust domain, one CA"
        leaders = [s for s in (first, second) if s._is_leader()]
        assert len(leaders) == 1
        add_node(kube, "node-a")
        agent = await psat_attest(second, agent_token(kube, add_agent_pod(kube, release, "node-a")))
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
