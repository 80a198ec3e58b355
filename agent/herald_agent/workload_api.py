"""The SPIFFE Workload API (``SpiffeWorkloadAPI``) served on the agent's private grpc.aio server.

Every call, in order: the ``workload.spiffe.io: true`` security header (exactly one value, else
INVALID_ARGUMENT before any work), the kernel-identified caller from the relay
(`CallerRegistry.require_caller`), the request's mandatory fields, workload attestation with
every configured attestor (the union of their selectors; a failure is UNAVAILABLE), and a check
that the caller is still the process that connected (else UNAUTHENTICATED). Codes and messages
are SPIRE's (``pkg/agent/endpoints/workload/handler.go``).

Requests reach the handlers as bytes and are parsed here, not by grpc: grpc's own parse failure
logs a traceback at ERROR and answers UNKNOWN, for any local caller and as often as it likes. A
request that does not parse is INVALID_ARGUMENT ``malformed request``, counted, and logged at most
once a minute per caller uid with the number left out since.

Streams send the caller's full state at once and again whenever a `SvidManager` wake-up changes
what this caller gets; they never send an empty ``svids`` list: entries whose SVIDs are still
being minted are waited for, and a caller left without any matching entry gets its stream ended
with PERMISSION_DENIED. Bundle streams skip a message equal to the previous one. What an
X.509-SVID stream sends is built once per wake-up and caller selector set (`X509Views`) and
shared by every stream of callers with those selectors.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from herald_agent.attestors import AttestationError, WorkloadAttestor
from herald_agent.endpoint import CallerRegistry
from herald_agent.peercred import still_same
from herald_agent.svid_manager import Identity, SvidManager, SvidManagerError
from herald_agent.workload_names import NO_IDENTITY, SECURITY_HEADER, SECURITY_HEADER_VALUE
from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.jwtsvid import JwtSvidError, check_audience, check_audiences, validate_jwt_svid
from herald_core.logs import RepeatLimiter, log_event
from herald_core.proto.spiffe.workload import workload_pb2
from herald_core.selector import Selector
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

SERVICE_NAME: Final = "SpiffeWorkloadAPI"

HEADER_MISSING: Final = "security header missing from request"
ATTESTATION_FAILED: Final = "workload attestation failed"
CALLER_GONE: Final = "could not verify existence of the original caller"
AUDIENCE_REQUIRED: Final = "audience must be specified"
SVID_REQUIRED: Final = "svid must be specified"
INVALID_SPIFFE_ID: Final = "invalid requested SPIFFE ID"
JWT_FETCH_FAILED: Final = "could not fetch JWT-SVID"
WIT_UNIMPLEMENTED: Final = "fetching WIT-SVIDs is not implemented"
SERIALIZE_FAILED: Final = "could not serialize response"
MALFORMED_REQUEST: Final = "malformed request"

# Claims kept from a token of another trust domain (SPIRE, without allowed_foreign_jwt_claims).
_FOREIGN_CLAIMS: Final = frozenset({"sub", "aud", "exp"})
# How many (hidden, kept) entry pairs are remembered as already warned about.
_HIDDEN_LOG_MEMORY: Final = 10_000
# How many caller selector sets keep their built X.509 view between two manager changes.
_VIEW_MEMORY: Final = 10_000

_log = logging.getLogger(__name__)
# Fire-and-forget tasks are held here so that the event loop's weak references are not the only
# ones keeping them alive.
_background: set[asyncio.Task[None]] = set()
_Context = grpc.aio.ServicerContext[Any, Any]
_M = TypeVar("_M", bound=protobuf_message.Message)
_R = TypeVar("_R", bound=protobuf_message.Message)


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # grpc.aio raises; this keeps mypy honest


def has_security_header(context: _Context) -> bool:
    """Exactly one ``workload.spiffe.io`` value, and it is exactly ``true`` (as SPIRE checks)."""
    values = [
        value for key, value in (context.invocation_metadata() or ()) if key == SECURITY_HEADER
    ]
    return values == [SECURITY_HEADER_VALUE]


def bundle_key(trust_domain: TrustDomain) -> str:
    """Bundle map key: the trust domain's ID, ``spiffe://td``, as SPIRE sends it."""
    return str(trust_domain.id)


def dedupe_hints(
    identities: Sequence[Identity],
    on_hidden: Callable[[Identity, Identity], None] | None = None,
) -> list[Identity]:
    """Keep one identity per non-empty hint: the oldest entry (created_at, then entry ID).

    The order of what is kept is unchanged (SPIRE ``hintsfilter``); ``on_hidden(hidden, kept)``
    is told of each identity left out.
    """
    winners: dict[str, Identity] = {}
    for identity in identities:
        hint = identity.entry.hint
        if not hint:
            continue
        held = winners.get(hint)
        if held is None or _age(identity) < _age(held):
            winners[hint] = identity
    kept = []
    for identity in identities:
        hint = identity.entry.hint
        if hint and winners[hint] is not identity:
            if on_hidden is not None:
                on_hidden(identity, winners[hint])
            continue
        kept.append(identity)
    return kept


def _age(identity: Identity) -> tuple[int, str]:
    return (identity.entry.created_at, identity.entry.id)


def _federated_for(
    identities: Iterable[Identity], federated: dict[TrustDomain, Bundle]
) -> dict[TrustDomain, Bundle]:
    """The federated bundles held for the union of the entries' ``federates_with``."""
    wanted = {td for identity in identities for td in identity.entry.federates_with}
    return {td: federated[td] for td in sorted(wanted) if td in federated}


def claims_struct(claims: dict[str, Any]) -> struct_pb2.Struct:
    """Claims as a Struct; ``aud`` always as a list (numbers become doubles, as in SPIRE)."""
    values = dict(claims)
    aud = values.get("aud")
    if isinstance(aud, str):
        values["aud"] = [aud]
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@dataclass
class WorkloadApiMetrics:
    """Plain counters for metrics wiring: calls by (RPC, status code name), open streams,
    requests that did not parse (by RPC)."""

    calls: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    streams_open: int = 0
    malformed: collections.Counter[str] = field(default_factory=collections.Counter)


class WorkloadApiService:
    """``SpiffeWorkloadAPI`` over a `SvidManager`, for callers the relay identified.

    Each RPC method takes the request's bytes (see the module docstring) and the context.
    """

    def __init__(
        self,
        manager: SvidManager,
        callers: CallerRegistry,
        attestors: Sequence[WorkloadAttestor],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._manager = manager
        self._callers = callers
        self._attestors = tuple(attestors)
        self._clock = clock
        self._hidden_logged: set[tuple[str, str]] = set()
        self._x509_views = X509Views(manager, self._dedupe)
        self._malformed_log = RepeatLimiter()
        self.metrics = WorkloadApiMetrics()

    def register(self, server: grpc.aio.Server) -> None:
        """The endpoint's handler registrar: this service, gRPC health and server reflection."""
        handlers = self._method_handlers()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
        _register_health(server)
        _register_reflection(server)

    def _method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """No request deserializer: each method gets the bytes and parses them itself."""
        stream, unary = grpc.unary_stream_rpc_method_handler, grpc.unary_unary_rpc_method_handler
        methods: dict[str, tuple[Any, Any, type[protobuf_message.Message]]] = {
            "FetchX509SVID": (stream, self.FetchX509SVID, workload_pb2.X509SVIDResponse),
            "FetchX509Bundles": (stream, self.FetchX509Bundles, workload_pb2.X509BundlesResponse),
            "FetchJWTSVID": (unary, self.FetchJWTSVID, workload_pb2.JWTSVIDResponse),
            "FetchJWTBundles": (stream, self.FetchJWTBundles, workload_pb2.JWTBundlesResponse),
            "ValidateJWTSVID": (unary, self.ValidateJWTSVID, workload_pb2.ValidateJWTSVIDResponse),
            "FetchWITSVID": (stream, self.FetchWITSVID, workload_pb2.WITSVIDResponse),
            "FetchWITBundles": (stream, self.FetchWITBundles, workload_pb2.WITBundlesResponse),
        }
        return {
            name: handler(method, response_serializer=response.SerializeToString)
            for name, (handler, method, response) in methods.items()
        }

    def _dedupe(self, identities: Sequence[Identity]) -> list[Identity]:
        return dedupe_hints(identities, self._log_hidden)

    def _log_hidden(self, hidden: Identity, kept: Identity) -> None:
        """Warn once per pair, not on every call and stream wake-up."""
        pair = (hidden.entry.id, kept.entry.id)
        if pair in self._hidden_logged:
            return
        if len(self._hidden_logged) >= _HIDDEN_LOG_MEMORY:
            self._hidden_logged.clear()
        self._hidden_logged.add(pair)
        log_event(
            _log,
            "warning",
            "entry hidden: an older entry of this workload has the same hint",
            entry_id=hidden.entry.id,
            kept_entry_id=kept.entry.id,
            hint=hidden.entry.hint,
        )

    @contextlib.contextmanager
    def _track(self, rpc: str, context: _Context, *, stream: bool = False) -> Iterator[None]:
        """Count the call by RPC and final status code (and the stream while it is open); the
        relay counts it open on its connection, which is not idle meanwhile."""
        metrics = self.metrics
        if stream:
            metrics.streams_open += 1
        self._callers.call_started(context)
        code = grpc.StatusCode.OK
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._callers.call_ended(context)
            if stream:
                metrics.streams_open -= 1
            metrics.calls[(rpc, code.name)] += 1

    async def _stream(
        self,
        rpc: str,
        raw: bytes,
        context: _Context,
        request_type: type[_R],
        handler: Callable[[_R, _Context], AsyncGenerator[_M, None]],
    ) -> AsyncIterator[_M]:
        """Parse the request and relay the handler's messages, counted; closing this closes the
        handler at once (its subscription with it) instead of whenever the garbage collector
        gets to it."""
        with self._track(rpc, context, stream=True):
            request = await self._parse(rpc, raw, context, request_type)
            async with contextlib.aclosing(handler(request, context)) as messages:
                async for message in messages:
                    yield message

    async def _parse(self, rpc: str, raw: bytes, context: _Context, request_type: type[_R]) -> _R:
        try:
            return request_type.FromString(raw)
        except protobuf_message.DecodeError:
            self.metrics.malformed[rpc] += 1
            self._log_malformed(rpc, context)
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{MALFORMED_REQUEST}: not a valid {request_type.DESCRIPTOR.name}",
            )

    def _log_malformed(self, rpc: str, context: _Context) -> None:
        """One line a minute per caller uid, saying how many were left out since the last."""
        caller = self._callers.caller_of(context)
        uid = None if caller is None else caller.credentials.uid
        left_out = self._malformed_log.allow(uid)
        if left_out is None:
            return
        log_event(
            _log,
            "warning",
            "malformed Workload API request",
            rpc=rpc,
            uid=uid,
            pid=None if caller is None else caller.credentials.pid,
            left_out=left_out,
        )

    # Per-call checks

    async def _check_header(self, context: _Context) -> None:
        if not has_security_header(context):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)

    async def _attest(self, context: _Context) -> frozenset[Selector]:
        """The caller's selectors from every attestor; aborts as SPIRE's peer tracker does."""
        caller = await self._callers.require_caller(context)
        selectors: set[Selector] = set()
        for attestor in self._attestors:
            try:
                selectors |= await attestor.attest(caller.process.pid)
            except AttestationError as exc:
                log_event(
                    _log,
                    "warning",
                    ATTESTATION_FAILED,
                    attestor=attestor.name,
                    pid=caller.process.pid,
                    error=str(exc),
                )
                await _abort(context, grpc.StatusCode.UNAVAILABLE, ATTESTATION_FAILED)
            except Exception:
                # An attestor bug must still give the client a retryable answer, not UNKNOWN.
                _log.exception(
                    "workload attestor failed unexpectedly: attestor=%s pid=%d",
                    attestor.name,
                    caller.process.pid,
                )
                await _abort(context, grpc.StatusCode.UNAVAILABLE, ATTESTATION_FAILED)
        if not still_same(caller.process):
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{CALLER_GONE}: process {caller.process.pid} exited or was replaced",
            )
        return frozenset(selectors)

    # RPCs: each counted by its final code; streams also counted while open

    async def FetchX509SVID(
        self, raw: bytes, context: _Context
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        async for message in self._stream(
            "FetchX509SVID", raw, context, workload_pb2.X509SVIDRequest, self._fetch_x509_svid
        ):
            yield message

    async def FetchX509Bundles(
        self, raw: bytes, context: _Context
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        async for message in self._stream(
            "FetchX509Bundles",
            raw,
            context,
            workload_pb2.X509BundlesRequest,
            self._fetch_x509_bundles,
        ):
            yield message

    async def FetchJWTSVID(self, raw: bytes, context: _Context) -> workload_pb2.JWTSVIDResponse:
        with self._track("FetchJWTSVID", context):
            request = await self._parse("FetchJWTSVID", raw, context, workload_pb2.JWTSVIDRequest)
            return await self._fetch_jwt_svid(request, context)

    async def FetchJWTBundles(
        self, raw: bytes, context: _Context
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        async for message in self._stream(
            "FetchJWTBundles", raw, context, workload_pb2.JWTBundlesRequest, self._fetch_jwt_bundles
        ):
            yield message

    async def ValidateJWTSVID(
        self, raw: bytes, context: _Context
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        with self._track("ValidateJWTSVID", context):
            request = await self._parse(
                "ValidateJWTSVID", raw, context, workload_pb2.ValidateJWTSVIDRequest
            )
            return await self._validate_jwt_svid(request, context)

    async def FetchWITSVID(
        self, raw: bytes, context: _Context
    ) -> AsyncIterator[workload_pb2.WITSVIDResponse]:
        async for message in self._stream(
            "FetchWITSVID", raw, context, workload_pb2.WITSVIDRequest, self._fetch_wit_svid
        ):
            yield message

    async def FetchWITBundles(
        self, raw: bytes, context: _Context
    ) -> AsyncIterator[workload_pb2.WITBundlesResponse]:
        async for message in self._stream(
            "FetchWITBundles", raw, context, workload_pb2.WITBundlesRequest, self._fetch_wit_bundles
        ):
            yield message

    # X.509-SVID profile

    async def _fetch_x509_svid(
        self, request: workload_pb2.X509SVIDRequest, context: _Context
    ) -> AsyncGenerator[workload_pb2.X509SVIDResponse, None]:
        await self._check_header(context)
        selectors = await self._attest(context)
        with self._manager.subscribe() as subscription:
            sent: tuple[object, ...] | None = None
            while True:
                view = self._x509_views.get(selectors)
                if not view.matched:
                    await _abort(context, grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)
                # No response: every matching entry's SVID is still being minted; wait for it.
                if view.response is not None and view.state != sent:
                    yield view.response
                    sent = view.state
                await subscription.wait()

    async def _fetch_x509_bundles(
        self, request: workload_pb2.X509BundlesRequest, context: _Context
    ) -> AsyncGenerator[workload_pb2.X509BundlesResponse, None]:
        await self._check_header(context)
        selectors = await self._attest(context)

        def build(bundles: dict[TrustDomain, Bundle]) -> workload_pb2.X509BundlesResponse:
            return workload_pb2.X509BundlesResponse(
                bundles={bundle_key(td): b.x509_der() for td, b in bundles.items()}
            )

        async with contextlib.aclosing(self._bundle_stream(context, selectors, build)) as stream:
            async for response in stream:
                yield response

    # JWT-SVID profile

    async def _fetch_jwt_svid(
        self, request: workload_pb2.JWTSVIDRequest, context: _Context
    ) -> workload_pb2.JWTSVIDResponse:
        await self._check_header(context)
        await self._callers.require_caller(context)
        audiences = list(dict.fromkeys(a for a in request.audience if a.strip()))
        if not audiences:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, AUDIENCE_REQUIRED)
        try:
            check_audiences(audiences)
        except JwtSvidError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        wanted: SpiffeId | None = None
        if request.spiffe_id:
            try:
                wanted = SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"{INVALID_SPIFFE_ID}: {exc}"
                )
        selectors = await self._attest(context)
        identities = self._dedupe(self._manager.identities_for(selectors))
        if wanted is not None:
            identities = [i for i in identities if i.entry.spiffe_id == wanted]
        if not identities:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)
        try:
            tokens = await asyncio.gather(
                *(self._manager.fetch_jwt(i.entry.id, audiences) for i in identities)
            )
        except SvidManagerError as exc:
            code, message = _jwt_error(exc)
            await _abort(context, code, message)
        return workload_pb2.JWTSVIDResponse(
            svids=[
                workload_pb2.JWTSVID(
                    spiffe_id=str(identity.entry.spiffe_id), svid=token, hint=identity.entry.hint
                )
                for identity, token in zip(identities, tokens, strict=True)
            ]
        )

    async def _fetch_jwt_bundles(
        self, request: workload_pb2.JWTBundlesRequest, context: _Context
    ) -> AsyncGenerator[workload_pb2.JWTBundlesResponse, None]:
        await self._check_header(context)
        selectors = await self._attest(context)

        def build(bundles: dict[TrustDomain, Bundle]) -> workload_pb2.JWTBundlesResponse:
            return workload_pb2.JWTBundlesResponse(
                bundles={bundle_key(td): b.to_workload_jwt_jwks() for td, b in bundles.items()}
            )

        async with contextlib.aclosing(self._bundle_stream(context, selectors, build)) as stream:
            async for response in stream:
                yield response

    async def _validate_jwt_svid(
        self, request: workload_pb2.ValidateJWTSVIDRequest, context: _Context
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        await self._check_header(context)
        await self._callers.require_caller(context)
        if not request.audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, AUDIENCE_REQUIRED)
        if not request.svid:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, SVID_REQUIRED)
        try:
            check_audience(request.audience)
        except JwtSvidError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # The caller is attested only to choose the bundles: no identity is no refusal here.
        selectors = await self._attest(context)
        bundles = self._bundles_for(self._manager.identities_for(selectors))
        try:
            svid = validate_jwt_svid(request.svid, bundles, request.audience, now=self._clock.now())
        except JwtSvidError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        claims = dict(svid.claims)
        own = self._manager.bundle
        if own is None or svid.spiffe_id.trust_domain != own.trust_domain:
            claims = {k: v for k, v in claims.items() if k in _FOREIGN_CLAIMS}
        try:
            struct = claims_struct(claims)
        except (ValueError, TypeError, OverflowError) as exc:
            # A validly signed token whose claims a Struct cannot carry (say, a 400-digit number).
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"{SERIALIZE_FAILED}: claims: {exc}")
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id), claims=struct)

    # WIT-SVID profile: not supported

    async def _fetch_wit_svid(
        self, request: workload_pb2.WITSVIDRequest, context: _Context
    ) -> AsyncGenerator[workload_pb2.WITSVIDResponse, None]:
        await self._check_header(context)
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, WIT_UNIMPLEMENTED)
        yield workload_pb2.WITSVIDResponse()  # pragma: no cover - makes this a stream handler

    async def _fetch_wit_bundles(
        self, request: workload_pb2.WITBundlesRequest, context: _Context
    ) -> AsyncGenerator[workload_pb2.WITBundlesResponse, None]:
        await self._check_header(context)
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, WIT_UNIMPLEMENTED)
        yield workload_pb2.WITBundlesResponse()  # pragma: no cover - makes this a stream handler

    # Shared

    def _bundles_for(self, identities: Sequence[Identity]) -> dict[TrustDomain, Bundle]:
        """Own trust domain's bundle plus the federated ones the entries federate with."""
        own = self._manager.bundle
        bundles = {} if own is None else {own.trust_domain: own}
        bundles.update(_federated_for(identities, self._manager.federated_bundles))
        return bundles

    async def _bundle_stream(
        self,
        context: _Context,
        selectors: frozenset[Selector],
        build: Callable[[dict[TrustDomain, Bundle]], _M],
    ) -> AsyncGenerator[_M, None]:
        """A bundle stream for a caller with at least one entry; equal messages are skipped."""
        with self._manager.subscribe() as subscription:
            sent: _M | None = None
            while True:
                matching = self._manager.identities_for(selectors)
                if not matching:
                    await _abort(context, grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)
                if self._manager.bundle is not None:
                    response = build(self._bundles_for(matching))
                    if response != sent:
                        yield response
                        sent = response
                await subscription.wait()


@dataclass(frozen=True)
class X509View:
    """What a caller with one selector set is sent on FetchX509SVID at one manager generation.

    ``matched`` False: no entry matches (PERMISSION_DENIED). ``response`` None: every matching
    entry's SVID is still being minted, or there is no bundle yet. ``state`` is what the
    response is made of, compared by streams to skip resending an equal message.
    """

    matched: bool
    state: tuple[object, ...] | None = None
    response: workload_pb2.X509SVIDResponse | None = None
    expires_at: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class X509Views:
    """`X509View`s built once per manager generation and selector set, shared by every stream.

    A change wakes every open stream; streams of callers with the same selectors (one
    workload's many streams, or replicas) then share one lookup and one message instead of
    each building its own. A view is rebuilt when the manager's generation moves on or an SVID
    in it expires; at most ``memory`` selector sets are kept between two changes.
    """

    def __init__(
        self,
        manager: SvidManager,
        dedupe: Callable[[Sequence[Identity]], list[Identity]],
        memory: int = _VIEW_MEMORY,
    ) -> None:
        self._manager = manager
        self._dedupe = dedupe
        self._memory = memory
        self._generation = -1
        self._views: dict[frozenset[Selector], X509View] = {}
        self.built = 0
        """Views built so far (each one a lookup and a message), for tests and benchmarks."""

    def get(self, selectors: frozenset[Selector]) -> X509View:
        manager = self._manager
        if manager.generation != self._generation or len(self._views) >= self._memory:
            self._views.clear()
            self._generation = manager.generation
        view = self._views.get(selectors)
        if view is None or view.expired(manager.clock.now()):
            view = self._views[selectors] = self._build(selectors)
        return view

    def _build(self, selectors: frozenset[Selector]) -> X509View:
        self.built += 1
        matching = self._manager.identities_for(selectors)
        if not matching:
            return X509View(matched=False)
        served = [i for i in self._dedupe(matching) if i.svid is not None]
        bundle = self._manager.bundle
        if not served or bundle is None:
            return X509View(matched=True)
        federated = _federated_for(served, self._manager.federated_bundles)
        return X509View(
            matched=True,
            state=_x509_state(served, bundle, federated),
            response=_x509_response(served, bundle, federated),
            expires_at=min(i.svid.expires_at for i in served if i.svid is not None),
        )


def _x509_state(
    served: Sequence[Identity], bundle: Bundle, federated: dict[TrustDomain, Bundle]
) -> tuple[object, ...]:
    """What an X509SVIDResponse is made of, compared without building the message.

    SVIDs are compared by object identity: the manager stores a new object for every mint.
    """
    return (
        tuple((i.entry.id, i.entry.spiffe_id, i.entry.hint, id(i.svid), i.svid) for i in served),
        bundle,
        tuple(federated.items()),
    )


def _x509_response(
    served: Sequence[Identity], bundle: Bundle, federated: dict[TrustDomain, Bundle]
) -> workload_pb2.X509SVIDResponse:
    own = bundle.x509_der()
    svids = []
    for identity in served:
        svid = identity.svid
        assert svid is not None  # served holds only identities with an SVID
        svids.append(
            workload_pb2.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_der(),
                bundle=own,
                hint=identity.entry.hint,
            )
        )
    return workload_pb2.X509SVIDResponse(
        svids=svids,
        federated_bundles={bundle_key(td): b.x509_der() for td, b in federated.items()},
    )


def _jwt_error(exc: SvidManagerError) -> tuple[grpc.StatusCode, str]:
    """SvidManagerError → the Workload API's code and message (SPIRE's wording)."""
    if exc.code == grpc.StatusCode.PERMISSION_DENIED:
        # The entry went away between matching and minting.
        return grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY
    if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.UNAVAILABLE, f"{JWT_FETCH_FAILED}: {exc}"


def _register_health(server: grpc.aio.Server) -> None:
    """grpc.health.v1 on the same socket, SERVING for the whole server and for the Workload API."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    # The service is registered before the server starts; the status is set when it runs.
    task = asyncio.get_running_loop().create_task(_set_serving(servicer))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _set_serving(servicer: health.aio.HealthServicer) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    await servicer.set("", serving)
    await servicer.set(SERVICE_NAME, serving)


def _register_reflection(server: grpc.aio.Server) -> None:
    names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
