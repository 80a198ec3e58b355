"""Records of attested agents and join tokens, and the interfaces that store them.

Standalone mode keeps both in its SQLite store (agents attested with one-time join tokens must be
remembered across restarts). Kubernetes mode has no join tokens and keeps agents in memory: its
agents re-attest with a fresh service-account token whenever the server forgets them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from herald_core.spiffeid import SpiffeId, TrustDomain

AGENT_PATH = "/herald/agent/"


def agent_id(trust_domain: TrustDomain, method: str, *parts: str) -> SpiffeId:
    """``spiffe://<td>/herald/agent/<method>/<parts…>``, the reserved namespace of agent IDs.

    Raises SpiffeIdError when a part cannot be a path segment.
    """
    return SpiffeId.from_segments(trust_domain, *AGENT_PATH.strip("/").split("/"), method, *parts)


def is_agent_id(spiffe_id: SpiffeId) -> bool:
    return spiffe_id.path.startswith(AGENT_PATH)


class JoinTokenError(Exception):
    """A join token that cannot be used. ``reason`` is for the log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AgentNotFoundError(LookupError):
    """No agent with this ID has attested (or its record is gone)."""


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    """What a store keeps about a join token: never the token itself."""

    token_id: str
    expires_at: datetime
    alias: SpiffeId | None


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An attested agent and its agent SVIDs.

    ``svid_serial`` is the SVID the agent may use; ``new_svid_serial`` the one a renewal gave it,
    not used yet. Once the agent presents the new one, the old one is refused: a copy of an agent
    SVID stolen before a renewal stops working once the agent has moved on.
    """

    agent_id: SpiffeId
    aliases: frozenset[SpiffeId]
    attested_at: datetime
    svid_serial: int
    svid_expires_at: datetime
    evicted: bool
    new_svid_serial: int | None = None

    def accepts(self, serial: int) -> bool:
        return serial in (self.svid_serial, self.new_svid_serial)


def join_token_id(value: str) -> str:
    """The stable public ID of a join token (part of its agent's SPIFFE ID); not the secret."""
    return hashlib.sha256(b"herald-join-token-id:" + value.encode()).hexdigest()[:32]


class TokenStore(Protocol):
    async def create_token(
        self, *, ttl: timedelta, alias: SpiffeId | None
    ) -> tuple[str, JoinTokenRecord]:
        """A new one-time token: its secret value (shown once) and its record."""

    async def consume_token(self, value: str) -> JoinTokenRecord:
        """Mark the token used, atomically; JoinTokenError if unknown, used or expired."""


class AgentRegistry(Protocol):
    async def register(self, record: AgentRecord) -> None:
        """Insert, or replace the record of an agent that attests again."""

    async def get_agent(self, agent_id: SpiffeId) -> AgentRecord | None: ...

    async def update_agent_svid(
        self, agent_id: SpiffeId, serial: int, expires_at: datetime
    ) -> None:
        """Record a renewed agent SVID as the agent's next one (the current one stays valid until
        the new one is first used); AgentNotFoundError for an unknown agent."""

    async def promote_agent_svid(self, agent_id: SpiffeId, serial: int) -> None:
        """The agent used its renewed SVID ``serial``: from now on only that one is valid."""

    async def evict_agent(self, agent_id: SpiffeId) -> None:
        """Mark the agent evicted (it must attest again); AgentNotFoundError if unknown."""

    async def list_agents(self) -> list[AgentRecord]:
        """Every known agent, sorted by agent ID."""


class MemoryAgentRegistry:
    """An AgentRegistry that forgets on restart (Kubernetes mode)."""

    def __init__(self) -> None:
        self._agents: dict[SpiffeId, AgentRecord] = {}

    async def register(self, record: AgentRecord) -> None:
        self._agents[record.agent_id] = record

    async def get_agent(self, agent_id: SpiffeId) -> AgentRecord | None:
        return self._agents.get(agent_id)

    async def update_agent_svid(
        self, agent_id: SpiffeId, serial: int, expires_at: datetime
    ) -> None:
        record = self._existing(agent_id)
        self._agents[agent_id] = dataclasses.replace(
            record, new_svid_serial=serial, svid_expires_at=expires_at
        )

    async def promote_agent_svid(self, agent_id: SpiffeId, serial: int) -> None:
        record = self._agents.get(agent_id)
        if record is not None and record.new_svid_serial == serial:
            self._agents[agent_id] = dataclasses.replace(
                record, svid_serial=serial, new_svid_serial=None
            )

    async def evict_agent(self, agent_id: SpiffeId) -> None:
        self._agents[agent_id] = dataclasses.replace(self._existing(agent_id), evicted=True)

    async def list_agents(self) -> list[AgentRecord]:
        return [self._agents[agent_id] for agent_id in sorted(self._agents)]

    def _existing(self, agent_id: SpiffeId) -> AgentRecord:
        record = self._agents.get(agent_id)
        if record is None:
            raise AgentNotFoundError(f"no attested agent {agent_id}")
        return record
