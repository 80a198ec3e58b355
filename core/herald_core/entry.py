"""Registration entries: which SPIFFE ID a workload gets, from which agent, under which selectors.

An Entry is validated once, when it is built, so every store, stream and signer downstream can
trust it. EntryIndex finds the entries a set of selectors matches without scanning every entry,
and the entries an agent may serve by parent.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeVar

from herald_core.selector import Selector, matches
from herald_core.spiffeid import SpiffeId, TrustDomain

MAX_HINT_LENGTH: Final = 1024
MAX_TTL_SECONDS: Final = 366 * 86400
MAX_ENTRY_ID_LENGTH: Final = 255
_ENTRY_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_.:")
_K = TypeVar("_K")
_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


RESERVED_PATH: Final = "/herald"


def is_reserved_id(spiffe_id: SpiffeId) -> bool:
    """IDs under ``/herald`` belong to herald itself (agents, the server): never to a workload.

    A workload holding the server's or an agent's ID could impersonate it to other agents, so
    no entry may carry one, whatever its source.
    """
    return spiffe_id.path == RESERVED_PATH or spiffe_id.path.startswith(RESERVED_PATH + "/")


class EntryError(ValueError):
    """An entry that herald will not store or serve; the message names the field."""


def check_dns_name(name: str) -> None:
    """RFC 1123 host name, lowercase, optionally with one leading ``*.`` wildcard label."""
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            raise EntryError("dnsNames: '*' alone is not a DNS name")
    if not name or len(name) > 253:
        raise EntryError(f"dnsNames: {name!r} must be 1 to 253 characters")
    for label in labels:
        if not _DNS_LABEL.match(label):
            raise EntryError(
                f"dnsNames: {name!r} is not a valid DNS name (label {label!r}: lowercase "
                "letters, digits and '-', 1-63 characters, not starting or ending with '-')"
            )


def _check_entry_id(entry_id: str) -> None:
    if not entry_id or len(entry_id) > MAX_ENTRY_ID_LENGTH:
        raise EntryError(f"id: must be 1 to {MAX_ENTRY_ID_LENGTH} characters")
    bad = sorted(set(entry_id) - _ENTRY_ID_CHARS)
    if bad:
        raise EntryError(f"id: {entry_id!r} contains characters {''.join(bad)!r}")


def _check_ttl(name: str, value: int) -> None:
    # 0 means "the server's default"; negative or absurdly long TTLs are mistakes.
    if not 0 <= value <= MAX_TTL_SECONDS:
        raise EntryError(f"{name}: must be between 0 (default) and {MAX_TTL_SECONDS} seconds")


@dataclass(frozen=True, slots=True)
class Entry:
    """One registration entry; construction validates every field."""

    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: frozenset[Selector]
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    dns_names: tuple[str, ...] = ()
    federates_with: tuple[TrustDomain, ...] = ()
    hint: str = ""
    admin: bool = False
    downstream: bool = False
    revision: int = 0
    created_at: int = 0

    def __post_init__(self) -> None:
        _check_entry_id(self.id)
        if self.spiffe_id.is_root:
            raise EntryError(f"spiffeID: {self.spiffe_id} has no path; workload IDs need one")
        if not self.spiffe_id.is_member_of(self.parent_id.trust_domain):
            raise EntryError(
                f"spiffeID: {self.spiffe_id} is not in the parent's trust domain "
                f"{self.parent_id.trust_domain}"
            )
        if not self.selectors:
            raise EntryError("selectors: at least one selector is required")
        _check_ttl("x509SVIDTTL", self.x509_svid_ttl)
        _check_ttl("jwtSVIDTTL", self.jwt_svid_ttl)
        for name in self.dns_names:
            check_dns_name(name)
        if len(set(self.dns_names)) != len(self.dns_names):
            raise EntryError("dnsNames: duplicate names")
        if self.spiffe_id.trust_domain in self.federates_with:
            raise EntryError("federatesWith: an entry cannot federate with its own trust domain")
        if len(self.hint.encode()) > MAX_HINT_LENGTH:
            raise EntryError(f"hint: at most {MAX_HINT_LENGTH} bytes")
        if self.revision < 0 or self.created_at < 0:
            raise EntryError("revision and createdAt cannot be negative")

    def matches(self, workload_selectors: frozenset[Selector]) -> bool:
        return matches(self.selectors, workload_selectors)

    @property
    def sort_key(self) -> str:
        """Order of entries in a Workload API response: by entry ID, as SPIRE sorts them."""
        return self.id


@dataclass
class EntryIndex:
    """Entries indexed by ID, by parent and by selector.

    Matching a workload looks only at entries that share at least one selector with it, so the
    cost follows the workload's selectors, not the number of entries.
    """

    _by_id: dict[str, Entry] = field(default_factory=dict)
    _by_parent: dict[SpiffeId, set[str]] = field(default_factory=lambda: defaultdict(set))
    _by_selector: dict[Selector, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> EntryIndex:
        index = cls()
        for entry in entries:
            index.put(entry)
        return index

    def put(self, entry: Entry) -> Entry | None:
        """Insert or replace by ID; returns the entry it replaced."""
        old = self.remove(entry.id)
        self._by_id[entry.id] = entry
        self._by_parent[entry.parent_id].add(entry.id)
        for selector in entry.selectors:
            self._by_selector[selector].add(entry.id)
        return old

    def remove(self, entry_id: str) -> Entry | None:
        old = self._by_id.pop(entry_id, None)
        if old is None:
            return None
        _discard(self._by_parent, old.parent_id, entry_id)
        for selector in old.selectors:
            _discard(self._by_selector, selector, entry_id)
        return old

    def get(self, entry_id: str) -> Entry | None:
        return self._by_id.get(entry_id)

    def by_parent(self, parent_id: SpiffeId) -> list[Entry]:
        return sorted(
            (self._by_id[i] for i in self._by_parent.get(parent_id, ())), key=lambda e: e.id
        )

    def matching(self, workload_selectors: frozenset[Selector]) -> list[Entry]:
        """Entries whose selectors are all among ``workload_selectors``, sorted by entry ID."""
        candidates: set[str] = set()
        for selector in workload_selectors:
            candidates |= self._by_selector.get(selector, set())
        found = (self._by_id[i] for i in candidates)
        return sorted((e for e in found if e.matches(workload_selectors)), key=lambda e: e.id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._by_id.values(), key=lambda e: e.id))


def _discard(index: dict[_K, set[str]], key: _K, entry_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(entry_id)
        if not ids:
            del index[key]
