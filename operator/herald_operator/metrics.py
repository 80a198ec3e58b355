"""The operator's Prometheus metrics, on a registry of their own.

One RegistrarMetrics per operator process; ``/metrics`` (herald_core.health) serves its registry.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A pod event becomes entries in a few milliseconds when the API answers quickly.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
RECONCILE_KINDS: Final = ("pod", "identity", "resync")
FAILURE_KINDS: Final = ("api", "render", "invalid_spec", "handler")


class RegistrarMetrics:
    """The registrar's metric families; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "herald_operator_reconciles",
            "Reconciles, by what started them (pod, identity, resync).",
            ["kind"],
            registry=self.registry,
        )
        self.pod_event_latency = Histogram(
            "herald_operator_pod_event_to_entry_seconds",
            "Time from a pod event to its WorkloadEntry writes done (events that wrote something).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.entries = Gauge(
            "herald_operator_entries",
            "WorkloadEntry objects an identity currently gives, by identity (kind/namespace/name).",
            ["identity"],
            registry=self.registry,
        )
        self.failures = Counter(
            "herald_operator_failures",
            "Failures: api (a write the API refused), render, invalid_spec, handler.",
            ["kind"],
            registry=self.registry,
        )
        self.writes = Counter(
            "herald_operator_entry_writes",
            "WorkloadEntry writes, by verb (create, patch, delete).",
            ["verb"],
            registry=self.registry,
        )
        for kind in RECONCILE_KINDS:
            self.reconciles.labels(kind)
        for kind in FAILURE_KINDS:
            self.failures.labels(kind)
        for verb in ("create", "patch", "delete"):
            self.writes.labels(verb)
