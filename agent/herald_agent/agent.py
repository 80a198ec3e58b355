"""herald-agent as one process: node attestation, the SVID manager, the Workload API endpoint,
probes and metrics, wired from an AgentConfig.

Start-up: the health server first (``/live`` answers while the rest comes up, ``/ready`` says
what is missing), then the stored agent SVID from ``data_dir`` or a fresh node attestation
(retried while the server cannot be reached; a refused one is fatal), then the SvidManager and
the Workload API socket. Every new agent SVID or bundle is written back to ``data_dir``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from typing import Final

import grpc
from cryptography import x509

from herald_agent.attestors import WorkloadAttestor
from herald_agent.attestors.k8s import K8sAttestor
from herald_agent.attestors.kubelet import KubeletClient, KubeletError
from herald_agent.attestors.unix import UnixAttestor
from herald_agent.config import AgentConfig, ConfigError, JoinTokenConfig
from herald_agent.endpoint import CallerRegistry, WorkloadEndpoint
from herald_agent.metrics import AgentMetrics, NodeAttestationMethod
from herald_agent.rotation import Backoff
from herald_agent.server_client import (
    Attested,
    ServerClient,
    ServerClientError,
    attest_join_token,
    attest_k8s_psat,
    load_trust_bundle,
)
from herald_agent.svid_manager import SvidManager
from herald_agent.svid_store import SvidStore
from herald_agent.workload_api import WorkloadApiService
from herald_core.health import HealthServer
from herald_core.logs import log_event

# A server that is not up yet is waited for; any other refusal will not heal by retrying.
_RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
STOP_GRACE_SECONDS: Final = 1.0

_log = logging.getLogger(__name__)


class AgentError(RuntimeError):
    """The agent cannot start (attestation refused, socket unusable); the message says why."""


class HeraldAgent:
    """One agent process. ``start`` brings everything up; ``stop`` takes it down."""

    def __init__(self, config: AgentConfig, *, backoff_base: float = 1.0) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self._backoff_base = backoff_base
        self._store = SvidStore(config.data_dir, config.trust_domain)
        self._roots: list[x509.Certificate] = []
        self._health: HealthServer | None = None
        self._client: ServerClient | None = None
        self.manager: SvidManager | None = None
        self._endpoint: WorkloadEndpoint | None = None
        self._kubelet: KubeletClient | None = None
        self._pending_save: Attested | None = None
        self._saved: Attested | None = None
        self._saver: asyncio.Task[None] | None = None

    @property
    def method(self) -> NodeAttestationMethod:
        return (
            "join_token" if isinstance(self.config.node_attestor, JoinTokenConfig) else "k8s_psat"
        )

    @property
    def health_port(self) -> int:
        return self._health.port if self._health is not None else 0

    def readiness(self) -> tuple[bool, str]:
        manager = self.manager
        if manager is None or self._endpoint is None:
            return False, "attesting the node and starting the Workload API"
        if manager.bundle is None:
            return False, "no trust bundle yet"
        if not manager.ready:
            expired = manager.client.svid.expires_at.isoformat()
            if self.method == "join_token":
                return False, (
                    f"the agent SVID expired at {expired} and a join token attests only once; "
                    "restart the agent with a new join token"
                )
            return False, f"the agent SVID expired at {expired}; attesting the node again"
        return True, "ok"

    async def start(self) -> None:
        config = self.config
        try:
            self._roots = load_trust_bundle(config.trust_bundle_path)
        except ServerClientError as exc:
            raise ConfigError(f"trust_bundle_path: {exc}") from exc
        # Before attesting, so that a configuration mistake does not spend a join token.
        attestors = [self.metrics.measured(a) for a in self._workload_attestors()]
        address = config.health_address
        self._health = HealthServer(
            address.host, address.port, self.readiness, self.metrics.registry
        )
        await self._health.start()
        attested = self._store.load()
        if attested is None:
            attested = await self._first_attestation()
            # On disk before anything is served: a join token cannot be spent twice.
            self._save(attested)
            await self._flush()
        self._client = ServerClient(
            str(config.server_address),
            attested,
            config.server_name,
            on_update=self._save,
            keep_renewal=self._save_now,
        )
        self.manager = SvidManager(
            self._client,
            backoff_base=self._backoff_base,
            reattest=None if self.method == "join_token" else self._attest_counted,
            on_rotation=self.metrics.rotated,
        )
        await self.manager.start()
        endpoint = self._make_endpoint(self.manager, attestors)
        await endpoint.start()
        self._endpoint = endpoint  # only now does /ready say so
        log_event(
            _log,
            "info",
            "herald-agent started",
            agent_id=str(attested.svid.spiffe_id),
            socket=str(config.socket_path),
            health_port=self.health_port,
        )

    def _make_endpoint(
        self, manager: SvidManager, attestors: list[WorkloadAttestor]
    ) -> WorkloadEndpoint:
        callers = CallerRegistry()
        service = WorkloadApiService(manager, callers, attestors)
        limits = self.config.workload_api
        endpoint = WorkloadEndpoint(
            self.config.socket_path,
            service.register,
            callers=callers,
            max_connections_per_uid=limits.max_connections_per_uid,
            idle_timeout=limits.idle_timeout.total_seconds(),
        )
        self.metrics.track(manager, service, endpoint.counters)
        return endpoint

    def _workload_attestors(self) -> list[WorkloadAttestor]:
        wanted = self.config.workload_attestors
        attestors: list[WorkloadAttestor] = []
        if wanted.unix is not None:
            attestors.append(UnixAttestor(max_hash_size=wanted.unix.workload_size_limit))
        if wanted.k8s is not None:
            try:
                self._kubelet = KubeletClient(wanted.k8s.kubelet())
            except KubeletError as exc:
                raise ConfigError(f"workload_attestors.k8s.kubelet_ca_path: {exc}") from exc
            attestors.append(K8sAttestor(self._kubelet))
        return attestors

    async def stop(self) -> None:
        """Stop whatever ``start`` brought up, also after a start that failed half-way."""
        if self._endpoint is not None:
            await self._endpoint.stop(grace=STOP_GRACE_SECONDS)
            self._endpoint = None
        if self.manager is not None:
            await self.manager.stop()
        if self._client is not None:
            await self._client.close()
        if self._kubelet is not None:
            await self._kubelet.close()
        # The last SVID or bundle reaches the disk before the process ends.
        await self._flush()
        if self._health is not None:
            await self._health.stop()
            self._health = None

    # Node attestation

    def _trusted_roots(self) -> list[x509.Certificate]:
        """The bootstrap roots, plus the bundle the server sent since: after a CA rotation the
        bootstrap file may no longer name the CA the server presents when re-attesting."""
        if self._client is None:
            return self._roots
        return [*self._client.bundle.x509_authorities, *self._roots]

    async def _attest(self) -> Attested:
        config, node = self.config, self.config.node_attestor
        address, roots = str(config.attestation_address), self._trusted_roots()
        if isinstance(node, JoinTokenConfig):
            return await attest_join_token(address, node.token, roots, config.server_name)
        return await attest_k8s_psat(
            address, node.cluster, node.token_path, roots, config.server_name
        )

    async def _attest_counted(self) -> Attested:
        try:
            attested = await self._attest()
        except Exception:
            self.metrics.node_attested(self.method, ok=False)
            raise
        self.metrics.node_attested(self.method, ok=True)
        return attested

    async def _first_attestation(self) -> Attested:
        """Attest, waiting out a server that cannot be reached yet; a refusal is fatal."""
        backoff = Backoff(base=self._backoff_base, cap=30.0)
        while True:
            try:
                return await self._attest_counted()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise AgentError(
                        f"node attestation ({self.method}) refused: {exc.code().name}: "
                        f"{exc.details()}"
                    ) from exc
                why = f"{exc.code().name}: {exc.details()}"
            except ServerClientError as exc:
                raise AgentError(f"node attestation ({self.method}) failed: {exc}") from exc
            delay = backoff.next_delay()
            log_event(
                _log,
                "warning",
                "cannot reach the server to attest; retrying",
                address=str(self.config.attestation_address),
                error=why,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    # Persistence: one writer at a time, always the latest state

    def _save(self, attested: Attested) -> None:
        if _same(attested, self._pending_save or self._saved):
            return
        self._pending_save = attested
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._write_pending(), name="herald-agent-save")

    async def _save_now(self, attested: Attested) -> None:
        self._save(attested)
        await self._flush()

    async def _flush(self) -> None:
        if self._saver is not None:
            await self._saver

    async def _write_pending(self) -> None:
        while self._pending_save is not None:
            attested, self._pending_save = self._pending_save, None
            try:
                await asyncio.to_thread(self._store.save, attested)
                self._saved = attested
            except OSError as exc:
                log_event(
                    _log,
                    "error",
                    "cannot store the agent SVID; a restart will need a new attestation",
                    path=str(self._store.path),
                    error=exc.strerror or str(exc),
                )


def _same(attested: Attested, other: Attested | None) -> bool:
    """The very same SVID and bundle objects: nothing new to write."""
    return other is not None and attested.svid is other.svid and attested.bundle is other.bundle


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, as every Go program (SPIRE's agent
    among them) does at start; the new soft limit.

    Each workload connection holds four descriptors here (the caller's socket, its pidfd, the
    relay's two ends), so the soft limit a service manager commonly sets (1,024) would refuse
    the 256th workload while the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # an unlimited hard limit is more than the kernel allows
        return soft
    return hard


async def run(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT (also while it is still starting)."""
    log_event(_log, "info", "open files limit", soft=raise_open_files_limit())
    agent = HeraldAgent(config)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    starting = asyncio.create_task(agent.start(), name="herald-agent-start")
    stopping = asyncio.create_task(stopped.wait(), name="herald-agent-signal")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start ends the process with its error
            await stopping
    finally:
        _log.info("herald-agent stopping")
        for task in (starting, stopping):
            task.cancel()
        await asyncio.gather(starting, stopping, return_exceptions=True)
        await agent.stop()
