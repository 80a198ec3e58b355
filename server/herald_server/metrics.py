"""The server's Prometheus metrics, on a registry of their own, with the helpers that record them.

One ServerMetrics per server process; ``/metrics`` (herald_core.health) exposes its registry.
Every label combination the server can produce is created at zero up front, so an alert on a
rate (``herald_server_svids_signed_total{result="error"}``) has a series before the first error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SvidKind = Literal["x509", "jwt", "agent"]
AttestationMethod = Literal["join_token", "k8s_psat"]
Result = Literal["ok", "error"]

SVID_KINDS: Final[tuple[SvidKind, ...]] = get_args(SvidKind)
ATTESTATION_METHODS: Final[tuple[AttestationMethod, ...]] = get_args(AttestationMethod)
RESULTS: Final[tuple[Result, ...]] = get_args(Result)

# Signing one leaf takes about a millisecond with EC P-256; RSA-4096 CAs reach tens of ms.
SIGN_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics:
    """The server's metric families; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.svids_signed = Counter(
            "herald_server_svids_signed",
            "SVIDs the server signed, by kind (x509, jwt, agent) and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.sign_seconds = Histogram(
            "herald_server_sign_seconds",
            "Time to sign one SVID, by kind.",
            ["kind"],
            buckets=SIGN_BUCKETS,
            registry=self.registry,
        )
        self.attested_agents = Counter(
            "herald_server_attested_agents",
            "Node attestations, by method (join_token, k8s_psat) and result.",
            ["method", "result"],
            registry=self.registry,
        )
        self.entries = Gauge(
            "herald_server_entries",
            "Registration entries the server currently holds.",
            registry=self.registry,
        )
        self.ca_expiry = Gauge(
            "herald_server_ca_expiry_timestamp_seconds",
            "Unix time at which the active X.509 CA expires.",
            registry=self.registry,
        )
        self.agent_streams_open = Gauge(
            "herald_server_agent_streams_open",
            "Entry-sync streams from agents currently open.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "herald_server_rate_limited",
            "Agent requests refused because the agent exceeded its rate limit.",
            registry=self.registry,
        )
        for kind in SVID_KINDS:
            self.sign_seconds.labels(kind=kind)
            for result in RESULTS:
                self.svids_signed.labels(kind=kind, result=result)
        for method in ATTESTATION_METHODS:
            for result in RESULTS:
                self.attested_agents.labels(method=method, result=result)

    @contextmanager
    def signing(self, kind: SvidKind) -> Iterator[None]:
        """Time one signature and count it: ok when the block returns, error when it raises."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.svids_signed.labels(kind=kind, result="error").inc()
            raise
        finally:
            self.sign_seconds.labels(kind=kind).observe(time.perf_counter() - started)
        self.svids_signed.labels(kind=kind, result="ok").inc()

    def signed(self, kind: SvidKind, *, ok: bool, count: int = 1) -> None:
        """Count ``count`` signatures (or refusals) that were not timed with ``signing``."""
        self.svids_signed.labels(kind=kind, result="ok" if ok else "error").inc(count)

    def attested(self, method: AttestationMethod, *, ok: bool) -> None:
        self.attested_agents.labels(method=method, result="ok" if ok else "error").inc()

    def track_entries(self, count: Callable[[], int]) -> None:
        """Read the entry count at scrape time (e.g. ``lambda: len(cache)``)."""
        self.entries.set_function(count)

    def set_ca_expiry(self, not_after: datetime) -> None:
        self.ca_expiry.set(not_after.timestamp())

    @contextmanager
    def agent_stream(self) -> Iterator[None]:
        """Count an agent stream as open for the duration of the block."""
        self.agent_streams_open.inc()
        try:
            yield
        finally:
            self.agent_streams_open.dec()
