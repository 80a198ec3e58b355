"""The CA state document and the data-directory store: round trips, refusals, atomic writes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from herald_core.keys import generate_key, private_key_to_pem
from herald_core.spiffeid import TrustDomain
from herald_core.x509svid import make_ca_certificate
from herald_server.keystore import (
    CAState,
    CAStateError,
    DirKeyStore,
    JwtSlot,
    KeyStoreConflict,
    KeyStoreError,
    SlotStatus,
    X509Slot,
)

TD = TrustDomain("example.org")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def x509_slot(
    status: SlotStatus = SlotStatus.ACTIVE, trust_domain: TrustDomain = TD, issued: datetime = NOW
) -> X509Slot:
    key = generate_key()
    cert = make_ca_certificate(key, trust_domain, not_before=issued, not_after=issued + DAY)
    return X509Slot(status, (cert,), key, (cert,), issued, issued)


def jwt_slot(status: SlotStatus = SlotStatus.ACTIVE, kid: str = "k" * 32) -> JwtSlot:
    return JwtSlot(status, kid, generate_key(), NOW, NOW + DAY, NOW)


def make_state(revision: int = 1) -> CAState:
    return CAState(
        trust_domain=TD,
        x509_slots=(
            x509_slot(SlotStatus.RETIRED),
            x509_slot(),
            x509_slot(SlotStatus.PREPARED),
        ),
        jwt_slots=(jwt_slot(), jwt_slot(SlotStatus.PREPARED, "p" * 32)),
        sequence=3,
        refresh_hint=300,
        revision=revision,
    )


def doc_of(state: CAState) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(state.to_json())
    return doc


def test_state_round_trips_through_json() -> None:
    state = make_state()
    again = CAState.from_json(state.to_json())
    assert (again.trust_domain, again.sequence, again.refresh_hint, again.revision) == (
        TD,
        3,
        300,
        1,
    )
    for before, after in zip(state.x509_slots, again.x509_slots, strict=True):
        assert (after.status, after.chain, after.roots) == (
            before.status,
            before.chain,
            before.roots,
        )
        assert (after.issued_at, after.activate_at) == (before.issued_at, before.activate_at)
        assert private_key_to_pem(after.key) == private_key_to_pem(before.key)
    for before_jwt, after_jwt in zip(state.jwt_slots, again.jwt_slots, strict=True):
        assert (after_jwt.kid, after_jwt.status, after_jwt.not_after) == (
            before_jwt.kid,
            before_jwt.status,
            before_jwt.not_after,
        )
        assert private_key_to_pem(after_jwt.key) == private_key_to_pem(before_jwt.key)
    assert again.to_json() == state.to_json()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return change


_DELETE = object()
_OTHER_KEY = private_key_to_pem(generate_key()).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("sequence", _DELETE), "state.sequence is missing"),
        (_set("format", 2), "unknown format version 2; this herald reads version 1"),
        (_set("revision", "7"), "state.revision must be an integer"),
        (_set("trust_domain", "Bad Domain"), "state.trust_domain: "),
        (_set("x509_slots", {}), "state.x509_slots must be an array"),
        (_set("x509_slots.0.key_pem", _DELETE), r"state.x509_slots\[0\].key_pem is missing"),
        (
            _set("x509_slots.1.chain_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
            r"state.x509_slots\[1\].chain_pem: PEM data has an unterminated or malformed block",
        ),
        (
            _set("x509_slots.1.key_pem", "MIGHAgEAMBMGByqGSM49"),
            r"state.x509_slots\[1\].key_pem is not a PEM private key",
        ),
        (
            _set("x509_slots.1.key_pem", _OTHER_KEY),
            r"state.x509_slots\[1\]: the key does not match the CA certificate \(serial ",
        ),
        (
            _set("x509_slots.2.status", "pending"),
            r"state.x509_slots\[2\].status is 'pending'; use one of prepared, active, retired",
        ),
        (
            _set("x509_slots.0.issued_at", "2026-01-01T00:00:00"),
            r"state.x509_slots\[0\].issued_at has no time zone",
        ),
        (
            _set("x509_slots.0.activate_at", "yesterday"),
            r"state.x509_slots\[0\].activate_at is not an ISO 8601 time",
        ),
        (_set("x509_slots.0.status", "active"), "x509_slots has 2 active slots; at most one"),
        (_set("jwt_slots.1.kid", "k" * 32), "jwt_slots repeat kid 'kkkk"),
        (
            _set("jwt_slots.0.kid", ""),
            r"state.jwt_slots\[0\]: a JWT key slot needs a non-empty kid",
        ),
        (
            _set("jwt_slots.0.not_after", "2025-01-01T00:00:00+00:00"),
            r"state.jwt_slots\[0\]: JWT key 'k+' expires before it was issued",
        ),
    ],
)
def test_corrupt_state_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = doc_of(make_state())
    change(doc)
    with pytest.raises(CAStateError, match=message):
        CAState.from_json(json.dumps(doc).encode())


def test_non_json_state_is_refused() -> None:
    with pytest.raises(CAStateError, match="not valid JSON"):
        CAState.from_json(b"\xff{")
    with pytest.raises(CAStateError, match="state must be a JSON object"):
        CAState.from_json(b"[]")


def test_a_ca_of_another_trust_domain_is_refused() -> None:
    with pytest.raises(CAStateError, match=r"belongs to trust domain other\.org, not the state's"):
        CAState(TD, (x509_slot(trust_domain=TrustDomain("other.org")),), (), 1, 300, 1)


async def test_dir_store_is_empty_until_saved(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    assert await store.load() is None
    assert not store.path.exists()


async def test_dir_store_saves_0600_in_a_0700_dir_and_loads_back(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "var" / "herald")
    state = make_state()
    version = await store.save(state, version=None)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.state_file).st_mode) == 0o600
    assert version == hashlib.sha256(store.state_file.read_bytes()).hexdigest()
    loaded = await store.load()
    assert loaded is not None
    assert loaded[1] == version
    assert loaded[0].to_json() == state.to_json()
    assert sorted(os.listdir(store.path)) == ["ca-state.json"]


async def test_dir_store_writes_by_replacing_the_file(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    version = await store.save(make_state(1), version=None)
    inode = os.stat(store.state_file).st_ino
    newer = await store.save(make_state(2), version=version)
    # A new inode: the old file was never opened for writing, so a crash leaves one whole file.
    assert os.stat(store.state_file).st_ino != inode
    assert newer != version
    assert sorted(os.listdir(store.path)) == ["ca-state.json"]


async def test_dir_store_detects_concurrent_writes(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    first = await store.save(make_state(1), version=None)
    with pytest.raises(KeyStoreConflict, match=r"changed since version \(none\) was read"):
        await store.save(make_state(2), version=None)
    await store.save(make_state(2), version=first)
    with pytest.raises(KeyStoreConflict, match=f"changed since version {first} was read"):
        await store.save(make_state(3), version=first)


async def test_dir_store_refuses_an_open_directory(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    await store.save(make_state(), version=None)
    os.chmod(store.path, 0o755)  # noqa: S103 - the store must refuse exactly this
    with pytest.raises(KeyStoreError) as info:
        await store.load()
    assert str(info.value) == (
        f"permissions 0755 for '{store.path}' are too open: it holds CA private keys, so group "
        f"and others must have no access (run: chmod 700 {store.path})"
    )
    with pytest.raises(KeyStoreError, match="too open"):
        await store.save(make_state(2), version=None)


async def test_dir_store_refuses_a_readable_state_file(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    await store.save(make_state(), version=None)
    os.chmod(store.state_file, 0o640)
    with pytest.raises(KeyStoreError) as info:
        await store.load()
    assert str(info.value) == (
        f"permissions 0640 for '{store.state_file}' are too open: it holds CA private keys, so "
        f"group and others must have no access (run: chmod 600 {store.state_file})"
    )


async def test_dir_store_names_the_file_and_problem_of_corrupt_content(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data")
    await store.save(make_state(), version=None)
    doc = doc_of(make_state())
    del doc["x509_slots"][0]["chain_pem"]
    store.state_file.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError) as info:
        await store.load()
    assert str(info.value) == f"{store.state_file}: state.x509_slots[0].chain_pem is missing"
    store.state_file.write_text("{truncated")
    with pytest.raises(KeyStoreError, match=re.escape(f"{store.state_file}: not valid JSON")):
        await store.load()


async def test_dir_store_refuses_a_file_as_its_directory(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(KeyStoreError, match=re.escape(f"{tmp_path / 'data'} is not a directory")):
        await DirKeyStore(tmp_path / "data").load()


async def test_dir_store_watch_yields_current_then_new_states(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data", poll_interval=0.01)
    first = await store.save(make_state(1), version=None)
    watch = store.watch()
    state, version = await asyncio.wait_for(anext(watch), 5)
    assert (state.revision, version) == (1, first)
    second = await store.save(make_state(2), version=first)
    state, version = await asyncio.wait_for(anext(watch), 5)
    assert (state.revision, version) == (2, second)
    await watch.aclose()


async def test_dir_store_watch_skips_unreadable_writes(tmp_path: Path) -> None:
    store = DirKeyStore(tmp_path / "data", poll_interval=0.01)
    watch = store.watch()
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)
    assert not pending.done()
    store.path.mkdir(mode=0o700)
    store.state_file.write_text("{broken")
    os.chmod(store.state_file, 0o600)
    await asyncio.sleep(0.05)
    assert not pending.done()
    version = await store.save(make_state(5), version=hashlib.sha256(b"{broken").hexdigest())
    state, seen = await asyncio.wait_for(pending, 5)
    assert (state.revision, seen) == (5, version)
    await watch.aclose()
