"""A Kubernetes API server in Python: kmock's scaffold with a store that acts like kube-apiserver.

It is the benchmarks' baseline beside the real control plane (bench/operator.py,
bench/pod_identity.py: what herald costs over an API server that costs nearly nothing); every
Kubernetes-mode test runs on the real API (tests/k8s), faults included.

kmock 0.8's own emulator keeps no resourceVersion, replays every object on each watch, ignores
selectors, knows no PUT and misreads core namespace paths (testenv.md §1). KubeEmulator keeps
kmock's HTTP server, discovery, request log and reaction DSL (``cluster.emulator['get /x'] << 500``
still injects a failure ahead of the emulated API; a reaction behind plain filters is matched on
the request alone, where kmock would replay its whole request log, so the emulator keeps its
~1,500 writes/s after many thousands of requests) and replaces the object store with one that
does what herald and Kopf rely on:

- uid, creationTimestamp and generation stamped on create (and ``generateName`` honoured); one
  global resourceVersion bumped on every write; generation bumped when anything but metadata and
  status changes; a no-op write changes nothing;
- optimistic concurrency: a PUT, PATCH or DELETE naming a stale resourceVersion gets 409;
- merge (and strategic-merge, read as merge) patches, JSON patches with a failed ``test`` → 422;
- the ``status`` subresource: main-resource writes keep the stored status, ``/status`` writes
  change nothing else;
- LIST returns the current resourceVersion and ``kind``; label selectors and field selectors
  (any dotted field path, ``=``, ``==``, ``!=``) on LIST and WATCH;
- WATCH from a resourceVersion sends only newer events, turns selector transitions into
  ADDED/DELETED like the real server, honours ``timeoutSeconds``;
- finalizers: DELETE sets deletionTimestamp; the object goes when its last finalizer goes;
  dependents whose every owner is gone are deleted (background garbage collection);
- TokenReview answered from a table of service-account tokens the test registers.

Not emulated: namespace existence, admission and schema validation or defaulting, server-side
apply, strategic-merge list semantics, BOOKMARK events, pagination, authentication of callers,
compaction (410 Gone).

KubeCluster serves the emulator on a random localhost port from its own thread and event loop, so
synchronous kubernetes-client code in threads, async tests and Kopf (in its thread) can all use it.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime as dt
import json
import random
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kubernetes.client
from kmock._internal import dsl, rendering

_T = TypeVar("_T")
Obj = dict[str, Any]
_Key = tuple[str, str, str | None, str]  # group, plural, namespace, name

API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
_ALL_VERBS = frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})
_SYSTEM_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "generation",
    "resourceVersion",
)


def _resource(
    kind: str, *, namespaced: bool, status: bool = False, verbs: Iterable[str] = _ALL_VERBS
) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(
        kind=kind,
        singular=kind.lower(),
        namespaced=namespaced,
        verbs=set(verbs),
        subresources={"status"} if status else set(),
    )


# Everything herald, its operator and Kopf touch. Tests may declare more in ``emulator.resources``.
RESOURCES: dict[str, kmock.ResourceInfo] = {
    "v1/namespaces": _resource("Namespace", namespaced=False, status=True),
    "v1/nodes": _resource("Node", namespaced=False, status=True),
    "v1/pods": _resource("Pod", namespaced=True, status=True),
    "v1/services": _resource("Service", namespaced=True, status=True),
    "v1/secrets": _resource("Secret", namespaced=True),
    "v1/configmaps": _resource("ConfigMap", namespaced=True),
    "v1/serviceaccounts": _resource("ServiceAccount", namespaced=True),
    "v1/events": _resource("Event", namespaced=True),
    "coordination.k8s.io/v1/leases": _resource("Lease", namespaced=True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": _resource(
        "CustomResourceDefinition", namespaced=False, status=True
    ),
    "authentication.k8s.io/v1/tokenreviews": _resource(
        "TokenReview", namespaced=False, verbs={"create"}
    ),
    "herald.dev/v1alpha1/clusterspiffeids": _resource(
        "ClusterSPIFFEID", namespaced=False, status=True
    ),
    "herald.dev/v1alpha1/spiffeids": _resource("SPIFFEID", namespaced=True, status=True),
    "herald.dev/v1alpha1/clusterstaticentries": _resource(
        "ClusterStaticEntry", namespaced=False, status=True
    ),
    "herald.dev/v1alpha1/clusterfederatedtrustdomains": _resource(
        "ClusterFederatedTrustDomain", namespaced=False, status=True
    ),
    "herald.dev/v1alpha1/workloadentries": _resource("WorkloadEntry", namespaced=True, status=True),
}


class ApiError(kmock.KubernetesError):
    """An error the emulated API answers with, as a ``Status`` object."""


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _not_found(what: str) -> ApiError:
    return ApiError(status=404, reason="NotFound", message=what)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def key(self, namespace: str | None, name: str) -> _Key:
        return (self.group, self.plural, namespace if self.namespaced else None, name)


@dataclass(frozen=True)
class _Change:
    rv: int
    kind: tuple[str, str]  # group, plural
    type: str  # ADDED, MODIFIED, DELETED
    old: Obj | None
    new: Obj  # for DELETED, the object's final state


@dataclass(frozen=True)
class ServiceAccountToken:
    """What the emulated API knows about a projected service-account token."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    node_uid: str | None = None
    credential_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def user_info(self) -> Obj:
        extra = {
            "authentication.kubernetes.io/credential-id": [f"JTI={self.credential_id}"],
            "authentication.kubernetes.io/pod-name": [self.pod_name],
            "authentication.kubernetes.io/pod-uid": [self.pod_uid],
            "authentication.kubernetes.io/node-name": [self.node_name],
            "authentication.kubernetes.io/node-uid": [self.node_uid],
        }
        return {
            "username": self.username,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.username)),
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{self.namespace}",
                "system:authenticated",
            ],
            "extra": {key: value for key, value in extra.items() if value != [None]},
        }


# --- request parsing -------------------------------------------------------------------------

_PATH = re.compile(r"/api/(?P<core>[^/]+)(?P<crest>(?:/[^/]+)*)|/apis/(?P<group>[^/]+)"
                   r"(?:/(?P<version>[^/]+)(?P<rest>(?:/[^/]+)*))?")  # fmt: skip


def _parse_path(path: str) -> tuple[kmock.resource | None, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) of an API path; core namespaces read right."""
    match = _PATH.fullmatch(path.rstrip("/"))
    if match is None:
        return None, None, None, None
    group = match["group"] or ""
    version = match["core"] or match["version"]
    parts = (match["crest"] or match["rest"] or "").split("/")[1:]
    namespace = None
    # /api/v1/namespaces/<x>/status is namespace x's subresource, not a resource "status" in x.
    is_namespace_subresource = (
        group == "" and len(parts) == 3 and parts[2] in ("status", "finalize")
    )
    if len(parts) >= 3 and parts[0] == "namespaces" and not is_namespace_subresource:
        namespace, parts = parts[1], parts[2:]
    plural, name = [*parts, None, None][:2]
    subresource = "/".join(parts[2:]) or None
    resource = kmock.resource(group=group, version=version, plural=plural)
    return resource, namespace, name, subresource


def _action(
    resource: kmock.resource | None, name: str | None, method: str, query: Mapping[str, str]
) -> kmock.action | None:
    if resource is None or resource.plural is None:
        return None
    if method == "GET":
        if query.get("watch") in ("true", "1"):
            return kmock.action.WATCH
        return kmock.action.LIST if name is None else kmock.action.FETCH
    if name is None:
        return kmock.action.CREATE if method == "POST" else None
    writes = {
        "PATCH": kmock.action.UPDATE,
        "PUT": kmock.action.UPDATE,
        "DELETE": kmock.action.DELETE,
    }
    return writes.get(method)


async def _parse_request(raw: aiohttp.web.BaseRequest, request_id: int) -> rendering.Request:
    body = await raw.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    resource, namespace, name, subresource = _parse_path(raw.path)
    return rendering.Request(
        id=request_id,
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=dict(raw.query),
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        body=body,
        text=body.decode("utf-8", errors="replace"),
        data=data,
        action=_action(resource, name, raw.method, raw.query),
        resource=resource,
        namespace=namespace,
        name=name,
        subresource=subresource,
    )


# --- selectors -------------------------------------------------------------------------------

_LABEL_REQUIREMENT = re.compile(
    r"\s*(?:!\s*(?P<absent>[\w./-]+)|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*"
)


def _label_requirement(match: re.Match[str]) -> Callable[[Mapping[str, str]], bool]:
    if match["absent"]:
        absent = match["absent"]
        return lambda labels: absent not in labels
    key, op = match["key"], match["op"]
    if op is not None:
        value = match["value"]
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match["setop"] is not None:
        values = {v.strip() for v in match["values"].split(",")}
        if match["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def _label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    requirements = []
    for part in re.split(r",(?![^()]*\))", text) if text.strip() else []:
        match = _LABEL_REQUIREMENT.fullmatch(part)
        if match is None:
            raise ApiError(status=400, reason="BadRequest", message=f"bad labelSelector {part!r}")
        requirements.append(_label_requirement(match))
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _field_value(obj: Obj, path: list[str]) -> str:
    value: Any = obj
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _field_selector(text: str) -> Callable[[Obj], bool]:
    requirements = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if match is None:
            raise ApiError(status=400, reason="BadRequest", message=f"bad fieldSelector {part!r}")
        requirements.append((match[1].split("."), match[2] == "!=", match[3]))
    return lambda obj: all(
        (_field_value(obj, path) == value) != negated for path, negated, value in requirements
    )


# --- patches ---------------------------------------------------------------------------------


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _patched(current: Obj, request: rendering.Request) -> Any:
    content_type = request.headers.get("Content-Type", "").partition(";")[0].strip()
    if content_type == "application/json-patch+json":
        if not isinstance(request.data, list):
            raise ApiError(status=400, reason="BadRequest", message="a JSON patch must be a list")
        try:
            return jsonpatch.apply_patch(current, request.data)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ApiError(status=422, reason="Invalid", message=str(exc)) from exc
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(request.data, dict):
            raise ApiError(status=400, reason="BadRequest", message="a merge patch must be a map")
        return _merge_patch(current, request.data)
    raise ApiError(
        status=415, reason="UnsupportedMediaType", message=f"unsupported patch {content_type!r}"
    )


def _spec_part(obj: Obj) -> Obj:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


# --- kmock reactions ------------------------------------------------------------------------


def _by_precedence(payloads: list[dsl.Reaction]) -> list[dsl.Reaction]:
    """Higher priorities first, shorter priority chains padded with zeros; as kmock orders them."""
    chains = [payload.priorities for payload in payloads]
    width = max((len(chain) for chain in chains), default=0)
    keys = [tuple(-p for p in chain) + (0.0,) * (width - len(chain)) for chain in chains]
    return [payloads[i] for i in sorted(range(len(payloads)), key=keys.__getitem__)]


def _sees(view: dsl.View, request: rendering.Request) -> bool:
    """Whether the newest request is in ``view``, without replaying the request log.

    A chain of plain filters and priorities ending at the root sees a request if every filter
    accepts it; anything else (slices, groups, exclusions) depends on history: ask kmock.
    """
    criteria = []
    node = view
    while not isinstance(node, dsl.Root):
        if type(node) is dsl.Filter:
            criteria.append(node.criteria)
        elif type(node) is not dsl.Priority:
            return request in view
        node = node._source
    return all(criterion(request) for criterion in criteria)


# --- the emulator ----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesScaffold):
    """The emulated API. Not thread-safe: use it from its loop, or through KubeCluster."""

    _store: dict[_Key, Obj] = attrs.field(factory=dict, init=False)
    _log: list[_Change] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _tokens: dict[str, ServiceAccountToken] = attrs.field(factory=dict, init=False)
    # For garbage collection without scanning the store: every object's key by UID, and the
    # keys of the objects naming each UID as an owner.
    _by_uid: dict[str, _Key] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[_Key]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for name, info in RESOURCES.items():
            self.resources[name] = copy.deepcopy(info)
        tokenreviews = "post /apis/authentication.k8s.io/v1/tokenreviews"
        self.fallback[tokenreviews] << self._serve_token_review
        self.fallback[kmock.action.LIST] << self._serve_list
        self.fallback[kmock.action.WATCH] << self._serve_watch
        self.fallback[kmock.action.FETCH] << self._serve_fetch
        self.fallback[kmock.action.CREATE] << self._serve_create
        self.fallback[kmock.action.UPDATE] << self._serve_update
        self.fallback[kmock.action.DELETE] << self._serve_delete

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Replaces kmock's entry point only to parse the request here: kmock's parser fails on
        # /api/v1/namespaces, reads /api/v1/namespaces/x as namespace x and has no action for PUT.
        if len(raw_request.path) > 1 and raw_request.path.endswith("/"):
            # The official client asks for /api/v1/; kmock's discovery routes have no slash.
            trimmed = raw_request.rel_url.with_path(raw_request.path.rstrip("/"))
            raw_request = raw_request.clone(rel_url=trimmed)
        request = await _parse_request(raw_request, len(self._requests))
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as exc:
            response: aiohttp.web.StreamResponse = exc.args[0]
            self._record(exc.__cause__)
            await self._stream_error(exc, response)
            await response.write_eof()
            return response
        except Exception as exc:
            self._record(exc)
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock's own _handle asks each reaction whether it sees the request by replaying the
        # whole request log through its filters: quadratic, 15 requests/s after a few thousand.
        # The order of reactions and their fall-through are kmock's.
        for payload in _by_precedence(self._payloads):
            if _sees(payload._source, request) and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:  # mismatched or depleted
                    payload._disabled.set()
                except NotImplementedError:  # matched, but nothing to respond with
                    pass
        raise NotImplementedError("the emulator has no reaction for this request")

    def _record(self, exc: BaseException | None) -> None:
        # API errors are answers; anything else is a bug in the emulator or a test's reaction.
        unexpected = isinstance(exc, Exception) and not isinstance(exc, kmock.KubernetesError)
        if unexpected and self._errors:
            self._errors[-1].append(exc)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            body = _status(exc.status, exc.reason or "", exc.message or "")
            return aiohttp.web.json_response(body, status=exc.status)
        return await super()._render_error(exc)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # kmock says groupVersion "/v1" for the core group; clients look for "v1".
        answer = await super()._serve_version(request)
        assert isinstance(answer, dict)
        answer["groupVersion"] = answer["groupVersion"].lstrip("/")
        return answer

    # --- resolving requests

    def _describe(self, res: kmock.resource) -> _Resource:
        if res.plural is None or res not in self.resources:
            raise _not_found("the server could not find the requested resource")
        info = self.resources[res]
        return _Resource(
            group=res.group or "",
            version=res.version or "",
            plural=res.plural,
            kind=info.kind or res.plural.capitalize(),
            namespaced=bool(info.namespaced),
            subresources=frozenset(info.subresources),
        )

    def _resolve(self, request: rendering.Request) -> _Resource:
        if request.resource is None:
            raise _not_found("the server could not find the requested resource")
        res = self._describe(request.resource)
        if request.namespace is not None and not res.namespaced:
            raise _not_found(f"{res.plural} is not a namespaced resource")
        if request.subresource is not None and request.subresource not in res.subresources:
            raise _not_found(f"{res.plural} has no subresource {request.subresource!r}")
        return res

    def _current(self, res: _Resource, request: rendering.Request) -> tuple[_Key, Obj]:
        assert request.name is not None
        key = res.key(request.namespace, request.name)
        obj = self._store.get(key)
        if obj is None:
            raise _not_found(f'{res.qualified} "{request.name}" not found')
        return key, obj

    def _filter(self, request: rendering.Request) -> Callable[[Obj], bool]:
        labels = _label_selector(request.params.get("labelSelector", ""))
        fields = _field_selector(request.params.get("fieldSelector", ""))
        namespace, name = request.namespace, request.name

        def matches(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta["name"] == name)
                and labels(meta.get("labels") or {})
                and fields(obj)
            )

        return matches

    def _objects_of(self, res: _Resource) -> list[Obj]:
        found = [obj for key, obj in self._store.items() if key[:2] == (res.group, res.plural)]
        return sorted(
            found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    # --- reads

    def _serve_list(self, request: rendering.Request) -> Obj:
        res = self._resolve(request)
        matches = self._filter(request)
        return {
            "apiVersion": res.api_version,
            "kind": f"{res.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": [obj for obj in self._objects_of(res) if matches(obj)],
        }

    def _serve_fetch(self, request: rendering.Request) -> Obj:
        return self._current(self._resolve(request), request)[1]

    def _serve_watch(self, request: rendering.Request) -> AsyncIterator[bytes | Obj]:
        # Everything that can fail is checked before the stream starts, to answer with a status.
        res = self._resolve(request)
        matches = self._filter(request)
        since = request.params.get("resourceVersion", "")
        timeout = request.params.get("timeoutSeconds", "")
        if not re.fullmatch(r"\d*", since) or not re.fullmatch(r"\d*", timeout):
            raise ApiError(status=400, reason="BadRequest", message="bad resourceVersion/timeout")
        start = int(since) if since not in ("", "0") else None
        return self._watch(res, matches, start, int(timeout) if timeout else None)

    async def _watch(
        self, res: _Resource, matches: Callable[[Obj], bool], since: int | None, seconds: int | None
    ) -> AsyncIterator[bytes | Obj]:
        yield b""  # sends the headers now: clients wait for them before reading events
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        cursor = self._rv if since is None else since
        if since is None:
            for obj in self._objects_of(res):
                if matches(obj):
                    yield {"type": "ADDED", "object": obj}
        while not self._closing:
            start = bisect.bisect_right(self._log, cursor, key=lambda change: change.rv)
            pending, cursor, changed = self._log[start:], self._rv, self._changed
            for change in pending:
                event = _event_for(change, (res.group, res.plural), matches)
                if event is not None:
                    yield event
            remaining = None if deadline is None else deadline - loop.time()
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    # --- writes

    def _serve_create(self, request: rendering.Request) -> rendering.Response:
        res = self._resolve(request)
        created = self._create(res, request.namespace, request.data, keep_status=False)
        return rendering.Response(status=201, payload=created)

    def _serve_update(self, request: rendering.Request) -> Obj:
        res = self._resolve(request)
        key, current = self._current(res, request)
        candidate = request.data if request.method == "PUT" else _patched(current, request)
        part = "status" if request.subresource == "status" else "object"
        return self._update(key, res, current, candidate, part=part)

    def _serve_delete(self, request: rendering.Request) -> Obj:
        res = self._resolve(request)
        key, current = self._current(res, request)
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get("preconditions") or {}
        for name in ("uid", "resourceVersion"):
            wanted = preconditions.get(name)
            if wanted and wanted != current["metadata"].get(name):
                raise ApiError(
                    status=409,
                    reason="Conflict",
                    message=f"Precondition failed: {name} in precondition: {wanted}, "
                    f"{name} in object meta: {current['metadata'].get(name)}",
                )
        return self._delete(key, current)

    def _create(
        self, res: _Resource, namespace: str | None, body: Any, *, keep_status: bool
    ) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(status=400, reason="BadRequest", message="the body must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or _generated_name(meta.get("generateName"))
        if not name:
            raise ApiError(status=422, reason="Invalid", message="metadata.name: Required value")
        if namespace and meta.get("namespace") not in (None, namespace):
            raise ApiError(
                status=400,
                reason="BadRequest",
                message="the namespace of the object does not match the namespace on the request",
            )
        namespace = (namespace or meta.get("namespace")) if res.namespaced else None
        if res.namespaced and not namespace:
            raise ApiError(status=422, reason="Invalid", message="metadata.namespace: Required")
        key = res.key(namespace, name)
        if key in self._store:
            raise ApiError(
                status=409,
                reason="AlreadyExists",
                message=f'{res.qualified} "{name}" already exists',
            )
        if res.has_status and not keep_status:
            obj.pop("status", None)
        for system_field in _SYSTEM_METADATA:
            meta.pop(system_field, None)
        obj.update(apiVersion=res.api_version, kind=res.kind)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if namespace:
            meta["namespace"] = namespace
        return self._commit(key, None, obj)

    def _update(self, key: _Key, res: _Resource, current: Obj, candidate: Any, *, part: str) -> Obj:
        """Write ``candidate``: "all" of it, "object" (status kept if a subresource) or "status"."""
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise ApiError(status=400, reason="BadRequest", message="the body must be an object")
        current_meta = current["metadata"]
        wanted_rv = candidate.get("metadata", {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current_meta["resourceVersion"]:
            raise ApiError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {res.qualified} "{key[3]}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        if candidate.get("metadata", {}).get("name", key[3]) != key[3]:
            raise ApiError(status=400, reason="BadRequest", message="the name does not match")
        new = copy.deepcopy(current if part == "status" else candidate)
        if part == "status" or (part == "object" and res.has_status):
            source = candidate if part == "status" else current
            new.pop("status", None)
            if "status" in source:
                new["status"] = copy.deepcopy(source["status"])
        meta = new.setdefault("metadata", {})
        for system_field in _SYSTEM_METADATA:
            meta.pop(system_field, None)
            if system_field in current_meta:
                meta[system_field] = current_meta[system_field]
        new.update(apiVersion=res.api_version, kind=res.kind)
        if _spec_part(new) != _spec_part(current):
            meta["generation"] = current_meta.get("generation", 0) + 1
        if new == current:
            return current
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._commit(key, current, new, deleted=True)
        return self._commit(key, current, new)

    def _delete(self, key: _Key, current: Obj) -> Obj:
        meta = current["metadata"]
        if not meta.get("finalizers"):
            return self._commit(key, current, current, deleted=True)
        if meta.get("deletionTimestamp"):
            return current
        marked = copy.deepcopy(current)
        marked["metadata"]["deletionTimestamp"] = _now()
        return self._commit(key, current, marked)

    def _commit(self, key: _Key, old: Obj | None, new: Obj, *, deleted: bool = False) -> Obj:
        self._rv += 1
        new = {**new, "metadata": {**new["metadata"], "resourceVersion": str(self._rv)}}
        kind = "DELETED" if deleted else "MODIFIED" if old is not None else "ADDED"
        if old is not None:
            for owner in _owner_uids(old):
                self._dependents.get(owner, set()).discard(key)
        if deleted:
            del self._store[key]
            self._by_uid.pop(new["metadata"]["uid"], None)
        else:
            self._store[key] = new
            self._by_uid[new["metadata"]["uid"]] = key
            for owner in _owner_uids(new):
                self._dependents.setdefault(owner, set()).add(key)
        self._log.append(_Change(self._rv, key[:2], kind, old, new))
        self._wake_watches()
        if deleted:
            self._collect_dependents(new["metadata"]["uid"])
        return new

    def _collect_dependents(self, owner_uid: str) -> None:
        for key in list(self._dependents.pop(owner_uid, set())):
            obj = self._store.get(key)
            if obj is not None and not any(uid in self._by_uid for uid in _owner_uids(obj)):
                self._delete(key, obj)

    def _wake_watches(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- TokenReview

    def _serve_token_review(self, request: rendering.Request) -> rendering.Response:
        review = request.data if isinstance(request.data, dict) else {}
        spec = review.get("spec") or {}
        status = self.review_token(spec.get("token") or "", spec.get("audiences") or [])
        answer = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return rendering.Response(status=201, payload=answer)

    def review_token(self, token: str, audiences: list[str]) -> Obj:
        """The ``status`` of a TokenReview, as kube-apiserver would fill it in."""
        known = self._tokens.get(token)
        if known is None:
            return {"authenticated": False, "error": "[invalid bearer token, token lookup failed]"}
        wanted = audiences or [API_SERVER_AUDIENCE]
        granted = [audience for audience in wanted if audience in known.audiences]
        if not granted:
            return {
                "authenticated": False,
                "error": f"[invalid bearer token, token audiences {json.dumps(known.audiences)} "
                f"is invalid for the target audiences {json.dumps(wanted)}]",
            }
        return {"authenticated": True, "user": known.user_info(), "audiences": granted}

    # --- direct access for tests (call on the emulator's loop; KubeCluster does)

    def lookup(self, api_version: str, kind: str) -> _Resource:
        group, _, version = api_version.rpartition("/")
        for res, info in self.resources.items():
            if (res.group, res.version, info.kind) == (group, version, kind):
                return self._describe(res)
        raise LookupError(f"the emulator declares no resource {api_version} {kind}")

    def put_object(self, obj: Obj) -> Obj:
        """Create an object as given, status included (tests seed pods and nodes this way)."""
        res = self.lookup(obj.get("apiVersion", ""), obj.get("kind", ""))
        return self._create(res, obj.get("metadata", {}).get("namespace"), obj, keep_status=True)

    def get_object(self, res: _Resource, name: str, namespace: str | None) -> Obj | None:
        return self._store.get(res.key(namespace, name))

    def list_objects(self, res: _Resource, namespace: str | None) -> list[Obj]:
        objs = self._objects_of(res)
        return [o for o in objs if namespace is None or o["metadata"].get("namespace") == namespace]

    def patch_object(self, res: _Resource, name: str, namespace: str | None, patch: Obj) -> Obj:
        """Merge-patch an object, status included."""
        key = res.key(namespace, name)
        current = self._store.get(key)
        if current is None:
            raise _not_found(f'{res.qualified} "{name}" not found')
        return self._update(key, res, current, _merge_patch(current, patch), part="all")

    def delete_object(self, res: _Resource, name: str, namespace: str | None) -> Obj:
        key = res.key(namespace, name)
        current = self._store.get(key)
        if current is None:
            raise _not_found(f'{res.qualified} "{name}" not found')
        return self._delete(key, current)

    def add_token(self, token: str, info: ServiceAccountToken) -> None:
        self._tokens[token] = info

    @property
    def resource_version(self) -> int:
        return self._rv

    def close_watches(self) -> None:
        """End every open watch stream (so the server can shut down without waiting)."""
        self._closing = True
        self._wake_watches()


def _owner_uids(obj: Obj) -> set[str]:
    return {str(ref.get("uid")) for ref in obj["metadata"].get("ownerReferences") or []}


def _generated_name(prefix: str | None) -> str | None:
    if not prefix:
        return None
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return prefix + "".join(random.choices(alphabet, k=5))


def _event_for(
    change: _Change, kind: tuple[str, str], matches: Callable[[Obj], bool]
) -> Obj | None:
    """The event a watcher with this filter sees for a change, if any."""
    if change.kind != kind:
        return None
    if change.type == "DELETED":
        return {"type": "DELETED", "object": change.new} if matches(change.new) else None
    was = change.old is not None and matches(change.old)
    now = matches(change.new)
    if now:
        return {"type": "MODIFIED" if was else "ADDED", "object": change.new}
    return {"type": "DELETED", "object": change.new} if was else None


# --- serving it from a thread ----------------------------------------------------------------


class KubeCluster:
    """The emulator on a random localhost port, run by its own thread and event loop.

    Every method may be called from any thread except the emulator's own (kmock reactions).
    """

    def __init__(self) -> None:
        self.emulator = KubeEmulator()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._clients: list[kubernetes.client.ApiClient] = []
        self._errors: list[Exception] = []
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def start(self) -> KubeCluster:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start within 10 s")
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._failure
        return self

    def stop(self) -> list[Exception]:
        """Stop serving; returns the unexpected errors the emulator met while serving."""
        for client in self._clients:
            client.close()
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()
        return self._errors

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._failure = exc
            self._started.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()
            self.emulator.close_watches()
            self._errors = list(self.emulator.errors)

    def _call(self, fn: Callable[[], _T]) -> _T:
        async def run() -> _T:
            return fn()

        coro: Coroutine[Any, Any, _T] = run()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- what tests use

    def api_client(self) -> kubernetes.client.ApiClient:
        """A fresh official-client ApiClient for this server (closed when the cluster stops)."""
        config = kubernetes.client.Configuration()
        config.host = self.url
        client = kubernetes.client.ApiClient(config)
        self._clients.append(client)
        return client

    def create(self, obj: Obj) -> Obj:
        """Create an object as given (status included); returns it as stored."""
        return copy.deepcopy(self._call(lambda: self.emulator.put_object(obj)))

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        def get() -> Obj | None:
            res = self.emulator.lookup(api_version, kind)
            return self.emulator.get_object(res, name, namespace)

        return copy.deepcopy(self._call(get))

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        def list_() -> list[Obj]:
            res = self.emulator.lookup(api_version, kind)
            return self.emulator.list_objects(res, namespace)

        return copy.deepcopy(self._call(list_))

    def patch(
        self, api_version: str, kind: str, name: str, patch: Obj, namespace: str | None = None
    ) -> Obj:
        """Merge-patch an object (its status too); returns it as stored."""

        def patch_() -> Obj:
            res = self.emulator.lookup(api_version, kind)
            return self.emulator.patch_object(res, name, namespace, patch)

        return copy.deepcopy(self._call(patch_))

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj:
        def delete() -> Obj:
            res = self.emulator.lookup(api_version, kind)
            return self.emulator.delete_object(res, name, namespace)

        return copy.deepcopy(self._call(delete))

    def add_service_account_token(
        self,
        token: str,
        *,
        namespace: str,
        service_account: str,
        pod_name: str | None = None,
        pod_uid: str | None = None,
        node_name: str | None = None,
        node_uid: str | None = None,
        audiences: Iterable[str] = (API_SERVER_AUDIENCE,),
    ) -> ServiceAccountToken:
        """Make TokenReview accept ``token`` as this service account's (pod-bound) token."""
        info = ServiceAccountToken(
            namespace=namespace,
            service_account=service_account,
            audiences=tuple(audiences),
            pod_name=pod_name,
            pod_uid=pod_uid,
            node_name=node_name,
            node_uid=node_uid,
        )
        self._call(lambda: self.emulator.add_token(token, info))
        return info

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self._call(lambda: self.emulator.resource_version)
