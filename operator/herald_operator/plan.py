"""What to write for one pod: which rendered entries win, and which API calls make it so.

``resolve`` applies the rules that span identities, for one pod:

1. className: results of identities this operator does not act on are dropped first
   (``identities.class_matches``), so they neither give entries nor suppress a fallback.
2. fallback: a ``fallback`` identity applies only when no non-fallback identity *selects* the pod.
   Selecting is what counts, not rendering: a non-fallback identity whose template fails for the
   pod still keeps the fallback away, so a broken template shows as a render failure instead of
   silently swapping the pod's identity.
3. masking: entries with the same SPIFFE ID and selector set are duplicates (herald-server would
   serve both to the same workload). One wins, deterministically: a ClusterSPIFFEID before a
   SPIFFEID (the platform team's declaration outranks a tenant's), then the oldest
   creationTimestamp, then namespace and name. The others are returned as masked, for the
   losers' ``entriesMasked`` counters.

``diff`` compares the winners with the WorkloadEntry objects that exist for the pod and returns
only real changes: a difference in the spec, in herald's labels or in the pod ownerReference.
Metadata the API server fills in (resourceVersion, managedFields, …), labels others add and
the order of set-like lists are not differences.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from herald_operator.identities import CLUSTER_SPIFFEID, Identity, class_matches
from herald_operator.render import HERALD_LABELS, DesiredEntry, RenderResult

# x-kubernetes-list-type: set in the WorkloadEntry CRD: order carries no meaning.
_SET_FIELDS: Final = frozenset({"selectors", "dnsNames", "federatesWith"})


class Resolution(NamedTuple):
    """The entries to write for a pod, and the duplicates that lost to them."""

    winners: list[DesiredEntry]
    masked: list[DesiredEntry]


class Changes(NamedTuple):
    """The API calls that bring a pod's WorkloadEntry objects to the desired set."""

    create: list[DesiredEntry]
    update: list[DesiredEntry]
    delete: list[Mapping[str, Any]]


def resolve(
    results: Iterable[RenderResult], *, class_name: str = "", watch_classless: bool = False
) -> Resolution:
    """Apply className, fallback and masking to one pod's render results (any order)."""
    ours = [
        r
        for r in results
        if class_matches(r.identity.class_name, class_name, watch_classless=watch_classless)
    ]
    if any(r.selected and not r.identity.fallback for r in ours):
        ours = [r for r in ours if not r.identity.fallback]
    entries = sorted(
        (r.entry for r in ours if r.entry is not None), key=lambda e: precedence(e.source)
    )
    winners: dict[tuple[str, frozenset[str]], DesiredEntry] = {}
    masked: list[DesiredEntry] = []
    for entry in entries:
        if entry.identity_key in winners:
            masked.append(entry)
        else:
            winners[entry.identity_key] = entry
    return Resolution(list(winners.values()), masked)


def precedence(identity: Identity) -> tuple[int, str, str, str]:
    """Sort key of identities competing for one entry: the smallest wins."""
    # creationTimestamp is RFC 3339 in UTC with a fixed layout, so strings sort by time; an
    # unknown time sorts last.
    created = identity.created or "~"
    return (0 if identity.kind == CLUSTER_SPIFFEID else 1, created, *identity.key[1:])


def diff(desired: Sequence[DesiredEntry], existing: Iterable[Mapping[str, Any]]) -> Changes:
    """The creates, updates and deletes that turn ``existing`` into ``desired``.

    ``existing`` are WorkloadEntry objects as the API returns them (those of one pod, or of any
    set of pods ``desired`` covers); objects already being deleted are left alone.
    """
    current = {_object_key(obj): obj for obj in existing}
    wanted = {(entry.namespace, entry.name): entry for entry in desired}
    create = [e for key, e in wanted.items() if key not in current]
    update = [e for key, e in wanted.items() if key in current and not _same(e, current[key])]
    delete = [
        obj
        for key, obj in current.items()
        if key not in wanted and not (obj.get("metadata") or {}).get("deletionTimestamp")
    ]
    return Changes(create, update, delete)


def _object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _same(entry: DesiredEntry, obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if any(labels.get(key) != entry.labels.get(key) for key in HERALD_LABELS):
        return False
    owners = meta.get("ownerReferences") or []
    if not any(_same_owner(entry.owner, owner) for owner in owners):
        return False
    return _canonical(entry.spec) == _canonical(obj.get("spec") or {})


def _same_owner(wanted: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    # The API server may add blockOwnerDeletion; herald owns only the fields it writes.
    return all(owner.get(key) == value for key, value in wanted.items())


def _canonical(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with unset-equivalent values dropped and set-like lists as sets."""
    canonical: dict[str, Any] = {}
    for key, value in spec.items():
        if value in (None, False, 0, "", []):
            continue
        if key in _SET_FIELDS and isinstance(value, list):
            canonical[key] = frozenset(map(str, value))
        else:
            canonical[key] = value
    return canonical
