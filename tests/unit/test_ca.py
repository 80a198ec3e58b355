"""The CA manager: rotation walked with a fake clock, restarts, followers, upstreams, signing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from herald_core.bundle import Bundle
from herald_core.clock import FakeClock
from herald_core.jwtsvid import validate_jwt_svid
from herald_core.keys import KeyType, generate_key, public_key_to_der
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import NOT_BEFORE_CUSHION, spiffe_id_of, verify_chain
from herald_server.ca import CAError, CAManager, CASettings
from herald_server.keystore import DirKeyStore, SlotStatus
from herald_server.upstream import UpstreamAuthority
from tests.unit.test_upstream import make_pki

TD = TrustDomain("example.org")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
CA_TTL = timedelta(hours=24)
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
AGENT = SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/prod/node-1")
PUBLIC_KEY = generate_key().public_key()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def issuer_of(cert: x509.Certificate, candidates: tuple[x509.Certificate, ...]) -> x509.Certificate:
    for candidate in candidates:
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    raise AssertionError("no candidate issued the certificate")


def manager_on(
    path: Path, clock: FakeClock, *, settings: CASettings | None = None, poll: float = 1.0
) -> CAManager:
    return CAManager(settings or CASettings(TD), DirKeyStore(path, poll_interval=poll), clock)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"x509_svid_ttl": timedelta(hours=12)},
            r"x509_svid_ttl \(12:00:00\) must be less than half of ca_ttl \(1 day, 0:00:00\): "
            r"each CA and JWT key hands over to the next at half its life, so a longer SVID "
            r"would be cut short at its issuer's expiry",
        ),
        ({"agent_svid_ttl": timedelta(hours=13)}, r"agent_svid_ttl \(13:00:00\) must be less"),
        ({"jwt_svid_ttl": timedelta(hours=12)}, r"jwt_svid_ttl \(12:00:00\) must be less"),
        ({"ca_ttl": timedelta(seconds=30)}, r"ca_ttl \(0:00:30\) must be at least 0:01:00"),
        ({"x509_svid_ttl": timedelta(0)}, r"x509_svid_ttl \(0:00:00\) must be a positive whole"),
        ({"refresh_hint": timedelta(seconds=1.5)}, r"refresh_hint \(0:00:01.500000\) must be"),
        ({"refresh_hint": timedelta(hours=24)}, r"refresh_hint \(1 day, 0:00:00\) must be less"),
        ({"key_type": "ec-p256"}, "key_type must be one of ec-p256, ec-p384"),
        ({"server_dns_names": "herald.local"}, "server_dns_names must be a tuple"),
        ({"server_dns_names": ("Herald_Server",)}, "server_dns_names: 'Herald_Server' is not"),
        ({"upstream": "tls.crt"}, "upstream must be an UpstreamAuthority"),
    ],
)
def test_settings_are_validated_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CAError, match=message):
        CASettings(TD, **changes)


def test_default_settings_are_spires() -> None:
    settings = CASettings(TD)
    assert (settings.ca_ttl, settings.x509_svid_ttl, settings.jwt_svid_ttl) == (
        CA_TTL,
        HOUR,
        timedelta(minutes=5),
    )
    assert settings.key_type is KeyType.EC_P256
    assert settings.server_id == SpiffeId.parse("spiffe://example.org/herald/server")


@dataclass
class Walk:
    """What the walk saw: when each authority first showed up, first signed, and left."""

    first_published: dict[bytes, datetime] = field(default_factory=dict)
    first_signed: dict[bytes, datetime] = field(default_factory=dict)
    not_after: dict[bytes, datetime] = field(default_factory=dict)
    removed: dict[bytes, datetime] = field(default_factory=dict)
    changes: int = 0

    def published(self, ids: dict[bytes, datetime], now: datetime) -> None:
        for ident, not_after in ids.items():
            self.first_published.setdefault(ident, now)
            self.not_after[ident] = not_after

    def gone(self, before: set[bytes], after: set[bytes], now: datetime) -> None:
        for ident in before - after:
            # Removed only once every SVID it can have signed has expired.
            assert now >= self.not_after[ident]
            self.removed[ident] = now


def _content(bundle: Bundle) -> tuple[object, ...]:
    keys = sorted((kid, public_key_to_der(key)) for kid, key in bundle.jwt_authorities.items())
    return tuple(der(c) for c in bundle.x509_authorities), tuple(keys), bundle.refresh_hint


@pytest.mark.parametrize("with_upstream", [False, True], ids=["self-signed", "upstream"])
async def test_rotation_walk_never_cuts_an_svid_short(tmp_path: Path, with_upstream: bool) -> None:
    clock = FakeClock(NOW)
    pki = make_pki(upstream_not_after=NOW + 30 * CA_TTL)
    upstream = pki.authority() if with_upstream else None
    store = DirKeyStore(tmp_path / "data")
    ca = CAManager(CASettings(TD, ca_ttl=CA_TTL, upstream=upstream), store, clock)
    await ca.start()
    max_ttl = CA_TTL / 2
    step = CA_TTL / 48
    key = generate_key()
    x509_walk, jwt_walk = Walk(), Walk()
    live_x509: list[list[x509.Certificate]] = []
    live_jwt: list[tuple[str, datetime]] = []
    previous = ca.bundle()
    published_cas: set[bytes] = set()
    published_keys: set[bytes] = set()
    for index in range(48 * 3 + 25):
        if index:
            clock.advance(step)
        now = clock.now()
        await ca.rotate()
        bundle = ca.bundle()

        # sequence_number grows by exactly one when, and only when, the content changes.
        if _content(bundle) != _content(previous):
            assert bundle.sequence_number == previous.sequence_number + 1
            x509_walk.changes += 1
        else:
            assert bundle.sequence_number == previous.sequence_number

        loaded = await store.load()
        assert loaded is not None
        herald_cas = {der(s.cert): s.not_after for s in loaded[0].x509_slots}
        jwt_keys = {s.kid.encode(): s.not_after for s in loaded[0].jwt_slots}
        if with_upstream:
            assert bundle.x509_authorities == (pki.root.cert,)
            # Under an upstream, herald's CAs are what agents trust for agent SVIDs.
            assert set(herald_cas) == {der(c) for c in ca.issuing_authorities()}
        else:
            assert set(herald_cas) == {der(c) for c in bundle.x509_authorities}
        assert set(jwt_keys) == {kid.encode() for kid in bundle.jwt_authorities}
        x509_walk.gone(published_cas, set(herald_cas), now)
        jwt_walk.gone(published_keys, set(jwt_keys), now)
        published_cas, published_keys = set(herald_cas), set(jwt_keys)
        x509_walk.published(herald_cas, now)
        jwt_walk.published(jwt_keys, now)

        chain = ca.sign_x509_svid(key.public_key(), WORKLOAD, ttl=max_ttl)
        leaf = chain[0]
        assert leaf.not_valid_before_utc == now - NOT_BEFORE_CUSHION
        assert leaf.not_valid_after_utc == now + max_ttl  # never cut short
        issuer = issuer_of(leaf, ca.issuing_authorities())
        if with_upstream:
            assert chain == [leaf, issuer, pki.upstream.cert, pki.intermediate.cert]
        else:
            assert chain == [leaf]
        x509_walk.first_signed.setdefault(der(issuer), now)
        live_x509.append(chain)

        token, issued_at, expires_at = ca.sign_jwt_svid(WORKLOAD, ["db"], ttl=max_ttl)
        assert (issued_at, expires_at) == (now, now + max_ttl)  # never cut short
        jwt_walk.first_signed.setdefault(kid_of(token).encode(), now)
        live_jwt.append((token, expires_at))

        # Every SVID issued so far that has not expired validates against today's bundle.
        live_x509 = [c for c in live_x509 if c[0].not_valid_after_utc > now]
        live_jwt = [t for t in live_jwt if t[1] > now]
        for old_chain in live_x509:
            assert verify_chain(old_chain, bundle.x509_authorities, now=now) == WORKLOAD
        for old_token, _ in live_jwt:
            validate_jwt_svid(old_token, {TD: bundle}, "db", now=now)
        previous = bundle

    for walk in (x509_walk, jwt_walk):
        signers = sorted(walk.first_signed.items(), key=lambda item: item[1])
        assert len(signers) >= 9  # a new CA every CA_TTL/3 over 3.5 lifetimes
        first_ident, first_time = signers[0]
        assert walk.first_published[first_ident] == first_time == NOW
        for ident, signed_at in signers[1:]:
            # Published CA_TTL/6 before it signed anything.
            assert signed_at - walk.first_published[ident] == CA_TTL / 6
        assert len(walk.removed) >= 6
    assert x509_walk.changes >= 9


async def test_schedule_follows_next_rotation_at(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    timeline: list[tuple[timedelta, int, int, datetime]] = []
    while clock.now() < NOW + 2 * CA_TTL:
        clock.set(ca.next_rotation_at())
        await ca.rotate()
        bundle = ca.bundle()
        entry = (
            clock.now() - NOW,
            bundle.sequence_number,
            len(bundle.x509_authorities),
            ca.x509_ca_expires_at(),
        )
        if not timeline or entry[1:] != timeline[-1][1:]:
            timeline.append(entry)
    assert [(t / HOUR, seq, cas, (exp - NOW) / HOUR) for t, seq, cas, exp in timeline] == [
        (0.5, 1, 1, 24),  # the server TLS certificate refresh wakes it first
        (8, 2, 2, 24),  # CA 2 prepared at 1/3 of CA 1's life
        (12, 2, 2, 32),  # ...and signs from 1/2
        (16, 3, 3, 32),  # CA 3 prepared
        (20, 3, 3, 40),
        (24, 4, 3, 40),  # CA 1 dropped at its NotAfter as CA 4 is prepared
        (28, 4, 3, 48),
        (32, 5, 3, 48),
        (36, 5, 3, 56),
        (40, 6, 3, 56),
        (44, 6, 3, 64),
        (48, 7, 3, 64),
    ]


async def test_first_start_creates_a_root_and_a_jwt_key(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    bundle = ca.bundle()
    assert (bundle.trust_domain, bundle.sequence_number, bundle.refresh_hint) == (TD, 1, 300)
    (root,) = bundle.x509_authorities
    assert spiffe_id_of(root) == TD.id
    assert root.issuer == root.subject
    assert (root.not_valid_before_utc, root.not_valid_after_utc) == (
        NOW - NOT_BEFORE_CUSHION,
        NOW + CA_TTL,
    )
    assert len(bundle.jwt_authorities) == 1
    (kid,) = bundle.jwt_authorities
    assert re.fullmatch(r"[A-Za-z0-9]{32}", kid)
    assert ca.x509_ca_expires_at() == NOW + CA_TTL


async def test_x509_svid_defaults_and_dns_names(tmp_path: Path) -> None:
    clock = FakeClock(NOW + timedelta(seconds=0.25))
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    chain = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, dns_names=["web.default.svc"])
    (leaf,) = chain
    assert leaf.not_valid_after_utc == NOW + HOUR
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["web.default.svc"]
    assert verify_chain(chain, ca.bundle().x509_authorities, now=clock.now()) == WORKLOAD
    (agent_leaf,) = ca.sign_agent_svid(PUBLIC_KEY, AGENT)
    assert spiffe_id_of(agent_leaf) == AGENT
    assert agent_leaf.not_valid_after_utc == NOW + HOUR
    (short,) = ca.sign_agent_svid(PUBLIC_KEY, AGENT, ttl=timedelta(minutes=10))
    assert short.not_valid_after_utc == NOW + timedelta(minutes=10)


async def test_a_ttl_beyond_the_issuer_is_capped_at_its_not_after(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    clock.advance(11 * HOUR)
    await ca.rotate()
    (leaf,) = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=20 * HOUR)
    assert leaf.not_valid_after_utc == NOW + CA_TTL
    _, issued_at, expires_at = ca.sign_jwt_svid(WORKLOAD, ["db"], ttl=20 * HOUR)
    assert (issued_at, expires_at) == (NOW + 11 * HOUR, NOW + CA_TTL)


async def test_jwt_svid_uses_the_active_key(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    settings = CASettings(TD, jwt_key_type=KeyType.EC_P384)
    ca = manager_on(tmp_path / "data", clock, settings=settings)
    await ca.start()
    token, issued_at, expires_at = ca.sign_jwt_svid(WORKLOAD, ["a", "b"])
    assert (issued_at, expires_at) == (NOW, NOW + timedelta(minutes=5))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES384", "kid": next(iter(ca.bundle().jwt_authorities)), "typ": "JWT"}
    svid = validate_jwt_svid(token, {TD: ca.bundle()}, ["a", "b"], now=NOW)
    assert svid.spiffe_id == WORKLOAD


async def test_reserved_and_foreign_ids_are_refused(tmp_path: Path) -> None:
    ca = manager_on(tmp_path / "data", FakeClock(NOW))
    await ca.start()
    with pytest.raises(CAError, match="is in herald's reserved /herald namespace"):
        ca.sign_x509_svid(PUBLIC_KEY, AGENT)
    with pytest.raises(CAError, match="is in herald's reserved /herald namespace"):
        ca.sign_jwt_svid(SpiffeId.parse("spiffe://example.org/herald/server"), ["a"])
    with pytest.raises(CAError, match=r"is not an agent ID \(spiffe://<td>/herald/agent/...\)"):
        ca.sign_agent_svid(PUBLIC_KEY, WORKLOAD)
    with pytest.raises(CAError, match=r"is not in the issuer's trust domain example\.org"):
        ca.sign_x509_svid(PUBLIC_KEY, SpiffeId.parse("spiffe://other.org/web"))
    with pytest.raises(CAError, match="ttl must be positive"):
        ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=timedelta(0))
    with pytest.raises(CAError, match="no audience given"):
        ca.sign_jwt_svid(WORKLOAD, [""])


def test_nothing_works_before_start(tmp_path: Path) -> None:
    ca = manager_on(tmp_path / "data", FakeClock(NOW))
    for call in (
        ca.bundle,
        ca.next_rotation_at,
        ca.server_tls,
        ca.x509_ca_expires_at,
        lambda: ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD),
        lambda: ca.sign_jwt_svid(WORKLOAD, ["a"]),
    ):
        with pytest.raises(CAError, match="the CA manager is not started"):
            call()


async def test_starting_twice_is_an_error(tmp_path: Path) -> None:
    ca = manager_on(tmp_path / "data", FakeClock(NOW))
    await ca.start()
    with pytest.raises(CAError, match="already started"):
        await ca.start()


async def test_a_restart_keeps_the_trust_domain(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    first = manager_on(tmp_path / "data", clock)
    await first.start()
    clock.advance(9 * HOUR)
    await first.rotate()
    chain = first.sign_x509_svid(PUBLIC_KEY, WORKLOAD)
    token, _, _ = first.sign_jwt_svid(WORKLOAD, ["db"])
    bundle = first.bundle()

    clock.advance(timedelta(minutes=1))
    second = manager_on(tmp_path / "data", clock)
    await second.start()
    assert second.bundle() == bundle
    verify_chain(chain, second.bundle().x509_authorities, now=clock.now())
    validate_jwt_svid(token, {TD: second.bundle()}, "db", now=clock.now())
    again = second.sign_x509_svid(PUBLIC_KEY, WORKLOAD)
    assert issuer_of(again[0], bundle.x509_authorities) == issuer_of(
        chain[0], bundle.x509_authorities
    )


async def test_a_restart_with_another_trust_domain_is_refused(tmp_path: Path) -> None:
    await manager_on(tmp_path / "data", FakeClock(NOW)).start()
    other = CAManager(CASettings(TrustDomain("other.org")), DirKeyStore(tmp_path / "data"))
    with pytest.raises(CAError, match=r"is for trust domain example\.org, but this server is conf"):
        await other.start()


async def test_a_restart_after_missing_the_preparation_gives_the_new_ca_a_lead(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    await manager_on(tmp_path / "data", clock).start()
    clock.advance(11 * HOUR)  # down from 0h to 11h: preparation (8h) was missed
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    assert len(ca.bundle().x509_authorities) == 2
    # Published now, it activates CA_TTL/12 later rather than at the usual 12h.
    assert ca.next_rotation_at() == NOW + 11 * HOUR + timedelta(minutes=30)  # TLS refresh
    clock.set(NOW + 12 * HOUR + timedelta(minutes=30))
    (leaf,) = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=12 * HOUR)
    assert leaf.not_valid_after_utc == NOW + CA_TTL  # the old CA still signs, capped
    clock.set(NOW + 13 * HOUR)
    (leaf,) = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=12 * HOUR)
    assert leaf.not_valid_after_utc == NOW + 25 * HOUR  # the new CA from 11h + 2h


async def test_a_restart_after_a_whole_lifetime_starts_a_new_ca(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    first = manager_on(tmp_path / "data", clock)
    await first.start()
    old = first.bundle()
    clock.advance(30 * HOUR)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    bundle = ca.bundle()
    assert bundle.sequence_number == old.sequence_number + 1
    assert not set(map(der, bundle.x509_authorities)) & set(map(der, old.x509_authorities))
    assert not set(bundle.jwt_authorities) & set(old.jwt_authorities)
    assert ca.x509_ca_expires_at() == NOW + 30 * HOUR + CA_TTL


async def test_a_corrupt_store_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    await manager_on(tmp_path / "data", clock).start()
    state_file = tmp_path / "data" / "ca-state.json"
    doc = json.loads(state_file.read_text())
    del doc["jwt_slots"][0]["key_pem"]
    state_file.write_text(json.dumps(doc))
    with pytest.raises(CAError) as info:
        await manager_on(tmp_path / "data", clock).start()
    assert str(info.value) == (
        f"cannot load the CA state: {state_file}: state.jwt_slots[0].key_pem is missing"
    )
    os.chmod(state_file, 0o644)
    with pytest.raises(CAError, match=r"permissions 0644 for .* are too open"):
        await manager_on(tmp_path / "data", clock).start()


async def test_a_follower_waits_for_the_leader_to_create_the_ca(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    follower = manager_on(tmp_path / "data", clock, poll=0.01)
    waiting = asyncio.create_task(follower.start(leader=False))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert not (tmp_path / "data").exists()  # a follower never creates the CA
    leader = manager_on(tmp_path / "data", clock)
    await leader.start()
    await asyncio.wait_for(waiting, 5)
    assert follower.bundle() == leader.bundle()
    chain, _ = follower.server_tls()
    verify_chain(chain, leader.bundle().x509_authorities, now=NOW)


async def test_a_follower_switches_ca_on_time_without_the_leaders_write(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    leader = manager_on(tmp_path / "data", clock)
    await leader.start()
    follower = manager_on(tmp_path / "data", clock)
    await follower.start(leader=False)
    clock.set(NOW + 8 * HOUR)
    await leader.rotate()
    loaded = await DirKeyStore(tmp_path / "data").load()
    assert loaded is not None
    assert await follower.adopt(*loaded)
    assert not await follower.adopt(*loaded)  # the same revision again changes nothing
    clock.set(NOW + 12 * HOUR)  # the hand-over; the leader has not rotated yet
    (leaf,) = follower.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=13 * HOUR)
    assert leaf.not_valid_after_utc == NOW + 25 * HOUR  # past the old CA's NotAfter (24h)
    prepared = next(s for s in loaded[0].x509_slots if s.status is SlotStatus.PREPARED)
    assert issuer_of(leaf, follower.bundle().x509_authorities) == prepared.cert
    assert follower.x509_ca_expires_at() == prepared.not_after


async def test_adopt_refuses_an_older_or_foreign_state(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    loaded = await DirKeyStore(tmp_path / "data").load()
    assert loaded is not None
    clock.advance(8 * HOUR)
    await ca.rotate()
    assert not await ca.adopt(loaded[0])  # revision 1 < 2
    other = manager_on(tmp_path / "other", clock, settings=CASettings(TrustDomain("other.org")))
    await other.start()
    foreign = await DirKeyStore(tmp_path / "other").load()
    assert foreign is not None
    with pytest.raises(CAError, match=r"is for trust domain other\.org"):
        await ca.adopt(foreign[0])


async def test_two_writers_do_not_lose_each_others_keys(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    first = manager_on(tmp_path / "data", clock)
    await first.start()
    second = manager_on(tmp_path / "data", clock)
    await second.start()
    clock.advance(8 * HOUR)
    assert await first.rotate()
    # second still holds revision 1; its save conflicts, it reloads and finds nothing left to do.
    await second.rotate()
    assert second.bundle() == first.bundle()
    loaded = await DirKeyStore(tmp_path / "data").load()
    assert loaded is not None
    assert [s.status for s in loaded[0].x509_slots] == [SlotStatus.ACTIVE, SlotStatus.PREPARED]


async def test_a_deleted_store_is_written_back(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    bundle = ca.bundle()
    (tmp_path / "data" / "ca-state.json").unlink()
    clock.advance(8 * HOUR)
    assert await ca.rotate()
    loaded = await DirKeyStore(tmp_path / "data").load()
    assert loaded is not None
    assert der(loaded[0].x509_slots[0].cert) == der(bundle.x509_authorities[0])
    assert loaded[0].sequence == 2


async def test_bundle_listeners_hear_every_change_and_only_changes(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    heard: list[int] = []

    def broken(bundle: Bundle) -> None:
        raise RuntimeError("listener bug")

    def listener(bundle: Bundle) -> None:
        heard.append(bundle.sequence_number)

    ca.add_bundle_listener(broken)
    ca.add_bundle_listener(listener)
    for hours in (8, 12, 16, 24):
        clock.set(NOW + hours * HOUR)
        await ca.rotate()
    assert heard == [2, 3, 4]  # 12h activates without changing the bundle
    ca.remove_bundle_listener(listener)
    ca.remove_bundle_listener(listener)
    clock.set(NOW + 32 * HOUR)
    await ca.rotate()
    assert heard == [2, 3, 4]


async def test_server_tls_is_an_svid_renewed_at_half_life_and_at_hand_over(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    settings = CASettings(TD, server_dns_names=("herald-server.herald.svc", "localhost"))
    ca = manager_on(tmp_path / "data", clock, settings=settings)
    await ca.start()
    chain, key = ca.server_tls()
    leaf = chain[0]
    assert spiffe_id_of(leaf) == settings.server_id
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["herald-server.herald.svc", "localhost"]
    assert public_key_to_der(key.public_key()) == public_key_to_der(leaf.public_key())
    verify_chain(chain, ca.bundle().x509_authorities, now=NOW)

    clock.set(NOW + timedelta(minutes=29))
    assert ca.server_tls()[0] == chain
    clock.set(NOW + timedelta(minutes=30))
    assert ca.server_tls()[0] != chain

    clock.set(NOW + 8 * HOUR)
    assert await ca.rotate()  # the next CA is prepared
    clock.set(NOW + 11 * HOUR + timedelta(minutes=50))
    assert await ca.rotate()  # TLS past half life
    before = ca.server_tls()[0][0]
    clock.set(NOW + 12 * HOUR)
    after = ca.server_tls()[0][0]
    assert after != before  # the new CA signs from 12h, before its half life
    assert issuer_of(after, ca.bundle().x509_authorities) != issuer_of(
        before, ca.bundle().x509_authorities
    )


async def test_under_an_upstream_svids_chain_to_its_root(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    pki = make_pki(upstream_not_after=NOW + 10 * HOUR)
    settings = CASettings(TD, upstream=pki.authority())
    ca = manager_on(tmp_path / "data", clock, settings=settings)
    await ca.start()
    assert ca.bundle().x509_authorities == (pki.root.cert,)
    (herald_ca,) = ca.issuing_authorities()
    assert herald_ca.issuer == pki.upstream.cert.subject
    assert herald_ca.not_valid_after_utc == NOW + 10 * HOUR  # capped at the upstream's
    chain = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD)
    assert chain[1:] == [herald_ca, pki.upstream.cert, pki.intermediate.cert]
    assert verify_chain(chain, ca.bundle().x509_authorities, now=NOW) == WORKLOAD
    with pytest.raises(ValueError, match="not signed by any authority"):
        verify_chain(chain, (make_pki().root.cert,), now=NOW)


async def test_a_renewed_upstream_signs_the_next_ca_and_its_root_joins_the_bundle(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    old = make_pki(upstream_not_after=NOW + 30 * HOUR)
    ca = manager_on(tmp_path / "data", clock, settings=CASettings(TD, upstream=old.authority()))
    await ca.start()
    clock.set(NOW + 7 * HOUR)
    first = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD, ttl=11 * HOUR)
    renewed = make_pki()  # a new root too: the worst case
    ca.replace_upstream(renewed.authority())
    clock.set(NOW + 8 * HOUR)
    await ca.rotate()
    assert ca.bundle().x509_authorities == (old.root.cert, renewed.root.cert)
    clock.set(NOW + 12 * HOUR)
    second = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD)
    assert second[2:] == [renewed.upstream.cert, renewed.intermediate.cert]
    assert second[1].not_valid_after_utc == NOW + 8 * HOUR + CA_TTL  # no longer capped
    for chain in (first, second):
        verify_chain(chain, ca.bundle().x509_authorities, now=clock.now())
    clock.set(NOW + 24 * HOUR)
    await ca.rotate()  # the first CA expired: the old root leaves with it
    assert ca.bundle().x509_authorities == (renewed.root.cert,)
    with pytest.raises(CAError, match="upstream must be an UpstreamAuthority"):
        ca.replace_upstream(None)  # type: ignore[arg-type]


async def test_an_expired_upstream_cannot_make_a_ca(tmp_path: Path) -> None:
    pki = make_pki(upstream_not_after=NOW + HOUR)
    ca = manager_on(
        tmp_path / "data",
        FakeClock(NOW + 2 * HOUR),
        settings=CASettings(TD, upstream=pki.authority()),
    )
    with pytest.raises(
        CAError, match=r"cannot create an X.509 CA: cert_chain certificate 0 expired"
    ):
        await ca.start()
    assert not (tmp_path / "data").exists()


async def test_an_upstream_root_in_the_trust_domain_works(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    first = manager_on(tmp_path / "root", clock)
    await first.start()
    root = first.bundle().x509_authorities[0]
    loaded = await DirKeyStore(tmp_path / "root").load()
    assert loaded is not None
    upstream = UpstreamAuthority((root,), loaded[0].x509_slots[0].key, (root,))
    ca = manager_on(tmp_path / "data", clock, settings=CASettings(TD, upstream=upstream))
    await ca.start()
    chain = ca.sign_x509_svid(PUBLIC_KEY, WORKLOAD)
    assert len(chain) == 2  # the leaf and herald's intermediate; the root is in the bundle
    verify_chain(chain, (root,), now=NOW)
    assert ca.bundle().x509_authorities == (root,)


async def test_signing_from_threads_while_rotating(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = manager_on(tmp_path / "data", clock)
    await ca.start()
    stop = threading.Event()
    failures: list[BaseException] = []

    def sign_until_stopped() -> int:
        count = 0
        key = generate_key()
        while not stop.is_set():
            try:
                chain = ca.sign_x509_svid(key.public_key(), WORKLOAD)
                bundle = ca.bundle()
                signed_at = chain[0].not_valid_before_utc + NOT_BEFORE_CUSHION
                verify_chain(chain, bundle.x509_authorities, now=signed_at)
                token, issued_at, _ = ca.sign_jwt_svid(WORKLOAD, ["db"])
                validate_jwt_svid(token, {TD: ca.bundle()}, "db", now=issued_at)
                ca.server_tls()
            except BaseException as exc:
                failures.append(exc)
                raise
            count += 1
        return count

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(sign_until_stopped) for _ in range(4)]
        started = time.monotonic()
        rotations = 0
        while clock.now() < NOW + 2 * CA_TTL:
            clock.advance(timedelta(minutes=30))
            rotations += await ca.rotate()
            await asyncio.sleep(0.005)
        stop.set()
        counts = [f.result() for f in futures]
    assert failures == []
    assert rotations >= 10
    assert min(counts) > 0
    assert time.monotonic() - started < 60
