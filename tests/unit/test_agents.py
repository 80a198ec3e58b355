"""The in-memory agent registry (Kubernetes mode) and join token IDs."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from herald_core.spiffeid import SpiffeId
from herald_server.agents import (
    AgentNotFoundError,
    AgentRecord,
    MemoryAgentRegistry,
    join_token_id,
)

NODE_A = SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/c1/uid-a")
NODE_B = SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/c1/uid-b")


def _agent(agent_id: SpiffeId) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id,
        aliases=frozenset(),
        attested_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        svid_serial=1,
        svid_expires_at=dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC),
        evicted=False,
    )


async def test_memory_registry_records_renewals_and_evictions() -> None:
    registry = MemoryAgentRegistry()
    assert await registry.get_agent(NODE_A) is None
    await registry.register(_agent(NODE_B))
    await registry.register(_agent(NODE_A))
    later = dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC)
    await registry.update_agent_svid(NODE_A, 2, later)
    await registry.evict_agent(NODE_B)
    assert await registry.list_agents() == [
        dataclasses.replace(_agent(NODE_A), new_svid_serial=2, svid_expires_at=later),
        dataclasses.replace(_agent(NODE_B), evicted=True),
    ]
    await registry.promote_agent_svid(NODE_A, 2)
    assert await registry.get_agent(NODE_A) == dataclasses.replace(
        _agent(NODE_A), svid_serial=2, svid_expires_at=later
    )
    await registry.register(_agent(NODE_B))
    assert await registry.get_agent(NODE_B) == _agent(NODE_B)


async def test_memory_registry_refuses_unknown_agents() -> None:
    registry = MemoryAgentRegistry()
    with pytest.raises(AgentNotFoundError, match=str(NODE_A)):
        await registry.update_agent_svid(NODE_A, 2, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    with pytest.raises(AgentNotFoundError):
        await registry.evict_agent(NODE_A)


def test_join_token_id_is_stable_and_not_the_token() -> None:
    token_id = join_token_id("secret-value")
    assert token_id == join_token_id("secret-value") != join_token_id("other-value")
    assert len(token_id) == 32 and int(token_id, 16) >= 0
    assert "secret" not in token_id
