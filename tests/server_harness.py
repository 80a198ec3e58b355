"""A real herald-server on loopback ports for tests, and the agent-side calls tests make to it.

The harness starts HeraldServer exactly as `herald-server run` does (real SQLite, real CA
directory, real TLS and mTLS gRPC servers, admin socket); `AgentCredentials` is what an agent
holds after attesting: its key, its SVID chain and the bundle, and it opens mTLS channels.
In Kubernetes mode (`start_kubernetes_server`) the server runs against the real API server of
tests/k8s as its release's ServiceAccount; `add_node` / `add_agent_pod` make the objects k8s_psat
attestation checks and `agent_token` the pod-bound token a kubelet would project.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from herald_agent.server_client import ServerClient, attest_join_token
from herald_agent.svid_manager import SvidManager
from herald_core.bundle import Bundle
from herald_core.csr import make_csr
from herald_core.entry import Entry
from herald_core.keys import PrivateKey, generate_key, private_key_to_pem
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId
from herald_core.wire import bundle_from_proto, entry_from_proto, entry_to_proto
from herald_core.x509svid import certs_to_pem, parse_der_chain
from herald_server.admin_client import admin_channel
from herald_server.config import config_from_mapping
from herald_server.server import HeraldServer
from tests.k8s.api import Kube
from tests.k8s.install import HeraldRelease

TRUST_DOMAIN = "example.org"
SERVER_NAME = "herald-server.test"


def standalone_config(tmp: Path, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "trust_domain": TRUST_DOMAIN,
        "data_dir": str(tmp / "data"),
        "admin_socket": str(tmp / "admin" / "admin.sock"),
        "attestation_address": "127.0.0.1:0",
        "agent_address": "127.0.0.1:0",
        "health_address": "127.0.0.1:0",
        "server_dns_names": [SERVER_NAME],
    }
    doc.update(extra)
    return doc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fixed_ports() -> dict[str, str]:
    """Listen addresses on ports picked now, so a restarted server comes back on the same ones."""
    return {
        name: f"127.0.0.1:{free_port()}"
        for name in ("attestation_address", "agent_address", "health_address")
    }


async def start_server(tmp: Path, **extra: Any) -> HeraldServer:
    config = config_from_mapping(standalone_config(tmp, **extra), base_dir=tmp)
    server = HeraldServer(config)
    await server.start()
    return server


def _channel_options() -> list[tuple[str, Any]]:
    return [("grpc.ssl_target_name_override", SERVER_NAME)]


def tls_channel(server: HeraldServer, bundle: Bundle | None = None) -> grpc.aio.Channel:
    roots = certs_to_pem((bundle or server.ca.bundle()).x509_authorities)
    return grpc.aio.secure_channel(
        f"127.0.0.1:{server.attestation_port}",
        grpc.ssl_channel_credentials(root_certificates=roots),
        options=_channel_options(),
    )


@dataclass
class AgentCredentials:
    """An attested agent's key, SVID chain and bundle."""

    spiffe_id: SpiffeId
    key: PrivateKey
    chain: list[x509.Certificate]
    bundle: Bundle
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, server: HeraldServer) -> grpc.aio.Channel:
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{server.agent_port}",
            grpc.ssl_channel_credentials(
                root_certificates=certs_to_pem(self.bundle.x509_authorities),
                private_key=private_key_to_pem(self.key),
                certificate_chain=certs_to_pem(self.chain),
            ),
            options=_channel_options(),
        )
        self.channels.append(channel)
        return channel

    def stub(self, server: HeraldServer) -> agent_pb2_grpc.AgentAPIAsyncStub:
        return agent_pb2_grpc.AgentAPIStub(self.channel(server))  # type: ignore[return-value]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def admin_stub(server: HeraldServer) -> tuple[grpc.aio.Channel, admin_pb2_grpc.AdminAPIAsyncStub]:
    channel = admin_channel(server.config.admin_socket)
    return channel, admin_pb2_grpc.AdminAPIStub(channel)  # type: ignore[return-value]


async def join_token(server: HeraldServer, alias: str = "") -> str:
    channel, admin = admin_stub(server)
    async with channel:
        token = await admin.CreateJoinToken(admin_pb2.CreateJoinTokenRequest(spiffe_id=alias))
    return token.value


async def attest(
    server: HeraldServer, token: str, key: PrivateKey | None = None
) -> AgentCredentials:
    key = key or generate_key()
    async with tls_channel(server) as channel:
        stub: Any = agent_pb2_grpc.NodeAttestationStub(channel)
        response = await stub.AttestAgent(
            agent_pb2.AttestAgentRequest(
                join_token=agent_pb2.JoinTokenParams(token=token),
                csr=make_csr(key, SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/unused")),
            )
        )
    chain = [c for der in response.svid.cert_chain for c in parse_der_chain(der)]
    return AgentCredentials(
        SpiffeId.parse(response.svid.spiffe_id), key, chain, bundle_from_proto(response.bundle)
    )


async def new_agent(server: HeraldServer, alias: str = "") -> AgentCredentials:
    return await attest(server, await join_token(server, alias))


async def create_entry(
    server: HeraldServer,
    path: str,
    parent: SpiffeId,
    selectors: Sequence[str] = ("unix:uid:1000",),
    **fields: Any,
) -> Entry:
    entry = Entry(
        id=fields.pop("id", path.strip("/").replace("/", "-")),
        spiffe_id=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}{path}"),
        parent_id=parent,
        selectors=parse_selectors(selectors),
        **fields,
    )
    channel, admin = admin_stub(server)
    async with channel:
        stored = await admin.CreateEntry(admin_pb2.CreateEntryRequest(entry=entry_to_proto(entry)))
    return entry_from_proto(stored)


def csr_for(entry: Entry, key: PrivateKey | None = None) -> tuple[PrivateKey, bytes]:
    key = key or generate_key()
    return key, make_csr(key, entry.spiffe_id)


def leaf_of(result: agent_pb2.X509SVIDResult) -> x509.Certificate:
    return parse_der_chain(result.cert_chain[0])[0]


async def attested_manager(server: HeraldServer) -> SvidManager:
    """An agent's SvidManager, attested to ``server`` with a fresh join token (not started)."""
    attested = await attest_join_token(
        f"127.0.0.1:{server.attestation_port}",
        await join_token(server),
        server.ca.bundle().x509_authorities,
        SERVER_NAME,
    )
    client = ServerClient(f"127.0.0.1:{server.agent_port}", attested, SERVER_NAME)
    return SvidManager(client, backoff_base=0.05, backoff_cap=0.5)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- Kubernetes mode, against the real API (tests/k8s) ---------------------------------------

AUDIENCE = "herald-server"
CLUSTER = "test"


def kube_config(tmp: Path, name: str, release: HeraldRelease) -> dict[str, Any]:
    """A Kubernetes-mode server configuration for ``release``: its namespace and object names,
    its agents' ServiceAccount, and the server's own ServiceAccount kubeconfig."""
    doc = standalone_config(tmp / name)
    doc.update(
        mode="kubernetes",
        kubernetes={
            "namespace": release.namespace,
            "cluster_name": CLUSTER,
            "ca_secret": release.names["caSecret"],
            "bundle_configmap": release.names["bundleConfigMap"],
            "lease_name": release.names["leaderLease"],
            "agent_service_accounts": [release.service_account("agent")],
            "kubeconfig": str(release.kubeconfigs["server"]),
        },
    )
    return doc


async def start_kubernetes_server(
    release: HeraldRelease, tmp: Path, name: str = "a", **kubernetes: Any
) -> HeraldServer:
    doc = kube_config(tmp, name, release)
    doc["kubernetes"].update(kubernetes)
    server = HeraldServer(config_from_mapping(doc, base_dir=tmp))
    await server.start()
    return server


def add_node(kube: Kube, name: str) -> str:
    """A Node object (no kubelet behind it); its UID."""
    node = kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return str(node["metadata"]["uid"])


def add_agent_pod(
    kube: Kube,
    release: HeraldRelease,
    node: str,
    *,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """An agent pod bound to ``node`` (by default in the release's namespace, as its agent)."""
    namespace = namespace or release.namespace
    return kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"herald-agent-{node}", "namespace": namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account or release.service_account("agent"),
                "containers": [{"name": "agent", "image": "herald"}],
            },
        }
    )


def agent_token(
    kube: Kube, pod: dict[str, Any], audiences: Sequence[str] = (AUDIENCE,), seconds: int = 3600
) -> str:
    """The projected token the kubelet would mount into ``pod``: its ServiceAccount's, bound to
    the pod (so the API server names the pod and its node in a TokenReview)."""
    return kube.token(
        pod["metadata"]["namespace"],
        pod["spec"]["serviceAccountName"],
        audiences=audiences,
        seconds=seconds,
        bound_pod=pod,
    )


def workload_entry(name: str, node: str, path: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "spiffeID": f"spiffe://example.org{path}",
            "nodeName": node,
            "selectors": [f"k8s:pod-uid:{name}-uid"],
        },
    }


def agent_doc(tmp: Path, server: HeraldServer, socket_path: Path) -> dict[str, Any]:
    """An agent configuration for ``server`` without its node attestor; the server's bundle is
    written to ``tmp`` as the agent's bootstrap."""
    bundle = tmp / "bundle.pem"
    bundle.write_bytes(server.ca.bundle().x509_pem())
    return {
        "trust_domain": TRUST_DOMAIN,
        "server_address": f"127.0.0.1:{server.agent_port}",
        "attestation_address": f"127.0.0.1:{server.attestation_port}",
        "server_name": SERVER_NAME,
        "trust_bundle_path": str(bundle),
        "socket_path": str(socket_path),
        "data_dir": str(tmp / "agent-data"),
        "health_address": "127.0.0.1:0",
    }


def k8s_agent_doc(
    tmp: Path, server: HeraldServer, token_file: Path, socket_path: Path
) -> dict[str, Any]:
    """`agent_doc` for a k8s_psat agent (cluster ``test``) reading its token from ``token_file``."""
    doc = agent_doc(tmp, server, socket_path)
    doc["node_attestor"] = {"k8s_psat": {"cluster": CLUSTER, "token_path": str(token_file)}}
    return doc
