"""The agent's client of herald-server: node attestation, the agent SVID, and the mTLS channel.

Bootstrap trust: the first connection (to the attestation port) verifies the server against a
configured trust bundle file (PEM CA certificates, like SPIRE's ``trust_bundle_path``). There is
no insecure bootstrap: an agent that trusted whatever answered first would hand its join token
or service-account token to anyone able to intercept the connection.

After attesting, the agent talks to the agent port over mTLS with its agent SVID as client
certificate and the attested trust bundle as roots. grpcio fixes a channel's credentials when the
channel is made, so a renewed SVID (or a changed bundle) gets a new channel; the old one is
closed with a grace period so calls already in flight on it can finish. An agent whose SVID
expired attests again and the client `adopt`s the result the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from herald_agent.rotation import random_jitter, rotation_time
from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.csr import make_csr
from herald_core.keys import PrivateKey, generate_key, private_key_to_pem, signature_hash
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.spiffeid import SpiffeId
from herald_core.wire import bundle_from_proto
from herald_core.x509svid import certs_to_pem, load_pem_certs, parse_der_chain

log = logging.getLogger(__name__)

# How long calls on a replaced channel may run before it is closed under them.
OLD_CHANNEL_GRACE_SECONDS: Final = 5.0
_RNG = random.Random()  # noqa: S311 - rotation jitter, not secrecy
RPC_TIMEOUT_SECONDS: Final = 30.0
# grpc retries a lost connection with its own backoff; capped at a second (jittered by grpc),
# a restarted server is found within a second of answering, for a connection attempt a
# second per agent while it is away.
MAX_RECONNECT_BACKOFF_MS: Final = 1000


class ServerClientError(Exception):
    """The server's answer or the local configuration cannot be used; the message says why."""


@dataclass(frozen=True)
class AgentSvid:
    """The agent's own identity: key, chain (leaf first) and when this agent received it."""

    spiffe_id: SpiffeId
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    received_at: dt.datetime
    jitter: float = 0.0

    @property
    def expires_at(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def renew_at(self) -> dt.datetime:
        """Half its life (±jitter) after it arrived.

        The server backdates notBefore by a few seconds against clock skew; counting from the
        later of notBefore and receipt keeps that cushion from advancing the renewal.
        """
        start = max(self.chain[0].not_valid_before_utc, self.received_at)
        return rotation_time(start, self.expires_at, self.jitter)


@dataclass(frozen=True)
class Attested:
    """What node attestation returns: the agent SVID and the trust bundle."""

    svid: AgentSvid
    bundle: Bundle


def load_trust_bundle(path: Path) -> list[x509.Certificate]:
    """The bootstrap roots: PEM CA certificates from ``path``; at least one is required."""
    try:
        return load_pem_certs(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ServerClientError(f"trust bundle {path}: {exc}") from exc


def _options(server_name: str | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        # grpc's own reconnect backoff grows to 120 s by default: after a long server outage
        # the agent would stay away that long after the server is back.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if server_name:
        # The server's certificate names server_dns_names; dialling by IP needs that name.
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


async def _back_after_a_loss(channel: grpc.aio.Channel) -> None:
    """Return once ``channel`` is READY again after having been anything else."""
    ready = grpc.ChannelConnectivity.READY
    state = channel.get_state(try_to_connect=True)
    lost = state != ready
    while not (lost and state == ready):
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
        lost = lost or state != ready


def _svid_from_proto(
    message: agent_pb2.AgentSVID, key: PrivateKey, now: dt.datetime, jitter: float
) -> AgentSvid:
    try:
        chain = tuple(c for der in message.cert_chain for c in parse_der_chain(der))
        spiffe_id = SpiffeId.parse(message.spiffe_id)
    except ValueError as exc:
        raise ServerClientError(f"server returned an unusable agent SVID: {exc}") from exc
    if not chain:
        raise ServerClientError("server returned an agent SVID without certificates")
    return AgentSvid(spiffe_id, key, chain, now, jitter)


def _attestation_csr() -> tuple[PrivateKey, bytes]:
    """A fresh EC P-256 key and a CSR naming nothing: the server derives the agent's ID from
    the attestation, never from the CSR, so there is nothing true the CSR could claim yet."""
    key = generate_key()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, signature_hash(key))
    )
    return key, request.public_bytes(serialization.Encoding.DER)


def _renewal_csr(agent_id: SpiffeId) -> tuple[PrivateKey, bytes]:
    key = generate_key()
    return key, make_csr(key, agent_id)


async def _attest(
    address: str,
    trust_roots: Sequence[x509.Certificate],
    server_name: str | None,
    request: agent_pb2.AttestAgentRequest,
    clock: Clock,
) -> Attested:
    key, csr = await asyncio.to_thread(_attestation_csr)
    request.csr = csr
    credentials = grpc.ssl_channel_credentials(root_certificates=certs_to_pem(trust_roots))
    async with grpc.aio.secure_channel(address, credentials, _options(server_name)) as channel:
        stub: Any = agent_pb2_grpc.NodeAttestationStub(channel)
        response = await stub.AttestAgent(request, timeout=RPC_TIMEOUT_SECONDS)
    svid = _svid_from_proto(response.svid, key, clock.now(), random_jitter(_RNG))
    try:
        bundle = bundle_from_proto(response.bundle)
    except ValueError as exc:
        raise ServerClientError(f"server returned an unusable bundle: {exc}") from exc
    log.info("node attested: agent_id=%s expires_at=%s", svid.spiffe_id, svid.expires_at)
    return Attested(svid, bundle)


async def attest_join_token(
    address: str,
    token: str,
    trust_roots: Sequence[x509.Certificate],
    server_name: str | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Attested:
    """Attest with a one-time join token at the attestation port ``address`` (host:port)."""
    request = agent_pb2.AttestAgentRequest(join_token=agent_pb2.JoinTokenParams(token=token))
    return await _attest(address, trust_roots, server_name, request, clock)


async def attest_k8s_psat(
    address: str,
    cluster: str,
    token_path: Path,
    trust_roots: Sequence[x509.Certificate],
    server_name: str | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Attested:
    """Attest with the projected service-account token at ``token_path``.

    The file is read on every call: the kubelet rewrites projected tokens as they age.
    """
    try:
        token = (await asyncio.to_thread(token_path.read_text)).strip()
    except OSError as exc:
        raise ServerClientError(f"service account token {token_path}: {exc}") from exc
    request = agent_pb2.AttestAgentRequest(
        k8s_psat=agent_pb2.K8sPsatParams(cluster=cluster, token=token)
    )
    return await _attest(address, trust_roots, server_name, request, clock)


UpdateListener = Callable[[Attested], None]
RenewalKeeper = Callable[[Attested], Awaitable[None]]


class ServerClient:
    """The attested agent's connection to the agent port, following SVID and bundle changes.

    ``on_update`` is told of every new agent SVID or bundle (to persist them, say).
    ``keep_renewal`` is awaited with a renewed SVID before any call uses it: from its first use
    on, the server refuses the previous one, so it must be stored first.
    """

    def __init__(
        self,
        address: str,
        attested: Attested,
        server_name: str | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_update: UpdateListener | None = None,
        keep_renewal: RenewalKeeper | None = None,
    ) -> None:
        self.address = address
        self.server_name = server_name
        self.clock = clock
        self.svid = attested.svid
        self.bundle = attested.bundle
        self._on_update = on_update
        self._keep_renewal = keep_renewal
        self.renewals = 0
        # Counts channel replacements, so a stream cut by one is told apart from a failure.
        self.channel_generation = 0
        self._new_channel = asyncio.Event()
        self._channel = self._open()
        self._closing: set[asyncio.Task[None]] = set()

    def _open(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.bundle.x509_pem(),
            private_key=private_key_to_pem(self.svid.key),
            certificate_chain=certs_to_pem(self.svid.chain),
        )
        return grpc.aio.secure_channel(self.address, credentials, _options(self.server_name))

    def stub(self) -> agent_pb2_grpc.AgentAPIAsyncStub:
        """A stub on the current channel; take a new one for each call or stream."""
        return agent_pb2_grpc.AgentAPIStub(self._channel)

    def _replace_channel(self) -> None:
        old, self._channel = self._channel, self._open()
        self.channel_generation += 1
        self._new_channel.set()
        self._new_channel = asyncio.Event()
        task = asyncio.create_task(old.close(grace=OLD_CHANNEL_GRACE_SECONDS))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def channel_after(self, generation: int, within: float) -> bool:
        """Wait up to ``within`` seconds for a channel newer than ``generation``; True if one came.

        A retry loop sleeps here, so a renewal or re-attestation ends its backoff at once.
        """
        if self.channel_generation != generation:
            return True
        try:
            await asyncio.wait_for(self._new_channel.wait(), within)
        except TimeoutError:
            return False
        return True

    async def reconnected(self, generation: int, within: float) -> bool:
        """Wait up to ``within`` seconds for a channel newer than ``generation``, or for the
        current one to connect again after losing its connection; True if either happened.

        A retry loop whose call failed for want of a server sleeps here, so it resumes as soon
        as the server answers again. A channel that stays connected throughout (the server
        answered, with an error) ends nothing early: that retry keeps its whole backoff.
        """
        if self.channel_generation != generation:
            return True
        waits = [
            asyncio.create_task(self._new_channel.wait()),
            asyncio.create_task(_back_after_a_loss(self._channel)),
        ]
        try:
            done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return bool(done)

    def set_bundle(self, bundle: Bundle) -> None:
        """Adopt a new trust bundle; the channel is rebuilt only if the X.509 roots changed."""
        changed = bundle.x509_authorities != self.bundle.x509_authorities
        self.bundle = bundle
        if changed:
            self._replace_channel()
        self._updated()

    def adopt(self, attested: Attested) -> None:
        """Take the SVID and bundle of a new attestation; later calls use a new channel."""
        if attested.svid.spiffe_id != self.svid.spiffe_id:
            log.warning(
                "attested again under a new agent ID: old=%s new=%s",
                self.svid.spiffe_id,
                attested.svid.spiffe_id,
            )
        self.svid = attested.svid
        self.bundle = attested.bundle
        self._replace_channel()
        self._updated()

    def _updated(self) -> None:
        if self._on_update is not None:
            self._on_update(Attested(self.svid, self.bundle))

    async def renew(self) -> AgentSvid:
        """RenewAgent with a fresh key; later calls use a channel with the new certificate."""
        key, csr = await asyncio.to_thread(_renewal_csr, self.svid.spiffe_id)
        response = await self.stub().RenewAgent(
            agent_pb2.RenewAgentRequest(csr=csr), timeout=RPC_TIMEOUT_SECONDS
        )
        svid = _svid_from_proto(response.svid, key, self.clock.now(), random_jitter(_RNG))
        if svid.spiffe_id != self.svid.spiffe_id:
            raise ServerClientError(
                f"renewal returned {svid.spiffe_id}, but this agent is {self.svid.spiffe_id}"
            )
        if self._keep_renewal is not None:
            await self._keep_renewal(Attested(svid, self.bundle))
        self.svid = svid
        self.renewals += 1
        self._replace_channel()
        self._updated()
        log.info("agent SVID renewed: agent_id=%s expires_at=%s", svid.spiffe_id, svid.expires_at)
        return svid

    async def close(self) -> None:
        await self._channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
