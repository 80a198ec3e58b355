"""Server metrics: the exposed names, zero-initialised series, and what each helper records."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from herald_server.metrics import ServerMetrics

ATTESTED = "herald_server_attested_agents_total"


def samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def test_every_series_exists_at_zero_before_anything_happens() -> None:
    metrics = ServerMetrics()
    for kind in ("x509", "jwt", "agent"):
        for result in ("ok", "error"):
            assert value(metrics, "herald_server_svids_signed_total", kind=kind, result=result) == 0
        assert value(metrics, "herald_server_sign_seconds_count", kind=kind) == 0
    for method in ("join_token", "k8s_psat"):
        assert value(metrics, ATTESTED, method=method, result="ok") == 0
    for name in (
        "herald_server_entries",
        "herald_server_ca_expiry_timestamp_seconds",
        "herald_server_agent_streams_open",
        "herald_server_rate_limited_total",
    ):
        assert value(metrics, name) == 0


def test_signing_counts_ok_and_error_and_times_both() -> None:
    metrics = ServerMetrics()
    with metrics.signing("x509"):
        pass
    with pytest.raises(ValueError, match="bad csr"), metrics.signing("x509"):
        raise ValueError("bad csr")
    assert value(metrics, "herald_server_svids_signed_total", kind="x509", result="ok") == 1
    assert value(metrics, "herald_server_svids_signed_total", kind="x509", result="error") == 1
    assert value(metrics, "herald_server_sign_seconds_count", kind="x509") == 2
    assert value(metrics, "herald_server_svids_signed_total", kind="jwt", result="ok") == 0


def test_helpers_record_what_they_say() -> None:
    metrics = ServerMetrics()
    metrics.signed("jwt", ok=False, count=3)
    metrics.attested("k8s_psat", ok=True)
    metrics.rate_limited.inc()
    entries = ["a", "b"]
    metrics.track_entries(lambda: len(entries))
    metrics.set_ca_expiry(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    with metrics.agent_stream():
        assert value(metrics, "herald_server_agent_streams_open") == 1
    entries.append("c")
    assert value(metrics, "herald_server_svids_signed_total", kind="jwt", result="error") == 3
    assert value(metrics, ATTESTED, method="k8s_psat", result="ok") == 1
    assert value(metrics, "herald_server_rate_limited_total") == 1
    assert value(metrics, "herald_server_entries") == 3
    assert value(metrics, "herald_server_ca_expiry_timestamp_seconds") == 1893456000
    assert value(metrics, "herald_server_agent_streams_open") == 0


def test_two_servers_in_one_process_do_not_share_metrics() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.rate_limited.inc()
    assert value(second, "herald_server_rate_limited_total") == 0
