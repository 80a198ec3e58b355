"""The Kubernetes entry store against the real API, as the server's ServiceAccount: watches,
node mapping, objects the schema lets through but the server refuses, relists after 410 and after
watches the fault proxy refuses."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from herald_core.entry import Entry
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_server.entries import EntryStoreError, ReadOnlyStoreError
from herald_server.k8s_entries import KubernetesEntryStore, k8s_psat_agent_id
from herald_server.kube import kube_client_factory
from tests.k8s.api import Kube
from tests.k8s.controlplane import ControlPlane
from tests.k8s.faults import FaultProxy
from tests.k8s.install import HeraldRelease

TD = TrustDomain("example.org")
CLUSTER = "prod"
HERALD = "herald.dev/v1alpha1"
PAYMENTS = "payments"
ENTRIES = "/apis/herald.dev/v1alpha1/workloadentries"


def _node(kube: Kube, name: str) -> str:
    """Create a Node; returns its UID."""
    node = kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return str(node["metadata"]["uid"])


@pytest.fixture
def payments(kube: Kube, release: HeraldRelease) -> str:
    """The test's own workload namespace (a deleted namespace lingers while it empties)."""
    name = f"{release.namespace}-{PAYMENTS}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _workload_entry(name: str, namespace: str, node: str = "n1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": HERALD,
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": namespace},
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


async def _until(condition: Callable[[], bool], what: str, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def _store(kubeconfig: Path, **options: Any) -> KubernetesEntryStore:
    return KubernetesEntryStore(
        kube_client_factory(kubeconfig),
        trust_domain=TD,
        cluster_name=CLUSTER,
        retry_delay=(0.05, 0.2),
        **options,
    )


@pytest.fixture
async def store(release: HeraldRelease) -> AsyncIterator[KubernetesEntryStore]:
    started = _store(release.kubeconfigs["server"])
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def faults(own_control_plane: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy(own_control_plane).start()
    yield proxy
    proxy.stop()


async def test_objects_present_at_start_are_loaded_before_start_returns(
    kube: Kube, release: HeraldRelease, payments: str
) -> None:
    uid = _node(kube, "n1")
    kube.create(
        _workload_entry("web", payments, x509SVIDTTL="1h", jwtSVIDTTL=300, dnsNames=["web.pay"])
    )
    kube.create(_static_entry("db"))
    store = _store(release.kubeconfigs["server"])
    await store.start()
    try:
        web = store.cache.get(f"{payments}.web")
        assert web == Entry(
            id=f"{payments}.web",
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
    kube: Kube, store: KubernetesEntryStore, payments: str
) -> None:
    web = f"{payments}.web"
    uid = _node(kube, "n1")
    kube.create(_workload_entry("web", payments))
    await _until(lambda: store.cache.get(web) is not None, "the entry appears")
    entry = store.cache.get(web)
    assert entry is not None and entry.parent_id == _agent(uid) and entry.revision == 1

    with store.cache.subscribe([_agent(uid)]) as sub:
        kube.patch(HERALD, "WorkloadEntry", "web", payments, {"spec": {"hint": "blue"}})
        changes = await asyncio.wait_for(sub.wait(), 5)
        updated = changes[web]
        assert updated is not None and updated.hint == "blue" and updated.revision == 2

        kube.delete(HERALD, "WorkloadEntry", "web", payments)
        assert await asyncio.wait_for(sub.wait(), 5) == {web: None}
    assert store.cache.get(web) is None


async def test_an_entry_waits_for_its_node_and_leaves_with_it(
    kube: Kube, store: KubernetesEntryStore, payments: str
) -> None:
    web, api = f"{payments}.web", f"{payments}.api"
    _node(kube, "n1")
    kube.create(_workload_entry("web", payments, node="n2"))
    kube.create(_workload_entry("api", payments, node="n1"))
    await _until(lambda: store.cache.get(api) is not None, "the n1 entry appears")
    assert store.cache.get(web) is None, "n2 is unknown: no parent yet"

    uid = _node(kube, "n2")
    await _until(lambda: store.cache.get(web) is not None, "n2's entry appears")
    entry = store.cache.get(web)
    assert entry is not None and entry.parent_id == _agent(uid)

    kube.delete("v1", "Node", "n2")
    await _until(lambda: store.cache.get(web) is None, "n2's entry leaves")
    assert store.nodes.uid_for("n2") is None and not store.nodes.has_uid(uid)
    assert store.cache.get(api) is not None

    new_uid = _node(kube, "n2")  # the node comes back as a new object
    await _until(lambda: store.cache.get(web) is not None, "the entry returns")
    entry = store.cache.get(web)
    assert entry is not None and entry.parent_id == _agent(new_uid) != _agent(uid)


async def test_moving_an_entry_to_another_node_changes_its_parent(
    kube: Kube, store: KubernetesEntryStore, payments: str
) -> None:
    web = f"{payments}.web"
    uid1, uid2 = _node(kube, "n1"), _node(kube, "n2")
    kube.create(_workload_entry("web", payments, node="n1"))
    await _until(lambda: store.cache.get(web) is not None, "the entry appears")
    kube.patch(HERALD, "WorkloadEntry", "web", payments, {"spec": {"nodeName": "n2"}})
    await _until(
        lambda: store.cache.by_parents([_agent(uid2)]) != [], "the entry moves to n2's agent"
    )
    assert store.cache.by_parents([_agent(uid1)]) == []
    kube.delete("v1", "Node", "n1")
    await asyncio.sleep(0.2)
    assert store.cache.get(web) is not None, "n1's departure no longer matters"


async def test_cluster_static_entries(kube: Kube, store: KubernetesEntryStore) -> None:
    kube.create(_static_entry("db", admin=True, federatesWith=["partner.org"]))
    await _until(lambda: store.cache.get("cluster:db") is not None, "the static entry appears")
    entry = store.cache.get("cluster:db")
    assert (
        entry is not None and entry.admin and entry.federates_with == (TrustDomain("partner.org"),)
    )
    kube.patch(HERALD, "ClusterStaticEntry", "db", None, {"spec": {"selectors": ["unix:uid:0"]}})
    root = parse_selectors(["unix:uid:0"])
    await _until(
        lambda: getattr(store.cache.get("cluster:db"), "selectors", None) == root, "a change"
    )
    kube.delete(HERALD, "ClusterStaticEntry", "db")
    await _until(lambda: store.cache.get("cluster:db") is None, "the static entry leaves")


# Objects the CRD's schema admits but the server cannot serve: each is skipped with a warning.
# (What the schema refuses never reaches the server: see test_crds_api.py.)
INVALID_SPECS = {
    "bad-id": {"spiffeID": "spiffe://example.org/a//b"},
    "upper-case-domain": {"spiffeID": "spiffe://Example.org/a"},
    "other-domain": {"spiffeID": "spiffe://elsewhere.org/x"},
    "reserved": {"spiffeID": "spiffe://example.org/herald/agent/k8s_psat/prod/x"},
    "huge-ttl-text": {"jwtSVIDTTL": "99999999999999999999"},
    "long-ttl": {"jwtSVIDTTL": 366 * 86400 + 1},
}


async def test_invalid_objects_are_skipped_once_and_never_fatal(
    kube: Kube,
    release: HeraldRelease,
    payments: str,
    faults: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="herald_server.k8s_entries")
    store = _store(faults.kubeconfig(release.kubeconfigs["server"]))
    await store.start()
    try:
        _node(kube, "n1")
        for name, spec in INVALID_SPECS.items():
            kube.create(_workload_entry(name, payments, **spec))
        kube.create(_static_entry("elsewhere", parentID="spiffe://elsewhere.org/agent"))
        kube.create(_workload_entry("good", payments))
        good = f"{payments}.good"
        await _until(lambda: store.cache.get(good) is not None, "the good entry appears")

        def logged(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if text in r.getMessage()]

        def reports() -> list[str]:
            return logged("skipping invalid object")

        await _until(
            lambda: len(reports()) == len(INVALID_SPECS) + 1, "every bad object is reported"
        )
        assert [e.id for e in store.cache] == [good]
        messages = "\n".join(reports())
        assert f"object={payments}/bad-id" in messages and "empty segments" in messages
        assert f"object={payments}/other-domain" in messages and "outside trust domain" in messages
        assert f"object={payments}/reserved" in messages and "reserved" in messages
        assert "kind=ClusterStaticEntry object=elsewhere" in messages
        assert (
            f"object={payments}/upper-case-domain" in messages and "must be lowercase" in messages
        )
        assert "spec.jwtSVIDTTL: duration '99999999999999999999' is longer" in messages

        # A real 410 Gone from the API server: the relist reads the same bad objects again,
        # silently.
        await asyncio.to_thread(faults.expire_watches)
        kube.create(_workload_entry("later", payments))
        await _until(
            lambda: store.cache.get(f"{payments}.later") is not None, "watching resumes", within=30
        )
        assert logged("watch expired, relisting: kind=WorkloadEntry")
        assert len(reports()) == len(INVALID_SPECS) + 1
    finally:
        await store.stop()


async def test_a_good_entry_turned_bad_leaves_the_cache(
    kube: Kube, store: KubernetesEntryStore, payments: str
) -> None:
    web = f"{payments}.web"
    _node(kube, "n1")
    kube.create(_workload_entry("web", payments))
    await _until(lambda: store.cache.get(web) is not None, "the entry appears")
    bad = {"spec": {"spiffeID": "spiffe://elsewhere.org/w"}}
    kube.patch(HERALD, "WorkloadEntry", "web", payments, bad)
    await _until(lambda: store.cache.get(web) is None, "the bad version leaves")
    fixed = {"spec": {"spiffeID": "spiffe://example.org/w"}}
    kube.patch(HERALD, "WorkloadEntry", "web", payments, fixed)
    await _until(lambda: store.cache.get(web) is not None, "the fixed version returns")


async def test_changes_made_while_the_watch_is_down_are_caught_by_a_relist(
    kube: Kube, release: HeraldRelease, payments: str, faults: FaultProxy
) -> None:
    store = _store(faults.kubeconfig(release.kubeconfigs["server"]))
    await store.start()
    try:
        _node(kube, "n1")
        kube.create(_workload_entry("kept", payments))
        kube.create(_workload_entry("removed", payments))
        await _until(lambda: len(store.cache) == 2, "both entries appear")

        # Every new watch of entries fails; the open one is cut. Lists still answer.
        faults.fail("GET", ENTRIES, 500, watch=True)
        faults.cut_watches()

        kube.delete(HERALD, "WorkloadEntry", "removed", payments)
        kube.patch(HERALD, "WorkloadEntry", "kept", payments, {"spec": {"hint": "changed"}})
        kube.create(_workload_entry("added", payments))
        await _until(
            lambda: sorted(e.id for e in store.cache) == [f"{payments}.added", f"{payments}.kept"],
            "a relist brings the cache up to date without any watch event",
        )
        kept = store.cache.get(f"{payments}.kept")
        assert kept is not None and kept.hint == "changed"
        assert faults.count("GET", ENTRIES) >= 3, "lists and refused watches went through"

        faults.clear()
        kube.create(_workload_entry("streamed", payments))
        await _until(
            lambda: store.cache.get(f"{payments}.streamed") is not None, "watching resumes"
        )
    finally:
        await store.stop()


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


async def test_stop_ends_the_watch_threads_promptly(release: HeraldRelease) -> None:
    store = _store(release.kubeconfigs["server"], watch_timeout=300)
    await store.start()
    watching = [t for t in threading.enumerate() if t.name.startswith("herald-watch-")]
    assert len(watching) == 3
    began = time.monotonic()
    await store.stop()
    assert time.monotonic() - began < 2
    assert not any(t.is_alive() for t in watching)


async def test_start_fails_clearly_without_the_custom_resources(
    release: HeraldRelease, faults: FaultProxy
) -> None:
    # The API server's answer for a resource it does not serve (the CRDs are not installed).
    faults.fail("GET", ENTRIES, 404)
    store = _store(faults.kubeconfig(release.kubeconfigs["server"]))
    with pytest.raises(EntryStoreError, match=r"cannot list herald's entry sources.*404"):
        await store.start()


async def test_start_fails_clearly_without_the_rights_to_list(
    kube: Kube, release: HeraldRelease
) -> None:
    agent_identity = release.kubeconfigs["agent"]  # the agent may not read entries
    with pytest.raises(EntryStoreError, match=r"cannot list herald's entry sources.*403"):
        await _store(agent_identity).start()


def test_cluster_name_must_fit_in_an_id(release: HeraldRelease) -> None:
    with pytest.raises(ValueError, match="cluster name 'a/b'"):
        KubernetesEntryStore(
            kube_client_factory(release.kubeconfigs["server"]), trust_domain=TD, cluster_name="a/b"
        )
