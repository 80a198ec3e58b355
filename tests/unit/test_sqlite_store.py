"""The standalone SQLite store: entries, join tokens and agents on a real file."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herald_core.clock import FakeClock
from herald_core.entry import Entry
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_server.agents import AgentNotFoundError, AgentRecord, JoinTokenError, join_token_id
from herald_server.entries import EntryExistsError, EntryNotFoundError
from herald_server.sqlite_store import (
    DB_FILENAME,
    SqliteStore,
    StoreDatabaseError,
    StoreFileError,
)

AGENT = SpiffeId.parse("spiffe://example.org/herald/agent/join_token/abc")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/herald/agent/join_token/def")


def _entry(entry_id: str = "e1", path: str = "/web", parent: SpiffeId = AGENT) -> Entry:
    return Entry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
        parent_id=parent,
        selectors=parse_selectors(["unix:uid:1000", "unix:gid:1000"]),
        x509_svid_ttl=300,
        dns_names=("web.example.org",),
        federates_with=(TrustDomain("partner.org"),),
        hint="external",
        admin=True,
    )


def _agent(agent_id: SpiffeId = AGENT, serial: int = 7) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id,
        aliases=frozenset({SpiffeId.parse("spiffe://example.org/host/db1")}),
        attested_at=dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC),
        svid_serial=serial,
        svid_expires_at=dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.UTC),
        evicted=False,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 3, 1, tzinfo=dt.UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / DB_FILENAME


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(db_path, clock=clock)
    await opened.start()
    yield opened
    await opened.stop()


async def _reopen(store: SqliteStore, clock: FakeClock) -> SqliteStore:
    await store.stop()
    reopened = SqliteStore(store.path, clock=clock)
    await reopened.start()
    return reopened


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


# --- entries


async def test_create_stamps_revision_and_created_at(store: SqliteStore, clock: FakeClock) -> None:
    stored = await store.create(dataclasses.replace(_entry(), revision=9, created_at=5))
    assert stored.revision == 1
    assert stored.created_at == int(clock.now().timestamp())
    assert store.cache.get("e1") == stored
    assert store.writable is True


async def test_update_keeps_created_at_and_bumps_revision(
    store: SqliteStore, clock: FakeClock
) -> None:
    created = await store.create(_entry())
    clock.advance(60)
    changed = dataclasses.replace(_entry(), hint="internal", created_at=1, revision=0)
    updated = await store.update(changed)
    assert (updated.revision, updated.created_at, updated.hint) == (
        2,
        created.created_at,
        "internal",
    )
    assert store.cache.get("e1") == updated
    assert (await store.update(changed)).revision == 3


async def test_delete_returns_the_removed_entry(store: SqliteStore) -> None:
    created = await store.create(_entry())
    assert await store.delete("e1") == created
    assert store.cache.get("e1") is None
    with pytest.raises(EntryNotFoundError, match="e1"):
        await store.delete("e1")


async def test_missing_entries_are_not_found(store: SqliteStore) -> None:
    with pytest.raises(EntryNotFoundError, match="no entry with id nope"):
        await store.update(_entry("nope"))
    assert len(store.cache) == 0


async def test_duplicates_are_refused_naming_the_existing_entry(store: SqliteStore) -> None:
    await store.create(_entry("first"))
    with pytest.raises(EntryExistsError, match="entry first already has"):
        await store.create(_entry("second"))
    with pytest.raises(EntryExistsError, match="id first already exists"):
        await store.create(_entry("first", path="/other"))
    # Another parent, or another SPIFFE ID, is a different entry.
    await store.create(_entry("third", parent=OTHER_AGENT))
    await store.create(_entry("fourth", path="/api"))
    with pytest.raises(EntryExistsError, match="entry first already has"):
        await store.update(_entry("fourth"))
    assert sorted(e.id for e in store.cache) == ["first", "fourth", "third"]
    assert store.cache.get("fourth") == dataclasses.replace(
        _entry("fourth", path="/api"), revision=1, created_at=store.cache.get("fourth").created_at
    )


async def test_cache_subscription_sees_creates_updates_and_deletes(store: SqliteStore) -> None:
    with store.cache.subscribe([AGENT]) as sub:
        created = await store.create(_entry())
        assert await asyncio.wait_for(sub.wait(), 1) == {"e1": created}
        updated = await store.update(dataclasses.replace(_entry(), hint="changed"))
        assert await asyncio.wait_for(sub.wait(), 1) == {"e1": updated}
        moved = await store.update(dataclasses.replace(_entry(), parent_id=OTHER_AGENT))
        assert moved.parent_id == OTHER_AGENT
        assert await asyncio.wait_for(sub.wait(), 1) == {"e1": None}
        await store.create(_entry("e2"))
        assert (await asyncio.wait_for(sub.wait(), 1)).keys() == {"e2"}
        await store.delete("e2")
        assert await asyncio.wait_for(sub.wait(), 1) == {"e2": None}


async def test_a_failed_write_changes_neither_database_nor_cache(
    store: SqliteStore, db_path: Path
) -> None:
    created = await store.create(_entry())
    before = _rows(db_path, "SELECT * FROM entries")
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON entries "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    with pytest.raises(StoreDatabaseError, match="disk says no"):
        await store.update(dataclasses.replace(_entry(), hint="lost"))
    assert _rows(db_path, "SELECT * FROM entries") == before
    assert store.cache.get("e1") == created
    # The connection is still usable after the rollback.
    await store.create(_entry("e2", path="/other"))


async def test_a_write_failing_after_its_first_statement_is_rolled_back(
    store: SqliteStore, db_path: Path, clock: FakeClock
) -> None:
    await store.create_token(ttl=dt.timedelta(seconds=1), alias=None)
    clock.advance(5)
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON join_tokens "
            "BEGIN SELECT RAISE(ABORT, 'no purge'); END"
        )
    # create_token inserts, then purges expired tokens; the purge fails, so the insert goes too.
    with pytest.raises(StoreDatabaseError, match="no purge"):
        await store.create_token(ttl=dt.timedelta(hours=1), alias=None)
    assert _rows(db_path, "SELECT count(*) FROM join_tokens") == [(1,)]


# --- the file


async def test_restart_keeps_entries_tokens_and_agents(
    store: SqliteStore, clock: FakeClock
) -> None:
    created = await store.create(_entry())
    used, _ = await store.create_token(ttl=dt.timedelta(hours=1), alias=None)
    await store.consume_token(used)
    alias = SpiffeId.parse("spiffe://example.org/host/db1")
    fresh, record = await store.create_token(ttl=dt.timedelta(hours=1), alias=alias)
    await store.register(_agent())

    reopened = await _reopen(store, clock)
    try:
        assert list(reopened.cache) == [created]
        assert await reopened.consume_token(fresh) == record
        with pytest.raises(JoinTokenError, match="already used"):
            await reopened.consume_token(used)
        assert await reopened.list_agents() == [_agent()]
    finally:
        await reopened.stop()


async def test_file_is_private_and_in_wal_mode(store: SqliteStore, db_path: Path) -> None:
    await store.create(_entry())
    for path in db_path.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert _rows(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_newer_schema_is_refused(store: SqliteStore, db_path: Path, clock: FakeClock) -> None:
    await store.stop()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreFileError, match=r"schema version 99.*newer herald") as info:
        await SqliteStore(db_path, clock=clock).start()
    assert str(db_path) in str(info.value)


async def test_a_version_1_store_is_migrated_keeping_its_agents(
    store: SqliteStore, db_path: Path, clock: FakeClock
) -> None:
    await store.register(_agent())
    await store.stop()
    with sqlite3.connect(db_path) as conn:  # back to the schema herald 0.1 wrote
        conn.execute("ALTER TABLE agents DROP COLUMN new_svid_serial")
        conn.execute("UPDATE schema_version SET version = 1")
    migrated = SqliteStore(db_path, clock=clock)
    await migrated.start()
    try:
        assert await migrated.get_agent(AGENT) == _agent()
        await migrated.update_agent_svid(AGENT, 8, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
        assert (await migrated.get_agent(AGENT)).new_svid_serial == 8  # type: ignore[union-attr]
    finally:
        await migrated.stop()
    assert _rows(db_path, "SELECT version FROM schema_version") == [(2,)]


async def test_garbage_file_is_refused_naming_it(db_path: Path) -> None:
    await asyncio.to_thread(db_path.write_bytes, b"not a database, just bytes\n" * 200)
    with pytest.raises(StoreFileError, match="not a usable SQLite database") as info:
        await SqliteStore(db_path).start()
    assert str(db_path) in str(info.value)


async def test_someone_elses_sqlite_database_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
    with pytest.raises(StoreFileError, match="not herald's"):
        await SqliteStore(db_path).start()


async def test_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent" / DB_FILENAME
    with pytest.raises(StoreFileError, match=f"directory {tmp_path / 'absent'} does not exist"):
        await SqliteStore(path).start()
    assert not path.parent.exists()


async def test_unreadable_stored_entry_is_reported(store: SqliteStore, clock: FakeClock) -> None:
    await store.create(_entry())
    await store.stop()
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE entries SET spiffe_id = 'http://nope'")
    with pytest.raises(StoreDatabaseError, match="stored entry 'e1' cannot be read"):
        await SqliteStore(store.path, clock=clock).start()


async def test_a_closed_store_refuses_work(store: SqliteStore) -> None:
    await store.stop()
    with pytest.raises(StoreDatabaseError, match="not open"):
        await store.create(_entry())


# --- join tokens


async def test_join_token_is_stored_only_as_a_hash(store: SqliteStore, db_path: Path) -> None:
    value, record = await store.create_token(ttl=dt.timedelta(minutes=10), alias=None)
    assert len(value) >= 43
    assert record.token_id == join_token_id(value) and value not in record.token_id
    await store.stop()
    for path in db_path.parent.iterdir():
        assert value.encode() not in path.read_bytes()


async def test_join_token_reasons(store: SqliteStore, clock: FakeClock) -> None:
    with pytest.raises(JoinTokenError, match="unknown join token"):
        await store.consume_token("made-up")
    value, record = await store.create_token(ttl=dt.timedelta(minutes=10), alias=None)
    assert record.expires_at == clock.now() + dt.timedelta(minutes=10)
    assert await store.consume_token(value) == record
    with pytest.raises(JoinTokenError, match="join token already used") as info:
        await store.consume_token(value)
    assert info.value.reason == "join token already used"

    late, _ = await store.create_token(ttl=dt.timedelta(seconds=30), alias=None)
    clock.advance(30)
    with pytest.raises(JoinTokenError, match="join token expired"):
        await store.consume_token(late)


async def test_expired_tokens_are_purged(
    store: SqliteStore, clock: FakeClock, db_path: Path
) -> None:
    await store.create_token(ttl=dt.timedelta(seconds=5), alias=None)
    clock.advance(6)
    await store.create_token(ttl=dt.timedelta(seconds=5), alias=None)
    assert _rows(db_path, "SELECT count(*) FROM join_tokens") == [(1,)]


async def test_a_token_is_consumed_exactly_once_under_concurrency(store: SqliteStore) -> None:
    value, record = await store.create_token(ttl=dt.timedelta(minutes=10), alias=None)
    results = await asyncio.gather(
        *(store.consume_token(value) for _ in range(20)), return_exceptions=True
    )
    assert results.count(record) == 1
    refused = [r for r in results if isinstance(r, JoinTokenError)]
    assert len(refused) == 19
    assert {r.reason for r in refused} == {"join token already used"}


async def test_token_ttl_must_be_positive(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="positive TTL"):
        await store.create_token(ttl=dt.timedelta(0), alias=None)


# --- agents


async def test_agent_registry(store: SqliteStore) -> None:
    assert await store.get_agent(AGENT) is None
    huge_serial = 2**150 + 3  # X.509 serials are up to 20 bytes
    await store.register(_agent(serial=huge_serial))
    await store.register(_agent(OTHER_AGENT))
    assert await store.get_agent(AGENT) == _agent(serial=huge_serial)

    renewed_until = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    await store.update_agent_svid(AGENT, 99, renewed_until)
    await store.evict_agent(OTHER_AGENT)
    renewed = dataclasses.replace(
        _agent(serial=huge_serial), new_svid_serial=99, svid_expires_at=renewed_until
    )
    assert await store.list_agents() == [
        renewed,
        dataclasses.replace(_agent(OTHER_AGENT), evicted=True),
    ]
    assert renewed.accepts(huge_serial) and renewed.accepts(99)
    await store.promote_agent_svid(AGENT, 98)  # not the pending one: nothing changes
    assert await store.get_agent(AGENT) == renewed
    await store.promote_agent_svid(AGENT, 99)
    promoted = await store.get_agent(AGENT)
    assert promoted == dataclasses.replace(renewed, svid_serial=99, new_svid_serial=None)
    assert not promoted.accepts(huge_serial)
    await store.register(_agent(OTHER_AGENT))
    assert (await store.get_agent(OTHER_AGENT)) == _agent(OTHER_AGENT)


async def test_unknown_agents_cannot_be_updated(store: SqliteStore) -> None:
    with pytest.raises(AgentNotFoundError, match="no attested agent"):
        await store.update_agent_svid(AGENT, 1, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    with pytest.raises(AgentNotFoundError):
        await store.evict_agent(AGENT)
    assert await store.list_agents() == []
