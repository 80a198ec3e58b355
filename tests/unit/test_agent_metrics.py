"""The agent's metric families: series present at zero, attestors counted and timed, lag clamped."""

from __future__ import annotations

import os

import pytest

from herald_agent.attestors import AttestationError
from herald_agent.attestors.unix import UnixAttestor
from herald_agent.metrics import AgentMetrics
from herald_core.selector import Selector


class RefusingAttestor:
    """An attestor that cannot vouch for anyone (a kubelet that is down, say)."""

    name = "k8s"

    async def attest(self, pid: int) -> frozenset[Selector]:
        raise AttestationError(f"cannot reach the kubelet for {pid}")


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_label_combination_exists_at_zero() -> None:
    metrics = AgentMetrics()
    for method in ("join_token", "k8s_psat"):
        for result in ("ok", "error"):
            found = value(
                metrics, "herald_agent_node_attestations_total", method=method, result=result
            )
            assert found == 0
    for attestor in ("unix", "k8s"):
        assert (
            value(metrics, "herald_agent_workload_attestation_seconds_count", attestor=attestor)
            == 0
        )
    for kind in ("workload", "agent"):
        assert value(metrics, "herald_agent_rotation_lag_seconds_count", kind=kind) == 0


async def test_measured_attestor_counts_and_times_results_and_passes_errors_on() -> None:
    metrics = AgentMetrics()
    unix = metrics.measured(UnixAttestor())
    assert unix.name == "unix"
    selectors = await unix.attest(os.getpid())
    assert Selector.parse(f"unix:uid:{os.getuid()}") in selectors
    refusing = metrics.measured(RefusingAttestor())
    with pytest.raises(AttestationError, match="cannot reach the kubelet"):
        await refusing.attest(1)
    assert (
        value(metrics, "herald_agent_workload_attestations_total", attestor="unix", result="ok")
        == 1
    )
    assert (
        value(metrics, "herald_agent_workload_attestations_total", attestor="k8s", result="error")
        == 1
    )
    assert (
        value(metrics, "herald_agent_workload_attestations_total", attestor="k8s", result="ok") == 0
    )
    assert value(metrics, "herald_agent_workload_attestation_seconds_count", attestor="k8s") == 1


def test_rotation_lag_is_never_negative() -> None:
    metrics = AgentMetrics()
    metrics.rotated("workload", -3.0)
    metrics.rotated("workload", 7.5)
    assert value(metrics, "herald_agent_rotation_lag_seconds_count", kind="workload") == 2
    assert value(metrics, "herald_agent_rotation_lag_seconds_sum", kind="workload") == 7.5
    assert (
        value(metrics, "herald_agent_rotation_lag_seconds_bucket", kind="workload", le="0.1") == 1
    )
