"""The agent-facing gRPC services: node attestation, and the mTLS API attested agents use.

Everything an agent asks for is checked against the identity its client certificate proves
(never against anything in the request): it may renew only its own SVID, sync only the entries
parented to it (or to its aliases), and get SVIDs signed only for those entries, with the
SPIFFE ID, DNS names and TTL taken from the entry, never from the CSR.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.csr import CsrError, CsrInfo, check_csr
from herald_core.entry import Entry, is_reserved_id
from herald_core.jwtsvid import JwtSvidError, check_audiences
from herald_core.keys import private_key_to_der
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import bundle_to_proto, entry_to_proto
from herald_core.x509svid import X509SvidError, chain_to_der, verify_chain
from herald_server.agents import AgentRecord, AgentRegistry, is_agent_id
from herald_server.ca import CAError, CAManager
from herald_server.entries import EntryCache
from herald_server.metrics import ServerMetrics
from herald_server.node_attestation import AttestationError, NodeAttestor
from herald_server.ratelimit import RateLimiter
from herald_server.signing import BatchSigner, LeafOrder, LeafResult

log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Limits:
    max_batch: int = 500
    sign_rate_per_agent: float = 200.0
    sign_burst_per_agent: float = 1000.0
    attest_rate: float = 50.0
    attest_burst: float = 200.0


@dataclass(frozen=True)
class AgentIdentity:
    """Who is calling, as proven by the client certificate and the server's own records."""

    agent_id: SpiffeId
    parents: frozenset[SpiffeId]
    expires_at: dt.datetime


async def _abort(context: _Context, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)
    raise AssertionError("context.abort returned")  # grpc.aio raises; this keeps mypy honest


async def _take(
    context: _Context,
    limiter: RateLimiter,
    metrics: ServerMetrics,
    key: str,
    count: int,
    message: str,
) -> None:
    """Take ``count`` tokens from ``key``'s bucket, or abort with RESOURCE_EXHAUSTED."""
    if not limiter.allow(key, count):
        metrics.rate_limited.inc()
        await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _unix(when: dt.datetime) -> int:
    return int(when.timestamp())


class AgentAuthenticator:
    """Turns the mTLS peer certificate into an AgentIdentity, or aborts the call.

    grpc already verified the chain against the bundle during the handshake; this re-verifies
    the leaf against the CAs that sign agent SVIDs (so a certificate from an upstream sibling
    is not enough), requires the reserved agent ID namespace (a workload SVID is never an
    agent credential), and asks the registry or the node index whether the agent still stands.
    """

    def __init__(
        self,
        *,
        ca: CAManager,
        trust_domain: TrustDomain,
        registry: AgentRegistry | None,
        node_exists: Callable[[str], bool] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._ca = ca
        self._trust_domain = trust_domain
        self._registry = registry
        self._node_exists = node_exists
        self._clock = clock

    async def authenticate(self, context: _Context) -> AgentIdentity:
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
        if not pem:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        try:
            leaf = x509.load_pem_x509_certificate(pem)
            agent_id = verify_chain(
                [leaf],
                self._ca.issuing_authorities(),
                trust_domain=self._trust_domain,
                now=self._clock.now(),
            )
        except (ValueError, X509SvidError) as exc:
            await _abort(
                context, grpc.StatusCode.UNAUTHENTICATED, f"agent certificate is not valid: {exc}"
            )
        if not is_agent_id(agent_id):
            await _abort(
                context, grpc.StatusCode.PERMISSION_DENIED, f"{agent_id} is not an agent ID"
            )
        aliases = await self._standing(context, agent_id, leaf.serial_number)
        return AgentIdentity(agent_id, frozenset({agent_id}) | aliases, leaf.not_valid_after_utc)

    async def _standing(
        self, context: _Context, agent_id: SpiffeId, serial: int
    ) -> frozenset[SpiffeId]:
        if self._registry is not None:
            record = await self._registry.get_agent(agent_id)
            if record is None or record.evicted:
                await _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"agent {agent_id} is {'evicted' if record else 'unknown'}; attest again",
                )
            if not record.accepts(serial):
                await _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"agent SVID {serial:x} of {agent_id} was superseded by a renewal",
                )
            if serial == record.new_svid_serial:
                await self._registry.promote_agent_svid(agent_id, serial)
            return record.aliases
        node_uid = agent_id.path.rsplit("/", 1)[-1]
        if self._node_exists is not None and not self._node_exists(node_uid):
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the node of agent {agent_id} no longer exists",
            )
        return frozenset()


def _status(code: grpc.StatusCode, message: str = "") -> types_pb2.Status:
    return types_pb2.Status(code=code.value[0], message=message)


_OK = grpc.StatusCode.OK.value[0]
_OK_STATUS = _status(grpc.StatusCode.OK)


class NodeAttestationService(agent_pb2_grpc.NodeAttestationServicer):
    """AttestAgent, on the server-TLS-only port: the one call an agent makes without a cert."""

    def __init__(
        self,
        *,
        ca: CAManager,
        attestors: Mapping[str, NodeAttestor],
        registry: AgentRegistry,
        metrics: ServerMetrics,
        limits: Limits = Limits(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._ca = ca
        self._metrics = metrics
        self._attestors = attestors
        self._registry = registry
        self._clock = clock
        self._limiter = RateLimiter(limits.attest_rate, limits.attest_burst, clock=clock)

    async def AttestAgent(
        self, request: agent_pb2.AttestAgentRequest, context: _Context
    ) -> agent_pb2.AttestAgentResponse:
        method = request.WhichOneof("params")
        if method is None:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "attestation params missing: set join_token or k8s_psat",
            )
        attestor = self._attestors.get(method)
        if attestor is None:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node attestation method {method} is not enabled on this server",
            )
        await _take(
            context, self._limiter, self._metrics, "attest", 1, "too many attestations; retry later"
        )
        # The CSR is checked before the attestor runs, so a bad CSR never burns a join token.
        try:
            csr = check_csr(request.csr)
        except CsrError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"csr: {exc}")
        try:
            node = await attestor.attest(request)
        except AttestationError as exc:
            self._metrics.attested(attestor.method, ok=False)
            log.warning("node attestation refused: method=%s reason=%s", method, exc.reason)
            await _abort(context, exc.code, exc.public)
        chain = await _sign_agent(context, self._ca, self._metrics, csr, node.agent_id)
        self._metrics.attested(attestor.method, ok=True)
        leaf = chain[0]
        await self._registry.register(
            AgentRecord(
                agent_id=node.agent_id,
                aliases=node.aliases,
                attested_at=self._clock.now(),
                svid_serial=leaf.serial_number,
                svid_expires_at=leaf.not_valid_after_utc,
                evicted=False,
            )
        )
        log.info(
            "agent attested: agent_id=%s method=%s node=%s",
            node.agent_id,
            method,
            node.node_name or "-",
        )
        return agent_pb2.AttestAgentResponse(
            svid=_agent_svid(node.agent_id, chain), bundle=bundle_to_proto(self._ca.bundle())
        )


async def _sign_agent(
    context: _Context, ca: CAManager, metrics: ServerMetrics, csr: CsrInfo, agent_id: SpiffeId
) -> list[x509.Certificate]:
    def sign() -> list[x509.Certificate]:
        with metrics.signing("agent"):
            return ca.sign_agent_svid(csr.public_key, agent_id)

    try:
        return await asyncio.to_thread(sign)
    except CAError as exc:
        await _abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot sign: {exc}")


def _agent_svid(agent_id: SpiffeId, chain: Sequence[x509.Certificate]) -> agent_pb2.AgentSVID:
    return agent_pb2.AgentSVID(
        spiffe_id=str(agent_id),
        cert_chain=[chain_to_der([c]) for c in chain],
        expires_at=_unix(chain[0].not_valid_after_utc),
    )


@dataclass(frozen=True)
class _SignItem:
    index: int
    entry: Entry
    csr: bytes


class AgentService(agent_pb2_grpc.AgentAPIServicer):
    """The mTLS API of attested agents."""

    def __init__(
        self,
        *,
        ca: CAManager,
        entries: EntryCache,
        auth: AgentAuthenticator,
        registry: AgentRegistry | None,
        metrics: ServerMetrics,
        signer: BatchSigner,
        limits: Limits = Limits(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._ca = ca
        self._metrics = metrics
        self._signer = signer
        self._entries = entries
        self._auth = auth
        self._registry = registry
        self._limits = limits
        self._clock = clock
        self._limiter = RateLimiter(
            limits.sign_rate_per_agent, limits.sign_burst_per_agent, clock=clock
        )

    async def RenewAgent(
        self, request: agent_pb2.RenewAgentRequest, context: _Context
    ) -> agent_pb2.RenewAgentResponse:
        caller = await self._auth.authenticate(context)
        try:
            csr = check_csr(request.csr)
        except CsrError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"csr: {exc}")
        if csr.spiffe_id is not None and csr.spiffe_id != caller.agent_id:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"csr names {csr.spiffe_id}, but the caller is {caller.agent_id}",
            )
        chain = await _sign_agent(context, self._ca, self._metrics, csr, caller.agent_id)
        if self._registry is not None:
            leaf = chain[0]
            await self._registry.update_agent_svid(
                caller.agent_id, leaf.serial_number, leaf.not_valid_after_utc
            )
        return agent_pb2.RenewAgentResponse(svid=_agent_svid(caller.agent_id, chain))

    async def SyncEntries(
        self, request: agent_pb2.SyncEntriesRequest, context: _Context
    ) -> AsyncIterator[agent_pb2.SyncEntriesResponse]:
        caller = await self._auth.authenticate(context)
        bundle_changed = asyncio.Event()

        def on_bundle(_: object) -> None:
            bundle_changed.set()

        self._ca.add_bundle_listener(on_bundle)
        try:
            with (
                self._metrics.agent_stream(),
                self._entries.subscribe(caller.parents) as subscription,
            ):
                yield agent_pb2.SyncEntriesResponse(
                    full=True,
                    entries=[entry_to_proto(e) for e in self._entries.by_parents(caller.parents)],
                    bundle=bundle_to_proto(self._ca.bundle()),
                )
                while True:
                    remaining = (caller.expires_at - self._clock.now()).total_seconds()
                    changes = await _next_change(subscription.wait(), bundle_changed, remaining)
                    if changes is None:
                        await _abort(
                            context,
                            grpc.StatusCode.UNAUTHENTICATED,
                            "agent SVID expired; renew it and reconnect",
                        )
                    yield self._delta(changes, bundle_changed)
        finally:
            self._ca.remove_bundle_listener(on_bundle)

    def _delta(
        self, changes: dict[str, Entry | None], bundle_changed: asyncio.Event
    ) -> agent_pb2.SyncEntriesResponse:
        message = agent_pb2.SyncEntriesResponse(
            full=False,
            entries=[entry_to_proto(e) for _, e in sorted(changes.items()) if e is not None],
            removed_entry_ids=sorted(i for i, e in changes.items() if e is None),
        )
        if bundle_changed.is_set():
            bundle_changed.clear()
            message.bundle.CopyFrom(bundle_to_proto(self._ca.bundle()))
        return message

    async def BatchSignX509SVID(
        self, request: agent_pb2.BatchSignX509SVIDRequest, context: _Context
    ) -> agent_pb2.BatchSignX509SVIDResponse:
        caller = await self._auth.authenticate(context)
        count = len(request.params)
        if count == 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "params is empty")
        if count > self._limits.max_batch:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch of {count} CSRs exceeds the limit of {self._limits.max_batch}",
            )
        await self._take(context, caller, count)
        results: list[agent_pb2.X509SVIDResult | None] = [None] * count
        items: list[_SignItem] = []
        seen: set[str] = set()
        for index, params in enumerate(request.params):
            entry = self._authorized_entry(caller, params.entry_id)
            if params.entry_id in seen:
                results[index] = _refused(
                    params.entry_id,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "entry appears twice in the batch",
                )
            elif entry is None:
                results[index] = _refused(
                    params.entry_id,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"entry {params.entry_id!r} is not served by this agent",
                )
            else:
                items.append(_SignItem(index, entry, params.csr))
            seen.add(params.entry_id)
        for item, result in zip(items, await self._sign_items(context, items), strict=True):
            results[item.index] = result
        return agent_pb2.BatchSignX509SVIDResponse(results=[r for r in results if r is not None])

    async def _take(self, context: _Context, caller: AgentIdentity, count: int) -> None:
        key = str(caller.agent_id)
        message = f"rate limit exceeded for {key}; retry with backoff"
        await _take(context, self._limiter, self._metrics, key, count, message)

    def _authorized_entry(self, caller: AgentIdentity, entry_id: str) -> Entry | None:
        entry = self._entries.get(entry_id)
        if (
            entry is None
            or entry.parent_id not in caller.parents
            or is_reserved_id(entry.spiffe_id)
        ):
            return None
        return entry

    async def _sign_items(
        self, context: _Context, items: Sequence[_SignItem]
    ) -> list[agent_pb2.X509SVIDResult]:
        """CSR checks and signing, both CPU-bound, on the BatchSigner (thread or processes).

        The histogram gets one sample per SVID: the batch's time divided by its size.
        """
        if not items:
            return []
        ttls = [
            dt.timedelta(seconds=i.entry.x509_svid_ttl) if i.entry.x509_svid_ttl else None
            for i in items
        ]
        try:
            issuance = self._ca.x509_issuance(ttls)
        except CAError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot sign: {exc}")
        orders = [
            LeafOrder(item.csr, str(item.entry.spiffe_id), item.entry.dns_names, *window)
            for item, window in zip(items, issuance.windows, strict=True)
        ]
        started = time.perf_counter()
        leaves = await self._signer.sign(
            issuance.cert.public_bytes(Encoding.DER), private_key_to_der(issuance.key), orders
        )
        elapsed = (time.perf_counter() - started) / len(orders)
        chain_tail = [c.public_bytes(Encoding.DER) for c in issuance.intermediates]
        results = [
            _x509_result(item.entry, order, leaf, chain_tail)
            for item, order, leaf in zip(items, orders, leaves, strict=True)
        ]
        signed = sum(1 for leaf in leaves if leaf.leaf)
        timings = self._metrics.sign_seconds.labels(kind="x509")
        for _ in range(signed):
            timings.observe(elapsed)
        self._metrics.signed("x509", ok=True, count=signed)
        self._metrics.signed("x509", ok=False, count=len(items) - signed)
        return results

    async def SignJWTSVID(
        self, request: agent_pb2.SignJWTSVIDRequest, context: _Context
    ) -> agent_pb2.SignJWTSVIDResponse:
        caller = await self._auth.authenticate(context)
        audiences = list(request.audience)
        if not audiences or any(not a for a in audiences):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        try:
            check_audiences(audiences)
        except JwtSvidError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.ttl_seconds < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds is negative")
        entry = self._authorized_entry(caller, request.entry_id)
        if entry is None:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"entry {request.entry_id!r} is not served by this agent",
            )
        await self._take(context, caller, 1)
        ttl = _jwt_ttl(request.ttl_seconds, entry.jwt_svid_ttl)
        try:
            with self._metrics.signing("jwt"):
                token, issued_at, expires_at = self._ca.sign_jwt_svid(
                    entry.spiffe_id, audiences, ttl=ttl
                )
        except CAError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot sign: {exc}")
        return agent_pb2.SignJWTSVIDResponse(
            token=token,
            spiffe_id=str(entry.spiffe_id),
            issued_at=_unix(issued_at),
            expires_at=_unix(expires_at),
        )

    async def GetBundle(
        self, request: agent_pb2.GetBundleRequest, context: _Context
    ) -> agent_pb2.GetBundleResponse:
        await self._auth.authenticate(context)
        return agent_pb2.GetBundleResponse(bundle=bundle_to_proto(self._ca.bundle()))


def _jwt_ttl(requested: int, entry_ttl: int) -> dt.timedelta | None:
    """An agent may ask for a shorter JWT-SVID than the entry allows, never a longer one."""
    limit = entry_ttl or None
    if requested and (limit is None or requested < limit):
        return dt.timedelta(seconds=requested)
    return dt.timedelta(seconds=limit) if limit else None


def _x509_result(
    entry: Entry, order: LeafOrder, leaf: LeafResult, chain_tail: list[bytes]
) -> agent_pb2.X509SVIDResult:
    if not leaf.leaf:
        code = grpc.StatusCode.INVALID_ARGUMENT if leaf.invalid else grpc.StatusCode.UNAVAILABLE
        return _refused(entry.id, code, leaf.refusal)
    return agent_pb2.X509SVIDResult(
        entry_id=entry.id,
        status=_OK_STATUS,
        cert_chain=[leaf.leaf, *chain_tail],
        expires_at=_unix(order.not_after),
    )


def _refused(entry_id: str, code: grpc.StatusCode, message: str) -> agent_pb2.X509SVIDResult:
    return agent_pb2.X509SVIDResult(entry_id=entry_id, status=_status(code, message))


async def _next_change(
    entry_change: Coroutine[Any, Any, dict[str, Entry | None]],
    bundle_changed: asyncio.Event,
    seconds: float,
) -> dict[str, Entry | None] | None:
    """The next entry changes (possibly empty when only the bundle changed); None on timeout."""
    entry_task = asyncio.ensure_future(entry_change)
    bundle_task = asyncio.ensure_future(bundle_changed.wait())
    try:
        done, _ = await asyncio.wait(
            {entry_task, bundle_task}, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        # Also when the stream itself is cancelled (agent gone, server stopping): a waiter left
        # pending would be destroyed with the loop.
        for task in (entry_task, bundle_task):
            if not task.done():
                task.cancel()
    if entry_task in done:
        changes: dict[str, Entry | None] = entry_task.result()
        return changes
    return {} if done else None
