"""Standalone mode's persistent store: entries, join tokens and attested agents in one SQLite file.

One file (``<data_dir>/herald.db``, mode 0600, WAL journal) and one connection. Every call runs
in a worker thread under a lock, so the event loop never waits on the disk, and every write is one
transaction: the entry cache changes only after a commit, so a failed write changes nothing.
Join tokens are kept as SHA-256 hashes; the token value itself is never written anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.entry import Entry, EntryError
from herald_core.selector import Selector
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_server.agents import (
    AgentNotFoundError,
    AgentRecord,
    JoinTokenError,
    JoinTokenRecord,
    join_token_id,
)
from herald_server.entries import (
    EntryCache,
    EntryExistsError,
    EntryNotFoundError,
    EntryStoreError,
)

log = logging.getLogger(__name__)

DB_FILENAME: Final = "herald.db"
SCHEMA_VERSION: Final = 2
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_T = TypeVar("_T")

# Each step takes the schema from version N to N+1; step 0 creates version 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE entries (
            id TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            selectors TEXT NOT NULL,          -- JSON list of "type:value", sorted
            x509_svid_ttl INTEGER NOT NULL,
            jwt_svid_ttl INTEGER NOT NULL,
            dns_names TEXT NOT NULL,          -- JSON list
            federates_with TEXT NOT NULL,     -- JSON list of trust domain names
            hint TEXT NOT NULL,
            admin INTEGER NOT NULL,
            downstream INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (spiffe_id, parent_id, selectors)
        )""",
        """CREATE TABLE join_tokens (
            hash BLOB PRIMARY KEY,            -- SHA-256 of the token value
            token_id TEXT NOT NULL UNIQUE,
            alias TEXT,
            expires_at INTEGER NOT NULL,      -- microseconds since the epoch, UTC
            used_at INTEGER
        )""",
        """CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            aliases TEXT NOT NULL,            -- JSON list of SPIFFE IDs
            attested_at INTEGER NOT NULL,
            svid_serial TEXT NOT NULL,        -- decimal: serials outgrow SQLite's 64-bit integers
            svid_expires_at INTEGER NOT NULL,
            evicted INTEGER NOT NULL
        )""",
    ),
    # A renewed agent SVID waits here until the agent first uses it (AgentRecord).
    ("ALTER TABLE agents ADD COLUMN new_svid_serial TEXT",),
)
# Column order of both statements is _entry_row's order (the UPDATE moves id to the end).
_INSERT_ENTRY: Final = """
    INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl,
        dns_names, federates_with, hint, admin, downstream, revision, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPDATE_ENTRY: Final = """
    UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors = ?, x509_svid_ttl = ?,
        jwt_svid_ttl = ?, dns_names = ?, federates_with = ?, hint = ?, admin = ?,
        downstream = ?, revision = ?, created_at = ?
    WHERE id = ?
"""


class StoreFileError(Exception):
    """The database file cannot be used; the message names the file and says why."""


class StoreDatabaseError(EntryStoreError):
    """The database failed a read or write; a failed write changed nothing."""


class StoreCorruptError(StoreDatabaseError):
    """A stored row that herald cannot read back (edited by hand, or damaged)."""


def _micros(when: dt.datetime) -> int:
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def _optional_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _token_hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock at once, so checks and writes see one consistent state.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite has already rolled back after some errors (a full disk, for one).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _entry_row(entry: Entry) -> tuple[object, ...]:
    return (
        entry.id,
        str(entry.spiffe_id),
        str(entry.parent_id),
        _selectors_text(entry),
        entry.x509_svid_ttl,
        entry.jwt_svid_ttl,
        json.dumps(list(entry.dns_names)),
        json.dumps([td.name for td in entry.federates_with]),
        entry.hint,
        int(entry.admin),
        int(entry.downstream),
        entry.revision,
        entry.created_at,
    )


def _selectors_text(entry: Entry) -> str:
    return json.dumps(sorted(str(s) for s in entry.selectors))


def _entry_from_row(row: sqlite3.Row) -> Entry:
    try:
        return Entry(
            id=row["id"],
            spiffe_id=SpiffeId.parse(row["spiffe_id"]),
            parent_id=SpiffeId.parse(row["parent_id"]),
            selectors=frozenset(Selector.parse(s) for s in json.loads(row["selectors"])),
            x509_svid_ttl=row["x509_svid_ttl"],
            jwt_svid_ttl=row["jwt_svid_ttl"],
            dns_names=tuple(json.loads(row["dns_names"])),
            federates_with=tuple(TrustDomain(n) for n in json.loads(row["federates_with"])),
            hint=row["hint"],
            admin=bool(row["admin"]),
            downstream=bool(row["downstream"]),
            revision=row["revision"],
            created_at=row["created_at"],
        )
    except (ValueError, TypeError) as exc:  # EntryError, SpiffeIdError, JSON errors
        raise StoreCorruptError(f"stored entry {row['id']!r} cannot be read: {exc}") from exc


def _agent_from_row(row: sqlite3.Row) -> AgentRecord:
    try:
        return AgentRecord(
            agent_id=SpiffeId.parse(row["agent_id"]),
            aliases=frozenset(SpiffeId.parse(a) for a in json.loads(row["aliases"])),
            attested_at=_from_micros(row["attested_at"]),
            svid_serial=int(row["svid_serial"]),
            svid_expires_at=_from_micros(row["svid_expires_at"]),
            evicted=bool(row["evicted"]),
            new_svid_serial=_optional_int(row["new_svid_serial"]),
        )
    except (ValueError, TypeError) as exc:
        raise StoreCorruptError(f"stored agent {row['agent_id']!r} cannot be read: {exc}") from exc


class SqliteStore:
    """The standalone store: an EntryStore, a TokenStore and an AgentRegistry in one file."""

    writable: Final = True

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self.cache = EntryCache()
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # Entry writes are serialised end to end (DB and cache), so the cache applies them in
        # commit order even when two writes to one entry race.
        self._entry_writes = asyncio.Lock()

    # --- lifecycle

    async def start(self) -> None:
        """Open (or create) the database, migrate it, and load every entry into the cache."""
        if self._conn is not None:
            raise RuntimeError(f"{self.path} is already open")
        self._conn = await asyncio.to_thread(_open, self.path)
        try:
            entries = await self._run(_load_entries)
        except BaseException:
            await self.stop()
            raise
        self.cache.replace_all(entries)
        log.info("sqlite store opened: path=%s entries=%d", self.path, len(entries))

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._close, conn)

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            conn.close()

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise StoreDatabaseError(f"the store {self.path} is not open")
            try:
                return work(self._conn)
            except sqlite3.Error as exc:
                raise StoreDatabaseError(f"database {self.path}: {exc}") from exc

    # --- entries (EntryStore)

    async def create(self, entry: Entry) -> Entry:
        stored = dataclasses.replace(
            entry, revision=1, created_at=int(self._clock.now().timestamp())
        )
        async with self._entry_writes:
            await self._run(lambda conn: _insert_entry(conn, stored))
            self.cache.put(stored)
        return stored

    async def update(self, entry: Entry) -> Entry:
        async with self._entry_writes:
            stored = await self._run(lambda conn: _update_entry(conn, entry))
            self.cache.put(stored)
        return stored

    async def delete(self, entry_id: str) -> Entry:
        async with self._entry_writes:
            removed = await self._run(lambda conn: _delete_entry(conn, entry_id))
            self.cache.remove(entry_id)
        return removed

    # --- join tokens (TokenStore)

    async def create_token(
        self, *, ttl: dt.timedelta, alias: SpiffeId | None
    ) -> tuple[str, JoinTokenRecord]:
        if ttl <= dt.timedelta(0):
            raise ValueError(f"a join token needs a positive TTL, got {ttl}")
        value = secrets.token_urlsafe(32)
        now = self._clock.now()
        record = JoinTokenRecord(token_id=join_token_id(value), expires_at=now + ttl, alias=alias)
        await self._run(lambda conn: _insert_token(conn, _token_hash(value), record, now))
        return value, record

    async def consume_token(self, value: str) -> JoinTokenRecord:
        now = self._clock.now()
        return await self._run(lambda conn: _consume_token(conn, _token_hash(value), now))

    # --- agents (AgentRegistry)

    async def register(self, record: AgentRecord) -> None:
        await self._run(lambda conn: _register_agent(conn, record))

    async def get_agent(self, agent_id: SpiffeId) -> AgentRecord | None:
        def get(conn: sqlite3.Connection) -> AgentRecord | None:
            row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (str(agent_id),))
            found = row.fetchone()
            return None if found is None else _agent_from_row(found)

        return await self._run(get)

    async def update_agent_svid(
        self, agent_id: SpiffeId, serial: int, expires_at: dt.datetime
    ) -> None:
        sql = "UPDATE agents SET new_svid_serial = ?, svid_expires_at = ? WHERE agent_id = ?"
        await self._run(
            lambda conn: _update_agent(conn, agent_id, sql, (str(serial), _micros(expires_at)))
        )

    async def promote_agent_svid(self, agent_id: SpiffeId, serial: int) -> None:
        sql = (
            "UPDATE agents SET svid_serial = new_svid_serial, new_svid_serial = NULL "
            "WHERE agent_id = ? AND new_svid_serial = ?"
        )

        def promote(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(sql, (str(agent_id), str(serial)))

        await self._run(promote)

    async def evict_agent(self, agent_id: SpiffeId) -> None:
        sql = "UPDATE agents SET evicted = 1 WHERE agent_id = ?"
        await self._run(lambda conn: _update_agent(conn, agent_id, sql, ()))

    async def list_agents(self) -> list[AgentRecord]:
        def list_all(conn: sqlite3.Connection) -> list[AgentRecord]:
            rows = conn.execute("SELECT * FROM agents ORDER BY agent_id")
            return [_agent_from_row(row) for row in rows]

        return await self._run(list_all)


# --- opening and migrating (worker thread)


def _open(path: Path) -> sqlite3.Connection:
    if not path.parent.is_dir():
        raise StoreFileError(f"cannot open {path}: directory {path.parent} does not exist")
    _create_private(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreFileError(f"cannot open {path}: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        _check_integrity(conn, path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreFileError(f"{path} is not a usable SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    # Created before SQLite sees it, so the file is never readable by others, not even briefly;
    # SQLite gives its -wal and -shm files the same mode.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreFileError(f"cannot create {path}: {exc.strerror}") from exc
    os.close(fd)


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StoreFileError(f"{path} is corrupt: {'; '.join(problems[:5])}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = _schema_version(conn, path)
    if version > SCHEMA_VERSION:
        raise StoreFileError(
            f"{path} has schema version {version}, written by a newer herald; this herald "
            f"understands versions up to {SCHEMA_VERSION}. Upgrade herald or restore a backup."
        )
    while version < SCHEMA_VERSION:
        _migrate_step(conn, version)
        version += 1
        log.info("sqlite store migrated: path=%s schema_version=%d", path, version)


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" not in tables:
        if tables:
            raise StoreFileError(f"{path} is an SQLite database, but not herald's")
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None or not isinstance(row[0], int):
        raise StoreFileError(f"{path} has no readable schema version")
    return int(row[0])


def _migrate_step(conn: sqlite3.Connection, version: int) -> None:
    """Take the schema from ``version`` to ``version + 1`` in one transaction."""
    with _transaction(conn):
        if version == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (version + 1,))


# --- entries (worker thread)


def _load_entries(conn: sqlite3.Connection) -> list[Entry]:
    return [_entry_from_row(row) for row in conn.execute("SELECT * FROM entries ORDER BY id")]


def _duplicate_of(conn: sqlite3.Connection, entry: Entry) -> str | None:
    row = conn.execute(
        "SELECT id FROM entries WHERE spiffe_id = ? AND parent_id = ? AND selectors = ? "
        "AND id != ?",
        (str(entry.spiffe_id), str(entry.parent_id), _selectors_text(entry), entry.id),
    ).fetchone()
    return None if row is None else str(row["id"])


def _refuse_duplicate(conn: sqlite3.Connection, entry: Entry) -> None:
    existing = _duplicate_of(conn, entry)
    if existing is not None:
        raise EntryExistsError(
            f"entry {existing} already has spiffeID {entry.spiffe_id}, parentID "
            f"{entry.parent_id} and the same selectors"
        )


def _insert_entry(conn: sqlite3.Connection, entry: Entry) -> None:
    with _transaction(conn):
        if conn.execute("SELECT 1 FROM entries WHERE id = ?", (entry.id,)).fetchone():
            raise EntryExistsError(f"an entry with id {entry.id} already exists")
        _refuse_duplicate(conn, entry)
        conn.execute(_INSERT_ENTRY, _entry_row(entry))


def _update_entry(conn: sqlite3.Connection, entry: Entry) -> Entry:
    with _transaction(conn):
        row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry.id,)).fetchone()
        if row is None:
            raise EntryNotFoundError(f"no entry with id {entry.id}")
        current = _entry_from_row(row)
        try:
            stored = dataclasses.replace(
                entry, revision=current.revision + 1, created_at=current.created_at
            )
        except EntryError as exc:  # only a revision past the limits of the model
            raise EntryStoreError(f"entry {entry.id}: {exc}") from exc
        _refuse_duplicate(conn, stored)
        row_values = _entry_row(stored)
        conn.execute(_UPDATE_ENTRY, (*row_values[1:], stored.id))
    return stored


def _delete_entry(conn: sqlite3.Connection, entry_id: str) -> Entry:
    with _transaction(conn):
        row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise EntryNotFoundError(f"no entry with id {entry_id}")
        conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
    return _entry_from_row(row)


# --- join tokens (worker thread)


def _insert_token(
    conn: sqlite3.Connection, token_hash: bytes, record: JoinTokenRecord, now: dt.datetime
) -> None:
    with _transaction(conn):
        conn.execute(
            "INSERT INTO join_tokens (hash, token_id, alias, expires_at) VALUES (?, ?, ?, ?)",
            (
                token_hash,
                record.token_id,
                None if record.alias is None else str(record.alias),
                _micros(record.expires_at),
            ),
        )
        # Expired tokens can never be used again; forgetting them keeps the table small.
        conn.execute("DELETE FROM join_tokens WHERE expires_at <= ?", (_micros(now),))


def _consume_token(
    conn: sqlite3.Connection, token_hash: bytes, now: dt.datetime
) -> JoinTokenRecord:
    with _transaction(conn):
        marked = conn.execute(
            "UPDATE join_tokens SET used_at = ? "
            "WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
            (_micros(now), token_hash, _micros(now)),
        )
        row = conn.execute("SELECT * FROM join_tokens WHERE hash = ?", (token_hash,)).fetchone()
    if marked.rowcount != 1:
        if row is None:
            raise JoinTokenError("unknown join token")
        if row["used_at"] is not None:
            raise JoinTokenError("join token already used")
        raise JoinTokenError("join token expired")
    return _token_record(row)


def _token_record(row: sqlite3.Row) -> JoinTokenRecord:
    try:
        alias = None if row["alias"] is None else SpiffeId.parse(row["alias"])
    except SpiffeIdError as exc:
        raise StoreCorruptError(f"join token {row['token_id']}: bad alias: {exc}") from exc
    return JoinTokenRecord(
        token_id=row["token_id"], expires_at=_from_micros(row["expires_at"]), alias=alias
    )


# --- agents (worker thread)


def _register_agent(conn: sqlite3.Connection, record: AgentRecord) -> None:
    with _transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO agents (agent_id, aliases, attested_at, svid_serial, "
            "svid_expires_at, evicted, new_svid_serial) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                str(record.agent_id),
                json.dumps(sorted(str(a) for a in record.aliases)),
                _micros(record.attested_at),
                str(record.svid_serial),
                _micros(record.svid_expires_at),
                int(record.evicted),
                None if record.new_svid_serial is None else str(record.new_svid_serial),
            ),
        )


def _update_agent(
    conn: sqlite3.Connection, agent_id: SpiffeId, sql: str, values: tuple[object, ...]
) -> None:
    with _transaction(conn):
        if conn.execute(sql, (*values, str(agent_id))).rowcount != 1:
            raise AgentNotFoundError(f"no attested agent {agent_id}")
