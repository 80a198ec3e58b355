"""The server's view of registration entries: the stores' common interface and the live cache.

Stores (SQLite in standalone mode, the Kubernetes API in Kubernetes mode) write into one
EntryCache; the agent API reads it by parent and subscribes to the changes of the parents it
serves. Changes are routed by parent and coalesced per entry, so an agent that reads slowly
costs at most one pending item per entry, never an unbounded queue.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Protocol

from herald_core.entry import Entry, EntryIndex, is_reserved_id
from herald_core.selector import Selector
from herald_core.spiffeid import SpiffeId


def reserved_id_problem(entry: Entry) -> str | None:
    if is_reserved_id(entry.spiffe_id):
        return f"spiffeID: {entry.spiffe_id} is reserved for herald's own agents and servers"
    return None


class EntryStoreError(Exception):
    """Base of the errors a store raises on a write; the message is meant for the operator."""


class ReadOnlyStoreError(EntryStoreError):
    """The store's entries come from elsewhere (the Kubernetes custom resources)."""


class EntryNotFoundError(EntryStoreError):
    pass


class EntryExistsError(EntryStoreError):
    pass


class EntryStore(Protocol):
    """What the server needs from an entry store. Reads go through ``cache``."""

    cache: EntryCache

    @property
    def writable(self) -> bool: ...

    async def start(self) -> None:
        """Load every entry into the cache (and start watching, for watched stores)."""

    async def stop(self) -> None: ...

    async def create(self, entry: Entry) -> Entry:
        """Store a new entry; an empty id gets a generated one. Returns the stored entry."""

    async def update(self, entry: Entry) -> Entry:
        """Replace the entry with this id; the revision increases."""

    async def delete(self, entry_id: str) -> Entry:
        """Remove an entry and return what was removed."""


class EntrySubscription:
    """Pending changes for one set of parents, coalesced per entry ID.

    ``pending`` maps an entry ID to its new version, or to None when the entry left this
    subscription's parents (deleted, or moved to another parent).
    """

    def __init__(self, cache: EntryCache, parents: frozenset[SpiffeId]) -> None:
        self._cache = cache
        self.parents = parents
        self.pending: dict[str, Entry | None] = {}
        self._ready = asyncio.Event()

    def _offer(self, entry_id: str, new: Entry | None) -> None:
        if new is not None and new.parent_id in self.parents:
            self.pending[entry_id] = new
        else:
            self.pending[entry_id] = None
        self._ready.set()

    async def wait(self) -> dict[str, Entry | None]:
        """Block until something changed; return and clear the pending changes."""
        await self._ready.wait()
        self._ready.clear()
        changes, self.pending = self.pending, {}
        return changes

    def close(self) -> None:
        self._cache._unsubscribe(self)

    def __enter__(self) -> EntrySubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EntryCache:
    """The current entries, indexed, with change notification routed by parent.

    Not thread-safe: only the event loop's thread may call it (watch threads hand their
    events over with ``loop.call_soon_threadsafe``).
    """

    def __init__(self) -> None:
        self._index = EntryIndex()
        self._subscribers: dict[SpiffeId, set[EntrySubscription]] = defaultdict(set)

    def put(self, entry: Entry) -> None:
        old = self._index.put(entry)
        if old != entry:
            self._notify(entry.id, old, entry)

    def remove(self, entry_id: str) -> Entry | None:
        old = self._index.remove(entry_id)
        if old is not None:
            self._notify(entry_id, old, None)
        return old

    def replace_all(self, entries: Iterable[Entry]) -> None:
        """Make the cache hold exactly ``entries`` (after a relist), notifying only differences."""
        wanted = {entry.id: entry for entry in entries}
        for stale in [e.id for e in self._index if e.id not in wanted]:
            self.remove(stale)
        for entry in wanted.values():
            self.put(entry)

    def get(self, entry_id: str) -> Entry | None:
        return self._index.get(entry_id)

    def by_parents(self, parents: Iterable[SpiffeId]) -> list[Entry]:
        """Entries any of ``parents`` may serve, sorted by entry ID."""
        found = {e.id: e for parent in parents for e in self._index.by_parent(parent)}
        return [found[i] for i in sorted(found)]

    def matching(self, selectors: frozenset[Selector]) -> list[Entry]:
        return self._index.matching(selectors)

    def subscribe(self, parents: Iterable[SpiffeId]) -> EntrySubscription:
        subscription = EntrySubscription(self, frozenset(parents))
        for parent in subscription.parents:
            self._subscribers[parent].add(subscription)
        return subscription

    def _unsubscribe(self, subscription: EntrySubscription) -> None:
        for parent in subscription.parents:
            subs = self._subscribers.get(parent)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscribers[parent]

    def _notify(self, entry_id: str, old: Entry | None, new: Entry | None) -> None:
        parents = {e.parent_id for e in (old, new) if e is not None}
        targets = {s for parent in parents for s in self._subscribers.get(parent, ())}
        for subscription in targets:
            subscription._offer(entry_id, new)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._index)
