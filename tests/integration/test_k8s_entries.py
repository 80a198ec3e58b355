"""The Kubernetes entry store against the emulated API: watches, node mapping, validation."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest

from herald_core.entry import Entry
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_server.entries import EntryStoreError, ReadOnlyStoreError
from herald_server.k8s_entries import KubernetesEntryStore, k8s_psat_agent_id
from tests.kube_emulator import ApiError, KubeCluster

TD = TrustDomain("example.org")
CLUSTER = "prod"
HERALD = "herald.dev/v1alpha1"


def _node(kube: KubeCluster, name: str) -> str:
    """Create a Node; returns its UID."""
    node = kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return str(node["metadata"]["uid"])


def _workload_entry(name: str, node: str = "n1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": HERALD,
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "payments"},
        "spec": {
            "spiffeID": f"spiffe://example.org/ns/payments/sa/{name}",
            "nodeName": node,
            "selectors": ["k8s:ns:payments", f"k8s:pod-name:{name}"],
            **spec,
        },
    }


def _static_entry(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": HERALD,
        "kind": "ClusterStaticEntry",
        "metadata": {"name": name},
        "spec": {
            "spiffeID": f"spiffe://example.org/vm/{name}",
            "parentID": "spiffe://example.org/herald/agent/join_token/abc",
            "selectors": ["unix:uid:1000"],
            **spec,
        },
    }


def _agent(uid: str) -> SpiffeId:
    return k8s_psat_agent_id(TD, CLUSTER, uid)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def _store(kube: KubeCluster, **options: Any) -> KubernetesEntryStore:
    return KubernetesEntryStore(
        kube.api_client, trust_domain=TD, cluster_name=CLUSTER, retry_delay=(0.05, 0.2), **options
    )


@pytest.fixture
async def store(kube: KubeCluster) -> AsyncIterator[KubernetesEntryStore]:
    started = _store(kube)
    await started.start()
    yield started
    await started.stop()


async def test_objects_present_at_start_are_loaded_before_start_returns(kube: KubeCluster) -> None:
    uid = _node(kube, "n1")
    kube.create(_workload_entry("web", x509SVIDTTL="1h", jwtSVIDTTL=300, dnsNames=["web.pay"]))
    kube.create(_static_entry("db"))
    store = _store(kube)
    await store.start()
    try:
        web = store.cache.get("payments.web")
        assert web == Entry(
            id="payments.web",
            spiffe_id=SpiffeId.parse("spiffe://example.org/ns/payments/sa/web"),
            parent_id=_agent(uid),
            selectors=parse_selectors(["k8s:ns:payments", "k8s:pod-name:web"]),
            x509_svid_ttl=3600,
            jwt_svid_ttl=300,
            dns_names=("web.pay",),
            revision=1,
            created_at=web.created_at if web else 0,
        )
        assert web is not None and abs(web.created_at - time.time()) < 60
        db = store.cache.get("cluster:db")
        assert db is not None
        assert db.parent_id == SpiffeId.parse("spiffe://example.org/herald/agent/join_token/abc")
        assert store.nodes.uid_for("n1") == uid and store.nodes.has_uid(uid)
        assert store.nodes.name_for(uid) == "n1" and not store.nodes.has_uid("other")
    finally:
        await store.stop()


async def test_entries_follow_their_workload_entries(
    kube: KubeCluster, store: KubernetesEntryStore
) -> None:
    uid = _node(kube, "n1")
    kube.create(_workload_entry("web"))
    await _until(lambda: store.cache.get("payments.web") is not None, "the entry appears")
    entry = store.cache.get("payments.web")
    assert entry is not None and entry.parent_id == _agent(uid) and entry.revision == 1

    with store.cache.subscribe([_agent(uid)]) as sub:
        kube.patch(HERALD, "WorkloadEntry", "web", {"spec": {"hint": "blue"}}, "payments")
        changes = await asyncio.wait_for(sub.wait(), 5)
        updated = changes["payments.web"]
        assert updated is not None and updated.hint == "blue" and updated.revision == 2

        kube.delete(HERALD, "WorkloadEntry", "web", "payments")
        assert await asyncio.wait_for(sub.wait(), 5) == {"payments.web": None}
    assert store.cache.get("payments.web") is None


async def test_an_entry_waits_for_its_node_and_leaves_with_it(
    kube: KubeCluster, store: KubernetesEntryStore
) -> None:
    _node(kube, "n1")
    kube.create(_workload_entry("web", node="n2"))
    kube.create(_workload_entry("api", node="n1"))
    await _until(lambda: store.cache.get("payments.api") is not None, "the n1 entry appears")
    assert store.cache.get("payments.web") is None, "n2 is unknown: no parent yet"

    uid = _node(kube, "n2")
    await _until(lambda: store.cache.get("payments.web") is not None, "n2's entry appears")
    entry = store.cache.get("payments.web")
    assert entry is not None and entry.parent_id == _agent(uid)

    kube.delete("v1", "Node", "n2")
    await _until(lambda: store.cache.get("payments.web") is None, "n2's entry leaves")
    assert store.nodes.uid_for("n2") is None and not store.nodes.has_uid(uid)
    assert store.cache.get("payments.api") is not None

    new_uid = _node(kube, "n2")  # the node comes back as a new object
    await _until(lambda: store.cache.get("payments.web") is not None, "the entry returns")
    entry = store.cache.get("payments.web")
    assert entry is not None and entry.parent_id == _agent(new_uid) != _agent(uid)


async def test_moving_an_entry_to_another_node_changes_its_parent(
    kube: KubeCluster, store: KubernetesEntryStore
) -> None:
    uid1, uid2 = _node(kube, "n1"), _node(kube, "n2")
    kube.create(_workload_entry("web", node="n1"))
    await _until(lambda: store.cache.get("payments.web") is not None, "the entry appears")
    kube.patch(HERALD, "WorkloadEntry", "web", {"spec": {"nodeName": "n2"}}, "payments")
    await _until(
        lambda: store.cache.by_parents([_agent(uid2)]) != [], "the entry moves to n2's agent"
    )
    assert store.cache.by_parents([_agent(uid1)]) == []
    kube.delete("v1", "Node", "n1")
    await asyncio.sleep(0.2)
    assert store.cache.get("payments.web") is not None, "n1's departure no longer matters"


async def test_cluster_static_entries(kube: KubeCluster, store: KubernetesEntryStore) -> None:
    kube.create(_static_entry("db", admin=True, federatesWith=["partner.org"]))
    await _until(lambda: store.cache.get("cluster:db") is not None, "the static entry appears")
    entry = store.cache.get("cluster:db")
    assert (
        entry is not None and entry.admin and entry.federates_with == (TrustDomain("partner.org"),)
    )
    kube.patch(HERALD, "ClusterStaticEntry", "db", {"spec": {"selectors": ["unix:uid:0"]}})
    root = parse_selectors(["unix:uid:0"])
    await _until(
        lambda: getattr(store.cache.get("cluster:db"), "selectors", None) == root, "a change"
    )
    kube.delete(HERALD, "ClusterStaticEntry", "db")
    await _until(lambda: store.cache.get("cluster:db") is None, "the static entry leaves")


INVALID_SPECS = {
    "bad-id": {"spiffeID": "spiffe://example.org/a//b"},
    "upper-case-domain": {"spiffeID": "spiffe://Example.org/a"},
    "other-domain": {"spiffeID": "spiffe://elsewhere.org/x"},
    "reserved": {"spiffeID": "spiffe://example.org/herald/agent/k8s_psat/prod/x"},
    "bad-selector": {"selectors": ["k8s:namespace:payments"]},
    "no-selectors": {"selectors": []},
    "bad-ttl": {"x509SVIDTTL": "soon"},
    "negative-ttl": {"jwtSVIDTTL": -5},
    "bool-ttl": {"jwtSVIDTTL": True},
    "huge-ttl": {"x509SVIDTTL": 10**400},
    "huge-ttl-text": {"jwtSVIDTTL": "99999999999999999999"},
    "long-ttl": {"jwtSVIDTTL": 366 * 86400 + 1},
    "bad-dns": {"dnsNames": ["UPPER.case"]},
    "no-node": {"nodeName": ""},
    "hint-type": {"hint": 7},
}


async def test_invalid_objects_are_skipped_once_and_never_fatal(
    kube: KubeCluster, store: KubernetesEntryStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="herald_server.k8s_entries")
    _node(kube, "n1")
    for name, spec in INVALID_SPECS.items():
        kube.create(_workload_entry(name, **spec))
    kube.create(_static_entry("elsewhere", parentID="spiffe://elsewhere.org/agent"))
    kube.create(_workload_entry("good"))
    await _until(lambda: store.cache.get("payments.good") is not None, "the good entry appears")
    await _until(
        lambda: len(caplog.records) == len(INVALID_SPECS) + 1, "every bad object is reported"
    )
    assert [e.id for e in store.cache] == ["payments.good"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "object=payments/bad-id" in messages and "empty segments" in messages
    assert "object=payments/other-domain" in messages and "outside trust domain" in messages
    assert "object=payments/reserved" in messages and "reserved" in messages
    assert "kind=ClusterStaticEntry object=elsewhere" in messages
    assert "object=payments/upper-case-domain" in messages and "must be lowercase" in messages
    assert "object=payments/huge-ttl " in messages and "spec.x509SVIDTTL: at most" in messages
    assert "spec.jwtSVIDTTL: duration '99999999999999999999' is longer" in messages

    kube.expire_watches()  # the relist reads the same bad objects again, silently
    kube.create(_workload_entry("later"))
    await _until(lambda: store.cache.get("payments.later") is not None, "watching resumes")
    assert len(caplog.records) == len(INVALID_SPECS) + 1


async def test_a_good_entry_turned_bad_leaves_the_cache(
    kube: KubeCluster, store: KubernetesEntryStore
) -> None:
    _node(kube, "n1")
    kube.create(_workload_entry("web"))
    await _until(lambda: store.cache.get("payments.web") is not None, "the entry appears")
    kube.patch(HERALD, "WorkloadEntry", "web", {"spec": {"spiffeID": "nope"}}, "payments")
    await _until(lambda: store.cache.get("payments.web") is None, "the bad version leaves")
    fixed = {"spec": {"spiffeID": "spiffe://example.org/w"}}
    kube.patch(HERALD, "WorkloadEntry", "web", fixed, "payments")
    await _until(lambda: store.cache.get("payments.web") is not None, "the fixed version returns")


async def test_changes_made_while_the_watch_is_down_are_caught_by_a_relist(
    kube: KubeCluster, store: KubernetesEntryStore
) -> None:
    _node(kube, "n1")
    kube.create(_workload_entry("kept"))
    kube.create(_workload_entry("removed"))
    await _until(lambda: len(store.cache) == 2, "both entries appear")

    watch_down = threading.Event()
    watch_down.set()

    def refuse_watches() -> None:
        if watch_down.is_set():
            raise ApiError(status=500, reason="InternalError", message="injected")
        # Returning nothing retires this reaction: the emulator answers watches again.

    resource = kmock.resource(group="herald.dev", version="v1alpha1", plural="workloadentries")
    kube.emulator[kmock.action.WATCH, resource] << refuse_watches
    kube.expire_watches()  # the open watch ends with 410; every new one fails until released

    kube.delete(HERALD, "WorkloadEntry", "removed", "payments")
    kube.patch(HERALD, "WorkloadEntry", "kept", {"spec": {"hint": "changed"}}, "payments")
    kube.create(_workload_entry("added"))
    await _until(
        lambda: sorted(e.id for e in store.cache) == ["payments.added", "payments.kept"],
        "a relist brings the cache up to date without any watch event",
    )
    kept = store.cache.get("payments.kept")
    assert kept is not None and kept.hint == "changed"

    watch_down.clear()
    kube.create(_workload_entry("streamed"))
    await _until(lambda: store.cache.get("payments.streamed") is not None, "watching resumes")


async def test_writes_are_refused(store: KubernetesEntryStore) -> None:
    entry = Entry(
        id="x",
        spiffe_id=SpiffeId.parse("spiffe://example.org/x"),
        parent_id=_agent("u"),
        selectors=parse_selectors(["unix:uid:0"]),
    )
    assert store.writable is False
    for attempt in (store.create(entry), store.update(entry), store.delete("x")):
        with pytest.raises(ReadOnlyStoreError, match="edit a ClusterSPIFFEID, SPIFFEID or"):
            await attempt


async def test_stop_ends_the_watch_threads_promptly(kube: KubeCluster) -> None:
    store = _store(kube, watch_timeout=300)
    await store.start()
    watching = [t for t in threading.enumerate() if t.name.startswith("herald-watch-")]
    assert len(watching) == 3
    began = time.monotonic()
    await store.stop()
    assert time.monotonic() - began < 2
    assert not any(t.is_alive() for t in watching)


async def test_start_fails_clearly_without_the_custom_resources(kube: KubeCluster) -> None:
    del kube.emulator.resources["herald.dev/v1alpha1/workloadentries"]
    store = _store(kube)
    with pytest.raises(EntryStoreError, match=r"cannot list herald's entry sources.*404"):
        await store.start()


def test_cluster_name_must_fit_in_an_id(kube: KubeCluster) -> None:
    with pytest.raises(ValueError, match="cluster name 'a/b'"):
        KubernetesEntryStore(kube.api_client, trust_domain=TD, cluster_name="a/b")
