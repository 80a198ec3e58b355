"""herald-server's engine: builds the stores, CA and services for the configured mode and runs them.

Standalone mode keeps entries, join tokens and agents in SQLite and the CA in a 0700 data
directory. Kubernetes mode reads entries from the custom resources, keeps the CA in a Secret,
attests agents with projected service-account tokens, elects one leader by Lease to rotate the
CA and publish the bundle ConfigMap, and lets the other replicas follow the Secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Coroutine
from typing import Any

import grpc
from kubernetes import client as k8s

from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.health import HealthServer
from herald_core.keys import private_key_to_pem
from herald_core.listeners import GRPC_SERVER_OPTIONS, add_port
from herald_core.proto.herald.agent.v1 import agent_pb2_grpc
from herald_core.x509svid import certs_to_pem
from herald_server.admin_api import AdminService, serve_admin
from herald_server.agent_api import AgentAuthenticator, AgentService, Limits, NodeAttestationService
from herald_server.agents import AgentRegistry, MemoryAgentRegistry, TokenStore
from herald_server.bundle_publisher import BundlePublisher
from herald_server.ca import CAManager
from herald_server.config import ServerConfig
from herald_server.entries import EntryStore
from herald_server.k8s_entries import KubernetesEntryStore
from herald_server.keystore import DirKeyStore, KeyStore, SecretKeyStore
from herald_server.kube import ApiClientFactory, api_session, kube_client_factory
from herald_server.leader import LeaseElector
from herald_server.metrics import ServerMetrics
from herald_server.node_attestation import JoinTokenAttestor, K8sPsatAttestor, NodeAttestor
from herald_server.signing import BatchSigner
from herald_server.sqlite_store import SqliteStore
from herald_server.upstream import UpstreamAuthority, load_upstream_files, upstream_from_secret_data

log = logging.getLogger(__name__)

# Rotation is driven by next_rotation_at(); the cap bounds how stale a wrong clock can make it.
MAX_ROTATION_SLEEP = 30.0
# cert-manager renews an upstream CA at 2/3 of its life, so a minute's delay is immaterial.
UPSTREAM_REFRESH_SECONDS = 60.0


class _TlsMaterial:
    """What grpc needs for each handshake: our certificate, and the roots for client certs.

    grpc calls ``fetch`` from its own threads before handshakes; it returns a new
    configuration only when the CA manager's material changed, None otherwise.
    """

    def __init__(self, ca: CAManager, *, client_roots: bool) -> None:
        self._ca = ca
        self._client_roots = client_roots
        self._version: tuple[int, int] | None = None

    def _current_version(self) -> tuple[int, int]:
        # The server certificate's serial and the bundle's sequence change whenever the
        # material does, so handshakes compare two integers instead of re-encoding PEM.
        chain, _ = self._ca.server_tls()
        sequence = self._ca.bundle().sequence_number if self._client_roots else 0
        return chain[0].serial_number, sequence

    def _material(self) -> tuple[bytes, bytes, bytes | None]:
        chain, key = self._ca.server_tls()
        roots = certs_to_pem(self._ca.bundle().x509_authorities) if self._client_roots else None
        return private_key_to_pem(key), certs_to_pem(chain), roots

    def initial(self) -> grpc.ServerCertificateConfiguration:
        self._version = self._current_version()
        return self._configuration(self._material())

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        version = self._current_version()
        if version == self._version:
            return None
        self._version = version
        return self._configuration(self._material())

    @staticmethod
    def _configuration(
        material: tuple[bytes, bytes, bytes | None],
    ) -> grpc.ServerCertificateConfiguration:
        key, chain, roots = material
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        # grpc's stub types the fetcher as never returning None, but None means "unchanged".
        fetch: Any = self.fetch
        return grpc.dynamic_ssl_server_credentials(
            self.initial(), fetch, require_client_authentication=self._client_roots
        )


class HeraldServer:
    """One server process. ``start`` brings everything up; ``stop`` takes it down."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        api_client_factory: ApiClientFactory | None = None,
    ) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self._clock = clock
        self._api_factory = api_client_factory
        self._tasks: set[asyncio.Task[Any]] = set()
        self._grpc_servers: list[grpc.aio.Server] = []
        self._elector: LeaseElector | None = None
        self._publisher: BundlePublisher | None = None
        self._health: HealthServer | None = None
        self._signer: BatchSigner | None = None
        self._upstream: UpstreamAuthority | None = None
        self.attestation_port = 0
        self.agent_port = 0
        self.store: EntryStore
        self.ca: CAManager

    @property
    def kubernetes(self) -> bool:
        return self.config.mode == "kubernetes"

    @property
    def health_port(self) -> int:
        return self._health.port if self._health is not None else 0

    def _api(self) -> ApiClientFactory:
        if self._api_factory is None:
            self._api_factory = kube_client_factory(self.config.kubernetes.kubeconfig)
        return self._api_factory

    async def start(self) -> None:
        registry, tokens, attestors, keystore = self._build_stores()
        leader = True
        if self.kubernetes:
            self._elector = self._make_elector()
            leader = await self._elector.step()
            self._publisher = BundlePublisher(
                self._api(),
                namespace=self.config.kubernetes.namespace,
                name=self.config.kubernetes.bundle_configmap,
            )
        upstream = await self._load_upstream()
        self.ca = CAManager(self.config.to_ca_settings(upstream), keystore, self._clock)
        await self.ca.start(leader=leader)
        await self.store.start()
        self.metrics.track_entries(lambda: len(self.store.cache))
        self.ca.add_bundle_listener(self._on_bundle)
        if self._elector is not None:
            self._elector.add_listener(self._on_leadership)
        self._on_bundle(self.ca.bundle())
        await self._start_grpc(registry, attestors)
        await self._start_admin(tokens)
        self._health = HealthServer(
            self.config.health_address.host,
            self.config.health_address.port,
            self.ready,
            self.metrics.registry,
        )
        await self._health.start()
        self._spawn(self._rotation_loop(), "rotation")
        self._spawn(self._follow_keystore(keystore), "keystore-watch")
        if self.config.ca.upstream is not None:
            self._upstream = upstream
            self._spawn(self._follow_upstream(), "upstream-refresh")
        if self._elector is not None:
            self._spawn(self._elector.run(), "leader-election")
        log.info(
            "herald-server started: trust_domain=%s mode=%s attestation_port=%d agent_port=%d",
            self.config.trust_domain,
            self.config.mode,
            self.attestation_port,
            self.agent_port,
        )

    def _build_stores(
        self,
    ) -> tuple[AgentRegistry, TokenStore | None, dict[str, NodeAttestor], KeyStore]:
        td = self.config.trust_domain
        if not self.kubernetes:
            self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            sqlite = SqliteStore(self.config.data_dir / "herald.db", clock=self._clock)
            self.store = sqlite
            keystore: KeyStore = DirKeyStore(self.config.data_dir / "ca")
            return sqlite, sqlite, {"join_token": JoinTokenAttestor(sqlite, td)}, keystore
        kube = self.config.kubernetes
        self.store = KubernetesEntryStore(
            self._api(), trust_domain=td, cluster_name=kube.cluster_name
        )
        psat = K8sPsatAttestor(
            self._api(),
            trust_domain=td,
            cluster_name=kube.cluster_name,
            audience=kube.audience,
            agent_namespace=kube.agent_namespace,
            agent_service_accounts=kube.agent_service_accounts,
        )
        keystore = SecretKeyStore(self._api(), kube.namespace, kube.ca_secret)
        return MemoryAgentRegistry(), None, {"k8s_psat": psat}, keystore

    def _make_elector(self) -> LeaseElector:
        # Unique per process: a restarted container must not mistake its predecessor's lease
        # for its own while that one may still be shutting down.
        base = os.environ.get("POD_NAME") or socket.gethostname()
        identity = f"{base}-{secrets.token_hex(4)}"
        elector = LeaseElector(
            self._api(),
            namespace=self.config.kubernetes.namespace,
            name=self.config.kubernetes.lease_name,
            identity=identity,
            clock=self._clock,
        )
        return elector

    async def _load_upstream(self) -> UpstreamAuthority | None:
        upstream = self.config.ca.upstream
        if upstream is None:
            return None
        if upstream.dir is not None:
            return load_upstream_files(upstream.dir)
        assert upstream.secret is not None
        secret = await asyncio.to_thread(self._read_secret, upstream.secret)
        return upstream_from_secret_data(secret)

    def _read_secret(self, name: str) -> dict[str, bytes]:
        with api_session(self._api()) as api_client:
            found = k8s.CoreV1Api(api_client).read_namespaced_secret(
                name, self.config.kubernetes.namespace
            )
        return {k: base64.b64decode(v) for k, v in (found.data or {}).items()}

    async def _start_grpc(
        self, registry: AgentRegistry, attestors: dict[str, NodeAttestor]
    ) -> None:
        limits = self.config.limits
        api_limits = Limits(
            max_batch=limits.max_batch,
            sign_rate_per_agent=limits.sign_rate_per_agent,
            sign_burst_per_agent=limits.sign_burst_per_agent,
        )
        options = [
            *GRPC_SERVER_OPTIONS,
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", 4 * limits.max_message_bytes),
        ]
        attestation = grpc.aio.server(options=options)
        agent_pb2_grpc.add_NodeAttestationServicer_to_server(
            NodeAttestationService(
                ca=self.ca,
                attestors=attestors,
                registry=registry,
                metrics=self.metrics,
                limits=api_limits,
                clock=self._clock,
            ),
            attestation,
        )
        self.attestation_port = add_port(
            attestation,
            self.config.attestation_address,
            "attestation_address",
            _TlsMaterial(self.ca, client_roots=False).credentials(),
        )
        auth = AgentAuthenticator(
            ca=self.ca,
            trust_domain=self.config.trust_domain,
            registry=None if self.kubernetes else registry,
            node_exists=self.store.nodes.has_uid
            if isinstance(self.store, KubernetesEntryStore)
            else None,
            clock=self._clock,
        )
        self._signer = BatchSigner(limits.signing_workers)
        agents = grpc.aio.server(options=options)
        agent_pb2_grpc.add_AgentAPIServicer_to_server(
            AgentService(
                ca=self.ca,
                entries=self.store.cache,
                auth=auth,
                registry=None if self.kubernetes else registry,
                metrics=self.metrics,
                signer=self._signer,
                limits=api_limits,
                clock=self._clock,
            ),
            agents,
        )
        self.agent_port = add_port(
            agents,
            self.config.agent_address,
            "agent_address",
            _TlsMaterial(self.ca, client_roots=True).credentials(),
        )
        for server in (attestation, agents):
            await server.start()
            self._grpc_servers.append(server)

    async def _start_admin(self, tokens: TokenStore | None) -> None:
        service = AdminService(
            entries=self.store,
            tokens=tokens,
            ca=self.ca,
            trust_domain=self.config.trust_domain,
            join_token_ttl=self.config.join_token_ttl,
        )
        self._grpc_servers.append(await serve_admin(self.config.admin_socket, service))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _is_leader(self) -> bool:
        return self._elector is None or self._elector.is_leader

    async def _rotation_loop(self) -> None:
        while True:
            if self._is_leader():
                try:
                    await self.ca.rotate()
                except Exception:
                    log.exception("CA rotation failed; retrying")
            self.metrics.set_ca_expiry(self.ca.x509_ca_expires_at())
            delay = (self.ca.next_rotation_at() - self._clock.now()).total_seconds()
            await asyncio.sleep(min(max(delay, 0.05), MAX_ROTATION_SLEEP))

    async def _follow_upstream(self) -> None:
        while True:
            await asyncio.sleep(UPSTREAM_REFRESH_SECONDS)
            await self.refresh_upstream()

    async def refresh_upstream(self) -> bool:
        """Re-read the upstream CA; a renewed one signs the CAs prepared from now on.

        Returns whether it changed. A broken renewal is logged and the current upstream kept,
        so a half-written Secret never stops the server from signing.
        """
        try:
            upstream = await self._load_upstream()
        except Exception as exc:
            log.warning("could not re-read the upstream CA; keeping the current one: %s", exc)
            return False
        if upstream is None or self._upstream is None or upstream.cert == self._upstream.cert:
            return False
        self.ca.replace_upstream(upstream)
        self._upstream = upstream
        log.info(
            "upstream CA renewed: subject=%s not_after=%s",
            upstream.cert.subject.rfc4514_string(),
            upstream.not_after.isoformat(),
        )
        return True

    async def _follow_keystore(self, keystore: KeyStore) -> None:
        """Adopt states other replicas (or a previous leader) wrote; a no-op for our own."""
        async for state, version in keystore.watch():
            try:
                await self.ca.adopt(state, version)
            except Exception:
                log.exception("could not adopt the stored CA state")

    def _on_leadership(self, leader: bool) -> None:
        if leader:
            self._on_bundle(self.ca.bundle())

    def _on_bundle(self, bundle: Bundle) -> None:
        if self._publisher is not None and self._is_leader():
            self._spawn(self._publisher.publish(bundle), "publish-bundle")

    def ready(self) -> tuple[bool, str]:
        try:
            self.ca.bundle()
        except Exception as exc:
            return False, f"CA not ready: {exc}"
        if not self._grpc_servers:
            return False, "gRPC servers not started"
        return True, "ok"

    async def stop(self) -> None:
        """Stop whatever ``start`` brought up, also after a start that failed half-way."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._grpc_servers:
            await server.stop(grace=1.0)
        self._grpc_servers.clear()
        if self._health is not None:
            await self._health.stop()
            self._health = None
        if self._signer is not None:
            self._signer.close()
            self._signer = None
        store: EntryStore | None = getattr(self, "store", None)
        if store is not None:
            await store.stop()


async def run(config: ServerConfig) -> None:
    """Run a server until SIGTERM or SIGINT."""
    server = HeraldServer(config)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        log.info("herald-server stopping")
        await server.stop()
