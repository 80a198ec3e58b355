"""The node's identities: the entries the server streams to this agent and an SVID for each.

SvidManager runs three loops on the event loop:

- sync: SyncEntries, applying full snapshots (which replace everything) and deltas by entry ID,
  reconnecting with capped, jittered backoff when the stream breaks, cut short as soon as the
  channel connects again when the server was unreachable (a restarted server is followed within
  a second of answering, and entries whose signing failed meanwhile are retried at once);
- mint: a fresh EC P-256 key per entry (generated with its CSR in a worker thread), CSRs sent in
  batches of at most ``max_batch`` via BatchSignX509SVID, each SVID rotated at half its life
  ±10%, each failed entry retried on its own backoff while its still-valid SVID keeps serving;
- agent renewal: RenewAgent before the agent SVID passes half its life; once it has expired
  (the server was away longer than its lifetime) mTLS cannot renew it, so the agent attests
  again through ``reattest`` if it can (k8s_psat), and otherwise says so and stays not ready
  while still-valid workload SVIDs keep serving (a join token works once).

The Workload API reads it through ``identities_for`` (an EntryIndex lookup, not a scan),
``fetch_jwt`` (a bounded LRU of JWT-SVIDs per SPIFFE ID and audience set) and ``subscribe``
(a coalesced wake-up on any SVID, entry or bundle change; ``generation`` counts them).

Single-threaded by design: only the event loop's thread touches the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import grpc

from herald_agent.rotation import Backoff, random_jitter, rotation_time
from herald_agent.server_client import (
    RPC_TIMEOUT_SECONDS,
    Attested,
    ServerClient,
    ServerClientError,
)
from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.csr import make_csr
from herald_core.entry import Entry, EntryIndex
from herald_core.jwtsvid import jwt_cache_key, needs_refresh
from herald_core.keys import PrivateKey, generate_key
from herald_core.proto.herald.agent.v1 import agent_pb2
from herald_core.selector import Selector
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import bundle_from_proto, entry_from_proto
from herald_core.x509svid import X509Svid, parse_der_chain

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH: Final = 500
JWT_CACHE_SIZE: Final = 1000
_OK: Final = grpc.StatusCode.OK.value[0]
# An upper bound on how long the mint loop sleeps, so a clock that jumps is noticed.
_MAX_IDLE_SECONDS: Final = 30.0

# Attests the node again from scratch (the k8s_psat token is re-read each time).
Reattest = Callable[[], Awaitable[Attested]]
RotationKind = Literal["workload", "agent"]
# Told of each scheduled renewal: its kind and how many seconds past its planned time it came.
RotationHook = Callable[[RotationKind, float], None]


class SvidManagerError(Exception):
    """A request the manager cannot answer; ``code`` is the gRPC status to report."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Identity(NamedTuple):
    """An entry a caller matches and its current X.509-SVID (None while none is valid)."""

    entry: Entry
    svid: X509Svid | None


@dataclass(frozen=True)
class _Held:
    """An SVID with the entry fields it was minted for and when to rotate it."""

    svid: X509Svid
    spec: tuple[SpiffeId, tuple[str, ...], int]
    rotate_at: dt.datetime


@dataclass(frozen=True)
class _Jwt:
    token: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    jitter: float


@dataclass
class Counters:
    """Plain counters for metrics wiring."""

    svids_minted: int = 0
    svid_rotations: int = 0
    svid_failures: int = 0
    svids_expired: int = 0
    batches: int = 0
    sync_reconnects: int = 0
    jwt_minted: int = 0
    jwt_cache_hits: int = 0
    jwt_stale_served: int = 0
    agent_renewals: int = 0


def _spec(entry: Entry) -> tuple[SpiffeId, tuple[str, ...], int]:
    """The entry fields an X.509-SVID depends on; a change to any of them means a re-mint."""
    return (entry.spiffe_id, entry.dns_names, entry.x509_svid_ttl)


def _keys_and_csrs(entries: Sequence[Entry]) -> list[tuple[PrivateKey, bytes]]:
    """CPU-bound: one fresh key and CSR per entry (run in a worker thread)."""
    pairs = []
    for entry in entries:
        key = generate_key()
        pairs.append((key, make_csr(key, entry.spiffe_id, entry.dns_names)))
    return pairs


def _parse_svid(entry: Entry, key: PrivateKey, chain_der: Sequence[bytes]) -> X509Svid:
    """The signed chain with its key. No hint: it can change without a re-mint, so readers take
    it from the entry."""
    chain = tuple(c for der in chain_der for c in parse_der_chain(der))
    return X509Svid(entry.spiffe_id, chain, key)


class Subscription:
    """A coalesced wake-up: any number of changes between two ``wait`` calls wake it once."""

    def __init__(self, manager: SvidManager) -> None:
        self._manager = manager
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()

    async def wait(self) -> None:
        """Block until something changed since the last wait (or since subscribing)."""
        await self._changed.wait()
        self._changed.clear()

    def close(self) -> None:
        self._manager._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SvidManager:
    """Entries, bundle and SVIDs of this node, kept current against herald-server."""

    def __init__(
        self,
        client: ServerClient,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_batch: int = DEFAULT_MAX_BATCH,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        jwt_cache_size: int = JWT_CACHE_SIZE,
        rng: random.Random | None = None,
        reattest: Reattest | None = None,
        on_rotation: RotationHook | None = None,
    ) -> None:
        if max_batch < 1 or jwt_cache_size < 1:
            raise ValueError("max_batch and jwt_cache_size must be at least 1")
        self.client = client
        self.clock = clock
        self.max_batch = max_batch
        self.jwt_cache_size = jwt_cache_size
        self.counters = Counters()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._reattest = reattest
        self._on_rotation = on_rotation
        self._stuck_logged = False
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._index = EntryIndex()
        self._held: dict[str, _Held] = {}
        self._retry: dict[str, tuple[Backoff, dt.datetime]] = {}
        self._bundle: Bundle | None = None
        self._federated: dict[TrustDomain, Bundle] = {}
        self._jwt: OrderedDict[str, _Jwt] = OrderedDict()
        self._jwt_inflight: dict[str, asyncio.Task[_Jwt]] = {}
        self._subscribers: set[Subscription] = set()
        self.generation = 0
        """Counts wake-ups: what readers see changes only with it (or as an SVID expires)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The entry stream is in sync from its first message until it breaks; _synced_at is the
        # last moment it was known to be (monotonic seconds).
        self._in_sync = False
        self._synced_at = time.monotonic()

    # Lifecycle

    async def start(self) -> None:
        self._bundle = self.client.bundle
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="herald-agent-sync"),
            asyncio.create_task(self._mint_loop(), name="herald-agent-mint"),
            asyncio.create_task(self._renew_loop(), name="herald-agent-renew"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._jwt_inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # What the Workload API reads

    def sync_age(self) -> float:
        """0 while the entry stream is in sync, else seconds since it last was (or since the
        manager was made, before the first sync)."""
        return 0.0 if self._in_sync else time.monotonic() - self._synced_at

    @property
    def ready(self) -> bool:
        """A valid agent SVID and a bundle: what /ready reports."""
        return self._bundle is not None and self.clock.now() < self.client.svid.expires_at

    @property
    def bundle(self) -> Bundle | None:
        return self._bundle

    @property
    def federated_bundles(self) -> dict[TrustDomain, Bundle]:
        return dict(self._federated)

    @property
    def entry_count(self) -> int:
        return len(self._index)

    @property
    def svid_count(self) -> int:
        return len(self._held)

    def svid(self, entry_id: str) -> X509Svid | None:
        """The entry's SVID if it is still valid now."""
        held = self._held.get(entry_id)
        if held is None or self.clock.now() >= held.svid.expires_at:
            return None
        return held.svid

    def identities_for(self, selectors: frozenset[Selector]) -> list[Identity]:
        """Entries the selectors match, sorted by entry ID, each with its valid SVID or None."""
        return [Identity(e, self.svid(e.id)) for e in self._index.matching(selectors)]

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        self._subscribers.add(subscription)
        return subscription

    def _changed(self) -> None:
        self.generation += 1
        for subscription in self._subscribers:
            subscription._notify()

    # JWT-SVIDs

    async def fetch_jwt(self, entry_id: str, audiences: Sequence[str]) -> str:
        """A JWT-SVID for the entry, from the cache until past half its life (±10%)."""
        entry = self._index.get(entry_id)
        if entry is None:
            raise SvidManagerError(
                grpc.StatusCode.PERMISSION_DENIED, f"entry {entry_id!r} is not on this node"
            )
        if not audiences or any(not a for a in audiences):
            raise SvidManagerError(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
        key = jwt_cache_key(entry.spiffe_id, audiences)
        cached = self._jwt.get(key)
        now = self.clock.now()
        if cached is not None and not needs_refresh(
            cached.issued_at, cached.expires_at, now, cached.jitter
        ):
            self._jwt.move_to_end(key)
            self.counters.jwt_cache_hits += 1
            return cached.token
        try:
            minted = await asyncio.shield(self._jwt_mint_task(key, entry, audiences))
        except grpc.aio.AioRpcError as exc:
            if cached is not None and now < cached.expires_at:
                self.counters.jwt_stale_served += 1
                log.warning(
                    "JWT-SVID re-mint failed, serving the cached one: spiffe_id=%s code=%s "
                    "detail=%s",
                    entry.spiffe_id,
                    exc.code().name,
                    exc.details(),
                )
                return cached.token
            raise SvidManagerError(exc.code(), exc.details() or "JWT-SVID signing failed") from exc
        return minted.token

    def _jwt_mint_task(
        self, key: str, entry: Entry, audiences: Sequence[str]
    ) -> asyncio.Task[_Jwt]:
        """One signing call per cache key at a time: concurrent callers share it.

        Shielded by the caller, so one caller giving up does not cancel it for the others.
        """
        task = self._jwt_inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._mint_jwt(key, entry, audiences))
            self._jwt_inflight[key] = task
            task.add_done_callback(functools.partial(self._jwt_mint_done, key))
        return task

    def _jwt_mint_done(self, key: str, task: asyncio.Task[_Jwt]) -> None:
        if self._jwt_inflight.get(key) is task:
            del self._jwt_inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a caller that gave up must not leave it unread

    async def _mint_jwt(self, key: str, entry: Entry, audiences: Sequence[str]) -> _Jwt:
        response = await self.client.stub().SignJWTSVID(
            agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=list(audiences)),
            timeout=RPC_TIMEOUT_SECONDS,
        )
        self.counters.jwt_minted += 1
        minted = _Jwt(
            response.token,
            dt.datetime.fromtimestamp(response.issued_at, dt.UTC),
            dt.datetime.fromtimestamp(response.expires_at, dt.UTC),
            random_jitter(self._rng),
        )
        self._remember_jwt(key, minted)
        return minted

    def _remember_jwt(self, key: str, minted: _Jwt) -> None:
        self._jwt[key] = minted
        self._jwt.move_to_end(key)
        while len(self._jwt) > self.jwt_cache_size:
            self._jwt.popitem(last=False)

    # Entry sync

    async def _sync_loop(self) -> None:
        backoff = Backoff(base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
        while True:
            generation = self.client.channel_generation
            unreachable = False
            try:
                async for message in self.client.stub().SyncEntries(agent_pb2.SyncEntriesRequest()):
                    self._apply(message)
                    self._synced(backoff)
                log.info("entry sync stream ended; reconnecting")
            except grpc.aio.AioRpcError as exc:
                if generation != self.client.channel_generation:
                    # The channel was replaced (renewal or new roots): move over at once.
                    log.info("entry sync moving to the new channel")
                    continue
                unreachable = exc.code() == grpc.StatusCode.UNAVAILABLE
                log.warning(
                    "entry sync stream broke: code=%s detail=%s", exc.code().name, exc.details()
                )
            except ValueError as exc:
                log.error("entry sync sent something unusable, reconnecting: %s", exc)
            self._lost_sync()
            self.counters.sync_reconnects += 1
            delay = backoff.next_delay()
            if unreachable:
                woke = await self.client.reconnected(generation, delay)
            else:
                woke = await self.client.channel_after(generation, delay)
            if woke:
                backoff.reset()

    def _synced(self, backoff: Backoff) -> None:
        """A sync message arrived: log the first one after a break, retry failed entries now."""
        if not self._in_sync:
            if self.counters.sync_reconnects:
                log.info(
                    "entry sync resumed: out of sync for %.1f s, entries=%d",
                    self.sync_age(),
                    self.entry_count,
                )
                if self._retry:
                    # Their backoff grew while the server was away; it answers again now.
                    self._retry.clear()
                    self._wake.set()
            self._in_sync = True
        self._synced_at = time.monotonic()
        backoff.reset()

    def _lost_sync(self) -> None:
        if self._in_sync:
            self._in_sync = False
            self._synced_at = time.monotonic()

    def _apply(self, message: agent_pb2.SyncEntriesResponse) -> None:
        """One SyncEntries message; parse everything first so a bad message changes nothing."""
        entries = [entry_from_proto(e) for e in message.entries]
        bundle = bundle_from_proto(message.bundle) if message.HasField("bundle") else None
        federated = [bundle_from_proto(b) for b in message.federated_bundles]
        changed = False
        if message.full:
            wanted = {e.id for e in entries}
            for stale in [e.id for e in self._index if e.id not in wanted]:
                changed |= self._remove_entry(stale)
        else:
            for entry_id in message.removed_entry_ids:
                changed |= self._remove_entry(entry_id)
        for entry in entries:
            changed |= self._put_entry(entry)
        if bundle is not None and bundle != self._bundle:
            self._bundle = bundle
            self.client.set_bundle(bundle)
            changed = True
        new_federated = {} if message.full else dict(self._federated)
        new_federated.update({b.trust_domain: b for b in federated})
        if new_federated != self._federated:
            self._federated = new_federated
            changed = True
        if changed:
            # A reconnect's snapshot usually equals what is held: then nobody is woken.
            self._wake.set()
            self._changed()

    def _put_entry(self, entry: Entry) -> bool:
        old = self._index.put(entry)
        if old is not None and _spec(old) == _spec(entry):
            return old != entry
        held = self._held.get(entry.id)
        if held is not None and held.spec[0] != entry.spiffe_id:
            # The entry no longer grants that identity: stop serving it now, not at rotation.
            del self._held[entry.id]
        self._retry.pop(entry.id, None)  # a new or changed entry is tried at once
        return True

    def _remove_entry(self, entry_id: str) -> bool:
        self._held.pop(entry_id, None)
        self._retry.pop(entry_id, None)
        return self._index.remove(entry_id) is not None

    # Minting

    def _needs_svid(self, entry: Entry, now: dt.datetime) -> bool:
        held = self._held.get(entry.id)
        return held is None or held.spec != _spec(entry) or now >= held.rotate_at

    def _due(self, now: dt.datetime) -> tuple[list[Entry], dt.datetime | None]:
        """Entries to mint now, and the earliest later moment something falls due."""
        due: list[Entry] = []
        upcoming: list[dt.datetime] = []
        for entry in self._index:
            held = self._held.get(entry.id)
            retry = self._retry.get(entry.id)
            if held is not None:
                # While retries fail, the held SVID's expiry is the next thing to act on.
                upcoming.append(held.svid.expires_at)
            if retry is not None and now < retry[1]:
                upcoming.append(retry[1])
            elif self._needs_svid(entry, now):
                due.append(entry)
            elif held is not None:
                upcoming.append(held.rotate_at)
        return due, min(upcoming, default=None)

    def _drop_expired(self, now: dt.datetime) -> None:
        """Forget SVIDs that expired (the server stayed away too long) and tell subscribers."""
        expired = [i for i, held in self._held.items() if now >= held.svid.expires_at]
        for entry_id in expired:
            log.warning("SVID expired before it could be renewed: entry_id=%s", entry_id)
            del self._held[entry_id]
        if expired:
            self.counters.svids_expired += len(expired)
            self._changed()

    async def _mint_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            self._drop_expired(now)
            due, next_at = self._due(now)
            for start in range(0, len(due), self.max_batch):
                await self._mint_batch_guarded(due[start : start + self.max_batch])
            if due:
                continue  # minting took time: look again before sleeping
            await self._sleep_until(next_at)

    async def _mint_batch_guarded(self, entries: list[Entry]) -> None:
        """One batch; an unexpected error is logged and retried per entry, never kills the loop."""
        try:
            await self._mint_batch(entries)
        except Exception:
            log.exception("SVID batch failed unexpectedly: entries=%d", len(entries))
            for entry in entries:
                self._failed(entry.id)

    async def _sleep_until(self, when: dt.datetime | None) -> None:
        delay = _MAX_IDLE_SECONDS
        if when is not None:
            delay = min(delay, max((when - self.clock.now()).total_seconds(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _mint_batch(self, entries: list[Entry]) -> None:
        pairs = await asyncio.to_thread(_keys_and_csrs, entries)
        request = agent_pb2.BatchSignX509SVIDRequest(
            params=[
                agent_pb2.X509SVIDParams(entry_id=e.id, csr=csr)
                for e, (_, csr) in zip(entries, pairs, strict=True)
            ]
        )
        self.counters.batches += 1
        try:
            response = await self.client.stub().BatchSignX509SVID(
                request, timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "SVID batch failed, keeping current SVIDs: entries=%d code=%s detail=%s",
                len(entries),
                exc.code().name,
                exc.details(),
            )
            for entry in entries:
                self._failed(entry.id)
            return
        results = {r.entry_id: r for r in response.results}
        signed = await asyncio.to_thread(self._parse_results, entries, pairs, results)
        changed = False
        for entry in entries:
            changed |= self._store(entry, signed.get(entry.id), results.get(entry.id))
        if changed:
            self._changed()

    @staticmethod
    def _parse_results(
        entries: Sequence[Entry],
        pairs: Sequence[tuple[PrivateKey, bytes]],
        results: dict[str, agent_pb2.X509SVIDResult],
    ) -> dict[str, X509Svid | str]:
        """CPU-bound: DER parsing and key/leaf checks; a string is the reason it failed."""
        parsed: dict[str, X509Svid | str] = {}
        for entry, (key, _) in zip(entries, pairs, strict=True):
            result = results.get(entry.id)
            if result is None or result.status.code != _OK:
                continue
            try:
                parsed[entry.id] = _parse_svid(entry, key, result.cert_chain)
            except ValueError as exc:
                parsed[entry.id] = f"unusable SVID: {exc}"
        return parsed

    def _store(
        self,
        entry: Entry,
        signed: X509Svid | str | None,
        result: agent_pb2.X509SVIDResult | None,
    ) -> bool:
        """Keep one signing result; True if the served state changed."""
        current = self._index.get(entry.id)
        if current is None or _spec(current) != _spec(entry):
            return False  # removed or changed while in flight: the mint loop takes it again
        if not isinstance(signed, X509Svid):
            reason = signed or (result.status.message if result else "no result for the entry")
            log.warning("SVID signing refused: entry_id=%s reason=%s", entry.id, reason)
            self._failed(entry.id)
            return False
        # Counted from receipt: the server backdates notBefore, which would rotate early.
        now = self.clock.now()
        start = max(signed.leaf.not_valid_before_utc, now)
        rotate_at = rotation_time(start, signed.expires_at, random_jitter(self._rng))
        previous = self._held.get(entry.id)
        rotated = previous is not None
        if previous is not None and now >= previous.rotate_at and self._on_rotation is not None:
            self._on_rotation("workload", (now - previous.rotate_at).total_seconds())
        self._held[entry.id] = _Held(signed, _spec(entry), rotate_at)
        self._retry.pop(entry.id, None)
        self.counters.svids_minted += 1
        self.counters.svid_rotations += rotated
        return True

    def _failed(self, entry_id: str) -> None:
        self.counters.svid_failures += 1
        previous = self._retry.get(entry_id)
        if previous is not None:
            backoff = previous[0]
        else:
            backoff = Backoff(base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
        retry_at = self.clock.now() + dt.timedelta(seconds=backoff.next_delay())
        self._retry[entry_id] = (backoff, retry_at)

    # Agent SVID renewal

    async def _renew_loop(self) -> None:
        backoff = Backoff(base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
        while True:
            svid = self.client.svid
            now = self.clock.now()
            if now >= svid.expires_at:
                await self._recover_expired(backoff)
                continue
            wait = (svid.renew_at - now).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, _MAX_IDLE_SECONDS))
                continue
            try:
                await self.client.renew()
            except (grpc.aio.AioRpcError, ServerClientError) as exc:
                log.warning("agent SVID renewal failed, retrying: %s", exc)
                # Not past expiry: from then on only a new attestation helps.
                left = (svid.expires_at - self.clock.now()).total_seconds()
                await asyncio.sleep(min(backoff.next_delay(), max(left, 0.0)))
                continue
            backoff.reset()
            self.counters.agent_renewals += 1
            if self._on_rotation is not None:
                self._on_rotation("agent", (self.clock.now() - svid.renew_at).total_seconds())

    async def _recover_expired(self, backoff: Backoff) -> None:
        """The agent SVID expired: attest again if the node attestor allows it, else wait."""
        expired_at = self.client.svid.expires_at
        if self._reattest is None:
            if not self._stuck_logged:
                self._stuck_logged = True
                log.error(
                    "agent SVID expired at %s and cannot be renewed, and this node attestor "
                    "cannot attest again (a join token works once): restart the agent with a "
                    "new join token; still-valid workload SVIDs keep being served",
                    expired_at.isoformat(),
                )
            await asyncio.sleep(_MAX_IDLE_SECONDS)
            return
        log.warning("agent SVID expired at %s; attesting the node again", expired_at.isoformat())
        try:
            attested = await self._reattest()
        except (grpc.aio.AioRpcError, ServerClientError) as exc:
            log.warning("node re-attestation failed, retrying: %s", exc)
            await asyncio.sleep(backoff.next_delay())
            return
        backoff.reset()
        self.client.adopt(attested)
        if attested.bundle != self._bundle:
            self._bundle = attested.bundle
            self._changed()
        self._wake.set()  # the mint loop looks again now that it can be served
