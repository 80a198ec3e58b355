"""The registrar: keeps WorkloadEntry objects in step with pods and identity objects.

``Registrar`` holds in-memory indexes of what the watches report (pods by namespace and node,
namespaces, nodes, Services by namespace, identities, WorkloadEntry objects by pod UID, and
for every identity the outcome it had on each pod), so that

- one pod event recomputes only that pod's entries;
- one identity change recomputes only the pods its old outcome covered and its new selectors
  select (only the identity's namespace for a SPIFFEID);
- a namespace, node or Service change recomputes only the pods in that namespace / on that node
  / selected by that Service;
- a periodic resync lists everything again and repairs drift (entries edited or deleted by
  someone else, events the watches lost).

Recomputing a pod renders every identity that may apply (``render.render_for_pod``), resolves
className, fallback and masking (``plan.resolve``) and writes only real differences
(``plan.diff``) with the official client in threads. Identity status (``Ready`` condition,
counters, ``observedGeneration``) is written by a status patch when it changes, and an Event
is posted when an identity becomes not Ready. Nothing a user writes can make a handler raise:
bad objects become conditions and Events; API failures are logged, counted and repaired by the
next resync.

``build_registry`` turns a Registrar into Kopf handlers: raw event handlers (``kopf.on.event``,
which write nothing to the watched objects: no finalizers, no annotations) for every watched
kind, a startup handler that lists everything once before the watches start, and a cleanup
handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf

from herald_core.logs import log_event
from herald_operator.crds import API_VERSION
from herald_operator.identities import (
    SPIFFEID,
    Identity,
    IdentityError,
    class_matches,
    parse_identity,
)
from herald_operator.kubeapi import KubeApi
from herald_operator.metrics import RegistrarMetrics
from herald_operator.plan import diff, resolve
from herald_operator.render import (
    LABEL_MANAGED_BY,
    MANAGER,
    DesiredEntry,
    Failure,
    RenderResult,
    render_for_pod,
    selects,
)
from herald_operator.selection import service_selects

_log = logging.getLogger(__name__)

Obj = dict[str, Any]
PodKey = tuple[str, str]  # namespace, name
IdentityKey = tuple[str, str, str]  # kind, namespace or "", name

INVALID_SPEC: Final = "InvalidSpec"
RECONCILED: Final = "Reconciled"
# Outcomes of one identity on one pod, for its status counters.
ENTRY: Final = "entry"
MASKED: Final = "masked"
FAILED: Final = "failed"
SELECTED: Final = "selected"  # selected, but no entry: a fallback another identity overrides
# Middle-generation collections between full ones (CPython's default is 10).
FULL_COLLECTION_EVERY: Final = 100


@dataclass(frozen=True)
class RegistrarConfig:
    """What the operator is told at start."""

    trust_domain: str
    cluster_name: str
    cluster_domain: str = "cluster.local"
    ignored_namespaces: frozenset[str] = frozenset({"kube-system", "kube-public"})
    class_name: str = ""
    watch_classless: bool = False
    resync_seconds: float = 300.0
    # The status writes of a burst of pod events coalesce: at most one per identity per delay.
    status_delay_seconds: float = 1.0
    # Tune the process's garbage collector (see ``Registrar.settle_heap``): for the operator's
    # own process, not for a test process that runs several registrars.
    tune_gc: bool = False


@dataclass(frozen=True)
class _Outcome:
    kind: str
    failure: Failure | None = None


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _pod_key(obj: Mapping[str, Any]) -> PodKey:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _owner_uid(entry: Mapping[str, Any]) -> str:
    for owner in _meta(entry).get("ownerReferences") or []:
        if owner.get("kind") == "Pod" and owner.get("controller"):
            return str(owner.get("uid") or "")
    return ""


def _identity_key(obj: Mapping[str, Any]) -> IdentityKey:
    meta = _meta(obj)
    kind = str(obj.get("kind") or "")
    namespace = str(meta.get("namespace") or "") if kind == SPIFFEID else ""
    return (kind, namespace, str(meta.get("name") or ""))


def identity_label(key: IdentityKey) -> str:
    kind, namespace, name = key
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


class Registrar:
    """The indexes and the reconcile logic; Kopf handlers (``build_registry``) feed it."""

    def __init__(
        self,
        config: RegistrarConfig,
        api: KubeApi,
        metrics: RegistrarMetrics | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics if metrics is not None else RegistrarMetrics()
        self.synced = False
        self.watching = False  # set by the first watch event: Kopf lets this replica act
        self.pods: dict[PodKey, Obj] = {}
        self.pods_by_namespace: dict[str, set[PodKey]] = defaultdict(set)
        self.pods_by_node: dict[str, set[PodKey]] = defaultdict(set)
        self.namespaces: dict[str, Obj] = {}
        self.nodes: dict[str, Obj] = {}
        self.services: dict[str, dict[str, Obj]] = defaultdict(dict)
        self.identity_objects: dict[IdentityKey, Obj] = {}
        self.identities: dict[IdentityKey, Identity] = {}
        self.invalid: dict[IdentityKey, str] = {}
        self.entries: dict[str, dict[tuple[str, str], Obj]] = defaultdict(dict)  # by pod UID
        self.outcomes: dict[IdentityKey, dict[PodKey, _Outcome]] = defaultdict(dict)
        self._pod_outcomes: dict[PodKey, set[IdentityKey]] = defaultdict(set)
        self._pod_entries_uid: dict[PodKey, str] = {}
        self._pod_by_uid: dict[str, PodKey] = {}
        self._reconciled_rv: dict[PodKey, int] = {}
        self._locks: dict[PodKey, asyncio.Lock] = {}
        self._lock_users: dict[PodKey, int] = {}
        self._dirty: set[IdentityKey] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._written_status: dict[IdentityKey, Obj] = {}
        self._announced: dict[IdentityKey, tuple[str, str]] = {}
        self._resync_task: asyncio.Task[None] | None = None
        self._unsettled: set[PodKey] = set()  # pods listed at start Kopf has not delivered yet
        # Entries being written, by (namespace, name): the spec sent, None for a delete.
        self._in_flight: dict[tuple[str, str], Obj | None] = {}

    # --- readiness and lifecycle -------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.synced:
            return False, "the first listing of pods and identities has not finished"
        return True, ""

    async def start(self) -> None:
        """List everything once into the indexes; then resync periodically.

        Nothing is written here: Kopf runs startup handlers in every replica, but delivers watch
        events only to the one peering lets act. Its initial listing then reconciles each pod.
        """
        if self.config.tune_gc:
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        await self.load()
        self._unsettled = set(self.pods)
        self.synced = True
        if self.config.resync_seconds > 0:
            self._resync_task = asyncio.create_task(self._resync_loop(), name="herald-resync")

    async def stop(self) -> None:
        tasks = [t for t in (self._resync_task, self._status_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.config.tune_gc:
            gc.unfreeze()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            if not self.watching:
                continue  # a standby replica: Kopf's peering has paused its watches
            try:
                await self.resync()
            except Exception:
                self.metrics.failures.labels("api").inc()
                _log.exception("resync failed; the next one retries")

    async def resync(self) -> None:
        """Re-list every watched kind, replace the indexes, recompute every pod."""
        self.metrics.reconciles.labels("resync").inc()
        orphans = await self.load()
        await asyncio.gather(
            *(self.reconcile_pod(key) for key in list(self.pods)),
            *(self._reconcile_orphan(uid) for uid in orphans),
        )
        for key in list(self.identity_objects):
            self._dirty.add(key)
        self._schedule_status()
        self.settle_heap()

    def settle_heap(self) -> None:
        """One full garbage collection, then exempt everything alive from later ones.

        The indexes and Kopf's per-object state hold dozens of objects per pod, and CPython's
        full collections scan every object: with 10,000 pods each took up to a second of CPU,
        stalling every event behind it (docs/operator.md). So full collections are rarer
        (``FULL_COLLECTION_EVERY``), and once the first listing has been reconciled and after
        each resync, when the heap is mostly long-lived, what is alive is frozen out of them.
        Objects a later event replaces are still freed by reference counting, and each settling
        first collects what was frozen.
        """
        if not self.config.tune_gc:
            return
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log_event(
            _log,
            "info",
            "heap settled",
            frozen=gc.get_freeze_count(),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def load(self) -> list[str]:
        """Re-list every watched kind into the indexes; the UIDs of entries with no known pod."""
        kinds = ("Namespace", "Node", "Service", "ClusterSPIFFEID", "SPIFFEID", "Pod")
        listed = {kind: await asyncio.to_thread(self.api.list, kind) for kind in kinds}
        entries, _ = await asyncio.to_thread(self.api.list, "WorkloadEntry")
        self.namespaces = {_meta(o)["name"]: o for o in listed["Namespace"][0]}
        self.nodes = {_meta(o)["name"]: o for o in listed["Node"][0]}
        self.services = defaultdict(dict)
        for svc in listed["Service"][0]:
            self.services[_meta(svc).get("namespace", "")][_meta(svc)["name"]] = svc
        identity_objs = listed["ClusterSPIFFEID"][0] + listed["SPIFFEID"][0]
        listed_keys = {_identity_key(o) for o in identity_objs}
        for gone in set(self.identity_objects) - listed_keys:
            self._forget_identity(gone)
        for obj in identity_objs:
            self._ingest_identity(obj)
        self.entries = defaultdict(dict)
        for entry in entries:
            if (_meta(entry).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER:
                self._put_entry(entry)
        listed_pods = {_pod_key(p): p for p in listed["Pod"][0]}
        for pod_key in set(self.pods) - set(listed_pods):
            self._drop_pod(pod_key)
        for pod_key, pod in listed_pods.items():
            self._put_pod(pod_key, pod)
        return [uid for uid in self.entries if uid not in self._pod_by_uid]

    # --- event intake (called by the Kopf handlers) ------------------------------------------

    async def on_pod(self, event_type: str | None, pod: Obj) -> None:
        started = time.perf_counter()
        key = _pod_key(pod)
        if event_type == "DELETED":
            self._drop_pod(key)
        else:
            current = self.pods.get(key)
            if current is not None and _rv(current) > _rv(pod):
                return  # older than what a listing already gave
            if _rv(pod) and self._reconciled_rv.get(key) == _rv(pod):
                return  # already reconciled at this version
            self._put_pod(key, pod)
        deleted = pod if event_type == "DELETED" else None
        if self.synced and await self.reconcile_pod(key, deleted_pod=deleted):
            self.metrics.pod_event_latency.observe(time.perf_counter() - started)

    async def on_namespace(self, event_type: str | None, obj: Obj) -> None:
        name = str(_meta(obj).get("name") or "")
        old = self.namespaces.get(name)
        if event_type == "DELETED":
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = obj
        old_labels = _meta(old or {}).get("labels")
        new_labels = None if event_type == "DELETED" else _meta(obj).get("labels")
        if self.synced and (old is None or old_labels != new_labels):
            await self._reconcile_pods(self.pods_by_namespace.get(name, set()))

    async def on_node(self, event_type: str | None, obj: Obj) -> None:
        name = str(_meta(obj).get("name") or "")
        old = self.nodes.get(name)
        if event_type == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = obj
        # Templates read only the node's name and UID; heartbeats change neither.
        if self.synced and (old is None or _meta(old).get("uid") != _meta(obj).get("uid")):
            await self._reconcile_pods(self.pods_by_node.get(name, set()))

    async def on_service(self, event_type: str | None, obj: Obj) -> None:
        namespace = str(_meta(obj).get("namespace") or "")
        name = str(_meta(obj).get("name") or "")
        old = self.services[namespace].get(name)
        if event_type == "DELETED":
            self.services[namespace].pop(name, None)
        else:
            self.services[namespace][name] = obj
        if not self.synced or not any(i.auto_populate_dns_names for i in self.identities.values()):
            return
        if old is not None and old.get("spec") == obj.get("spec") and event_type != "DELETED":
            return
        affected = {
            key
            for key in self.pods_by_namespace.get(namespace, set())
            if service_selects(obj, self.pods[key])
            or (old is not None and service_selects(old, self.pods[key]))
        }
        await self._reconcile_pods(affected)

    async def on_identity(self, event_type: str | None, obj: Obj) -> None:
        self.metrics.reconciles.labels("identity").inc()
        key = _identity_key(obj)
        old = self.identity_objects.get(key)
        if event_type != "DELETED" and old is not None:
            unchanged = old.get("spec") == obj.get("spec") and _meta(old).get(
                "generation"
            ) == _meta(obj).get("generation")
            if unchanged:  # a status write (ours) or a metadata change: nothing to recompute
                self.identity_objects[key] = obj
                if self.synced and key not in self._written_status:
                    self._dirty.add(key)  # first sight after a start: report on it
                    self._schedule_status()
                return
        before = set(self.outcomes.get(key, {}))
        if event_type == "DELETED":
            self._forget_identity(key)
        else:
            self._ingest_identity(obj)
        if not self.synced:
            return
        identity = self.identities.get(key)
        after = set(self._candidates(identity)) if identity is not None else set()
        await self._reconcile_pods(before | after)
        if key in self.identity_objects:
            self._dirty.add(key)
            self._schedule_status()

    async def on_entry(self, event_type: str | None, obj: Obj) -> None:
        uid = _owner_uid(obj)
        name_key = _pod_key(obj)
        if not uid:
            return
        current = self.entries.get(uid, {}).get(name_key)
        if event_type == "DELETED":
            if current is None or _rv(current) > _rv(obj):
                return  # our own delete, already known
            self.entries[uid].pop(name_key, None)
        else:
            if current is not None and _rv(current) >= _rv(obj) and _rv(obj):
                if self.synced and uid not in self._pod_by_uid:
                    await self._reconcile_orphan(uid)  # listed at start, its pod gone since
                return  # our own write, already known
            if (_meta(obj).get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGER:
                return
            self._put_entry(obj)
        if not self.synced or self._echo(event_type, obj):
            return
        # Someone else changed or deleted an entry: put back what the pod should have.
        pod_key = self._pod_by_uid.get(uid)
        if pod_key is not None:
            await self.reconcile_pod(pod_key)
        elif event_type != "DELETED":
            await self._reconcile_orphan(uid)

    def _echo(self, event_type: str | None, obj: Obj) -> bool:
        """Whether the event is our own write, seen before the API's answer to it arrived."""
        key = _pod_key(obj)
        if key not in self._in_flight:
            return False
        spec = self._in_flight[key]
        return spec is None if event_type == "DELETED" else spec == obj.get("spec")

    # --- indexes -----------------------------------------------------------------------------

    def _put_pod(self, key: PodKey, pod: Obj) -> None:
        old = self.pods.get(key)
        if old is not None:
            self.pods_by_node[str((old.get("spec") or {}).get("nodeName") or "")].discard(key)
            self._pod_by_uid.pop(str(_meta(old).get("uid") or ""), None)
        self.pods[key] = pod
        self._pod_by_uid[str(_meta(pod).get("uid") or "")] = key
        self.pods_by_namespace[key[0]].add(key)
        self.pods_by_node[str((pod.get("spec") or {}).get("nodeName") or "")].add(key)

    def _drop_pod(self, key: PodKey) -> None:
        old = self.pods.pop(key, None)
        if old is not None:
            self._pod_by_uid.pop(str(_meta(old).get("uid") or ""), None)
            self.pods_by_namespace[key[0]].discard(key)
            self.pods_by_node[str((old.get("spec") or {}).get("nodeName") or "")].discard(key)

    def _put_entry(self, entry: Obj) -> None:
        uid = _owner_uid(entry)
        if uid:
            self.entries[uid][_pod_key(entry)] = entry

    def _ingest_identity(self, obj: Obj) -> None:
        key = _identity_key(obj)
        spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
        object_class = spec.get("className") if isinstance(spec, Mapping) else ""
        if not class_matches(
            object_class if isinstance(object_class, str) else "",
            self.config.class_name,
            watch_classless=self.config.watch_classless,
        ):
            self._forget_identity(key)  # another operator's: neither rendered nor reported on
            return
        self.identity_objects[key] = obj
        try:
            identity = parse_identity(obj)
        except IdentityError as exc:
            self.identities.pop(key, None)
            self.invalid[key] = str(exc)
            self.metrics.failures.labels("invalid_spec").inc()
        else:
            self.identities[key] = identity
            self.invalid.pop(key, None)
        self._dirty.add(key)

    def _forget_identity(self, key: IdentityKey) -> None:
        self.identity_objects.pop(key, None)
        self.identities.pop(key, None)
        self.invalid.pop(key, None)
        self._written_status.pop(key, None)
        self._announced.pop(key, None)
        self._dirty.discard(key)
        with contextlib.suppress(KeyError):
            self.metrics.entries.remove(identity_label(key))

    def _candidates(self, identity: Identity) -> Iterable[PodKey]:
        """The pods ``identity`` selects now (scanning only the namespaces it can select)."""
        if identity.namespace is not None:
            namespaces: Iterable[str] = [identity.namespace]
        else:
            namespaces = list(self.pods_by_namespace)
        for namespace in namespaces:
            if namespace in self.config.ignored_namespaces:
                continue
            ns_obj = self.namespaces.get(namespace)
            for key in self.pods_by_namespace.get(namespace, set()):
                if selects(identity, self.pods[key], ns_obj):
                    yield key

    # --- reconciling -------------------------------------------------------------------------

    async def _reconcile_pods(self, keys: Iterable[PodKey]) -> None:
        await asyncio.gather(*(self.reconcile_pod(key) for key in set(keys)))

    def _render(self, pod: Obj) -> list[RenderResult]:
        namespace, _ = _pod_key(pod)
        if namespace in self.config.ignored_namespaces:
            return []
        node = self.nodes.get(str((pod.get("spec") or {}).get("nodeName") or ""))
        ns_obj = self.namespaces.get(namespace)
        services = list(self.services.get(namespace, {}).values())
        results = []
        for key, identity in self.identities.items():
            if key[0] == SPIFFEID and key[1] != namespace:
                continue
            results.append(
                render_for_pod(
                    identity,
                    pod,
                    ns_obj,
                    node,
                    trust_domain=self.config.trust_domain,
                    cluster_name=self.config.cluster_name,
                    cluster_domain=self.config.cluster_domain,
                    services=services if identity.auto_populate_dns_names else (),
                )
            )
        return results

    async def reconcile_pod(self, key: PodKey, *, deleted_pod: Obj | None = None) -> bool:
        """Bring one pod's entries to what its identities render; True if anything was written."""
        self.metrics.reconciles.labels("pod").inc()
        # One reconcile per pod at a time; the lock lives while someone holds or awaits it.
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._lock_users[key] = self._lock_users.get(key, 0) + 1
        try:
            async with lock:
                return await self._reconcile_pod(key, deleted_pod)
        except Exception:
            self.metrics.failures.labels("handler").inc()
            _log.exception("reconciling pod %s/%s failed", *key)
            return False
        finally:
            self._lock_users[key] -= 1
            if not self._lock_users[key]:
                del self._lock_users[key], self._locks[key]

    async def _reconcile_pod(self, key: PodKey, deleted_pod: Obj | None) -> bool:
        pod = self.pods.get(key)
        uid = str(_meta(pod).get("uid") or "") if pod is not None else ""
        previous_uid = self._pod_entries_uid.get(key, "")
        if deleted_pod is not None and not previous_uid:
            previous_uid = str(_meta(deleted_pod).get("uid") or "")
        wrote = False
        if previous_uid and previous_uid != uid:
            # The pod is gone, or a new pod took its name: the old one's entries go.
            wrote |= await self._apply([], previous_uid)
        results = self._render(pod) if pod is not None else []
        resolution = resolve(
            results,
            class_name=self.config.class_name,
            watch_classless=self.config.watch_classless,
        )
        outcomes = self._outcomes(results, resolution.winners, resolution.masked)
        if pod is not None:
            self._reconciled_rv[key] = _rv(pod)
        else:
            self._reconciled_rv.pop(key, None)
        if uid:
            wrote |= await self._apply(resolution.winners, uid)
            self._pod_entries_uid[key] = uid
        else:
            self._pod_entries_uid.pop(key, None)
        self._record(key, outcomes)
        if key in self._unsettled:
            self._unsettled.discard(key)
            if not self._unsettled:
                self.settle_heap()  # the first listing is reconciled
        return wrote

    async def _reconcile_orphan(self, uid: str) -> None:
        """Entries whose pod is not in the index go, once the API confirms the pod is gone.

        The index alone cannot tell: watches deliver kinds in no particular order, so an entry
        may be seen before its pod (at start, after a peering pause, in a resync's listings).
        """
        try:
            for entry in list(self.entries.get(uid, {}).values()):
                owner: Mapping[str, Any] = next(
                    (o for o in _meta(entry).get("ownerReferences") or [] if o.get("uid") == uid),
                    {},
                )
                namespace = str(_meta(entry).get("namespace") or "")
                name = str(owner.get("name") or "")
                if name and await asyncio.to_thread(self.api.pod_uid, namespace, name) == uid:
                    return  # the pod lives; its own event reconciles it
            if uid in self._pod_by_uid:
                return
            await self._apply([], uid)
        except Exception:
            self.metrics.failures.labels("handler").inc()
            _log.exception("removing the entries of gone pod %s failed", uid)

    @staticmethod
    def _outcomes(
        results: list[RenderResult], winners: list[DesiredEntry], masked: list[DesiredEntry]
    ) -> dict[IdentityKey, _Outcome]:
        outcomes: dict[IdentityKey, _Outcome] = {}
        for result in results:
            if result.selected:
                outcomes[result.identity.key] = (
                    _Outcome(FAILED, result.failure)
                    if result.failure is not None
                    else _Outcome(SELECTED)
                )
        for entry in masked:
            outcomes[entry.source.key] = _Outcome(MASKED)
        for entry in winners:
            outcomes[entry.source.key] = _Outcome(ENTRY)
        return outcomes

    def _record(self, key: PodKey, outcomes: Mapping[IdentityKey, _Outcome]) -> None:
        touched = set(self._pod_outcomes.get(key, set())) | set(outcomes)
        for identity_key in touched:
            per_pod = self.outcomes[identity_key]
            new = outcomes.get(identity_key)
            if per_pod.get(key) == new:
                continue
            if new is None:
                per_pod.pop(key, None)
            else:
                per_pod[key] = new
                if new.kind == FAILED:
                    self.metrics.failures.labels("render").inc()
            self._dirty.add(identity_key)
        if outcomes:
            self._pod_outcomes[key] = set(outcomes)
        else:
            self._pod_outcomes.pop(key, None)
        if self._dirty:
            self._schedule_status()

    async def _apply(self, desired: list[DesiredEntry], uid: str) -> bool:
        existing = self.entries.get(uid, {})
        changes = diff(desired, list(existing.values()))
        if not (changes.create or changes.update or changes.delete):
            return False
        calls: list[Awaitable[None]] = []
        for entry in changes.create:
            calls.append(self._write("create", uid, entry, None))
        for entry in changes.update:
            current = existing[(entry.namespace, entry.name)]
            calls.append(self._write("patch", uid, entry, current))
        for obj in changes.delete:
            calls.append(self._write("delete", uid, None, dict(obj)))
        await asyncio.gather(*calls)
        if not self.entries.get(uid):
            self.entries.pop(uid, None)
        return True

    async def _write(
        self, verb: str, uid: str, desired: DesiredEntry | None, current: Obj | None
    ) -> None:
        obj = desired.to_object() if desired is not None else dict(current or {})
        key = _pod_key(obj)
        # The watch may deliver the write before its answer: on_entry must not take it for
        # someone else's change (and reconcile the pod again).
        self._in_flight[key] = obj["spec"] if desired is not None else None
        try:
            await self._send(verb, uid, desired, current, obj)
        finally:
            self._in_flight.pop(key, None)

    async def _send(
        self, verb: str, uid: str, desired: DesiredEntry | None, current: Obj | None, obj: Obj
    ) -> None:
        key = _pod_key(obj)
        try:
            if verb == "delete":
                await asyncio.to_thread(self.api.delete_entry, key[0], key[1])
                self.entries.get(uid, {}).pop(key, None)
                self.metrics.writes.labels(verb).inc()
                return
            if verb == "create":
                stored, created = await asyncio.to_thread(self.api.create_entry, obj)
                if not created:
                    # It existed (the index had not seen it yet): write only a real difference.
                    self.entries[uid][key] = stored
                    if desired is None or not diff([desired], [stored]).update:
                        return
                    verb, current = "patch", stored
            if verb == "patch":
                stored = await asyncio.to_thread(self.api.replace_spec, obj, current or {})
        except Exception as exc:
            self.metrics.failures.labels("api").inc()
            log_event(
                _log,
                "warning",
                "WorkloadEntry write failed; the next event or resync retries",
                verb=verb,
                namespace=key[0],
                name=key[1],
                error=str(exc)[:500],
            )
            return
        self.metrics.writes.labels(verb).inc()
        self.entries[uid][key] = stored

    # --- identity status ---------------------------------------------------------------------

    def _schedule_status(self) -> None:
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.create_task(self._flush_status(), name="herald-status")

    async def _flush_status(self) -> None:
        await asyncio.sleep(self.config.status_delay_seconds)
        while self._dirty:
            keys, self._dirty = self._dirty, set()
            await asyncio.gather(*(self._write_status(key) for key in keys))

    def status_of(self, key: IdentityKey) -> tuple[Obj, tuple[str, str] | None]:
        """The status the identity should show, and (reason, message) if it is not Ready."""
        obj = self.identity_objects[key]
        generation = _meta(obj).get("generation") or 0
        per_pod = self.outcomes.get(key, {})
        counts = {kind: 0 for kind in (ENTRY, MASKED, FAILED)}
        first_failure: tuple[PodKey, Failure] | None = None
        for pod_key, outcome in per_pod.items():
            if outcome.kind in counts:
                counts[outcome.kind] += 1
            failure = outcome.failure
            if failure is not None and (first_failure is None or pod_key < first_failure[0]):
                first_failure = (pod_key, failure)
        if key in self.invalid:
            problem: tuple[str, str] | None = (INVALID_SPEC, self.invalid[key])
            counts = {kind: 0 for kind in counts}
            selected = 0
        else:
            selected = len(per_pod)
            problem = None
            if first_failure is not None:
                pod_key, failure = first_failure
                problem = (failure.reason, f"pod {pod_key[0]}/{pod_key[1]}: {failure.message}")
        if problem is None:
            condition: dict[str, Any] = {
                "type": "Ready",
                "status": "True",
                "reason": RECONCILED,
                "message": f"{counts[ENTRY]} entries for {selected} selected pods",
            }
        else:
            condition = {
                "type": "Ready",
                "status": "False",
                "reason": problem[0],
                "message": problem[1][:32768],
            }
        condition["observedGeneration"] = generation
        status = {
            "conditions": [condition],
            "observedGeneration": generation,
            "podsSelected": selected,
            "entriesCreated": counts[ENTRY],
            "renderFailures": counts[FAILED],
            "entriesMasked": counts[MASKED],
        }
        return status, problem

    async def _write_status(self, key: IdentityKey) -> None:
        if key not in self.identity_objects:
            return
        try:
            status, problem = self.status_of(key)
            self.metrics.entries.labels(identity_label(key)).set(status["entriesCreated"])
            previous = self._written_status.get(key)
            obj = self.identity_objects[key]
            if previous is None:
                previous = (obj.get("status") or {}) if isinstance(obj.get("status"), dict) else {}
            if _comparable(previous) != _comparable(status):
                transition = _transition_time(previous, status)
                status["conditions"][0]["lastTransitionTime"] = transition
                await asyncio.to_thread(
                    self.api.patch_status, key[0], key[1] or None, key[2], status
                )
                self._written_status[key] = status
            else:
                self._written_status[key] = previous
            if problem is None:
                self._announced.pop(key, None)
            elif problem != self._announced.get(key):
                self._announced[key] = problem
                await asyncio.to_thread(self.api.post_event, obj, "Warning", *problem)
        except Exception as exc:
            self.metrics.failures.labels("api").inc()
            log_event(
                _log,
                "warning",
                "identity status write failed; the next change or resync retries",
                identity=identity_label(key),
                error=str(exc)[:500],
            )


def _comparable(status: Mapping[str, Any]) -> str:
    status = json.loads(json.dumps(status, default=str))
    for condition in status.get("conditions") or []:
        condition.pop("lastTransitionTime", None)
    return json.dumps(status, sort_keys=True)


def _transition_time(previous: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    old = (previous.get("conditions") or [{}])[0]
    new = status["conditions"][0]
    if old.get("status") == new["status"] and old.get("lastTransitionTime"):
        return str(old["lastTransitionTime"])
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Kopf wiring ---------------------------------------------------------------------------------

LoginFn = Callable[..., Any]
_GROUP, _VERSION = API_VERSION.split("/")


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base, for handlers that compare an object's versions: herald has none.

    On every event Kopf deep-copies the object into an "essence" and diffs it against the stored
    one, for ``on.create``/``on.update`` handlers (and daemons); the registrar registers only
    ``on.event`` handlers, which never read either. Set as
    ``settings.persistence.diffbase_storage``, it saves a deep copy and a diff per event.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(registrar: Registrar, *, login: LoginFn | None = None) -> kopf.OperatorRegistry:
    """Kopf handlers that feed ``registrar``; ``login`` replaces Kopf's in-cluster/kubeconfig."""
    registry = kopf.OperatorRegistry()

    def watch(
        group: str, version: str, plural: str, intake: Callable[[str | None, Obj], Awaitable[None]]
    ) -> None:
        async def handler(event: Mapping[str, Any], **_: Any) -> None:
            obj = event.get("object")
            if not isinstance(obj, Mapping):
                return
            registrar.watching = True
            try:
                await intake(event.get("type"), json.loads(json.dumps(obj)))
            except Exception:
                registrar.metrics.failures.labels("handler").inc()
                _log.exception("handling a %s event failed", plural)

        kopf.on.event(group, version, plural, id=f"herald-{plural}", registry=registry)(handler)

    watch("", "v1", "pods", registrar.on_pod)
    watch("", "v1", "namespaces", registrar.on_namespace)
    watch("", "v1", "nodes", registrar.on_node)
    watch("", "v1", "services", registrar.on_service)
    watch(_GROUP, _VERSION, "clusterspiffeids", registrar.on_identity)
    watch(_GROUP, _VERSION, "spiffeids", registrar.on_identity)
    watch(_GROUP, _VERSION, "workloadentries", registrar.on_entry)

    if login is not None:
        kopf.on.login(registry=registry)(login)
    else:

        def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # The kubernetes client's own settings: in a pod KUBERNETES_SERVICE_HOST/_PORT and
            # the ServiceAccount token, as the operator's API client uses, else the kubeconfig.
            # (Kopf's service-account login dials https://kubernetes.default.svc instead, which
            # needs cluster DNS and the API's Service on port 443.)
            return kopf.login_via_client(**kwargs)

        kopf.on.login(registry=registry)(default_login)

    async def startup(**_: Any) -> None:
        await registrar.start()

    async def cleanup(**_: Any) -> None:
        await registrar.stop()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    return registry
