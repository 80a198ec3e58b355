"""Kubernetes mode's entry store: entries from WorkloadEntry and ClusterStaticEntry objects.

One daemon thread per kind (Node, WorkloadEntry, ClusterStaticEntry) lists, then watches from the
list's resourceVersion with the official client, and hands every event to the event loop; only
the loop touches the indexes and the cache. A 410 Gone relists at once, other failures relist
after a capped backoff, and a relist replaces that kind's state wholesale, so changes made while
a watch was down are not missed.

A WorkloadEntry's parent is the agent of its node, whose SPIFFE ID carries the node's UID: an
entry waits until its Node is known and leaves the cache when the Node goes. An object that fails
validation is logged once and never served (the operator reports it in the object's status).
The store is read-only: entries are changed by editing the custom resources.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import kubernetes.watch
from kubernetes.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi

from herald_core.durations import DurationError, format_duration, parse_duration
from herald_core.entry import MAX_TTL_SECONDS, RESERVED_PATH, Entry, EntryError, is_reserved_id
from herald_core.selector import SelectorError, parse_selectors
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_server.agents import agent_id
from herald_server.entries import EntryCache, EntryStoreError, ReadOnlyStoreError

log = logging.getLogger(__name__)

GROUP: Final = "herald.dev"
VERSION: Final = "v1alpha1"
READ_ONLY: Final = (
    "entries come from the herald.dev custom resources in Kubernetes mode; "
    "edit a ClusterSPIFFEID, SPIFFEID or ClusterStaticEntry instead"
)
# herald's agents and server live under spiffe://<td>/herald/: no entry may mint an ID there,
# or a workload could present itself as an agent.
_STATIC_PREFIX: Final = "cluster:"
_LIST_TIMEOUT: Final = (10.0, 60.0)  # connect, read (seconds)
_STOP_GRACE: Final = 5.0
_JITTER: Final = random.SystemRandom()
_TYPE_NAMES: Final = {str: "a string", int: "an integer", bool: "a boolean", list: "a list"}

Obj = dict[str, Any]


class InvalidObjectError(ValueError):
    """A custom resource that cannot become an entry; the message says which field and why."""


def k8s_psat_agent_id(trust_domain: TrustDomain, cluster: str, node_uid: str) -> SpiffeId:
    """``spiffe://<td>/herald/agent/k8s_psat/<cluster>/<node-uid>``: the agent of one node."""
    return agent_id(trust_domain, "k8s_psat", cluster, node_uid)


class NodeIndex:
    """Kubernetes nodes by name and by UID, as the watch last saw them.

    Written only by the event loop; reads are safe from any thread (each is one dict lookup).
    """

    def __init__(self) -> None:
        self._uid_by_name: dict[str, str] = {}
        self._name_by_uid: dict[str, str] = {}

    def uid_for(self, name: str) -> str | None:
        return self._uid_by_name.get(name)

    def name_for(self, uid: str) -> str | None:
        return self._name_by_uid.get(uid)

    def has_uid(self, uid: str) -> bool:
        return uid in self._name_by_uid

    def __len__(self) -> int:
        return len(self._uid_by_name)

    def _put(self, name: str, uid: str) -> None:
        old = self._uid_by_name.get(name)
        if old is not None and old != uid:
            self._name_by_uid.pop(old, None)
        self._uid_by_name[name] = uid
        self._name_by_uid[uid] = name

    def _remove(self, name: str) -> None:
        uid = self._uid_by_name.pop(name, None)
        if uid is not None:
            self._name_by_uid.pop(uid, None)

    def _replace(self, uids_by_name: dict[str, str]) -> None:
        # New dicts swapped in whole, so a reader in another thread never sees a half-built index.
        self._name_by_uid = {uid: name for name, uid in uids_by_name.items()}
        self._uid_by_name = dict(uids_by_name)


# --- reading custom resources ----------------------------------------------------------------


def _field(spec: Obj, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = spec.get(name, default)
    # bool is an int in Python, but true is not a TTL.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidObjectError(f"spec.{name}: expected {expected}, got {value!r}")
    return value


def _strings(spec: Obj, name: str) -> list[str]:
    values = _field(spec, name, list, [])
    if not all(isinstance(v, str) for v in values):
        raise InvalidObjectError(f"spec.{name}: every item must be a string")
    return list(values)


def _spiffe_id(spec: Obj, name: str, trust_domain: TrustDomain) -> SpiffeId:
    text = _field(spec, name, str, "")
    if not text:
        raise InvalidObjectError(f"spec.{name}: required")
    try:
        spiffe_id = SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise InvalidObjectError(f"spec.{name}: {exc}") from exc
    if not spiffe_id.is_member_of(trust_domain):
        raise InvalidObjectError(f"spec.{name}: {spiffe_id} is outside trust domain {trust_domain}")
    return spiffe_id


def _ttl(spec: Obj, name: str) -> int:
    value: int | str = _field(spec, name, (int, str), 0)
    # An int is compared as it is: float() of a 400-digit one would overflow.
    seconds = value if isinstance(value, int) else _duration_seconds(name, value)
    if seconds != int(seconds):
        raise InvalidObjectError(f"spec.{name}: must be whole seconds, got {value!r}")
    if seconds < 0:
        raise InvalidObjectError(f"spec.{name}: cannot be negative")
    if seconds > MAX_TTL_SECONDS:
        raise InvalidObjectError(
            f"spec.{name}: at most {MAX_TTL_SECONDS} seconds "
            f"({format_duration(MAX_TTL_SECONDS)}), got {value!r}"
        )
    return int(seconds)


def _duration_seconds(name: str, text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except DurationError as exc:
        raise InvalidObjectError(f"spec.{name}: {exc}") from exc


def _entry_fields(spec: Obj, trust_domain: TrustDomain) -> dict[str, Any]:
    """The Entry fields both kinds share, read and checked."""
    spiffe_id = _spiffe_id(spec, "spiffeID", trust_domain)
    if is_reserved_id(spiffe_id):
        raise InvalidObjectError(
            f"spec.spiffeID: {spiffe_id} is under {trust_domain.id}{RESERVED_PATH}/, "
            "which is reserved for herald's own agents and server"
        )
    try:
        selectors = parse_selectors(_strings(spec, "selectors"))
    except SelectorError as exc:
        raise InvalidObjectError(f"spec.selectors: {exc}") from exc
    try:
        federates_with = tuple(TrustDomain.parse(t) for t in _strings(spec, "federatesWith"))
    except SpiffeIdError as exc:
        raise InvalidObjectError(f"spec.federatesWith: {exc}") from exc
    return {
        "spiffe_id": spiffe_id,
        "selectors": selectors,
        "x509_svid_ttl": _ttl(spec, "x509SVIDTTL"),
        "jwt_svid_ttl": _ttl(spec, "jwtSVIDTTL"),
        "dns_names": tuple(_strings(spec, "dnsNames")),
        "federates_with": federates_with,
        "hint": _field(spec, "hint", str, ""),
        "admin": _field(spec, "admin", bool, False),
        "downstream": _field(spec, "downstream", bool, False),
    }


def _versions(meta: Obj) -> tuple[int, int]:
    """revision (metadata.generation, else the resourceVersion) and created_at (unix seconds)."""
    generation = meta.get("generation")
    revision = generation if isinstance(generation, int) else _int(meta.get("resourceVersion"))
    created = meta.get("creationTimestamp")
    try:
        created_at = int(dt.datetime.fromisoformat(created).timestamp()) if created else 0
    except (TypeError, ValueError):
        created_at = 0
    return max(revision, 0), max(created_at, 0)


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidObjectError("spec: missing or not an object")
    return spec


def _entry(entry_id: str, parent_id: SpiffeId, fields: dict[str, Any], meta: Obj) -> Entry:
    try:
        revision, created_at = _versions(meta)
        return Entry(
            id=entry_id,
            parent_id=parent_id,
            revision=revision,
            created_at=created_at,
            **fields,
        )
    except EntryError as exc:
        raise InvalidObjectError(str(exc)) from exc


@dataclass(frozen=True)
class _Workload:
    """A valid WorkloadEntry; ``template`` is its entry, the trust domain standing in as parent."""

    node_name: str
    template: Entry


def workload_entry_id(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def static_entry_id(name: str) -> str:
    # ':' cannot occur in a namespace, so no WorkloadEntry ID can collide with a static one.
    return f"{_STATIC_PREFIX}{name}"


def _read_workload(obj: Obj, trust_domain: TrustDomain) -> _Workload:
    meta = obj["metadata"]
    spec = _spec(obj)
    node_name = _field(spec, "nodeName", str, "")
    if not node_name:
        raise InvalidObjectError("spec.nodeName: required")
    entry_id = workload_entry_id(meta["namespace"], meta["name"])
    template = _entry(entry_id, trust_domain.id, _entry_fields(spec, trust_domain), meta)
    return _Workload(node_name=node_name, template=template)


def _read_static(obj: Obj, trust_domain: TrustDomain) -> Entry:
    spec = _spec(obj)
    parent_id = _spiffe_id(spec, "parentID", trust_domain)
    fields = _entry_fields(spec, trust_domain)
    return _entry(static_entry_id(obj["metadata"]["name"]), parent_id, fields, obj["metadata"])


def _label(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


# --- watching --------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class _Watcher:
    """List, then watch, one kind in a daemon thread; results go to the loop via callbacks."""

    def __init__(
        self,
        kind: str,
        list_call: Callable[[ApiClient], Callable[..., Any]],
        args: tuple[str, ...],
        *,
        on_listed: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        api_client_factory: Callable[[], ApiClient],
        watch_timeout: int,
        retry_delay: tuple[float, float],
    ) -> None:
        self.kind = kind
        self._list_call = list_call
        self._args = args
        self.on_listed = on_listed
        self.on_event = on_event
        self._api_client_factory = api_client_factory
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self._api: ApiClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._current: kubernetes.watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"herald-watch-{kind}", daemon=True)
        self._start_version: str | None = None

    def list_now(self) -> tuple[list[Obj], str]:
        """One LIST (blocking): the objects and the resourceVersion to watch from."""
        if self._api is None:
            self._api = self._api_client_factory()
        response = self._list_call(self._api)(
            *self._args, _preload_content=False, _request_timeout=_LIST_TIMEOUT
        )
        listing = json.loads(response.data)
        return list(listing.get("items") or []), str(listing["metadata"]["resourceVersion"])

    def start(self, loop: asyncio.AbstractEventLoop, resource_version: str) -> None:
        self._loop = loop
        self._start_version = resource_version
        self._thread.start()

    def close(self) -> None:
        if self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        resource_version = self._start_version
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if resource_version is None:
                        items, resource_version = self.list_now()
                        self._deliver(self.on_listed, items)
                    resource_version = self._watch(resource_version)
                    failures = 0
                except Exception as exc:  # the thread must survive anything the API does
                    if self._stopping.is_set():
                        break
                    resource_version = None
                    if isinstance(exc, ApiException) and exc.status == 410:
                        log.info("watch expired, relisting: kind=%s", self.kind)
                        continue
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning(
                        "watch failed, relisting: kind=%s error=%r retry_in=%.1fs",
                        self.kind,
                        _describe(exc),
                        delay,
                    )
                    self._stopping.wait(delay)
        finally:
            self.close()

    def _watch(self, resource_version: str) -> str:
        assert self._api is not None  # list_now() made it
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._current = watch
        if self._stopping.is_set():
            return resource_version
        events = watch.stream(  # type: ignore[no-untyped-call]
            self._list_call(self._api),
            *self._args,
            resource_version=resource_version,
            timeout_seconds=self._watch_timeout,
            allow_watch_bookmarks=True,
            _request_timeout=(_LIST_TIMEOUT[0], self._watch_timeout + 30),
        )
        for event in events:
            obj = event["raw_object"]
            resource_version = str(obj["metadata"]["resourceVersion"])
            if event["type"] != "BOOKMARK":
                self._deliver(self.on_event, event["type"], obj)
        return resource_version

    def _deliver(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._stopping.set()

    def _backoff(self, failures: int) -> float:
        low, high = self._retry_delay
        return min(high, low * 2.0 ** (failures - 1)) * _JITTER.uniform(0.5, 1.0)

    def stop(self, timeout: float) -> bool:
        """Stop the thread (blocking); False if it did not end within ``timeout`` seconds."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            # Repeated: a Watch stopped before its request went out would start anyway.
            current = self._current
            if current is not None:
                current.stop()  # type: ignore[no-untyped-call]
            self._thread.join(0.05)
        return not self._thread.is_alive()


# --- the store -------------------------------------------------------------------------------


class KubernetesEntryStore:
    """Entries from the herald.dev custom resources, kept current by watches. Read-only."""

    writable: Final = False

    def __init__(
        self,
        api_client_factory: Callable[[], ApiClient],
        *,
        trust_domain: TrustDomain,
        cluster_name: str,
        watch_timeout: int = 300,
        retry_delay: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        try:
            k8s_psat_agent_id(trust_domain, cluster_name, "x")
        except SpiffeIdError as exc:
            raise ValueError(
                f"cluster name {cluster_name!r} cannot be part of an ID: {exc}"
            ) from exc
        self.cache = EntryCache()
        self.nodes = NodeIndex()
        self._trust_domain = trust_domain
        self._cluster = cluster_name
        self._workloads: dict[str, _Workload] = {}
        self._by_node: dict[str, set[str]] = defaultdict(set)
        self._statics: dict[str, Entry] = {}
        self._logged: dict[tuple[str, str], str] = {}  # (kind, object) → rejected resourceVersion
        self._running = False

        def watcher(
            kind: str,
            list_call: Callable[[ApiClient], Callable[..., Any]],
            args: tuple[str, ...],
            on_listed: Callable[[list[Obj]], None],
            on_event: Callable[[str, Obj], None],
        ) -> _Watcher:
            return _Watcher(
                kind,
                list_call,
                args,
                on_listed=on_listed,
                on_event=on_event,
                api_client_factory=api_client_factory,
                watch_timeout=watch_timeout,
                retry_delay=retry_delay,
            )

        def custom(api: ApiClient) -> Callable[..., Any]:
            return CustomObjectsApi(api).list_cluster_custom_object

        # Nodes first: the first WorkloadEntry pass at start then already finds their parents.
        self._watchers = (
            watcher(
                "Node",
                lambda api: CoreV1Api(api).list_node,
                (),
                self._nodes_listed,
                self._node_changed,
            ),
            watcher(
                "WorkloadEntry",
                custom,
                (GROUP, VERSION, "workloadentries"),
                self._workloads_listed,
                self._workload_changed,
            ),
            watcher(
                "ClusterStaticEntry",
                custom,
                (GROUP, VERSION, "clusterstaticentries"),
                self._statics_listed,
                self._static_changed,
            ),
        )

    # --- lifecycle

    async def start(self) -> None:
        """List every kind (so the cache is complete on return), then start the watches."""
        loop = asyncio.get_running_loop()
        try:
            listings = await asyncio.gather(
                *(asyncio.to_thread(w.list_now) for w in self._watchers)
            )
        except Exception as exc:
            for watcher in self._watchers:
                watcher.close()
            raise EntryStoreError(
                f"cannot list herald's entry sources from the Kubernetes API: {_describe(exc)}"
            ) from exc
        self._running = True
        for watcher, (items, _) in zip(self._watchers, listings, strict=True):
            watcher.on_listed(items)
        for watcher, (_, resource_version) in zip(self._watchers, listings, strict=True):
            watcher.start(loop, resource_version)
        log.info(
            "kubernetes entry store started: nodes=%d entries=%d", len(self.nodes), len(self.cache)
        )

    async def stop(self) -> None:
        self._running = False
        results = await asyncio.gather(
            *(asyncio.to_thread(w.stop, _STOP_GRACE) for w in self._watchers)
        )
        for watcher, stopped in zip(self._watchers, results, strict=True):
            if not stopped:
                log.warning("watch thread did not stop in time: kind=%s", watcher.kind)

    # --- writes are refused

    async def create(self, entry: Entry) -> Entry:
        raise ReadOnlyStoreError(READ_ONLY)

    async def update(self, entry: Entry) -> Entry:
        raise ReadOnlyStoreError(READ_ONLY)

    async def delete(self, entry_id: str) -> Entry:
        raise ReadOnlyStoreError(READ_ONLY)

    # --- nodes (event loop)

    def _nodes_listed(self, objs: list[Obj]) -> None:
        if not self._running:
            return
        named = [self._node_uid(obj) for obj in objs]
        self.nodes._replace(dict(pair for pair in named if pair is not None))
        self._publish_all()

    def _node_changed(self, event: str, obj: Obj) -> None:
        if not self._running:
            return
        name = obj["metadata"]["name"]
        known = self.nodes.uid_for(name)
        named = self._node_uid(obj)
        if event == "DELETED" or named is None:
            self.nodes._remove(name)
        else:
            self.nodes._put(*named)
        if self.nodes.uid_for(name) != known:
            for entry_id in sorted(self._by_node.get(name, ())):
                self._publish_workload(entry_id)

    def _node_uid(self, obj: Obj) -> tuple[str, str] | None:
        name, uid = obj["metadata"]["name"], str(obj["metadata"].get("uid", ""))
        try:
            k8s_psat_agent_id(self._trust_domain, self._cluster, uid)
        except SpiffeIdError as exc:
            self._reject("Node", obj, f"metadata.uid: {exc}")
            return None
        return name, uid

    # --- WorkloadEntry (event loop)

    def _workloads_listed(self, objs: list[Obj]) -> None:
        if not self._running:
            return
        self._workloads.clear()
        self._by_node.clear()
        for obj in objs:
            workload = self._read(obj, "WorkloadEntry", _read_workload)
            if workload is not None:
                self._add_workload(workload)
        self._publish_all()

    def _workload_changed(self, event: str, obj: Obj) -> None:
        if not self._running:
            return
        meta = obj["metadata"]
        entry_id = workload_entry_id(meta["namespace"], meta["name"])
        self._remove_workload(entry_id)
        workload = None if event == "DELETED" else self._read(obj, "WorkloadEntry", _read_workload)
        if workload is not None:
            self._add_workload(workload)
        self._publish_workload(entry_id)

    def _add_workload(self, workload: _Workload) -> None:
        self._workloads[workload.template.id] = workload
        self._by_node[workload.node_name].add(workload.template.id)

    def _remove_workload(self, entry_id: str) -> None:
        old = self._workloads.pop(entry_id, None)
        if old is not None:
            on_node = self._by_node[old.node_name]
            on_node.discard(entry_id)
            if not on_node:
                del self._by_node[old.node_name]

    def _render(self, workload: _Workload) -> Entry | None:
        uid = self.nodes.uid_for(workload.node_name)
        if uid is None:
            return None
        parent = k8s_psat_agent_id(self._trust_domain, self._cluster, uid)
        return dataclasses.replace(workload.template, parent_id=parent)

    def _publish_workload(self, entry_id: str) -> None:
        workload = self._workloads.get(entry_id)
        entry = None if workload is None else self._render(workload)
        if entry is None:
            self.cache.remove(entry_id)
        else:
            self.cache.put(entry)

    # --- ClusterStaticEntry (event loop)

    def _statics_listed(self, objs: list[Obj]) -> None:
        if not self._running:
            return
        read = (self._read(obj, "ClusterStaticEntry", _read_static) for obj in objs)
        self._statics = {entry.id: entry for entry in read if entry is not None}
        self._publish_all()

    def _static_changed(self, event: str, obj: Obj) -> None:
        if not self._running:
            return
        entry_id = static_entry_id(obj["metadata"]["name"])
        entry = None if event == "DELETED" else self._read(obj, "ClusterStaticEntry", _read_static)
        if entry is None:
            self._statics.pop(entry_id, None)
            self.cache.remove(entry_id)
        else:
            self._statics[entry_id] = entry
            self.cache.put(entry)

    # --- shared (event loop)

    def _publish_all(self) -> None:
        rendered = (self._render(workload) for workload in self._workloads.values())
        workloads = [entry for entry in rendered if entry is not None]
        self.cache.replace_all([*workloads, *self._statics.values()])

    def _read(self, obj: Obj, kind: str, reader: Callable[[Obj, TrustDomain], Any]) -> Any:
        try:
            read = reader(obj, self._trust_domain)
        except InvalidObjectError as exc:
            self._reject(kind, obj, str(exc))
            return None
        self._logged.pop((kind, _label(obj)), None)
        return read

    def _reject(self, kind: str, obj: Obj, reason: str) -> None:
        # One line per object version: a relist or a node event must not repeat it.
        key, version = (kind, _label(obj)), str(obj["metadata"].get("resourceVersion"))
        if self._logged.get(key) != version:
            self._logged[key] = version
            log.warning(
                "skipping invalid object: kind=%s object=%s reason=%s", kind, key[1], reason
            )
