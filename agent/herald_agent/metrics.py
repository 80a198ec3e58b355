"""The agent's Prometheus metrics, on a registry of their own, with the hooks that record them.

One AgentMetrics per agent process; ``/metrics`` (herald_core.health) exposes its registry.
Workload attestations are timed by wrapping each attestor (`MeasuredAttestor`); rotation lag is
reported by the SvidManager's rotation hook; the plain counters the SvidManager and the Workload
API service already keep are read at scrape time by a collector, so the hot paths pay nothing
extra. Every label combination is created at zero up front, so a rate alert has a series before
the first event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final, Literal, get_args

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from herald_agent.attestors import WorkloadAttestor
from herald_agent.endpoint import EndpointCounters
from herald_agent.svid_manager import RotationKind, SvidManager
from herald_agent.workload_api import WorkloadApiService
from herald_core.selector import Selector

NodeAttestationMethod = Literal["join_token", "k8s_psat"]
Result = Literal["ok", "error"]

NODE_ATTESTATION_METHODS: Final[tuple[NodeAttestationMethod, ...]] = get_args(NodeAttestationMethod)
ROTATION_KINDS: Final[tuple[RotationKind, ...]] = get_args(RotationKind)
RESULTS: Final[tuple[Result, ...]] = get_args(Result)
WORKLOAD_ATTESTORS: Final = ("unix", "k8s")
WORKLOAD_RPCS: Final = (
    "FetchX509SVID",
    "FetchX509Bundles",
    "FetchJWTSVID",
    "FetchJWTBundles",
    "ValidateJWTSVID",
    "FetchWITSVID",
    "FetchWITBundles",
)
# The codes the Workload API answers with (SPIRE's); others still appear once they happen.
WORKLOAD_CODES: Final = tuple(
    code.name
    for code in (
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNKNOWN,
    )
)

# A unix attestation reads /proc in a few hundred microseconds; a cold k8s one waits for the
# kubelet (milliseconds) or for a starting container to appear (seconds).
ATTESTATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0)
# Rotation is late when the server was away or slow: seconds to an SVID's whole lifetime.
LAG_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class AgentMetrics:
    """The agent's metric families; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.node_attestations = Counter(
            "herald_agent_node_attestations",
            "Attestations of this node to the server, by method (join_token, k8s_psat) and result.",
            ["method", "result"],
            registry=self.registry,
        )
        self.attestations = Counter(
            "herald_agent_workload_attestations",
            "Workload attestations, by attestor (unix, k8s) and result.",
            ["attestor", "result"],
            registry=self.registry,
        )
        self.attestation_seconds = Histogram(
            "herald_agent_workload_attestation_seconds",
            "Time one workload attestor took for one caller, by attestor.",
            ["attestor"],
            buckets=ATTESTATION_BUCKETS,
            registry=self.registry,
        )
        self.rotation_lag = Histogram(
            "herald_agent_rotation_lag_seconds",
            "How long after its planned renewal time an SVID was renewed, by kind "
            "(workload, agent).",
            ["kind"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.agent_svid_expiry = Gauge(
            "herald_agent_agent_svid_expiry_timestamp_seconds",
            "Unix time at which the agent's own SVID expires.",
            registry=self.registry,
        )
        for method in NODE_ATTESTATION_METHODS:
            for result in RESULTS:
                self.node_attestations.labels(method=method, result=result)
        for attestor in WORKLOAD_ATTESTORS:
            self.attestation_seconds.labels(attestor=attestor)
            for result in RESULTS:
                self.attestations.labels(attestor=attestor, result=result)
        for kind in ROTATION_KINDS:
            self.rotation_lag.labels(kind=kind)

    def node_attested(self, method: NodeAttestationMethod, *, ok: bool) -> None:
        self.node_attestations.labels(method=method, result="ok" if ok else "error").inc()

    def rotated(self, kind: RotationKind, lag_seconds: float) -> None:
        """One SVID renewed ``lag_seconds`` after it was due (0 when on time)."""
        self.rotation_lag.labels(kind=kind).observe(max(lag_seconds, 0.0))

    def track(
        self, manager: SvidManager, service: WorkloadApiService, endpoint: EndpointCounters
    ) -> None:
        """Export the manager's, service's and endpoint's own counters and gauges at scrape time."""
        self.agent_svid_expiry.set_function(lambda: manager.client.svid.expires_at.timestamp())
        self.registry.register(_StateCollector(manager, service, endpoint))

    def measured(self, attestor: WorkloadAttestor) -> WorkloadAttestor:
        return MeasuredAttestor(attestor, self)


class MeasuredAttestor:
    """A workload attestor counted and timed by name and result; otherwise the attestor itself."""

    def __init__(self, attestor: WorkloadAttestor, metrics: AgentMetrics) -> None:
        self.name = attestor.name
        self._attestor = attestor
        self._ok = metrics.attestations.labels(attestor=attestor.name, result="ok")
        self._error = metrics.attestations.labels(attestor=attestor.name, result="error")
        self._seconds = metrics.attestation_seconds.labels(attestor=attestor.name)

    async def attest(self, pid: int) -> frozenset[Selector]:
        started = time.perf_counter()
        try:
            selectors = await self._attestor.attest(pid)
        except Exception:
            # A cancelled call (the caller hung up) is neither a success nor a failure.
            self._error.inc()
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)
        self._ok.inc()
        return selectors


class _StateCollector(Collector):
    """Counters and gauges read from the SvidManager and the Workload API service."""

    def __init__(
        self, manager: SvidManager, service: WorkloadApiService, endpoint: EndpointCounters
    ) -> None:
        self._manager = manager
        self._service = service
        self._endpoint = endpoint

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        manager, counters = self._manager, self._manager.counters
        yield _gauge("herald_agent_svids", "X.509-SVIDs held for workloads.", manager.svid_count)
        yield _gauge("herald_agent_entries", "Entries this node serves.", manager.entry_count)
        yield _gauge(
            "herald_agent_ready",
            "1 while the agent has a valid agent SVID and a bundle, else 0.",
            int(manager.ready),
        )
        yield _counter(
            "herald_agent_svids_minted",
            "X.509-SVIDs received from the server.",
            counters.svids_minted,
        )
        yield _counter(
            "herald_agent_svid_rotations",
            "X.509-SVIDs replaced by a fresh one (rotation or entry change).",
            counters.svid_rotations,
        )
        yield _counter(
            "herald_agent_svid_failures",
            "X.509-SVID signing attempts that failed (each retried on its own backoff).",
            counters.svid_failures,
        )
        yield _counter(
            "herald_agent_svids_expired",
            "X.509-SVIDs that expired before they could be renewed.",
            counters.svids_expired,
        )
        yield _counter(
            "herald_agent_agent_svid_renewals",
            "Renewals of the agent's own SVID.",
            counters.agent_renewals,
        )
        yield _counter(
            "herald_agent_sync_reconnects",
            "Times the entry sync stream had to be reopened.",
            counters.sync_reconnects,
        )
        yield _gauge(
            "herald_agent_sync_age_seconds",
            "0 while the entry sync stream is open, else seconds since it last was: how stale "
            "the entries this node serves may be.",
            manager.sync_age(),
        )
        yield _counter(
            "herald_agent_jwt_svids_minted", "JWT-SVIDs signed by the server.", counters.jwt_minted
        )
        yield from self._workload_api()

    def _workload_api(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = self._service.metrics
        yield _gauge(
            "herald_agent_workload_api_streams_open",
            "Workload API streams currently open.",
            state.streams_open,
        )
        calls = CounterMetricFamily(
            "herald_agent_workload_api_calls",
            "Workload API calls, by RPC and final gRPC status code.",
            labels=["rpc", "code"],
        )
        counted = dict(state.calls)
        for rpc in WORKLOAD_RPCS:
            for code in WORKLOAD_CODES:
                calls.add_metric([rpc, code], counted.pop((rpc, code), 0))
        for (rpc, code), count in sorted(counted.items()):
            calls.add_metric([rpc, code], count)
        yield calls
        malformed = CounterMetricFamily(
            "herald_agent_workload_api_malformed_requests",
            "Workload API requests that did not parse (answered INVALID_ARGUMENT), by RPC.",
            labels=["rpc"],
        )
        for rpc in WORKLOAD_RPCS:
            malformed.add_metric([rpc], state.malformed[rpc])
        yield malformed
        refused = CounterMetricFamily(
            "herald_agent_workload_connections_refused",
            "Workload API connections closed at once, by reason (uid_limit: the caller's uid "
            "held workload_api.max_connections_per_uid already).",
            labels=["reason"],
        )
        refused.add_metric(["uid_limit"], self._endpoint.refused["uid_limit"])
        yield refused
        yield _counter(
            "herald_agent_workload_connections_idle_closed",
            "Workload API connections closed after workload_api.idle_timeout with no call open.",
            self._endpoint.idle_closed,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
