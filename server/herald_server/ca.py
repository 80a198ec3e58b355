"""The CA manager: the only holder of herald's signing keys; it rotates them and signs SVIDs.

Rotation policy. X.509 CAs and JWT signing keys live in slots that go prepared → active →
retired. A JWT key's lifetime is ``ca_ttl``, like a CA's. For the active slot, issued at I with
lifetime L (NotAfter = I + L):

* at I + L/3 the next slot is **prepared**: generated, saved, and published in the bundle;
* at I + L/2 the prepared slot is **activated** and signs everything from then on, and the old
  one is **retired**: it stays in the bundle;
* at its NotAfter a retired slot is **dropped** from the bundle. Every SVID it signed has expired
  by then, because an SVID's NotAfter (a JWT-SVID's ``exp``) is capped at its issuer's.

So an SVID of any TTL ≤ L/2 is never cut short (the last one the old CA signs, just before
I + L/2, expires before I + L), and every new CA is in every bundle L/6 before it signs anything.
SPIRE prepares at L/2 and activates near the end, which leaves only ~L/6 for SVIDs that are never
cut short. The bundle's ``spiffe_sequence`` grows by one with every change of its content and is
saved with the state, so it never goes backwards, across restarts and replicas alike.

Each prepared slot records when it activates, and signing picks the slot due at the moment of
signing. Every replica therefore switches at the same instant, even before the leader's write
of the activation reaches it. When the server was down across the preparation time, the next slot
is published at restart and activates at the usual time if that leaves it at least L/12 in the
bundle first, else L/12 after publication (at the latest at the old slot's NotAfter); SVIDs the old
CA signs meanwhile are capped at its NotAfter. Only when no usable slot is left
(first start, or a store untouched for a whole CA lifetime) does a new one sign at once.

Leaders call ``rotate`` at ``next_rotation_at``; every replica reads the same state from the
KeyStore, followers through ``adopt``. Signing is synchronous and thread-safe: it reads one
immutable snapshot, which updates swap whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.entry import RESERVED_PATH, EntryError, check_dns_name, is_reserved_id
from herald_core.jwtsvid import JwtSvidError, mint_jwt_svid
from herald_core.keys import KeyType, PrivateKey, PublicKey, generate_key, public_key_to_der
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import (
    NOT_BEFORE_CUSHION,
    SvidIssuer,
    X509SvidError,
    make_ca_certificate,
    svid_validity,
)
from herald_server.agents import AGENT_PATH
from herald_server.keystore import (
    CAState,
    JwtSlot,
    KeyStore,
    KeyStoreConflict,
    KeyStoreError,
    SlotStatus,
    X509Slot,
)
from herald_server.upstream import UpstreamAuthority, UpstreamError

log = logging.getLogger(__name__)

SERVER_ID_SEGMENTS: Final = ("herald", "server")
"""The server's own SPIFFE ID is ``spiffe://<td>/herald/server``."""
"""IDs under this path belong to herald's own components; workloads never get them."""
MIN_CA_TTL: Final = timedelta(minutes=1)
JWT_KID_LENGTH: Final = 32
_KID_ALPHABET: Final = string.ascii_letters + string.digits
_SAVE_ATTEMPTS: Final = 3
_MAX_CACHED_ISSUERS: Final = 8
_ONE_SECOND: Final = timedelta(seconds=1)

BundleListener = Callable[[Bundle], None]


class CAError(Exception):
    """The CA cannot do what was asked; the message says why (and what to do, when it can)."""


@dataclass(frozen=True)
class CASettings:
    """How the CA manager mints and rotates. SVID TTLs are defaults; a caller may ask for others.

    Durations are whole seconds: certificate and JWT times have one-second resolution.
    """

    trust_domain: TrustDomain
    key_type: KeyType = KeyType.EC_P256
    ca_ttl: timedelta = timedelta(hours=24)
    x509_svid_ttl: timedelta = timedelta(hours=1)
    jwt_svid_ttl: timedelta = timedelta(minutes=5)
    jwt_key_type: KeyType = KeyType.EC_P256
    agent_svid_ttl: timedelta = timedelta(hours=1)
    refresh_hint: timedelta = timedelta(minutes=5)
    server_dns_names: tuple[str, ...] = ()
    upstream: UpstreamAuthority | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise CAError(f"trust_domain must be a TrustDomain, not {self.trust_domain!r}")
        for name in ("key_type", "jwt_key_type"):
            if not isinstance(getattr(self, name), KeyType):
                raise CAError(f"{name} must be one of {', '.join(k.value for k in KeyType)}")
        for name in ("ca_ttl", "x509_svid_ttl", "jwt_svid_ttl", "agent_svid_ttl", "refresh_hint"):
            _check_duration(name, getattr(self, name))
        if self.ca_ttl < MIN_CA_TTL:
            raise CAError(f"ca_ttl ({self.ca_ttl}) must be at least {MIN_CA_TTL}")
        for name in ("x509_svid_ttl", "agent_svid_ttl", "jwt_svid_ttl"):
            ttl: timedelta = getattr(self, name)
            if ttl * 2 >= self.ca_ttl:
                raise CAError(
                    f"{name} ({ttl}) must be less than half of ca_ttl ({self.ca_ttl}): each CA "
                    "and JWT key hands over to the next at half its life, so a longer SVID "
                    "would be cut short at its issuer's expiry"
                )
        if self.refresh_hint >= self.ca_ttl:
            raise CAError(
                f"refresh_hint ({self.refresh_hint}) must be less than ca_ttl ({self.ca_ttl}), "
                "or bundle consumers would miss CA rotations"
            )
        if isinstance(self.server_dns_names, str):
            raise CAError("server_dns_names must be a tuple of DNS names, not one string")
        for name in self.server_dns_names:
            try:
                check_dns_name(name)
            except EntryError as exc:
                problem = str(exc).removeprefix("dnsNames: ")
                raise CAError(f"server_dns_names: {problem}") from exc
        if self.upstream is not None and not isinstance(self.upstream, UpstreamAuthority):
            raise CAError("upstream must be an UpstreamAuthority")

    @property
    def server_id(self) -> SpiffeId:
        return SpiffeId.from_segments(self.trust_domain, *SERVER_ID_SEGMENTS)


def _check_duration(name: str, value: timedelta) -> None:
    if not isinstance(value, timedelta):
        raise CAError(f"{name} must be a timedelta, not {type(value).__name__}")
    if value < _ONE_SECOND or value.microseconds:
        raise CAError(f"{name} ({value}) must be a positive whole number of seconds")


@dataclass(frozen=True)
class _Snapshot:
    """One consistent view of the CA: what signing and publishing read, swapped whole."""

    state: CAState
    version: str | None
    bundle: Bundle


@dataclass(frozen=True)
class _ServerTls:
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    issuer: x509.Certificate
    refresh_at: datetime


_Slot = TypeVar("_Slot", bound=X509Slot | JwtSlot)
_Create = Callable[[datetime, datetime, SlotStatus], _Slot]


@dataclass(frozen=True)
class X509Issuance:
    """The issuing CA of the moment and the (NotBefore, NotAfter) windows asked for."""

    cert: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...]
    windows: tuple[tuple[datetime, datetime], ...]


class CAManager:
    """Holds the CA state, rotates it (leader), follows it (others), and signs with it."""

    def __init__(
        self, settings: CASettings, keystore: KeyStore, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._settings = settings
        self._store = keystore
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._update_lock = asyncio.Lock()
        self._tls_lock = threading.Lock()
        self._tls: _ServerTls | None = None
        self._listeners: list[BundleListener] = []
        # Checking an issuer costs about as much as signing a leaf; do it once per CA.
        self._issuers: dict[x509.Certificate, SvidIssuer] = {}

    @property
    def settings(self) -> CASettings:
        return self._settings

    async def start(self, *, leader: bool = True) -> None:
        """Load the state. An empty store gets its first CA and JWT key from the leader; a
        follower waits (on the store's watch) until the leader has written them, so bound the
        wait with ``asyncio.timeout`` if it must end. A leader then catches up with any rotation
        that fell due while no server ran; if that fails, start raises and the manager stays
        unstarted, so start can simply be retried.
        """
        async with self._update_lock:
            if self._snapshot is not None:
                raise CAError("the CA manager is already started")
            loaded = await self._load()
            if loaded is None and leader:
                loaded = await self._create_first_state()
            elif loaded is None:
                log.info("waiting for the leader to create the CA: trust_domain=%s", self._td)
                loaded = await self._first_watched_state()
            state, version = loaded
            self._check_trust_domain(state)
            self._install(state, version)
        if not leader:
            self._follow_server_tls()
            return
        try:
            await self.rotate()
        except CAError:
            self._snapshot = None
            raise

    async def rotate(self) -> bool:
        """Prepare, activate and drop slots as the clock says, save the state when it changed,
        and reissue the server's TLS certificate when it is past half its life or its CA no
        longer signs. Returns whether anything changed. Only the leader should call this.
        """
        async with self._update_lock:
            changed = await self._rotate_state(self._require())
        _, reissued = self._current_server_tls(self._clock.now())
        return reissued or changed

    def replace_upstream(self, upstream: UpstreamAuthority) -> None:
        """Sign CAs prepared from now on with a renewed upstream (cert-manager renews it at 2/3
        of its life). Existing CAs keep their chains, and their roots stay in the bundle until
        they are dropped, so a changed root is published before anything chains to it."""
        if not isinstance(upstream, UpstreamAuthority):
            raise CAError("upstream must be an UpstreamAuthority")
        self._settings = dataclasses.replace(self._settings, upstream=upstream)

    def next_rotation_at(self) -> datetime:
        """When ``rotate`` next has work (possibly already past: call it now)."""
        state = self._require().state
        times = [*_due_times(state.x509_slots), *_due_times(state.jwt_slots)]
        tls = self._tls
        if tls is not None:
            times.append(tls.refresh_at)
        return min(times)

    async def adopt(self, state: CAState, version: str | None = None) -> bool:
        """Take a state another replica saved (from ``KeyStore.watch``). A state no newer than
        the current one (by revision) is ignored. Returns whether it was taken."""
        async with self._update_lock:
            self._check_trust_domain(state)
            current = self._require().state
            if state.revision <= current.revision:
                return False
            if state.sequence < current.sequence:
                log.error(
                    "ignoring a CA state whose bundle sequence goes backwards: "
                    "revision=%d sequence=%d current_sequence=%d",
                    state.revision,
                    state.sequence,
                    current.sequence,
                )
                return False
            self._install(state, version)
        self._follow_server_tls()
        return True

    def bundle(self) -> Bundle:
        """The trust domain's bundle: the X.509 roots of every prepared, active and retired CA
        (herald's own CAs, or the upstream roots), every JWT key, the sequence and refresh hint.
        """
        return self._require().bundle

    def issuing_authorities(self) -> tuple[x509.Certificate, ...]:
        """herald's own CA certificates (prepared, active, retired): the direct issuers of every
        SVID herald signs. Unlike the bundle under an upstream, they exclude sibling CAs."""
        return tuple(slot.cert for slot in self._require().state.x509_slots)

    def add_bundle_listener(self, callback: BundleListener) -> None:
        """Call ``callback(bundle)`` on the event loop's thread after every bundle change."""
        self._listeners.append(callback)

    def remove_bundle_listener(self, callback: BundleListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def x509_ca_expires_at(self) -> datetime:
        """NotAfter of the CA that signs X.509-SVIDs now."""
        return self._x509_signer(self._clock.now()).not_after

    def sign_x509_svid(
        self,
        public_key: PublicKey,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> list[x509.Certificate]:
        """A workload X.509-SVID: the leaf, then the intermediates up to (not including) the
        root. TTL None means ``x509_svid_ttl``; NotAfter is capped at the issuing CA's."""
        if is_reserved_id(spiffe_id):
            raise CAError(f"{spiffe_id} is in herald's reserved {RESERVED_PATH} namespace")
        return self._sign_leaf(
            public_key, spiffe_id, _ttl(ttl, self._settings.x509_svid_ttl), dns_names
        )

    def x509_issuance(self, ttls: Sequence[timedelta | None]) -> X509Issuance:
        """Everything signing workload SVIDs right now needs, for one validity window per TTL.

        For signers outside this object (the signing worker processes); ``sign_x509_svid`` is
        the same issuance done here.
        """
        now = self._clock.now()
        slot = self._x509_signer(now)
        default = self._settings.x509_svid_ttl
        windows = tuple(svid_validity(now, _ttl(ttl, default), slot.not_after) for ttl in ttls)
        return X509Issuance(slot.cert, slot.key, slot.intermediates, windows)

    def sign_agent_svid(
        self, public_key: PublicKey, agent_id: SpiffeId, *, ttl: timedelta | None = None
    ) -> list[x509.Certificate]:
        """An agent's X.509-SVID (chain as for workloads); TTL None means ``agent_svid_ttl``."""
        if not agent_id.path.startswith(AGENT_PATH):
            raise CAError(f"{agent_id} is not an agent ID (spiffe://<td>{AGENT_PATH}...)")
        return self._sign_leaf(public_key, agent_id, _ttl(ttl, self._settings.agent_svid_ttl), ())

    def server_tls(self) -> tuple[list[x509.Certificate], PrivateKey]:
        """The server's own SVID (``spiffe://<td>/herald/server`` plus ``server_dns_names``) and
        its key, for the agent API's TLS; reissued once past half its life or when its CA hands
        over, so call it for every handshake."""
        tls, _ = self._current_server_tls(self._clock.now())
        return list(tls.chain), tls.key

    def sign_jwt_svid(
        self, spiffe_id: SpiffeId, audiences: Sequence[str], *, ttl: timedelta | None = None
    ) -> tuple[str, datetime, datetime]:
        """A JWT-SVID signed with the active JWT key: (token, issued_at, expires_at). TTL None
        means ``jwt_svid_ttl``; ``exp`` is capped at the key's expiry."""
        if is_reserved_id(spiffe_id):
            raise CAError(f"{spiffe_id} is in herald's reserved {RESERVED_PATH} namespace")
        lifetime = _ttl(ttl, self._settings.jwt_svid_ttl)
        now = self._clock.now()
        slot = self._jwt_signer(now)
        issued_at = _whole_seconds(now)
        expires_at = _whole_seconds(min(issued_at + lifetime, slot.not_after))
        if expires_at - issued_at < _ONE_SECOND:
            raise CAError(f"JWT key {slot.kid} expires at {slot.not_after.isoformat()}")
        try:
            token = mint_jwt_svid(
                key=slot.key,
                key_id=slot.kid,
                spiffe_id=spiffe_id,
                audiences=audiences,
                issued_at=issued_at,
                expires_at=expires_at,
            )
        except JwtSvidError as exc:
            raise CAError(f"cannot sign a JWT-SVID for {spiffe_id}: {exc}") from exc
        return token, issued_at, expires_at

    @property
    def _td(self) -> TrustDomain:
        return self._settings.trust_domain

    def _require(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None:
            raise CAError("the CA manager is not started")
        return snapshot

    def _check_trust_domain(self, state: CAState) -> None:
        if state.trust_domain != self._td:
            raise CAError(
                f"the stored CA state is for trust domain {state.trust_domain}, but this server "
                f"is configured for {self._td}; a trust domain cannot be renamed (point the "
                "server at an empty store to start a new trust domain)"
            )

    async def _load(self) -> tuple[CAState, str] | None:
        try:
            return await self._store.load()
        except KeyStoreError as exc:
            raise CAError(f"cannot load the CA state: {exc}") from exc

    async def _create_first_state(self) -> tuple[CAState, str]:
        empty = CAState(self._td, (), (), sequence=0, refresh_hint=0, revision=0)
        planned = await asyncio.to_thread(self._plan, empty, self._clock.now())
        assert planned is not None  # an empty state always needs its first CA and JWT key
        state, events = planned
        try:
            version = await self._store.save(state, version=None)
        except KeyStoreConflict:
            # Another replica created it first: theirs is the trust domain now.
            loaded = await self._load()
            if loaded is None:
                raise CAError("the CA state was created and deleted concurrently") from None
            return loaded
        except KeyStoreError as exc:
            raise CAError(f"cannot save the first CA state: {exc}") from exc
        _log_events(events)
        return state, version

    async def _first_watched_state(self) -> tuple[CAState, str]:
        try:
            async with contextlib.aclosing(self._store.watch()) as states:
                async for found in states:
                    return found
        except KeyStoreError as exc:
            raise CAError(f"cannot watch the CA state: {exc}") from exc
        raise CAError("the CA state watch ended before the leader created the CA")

    async def _rotate_state(self, snapshot: _Snapshot) -> bool:
        for _ in range(_SAVE_ATTEMPTS):
            planned = await asyncio.to_thread(self._plan, snapshot.state, self._clock.now())
            if planned is None:
                return False
            state, events = planned
            try:
                version = await self._store.save(state, version=snapshot.version)
            except KeyStoreConflict as exc:
                log.warning("the CA state changed in the store, reloading: %s", exc)
                snapshot = await self._reload()
                continue
            except KeyStoreError as exc:
                raise CAError(f"cannot save the CA state: {exc}") from exc
            _log_events(events)
            self._install(state, version)
            return True
        raise CAError(
            f"the CA state changed in the store {_SAVE_ATTEMPTS} times while this server "
            "rotated it; is a second leader writing it?"
        )

    async def _reload(self) -> _Snapshot:
        current = self._require()
        loaded = await self._load()
        if loaded is None:
            # The stored state was deleted: write ours back, as if the store were new.
            log.warning("the stored CA state is gone; writing this server's copy back")
            self._snapshot = dataclasses.replace(current, version=None)
        else:
            state, version = loaded
            self._check_trust_domain(state)
            if state.revision > current.state.revision:
                self._install(state, version)
            else:
                log.warning(
                    "the stored CA state is older than this server's (revision %d < %d); "
                    "replacing it",
                    state.revision,
                    current.state.revision,
                )
                self._snapshot = dataclasses.replace(current, version=version)
        return self._require()

    def _install(self, state: CAState, version: str | None) -> None:
        previous = self._snapshot
        bundle = _bundle_of(state)
        self._snapshot = _Snapshot(state, version, bundle)
        if previous is not None and previous.bundle.sequence_number == bundle.sequence_number:
            return
        for listener in list(self._listeners):
            try:
                listener(bundle)
            except Exception:
                log.exception("a bundle listener failed: listener=%r", listener)

    def _plan(self, state: CAState, now: datetime) -> tuple[CAState, list[str]] | None:
        """The state ``now`` calls for and what changed, or None when nothing is due."""
        events: list[str] = []
        x509_slots = _settle(state.x509_slots, now, self._new_x509_slot, events)
        jwt_slots = _settle(state.jwt_slots, now, self._new_jwt_slot, events)
        refresh_hint = int(self._settings.refresh_hint.total_seconds())
        if not events and refresh_hint == state.refresh_hint:
            return None
        planned = dataclasses.replace(
            state,
            x509_slots=x509_slots,
            jwt_slots=jwt_slots,
            refresh_hint=refresh_hint,
            revision=state.revision + 1,
        )
        if _content(planned) != _content(state):
            planned = dataclasses.replace(planned, sequence=state.sequence + 1)
        return planned, events

    def _new_x509_slot(self, now: datetime, activate_at: datetime, status: SlotStatus) -> X509Slot:
        issued_at = _whole_seconds(now)
        key = generate_key(self._settings.key_type)
        try:
            chain, roots = self._ca_chain(key, issued_at, now)
        except (X509SvidError, UpstreamError) as exc:
            raise CAError(f"cannot create an X.509 CA: {exc}") from exc
        not_after = chain[0].not_valid_after_utc
        if not_after < issued_at + self._settings.ca_ttl:
            log.warning(
                "the upstream CA caps the new CA's life: upstream_not_after=%s; renew it",
                not_after.isoformat(),
            )
        return X509Slot(status, chain, key, roots, issued_at, activate_at)

    def _ca_chain(
        self, key: PrivateKey, issued_at: datetime, now: datetime
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        """A new CA certificate's chain (itself, then upstream intermediates) and its roots."""
        not_before = issued_at - NOT_BEFORE_CUSHION
        not_after = issued_at + self._settings.ca_ttl
        upstream = self._settings.upstream
        if upstream is None:
            cert = make_ca_certificate(key, self._td, not_before=not_before, not_after=not_after)
            return (cert,), (cert,)
        upstream.check_valid_at(now)
        cert = make_ca_certificate(
            key,
            self._td,
            not_before=not_before,
            not_after=not_after,
            issuer_cert=upstream.cert,
            issuer_key=upstream.key,
        )
        return (cert, *upstream.intermediates), upstream.roots

    def _new_jwt_slot(self, now: datetime, activate_at: datetime, status: SlotStatus) -> JwtSlot:
        issued_at = _whole_seconds(now)
        kid = "".join(secrets.choice(_KID_ALPHABET) for _ in range(JWT_KID_LENGTH))
        key = generate_key(self._settings.jwt_key_type)
        not_after = issued_at + self._settings.ca_ttl
        return JwtSlot(status, kid, key, issued_at, not_after, activate_at)

    def _x509_signer(self, now: datetime) -> X509Slot:
        return _signer(self._require().state.x509_slots, now, "X.509 CA")

    def _jwt_signer(self, now: datetime) -> JwtSlot:
        return _signer(self._require().state.jwt_slots, now, "JWT key")

    def _sign_leaf(
        self,
        public_key: PublicKey,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        dns_names: Sequence[str],
    ) -> list[x509.Certificate]:
        now = self._clock.now()
        slot = self._x509_signer(now)
        try:
            not_before, not_after = svid_validity(now, ttl, slot.not_after)
            leaf = self._issuer(slot).leaf(
                public_key,
                spiffe_id,
                not_before=not_before,
                not_after=not_after,
                dns_names=dns_names,
            )
        except X509SvidError as exc:
            raise CAError(f"cannot sign an X.509-SVID for {spiffe_id}: {exc}") from exc
        return [leaf, *slot.intermediates]

    def _issuer(self, slot: X509Slot) -> SvidIssuer:
        issuer = self._issuers.get(slot.cert)
        if issuer is None:
            issuer = SvidIssuer(slot.cert, slot.key)
            # Rotation retires a CA every third of a lifetime; keep only the recent ones.
            if len(self._issuers) >= _MAX_CACHED_ISSUERS:
                self._issuers.clear()
            self._issuers[slot.cert] = issuer
        return issuer

    def _follow_server_tls(self) -> None:
        # A follower's state can be stale until the leader rotates; server_tls() retries then.
        try:
            self._current_server_tls(self._clock.now())
        except CAError as exc:
            log.warning("cannot issue the server TLS certificate yet: %s", exc)

    def _current_server_tls(self, now: datetime) -> tuple[_ServerTls, bool]:
        """The server's certificate, reissued first if needed, and whether it was."""
        with self._tls_lock:
            signer = self._x509_signer(now)
            tls = self._tls
            if tls is not None and tls.issuer == signer.cert and now < tls.refresh_at:
                return tls, False
            key = generate_key(KeyType.EC_P256)
            chain = self._sign_leaf(
                key.public_key(),
                self._settings.server_id,
                self._settings.x509_svid_ttl,
                self._settings.server_dns_names,
            )
            leaf = chain[0]
            half_life = (leaf.not_valid_after_utc - now) / 2
            self._tls = _ServerTls(tuple(chain), key, signer.cert, now + half_life)
            log.info(
                "server TLS certificate issued: spiffe_id=%s not_after=%s",
                self._settings.server_id,
                leaf.not_valid_after_utc.isoformat(),
            )
            return self._tls, True


def _find(slots: Sequence[_Slot], status: SlotStatus) -> _Slot | None:
    return next((slot for slot in slots if slot.status is status), None)


def _lifetime(slot: X509Slot | JwtSlot) -> timedelta:
    return slot.not_after - slot.issued_at


def _prepare_next_at(slot: X509Slot | JwtSlot) -> datetime:
    return slot.issued_at + _lifetime(slot) / 3


def _hand_over_at(slot: X509Slot | JwtSlot) -> datetime:
    return slot.issued_at + _lifetime(slot) / 2


def _name(slot: X509Slot | JwtSlot) -> str:
    if isinstance(slot, X509Slot):
        return f"x509 CA serial={slot.serial_hex}"
    return f"JWT key kid={slot.kid}"


def _step(
    slots: tuple[_Slot, ...], now: datetime, create: _Create[_Slot]
) -> tuple[tuple[_Slot, ...], str] | None:
    """One change the schedule calls for at ``now``, with its log line; None when none is due."""
    active = _find(slots, SlotStatus.ACTIVE)
    prepared = _find(slots, SlotStatus.PREPARED)
    if (
        prepared is not None
        and prepared.not_after > now
        and (prepared.activate_at <= now or active is None or active.not_after <= now)
    ):
        promoted = dataclasses.replace(
            prepared, status=SlotStatus.ACTIVE, activate_at=min(prepared.activate_at, now)
        )
        rest: tuple[_Slot, ...] = tuple(
            dataclasses.replace(slot, status=SlotStatus.RETIRED) if slot is active else slot
            for slot in slots
            if slot is not prepared
        )
        return (*rest, promoted), f"{_name(prepared)} activated"
    for slot in slots:
        if slot.status is not SlotStatus.ACTIVE and slot.not_after <= now:
            kept = tuple(other for other in slots if other is not slot)
            return kept, f"{_name(slot)} dropped from the bundle after its expiry"
    if active is not None and active.not_after <= now:
        retired = dataclasses.replace(active, status=SlotStatus.RETIRED)
        kept = tuple(retired if slot is active else slot for slot in slots)
        return kept, f"{_name(active)} expired while active; no successor was ready"
    if active is None:
        fresh = create(now, now, SlotStatus.ACTIVE)
        return (*slots, fresh), f"{_name(fresh)} created and activated at once"
    if prepared is None and now >= _prepare_next_at(active):
        # On time, the new slot is published L/6 before it signs. Prepared late (the server
        # was down), it still gets L/12, and the old slot signs, capped, until then.
        min_lead = (_hand_over_at(active) - _prepare_next_at(active)) / 2
        activate_at = min(max(_hand_over_at(active), now + min_lead), active.not_after)
        fresh = create(now, activate_at, SlotStatus.PREPARED)
        return (*slots, fresh), (
            f"{_name(fresh)} prepared: activate_at={fresh.activate_at.isoformat()} "
            f"not_after={fresh.not_after.isoformat()}"
        )
    return None


def _settle(
    slots: tuple[_Slot, ...], now: datetime, create: _Create[_Slot], events: list[str]
) -> tuple[_Slot, ...]:
    """Apply due changes until none is left (several, after a long stop)."""
    while (step := _step(slots, now, create)) is not None:
        slots, event = step
        events.append(event)
    return slots


def _due_times(slots: Sequence[X509Slot] | Sequence[JwtSlot]) -> list[datetime]:
    times = [slot.not_after for slot in slots]
    prepared = next((slot for slot in slots if slot.status is SlotStatus.PREPARED), None)
    active = next((slot for slot in slots if slot.status is SlotStatus.ACTIVE), None)
    if prepared is not None:
        times.append(prepared.activate_at)
    elif active is not None:
        times.append(_prepare_next_at(active))
    return times


def _signer(slots: tuple[_Slot, ...], now: datetime, kind: str) -> _Slot:
    """The slot that signs at ``now``: the prepared one once its time has come (even before
    rotate records it), else the active one."""
    prepared = _find(slots, SlotStatus.PREPARED)
    if prepared is not None and prepared.activate_at <= now < prepared.not_after:
        return prepared
    active = _find(slots, SlotStatus.ACTIVE)
    if active is None:
        raise CAError(f"no active {kind}")
    if active.not_after <= now:
        raise CAError(
            f"the active {kind} expired at {active.not_after.isoformat()} and has no successor "
            "yet; the leader must rotate"
        )
    return active


def _roots(state: CAState) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for slot in sorted(state.x509_slots, key=lambda s: s.issued_at):
        roots.extend(root for root in slot.roots if root not in roots)
    return roots


def _bundle_of(state: CAState) -> Bundle:
    return Bundle(
        state.trust_domain,
        tuple(_roots(state)),
        {slot.kid: slot.key.public_key() for slot in state.jwt_slots},
        refresh_hint=state.refresh_hint,
        sequence_number=state.sequence,
    )


def _content(state: CAState) -> tuple[object, ...]:
    """What a bundle consumer sees, without the sequence number."""
    der = serialization.Encoding.DER
    return (
        tuple(root.public_bytes(der) for root in _roots(state)),
        tuple(
            sorted((slot.kid, public_key_to_der(slot.key.public_key())) for slot in state.jwt_slots)
        ),
        state.refresh_hint,
    )


def _ttl(ttl: timedelta | None, default: timedelta) -> timedelta:
    if ttl is None:
        return default
    if ttl <= timedelta(0):
        raise CAError(f"ttl must be positive, got {ttl}")
    return ttl


def _whole_seconds(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def _log_events(events: list[str]) -> None:
    for event in events:
        log.info("CA rotation: %s", event)
