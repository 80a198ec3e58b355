"""The Kubernetes API emulator answers the official client the way kube-apiserver does.

The emulator is the benchmarks' baseline beside the real control plane (bench/operator.py,
bench/pod_identity.py); every Kubernetes-mode test of herald runs on the real API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import (
    ApiException,
    AuthenticationV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1Lease,
    V1LeaseSpec,
    V1Namespace,
    V1Node,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1Secret,
    V1TokenReview,
    V1TokenReviewSpec,
)
from kubernetes.client import V1Container as Container

from tests.kube_emulator import KubeCluster


@pytest.fixture
def kube() -> Iterator[KubeCluster]:
    """A fresh emulated Kubernetes API on a random localhost port (see tests/kube_emulator.py)."""
    cluster = KubeCluster().start()
    try:
        yield cluster
    finally:
        errors = cluster.stop()
    if errors:
        pytest.fail(f"the Kubernetes emulator failed while serving: {errors!r}")


HERALD = ("herald.dev", "v1alpha1")


def _pod(name: str, *, node: str = "", labels: dict[str, str] | None = None) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name=name, labels=labels),
        spec=V1PodSpec(node_name=node or None, containers=[Container(name="c", image="i")]),
    )


def _workload_entry(name: str, spiffe_id: str = "spiffe://td/a") -> dict[str, Any]:
    return {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name},
        "spec": {"spiffeID": spiffe_id, "nodeName": "n1", "selectors": ["k8s:ns:a"]},
        "status": {"ready": True},
    }


def _status_code(call: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return int(info.value.status)


def _watch(call: Any, *, seconds: int = 1, **kwargs: Any) -> list[tuple[str, str, str]]:
    """Events of a server-side-timed watch: (type, name, resourceVersion)."""
    stream = kubernetes.watch.Watch().stream(call, timeout_seconds=seconds, **kwargs)
    return [
        (
            e["type"],
            e["raw_object"]["metadata"]["name"],
            e["raw_object"]["metadata"]["resourceVersion"],
        )
        for e in stream
    ]


def test_secret_crud_with_optimistic_concurrency(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    created = core.create_namespaced_secret(
        "ns", V1Secret(metadata=V1ObjectMeta(name="ca"), string_data={"k": "v1"})
    )
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert created.metadata.namespace == "ns"

    stale = core.read_namespaced_secret("ca", "ns")
    fresh = core.read_namespaced_secret("ca", "ns")
    fresh.string_data = {"k": "v2"}
    replaced = core.replace_namespaced_secret("ca", "ns", fresh)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert replaced.metadata.uid == created.metadata.uid

    stale.string_data = {"k": "lost update"}
    assert _status_code(core.replace_namespaced_secret, "ca", "ns", stale) == 409
    assert core.read_namespaced_secret("ca", "ns").string_data == {"k": "v2"}

    assert _status_code(core.create_namespaced_secret, "ns", fresh) == 409
    core.delete_namespaced_secret("ca", "ns")
    assert _status_code(core.read_namespaced_secret, "ca", "ns") == 404
    assert _status_code(core.replace_namespaced_secret, "ca", "ns", fresh) == 404


def test_patch_with_stale_resource_version_conflicts(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    secret = core.create_namespaced_secret("ns", V1Secret(metadata=V1ObjectMeta(name="s")))
    core.patch_namespaced_secret("s", "ns", {"metadata": {"labels": {"a": "1"}}})
    stale_patch = {"metadata": {"resourceVersion": secret.metadata.resource_version}}
    assert _status_code(core.patch_namespaced_secret, "s", "ns", stale_patch) == 409


def test_core_namespace_paths_and_generated_names(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="payments")))
    assert core.read_namespace("payments").metadata.name == "payments"
    listed = core.list_namespace()
    assert listed.kind == "NamespaceList"
    assert [n.metadata.name for n in listed.items] == ["payments"]
    event = core.create_namespaced_event(
        "payments",
        {"metadata": {"generateName": "herald-"}, "involvedObject": {}, "reason": "R"},
    )
    assert event.metadata.name.startswith("herald-") and len(event.metadata.name) == 12


def test_list_carries_kind_and_current_resource_version(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_node(V1Node(metadata=V1ObjectMeta(name="n1")))
    before = core.list_node().metadata.resource_version
    core.create_node(V1Node(metadata=V1ObjectMeta(name="n2")))
    after = core.list_node()
    assert after.kind == "NodeList"
    assert int(after.metadata.resource_version) > int(before)
    assert after.metadata.resource_version == str(kube.resource_version)


def test_watch_from_resource_version_sends_only_newer_events(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespaced_pod("ns", _pod("a"))
    core.create_namespaced_pod("ns", _pod("b"))
    since = core.list_namespaced_pod("ns").metadata.resource_version
    core.patch_namespaced_pod("b", "ns", {"metadata": {"labels": {"x": "y"}}})
    core.create_namespaced_pod("ns", _pod("c"))
    core.delete_namespaced_pod("a", "ns")

    events = _watch(core.list_namespaced_pod, namespace="ns", resource_version=since)
    assert [(kind, name) for kind, name, _ in events] == [
        ("MODIFIED", "b"),
        ("ADDED", "c"),
        ("DELETED", "a"),
    ]
    versions = [int(rv) for _, _, rv in events]
    assert versions == sorted(versions) and versions[0] > int(since)


def test_watch_without_resource_version_starts_with_current_objects(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespaced_pod("ns", _pod("a"))
    core.create_namespaced_pod("other", _pod("b"))
    assert [(t, n) for t, n, _ in _watch(core.list_namespaced_pod, namespace="ns")] == [
        ("ADDED", "a")
    ]


def test_watch_streams_changes_as_they_happen(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    since = core.list_namespaced_config_map("ns").metadata.resource_version
    seen: list[tuple[str, str, str]] = []
    watcher = threading.Thread(
        target=lambda: seen.extend(
            _watch(
                core.list_namespaced_config_map, seconds=2, namespace="ns", resource_version=since
            )
        )
    )
    watcher.start()
    core.create_namespaced_config_map("ns", {"metadata": {"name": "m"}, "data": {"a": "1"}})
    watcher.join(5)
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "m")]


def test_label_and_field_selectors_filter_lists(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespaced_pod("ns", _pod("web1", node="n1", labels={"app": "web", "tier": "fe"}))
    core.create_namespaced_pod("ns", _pod("web2", node="n2", labels={"app": "web"}))
    core.create_namespaced_pod("ns", _pod("db", node="n1", labels={"app": "db"}))
    core.create_namespaced_pod("ns", _pod("bare", node="n2"))

    def names(**selectors: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("ns", **selectors).items]

    assert names(label_selector="app=web") == ["web1", "web2"]
    assert names(label_selector="app==web,tier") == ["web1"]
    assert names(label_selector="app!=web") == ["bare", "db"]
    assert names(label_selector="app in (web, db),!tier") == ["db", "web2"]
    assert names(label_selector="app notin (web)") == ["bare", "db"]
    assert names(field_selector="spec.nodeName=n1") == ["db", "web1"]
    assert names(field_selector="spec.nodeName=n2,metadata.name!=bare") == ["web2"]
    assert names(field_selector="metadata.name=db", label_selector="app=db") == ["db"]
    assert _status_code(core.list_namespaced_pod, "ns", label_selector="app in web)") == 400


def test_watch_selectors_turn_transitions_into_added_and_deleted(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespaced_pod("ns", _pod("a", node="n1", labels={"app": "web"}))
    since = core.list_namespaced_pod("ns").metadata.resource_version
    core.create_namespaced_pod("ns", _pod("b", node="n2", labels={"app": "web"}))
    core.patch_namespaced_pod("a", "ns", {"metadata": {"labels": {"app": "db"}}})
    core.patch_namespaced_pod("a", "ns", {"metadata": {"labels": {"app": "web"}}})

    on_n1 = _watch(
        core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", resource_version=since
    )
    assert [(t, n) for t, n, _ in on_n1] == [("MODIFIED", "a"), ("MODIFIED", "a")]
    web = _watch(core.list_namespaced_pod, namespace="ns", label_selector="app=web",
                 resource_version=since)  # fmt: skip
    assert [(t, n) for t, n, _ in web] == [("ADDED", "b"), ("DELETED", "a"), ("ADDED", "a")]


def test_token_review_answers_like_the_api_server(kube: KubeCluster) -> None:
    kube.add_service_account_token(
        "good-token",
        namespace="herald",
        service_account="agent",
        pod_name="agent-x1",
        pod_uid="pod-uid-1",
        audiences=["herald-server"],
    )
    auth = AuthenticationV1Api(kube.api_client())

    def review(token: str, audiences: list[str]) -> Any:
        body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=audiences))
        return auth.create_token_review(body).status

    good = review("good-token", ["herald-server"])
    assert good.authenticated is True
    assert good.audiences == ["herald-server"]
    assert good.user.username == "system:serviceaccount:herald:agent"
    assert good.user.uid
    assert set(good.user.groups) == {
        "system:serviceaccounts",
        "system:serviceaccounts:herald",
        "system:authenticated",
    }
    assert good.user.extra["authentication.kubernetes.io/pod-name"] == ["agent-x1"]
    assert good.user.extra["authentication.kubernetes.io/pod-uid"] == ["pod-uid-1"]

    unknown = review("forged-token", ["herald-server"])
    assert unknown.authenticated is False and unknown.error and unknown.user is None
    wrong_audience = review("good-token", ["someone-else"])
    assert wrong_audience.authenticated is False and "audiences" in wrong_audience.error


def test_lease_create_and_replace(kube: KubeCluster) -> None:
    leases = CoordinationV1Api(kube.api_client())
    lease = leases.create_namespaced_lease(
        "herald",
        V1Lease(metadata=V1ObjectMeta(name="leader"), spec=V1LeaseSpec(holder_identity="a")),
    )
    stale = leases.read_namespaced_lease("leader", "herald")
    lease.spec.holder_identity = "b"
    assert leases.replace_namespaced_lease("leader", "herald", lease).spec.holder_identity == "b"
    stale.spec.holder_identity = "c"
    assert _status_code(leases.replace_namespaced_lease, "leader", "herald", stale) == 409
    assert leases.read_namespaced_lease("leader", "herald").spec.holder_identity == "b"


def test_custom_objects_with_status_subresource(kube: KubeCluster) -> None:
    crs = CustomObjectsApi(kube.api_client())
    created = crs.create_namespaced_custom_object(
        *HERALD, "ns", "workloadentries", _workload_entry("e")
    )
    assert "status" not in created, "status is written only through /status"
    assert created["kind"] == "WorkloadEntry" and created["metadata"]["generation"] == 1

    with_status = crs.patch_namespaced_custom_object_status(
        *HERALD, "ns", "workloadentries", "e", {"status": {"conditions": [{"type": "Ready"}]}}
    )
    assert with_status["status"] == {"conditions": [{"type": "Ready"}]}
    assert with_status["metadata"]["generation"] == 1

    changed = dict(with_status, spec={**with_status["spec"], "spiffeID": "spiffe://td/b"})
    changed["status"] = {"conditions": []}
    replaced = crs.replace_namespaced_custom_object(*HERALD, "ns", "workloadentries", "e", changed)
    assert replaced["spec"]["spiffeID"] == "spiffe://td/b"
    assert replaced["status"] == {"conditions": [{"type": "Ready"}]}, "main writes keep status"
    assert replaced["metadata"]["generation"] == 2

    replaced["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    replaced["spec"]["spiffeID"] = "spiffe://td/ignored"
    status_put = crs.replace_namespaced_custom_object_status(
        *HERALD, "ns", "workloadentries", "e", replaced
    )
    assert status_put["spec"]["spiffeID"] == "spiffe://td/b", "/status writes keep the rest"
    assert status_put["status"]["conditions"][0]["status"] == "False"

    cluster_scoped = crs.create_cluster_custom_object(
        *HERALD,
        "clusterstaticentries",
        {"metadata": {"name": "s"}, "spec": {"spiffeID": "spiffe://td/s"}},
    )
    assert "namespace" not in cluster_scoped["metadata"]
    assert crs.get_cluster_custom_object(*HERALD, "clusterstaticentries", "s")["spec"]


def test_no_op_patch_changes_nothing(kube: KubeCluster) -> None:
    crs = CustomObjectsApi(kube.api_client())
    created = crs.create_namespaced_custom_object(
        *HERALD, "ns", "workloadentries", _workload_entry("e")
    )
    same = crs.patch_namespaced_custom_object(
        *HERALD, "ns", "workloadentries", "e", {"spec": {"nodeName": "n1"}}
    )
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    relabelled = crs.patch_namespaced_custom_object(
        *HERALD, "ns", "workloadentries", "e", {"metadata": {"labels": {"a": "b"}}}
    )
    assert relabelled["metadata"]["generation"] == 1, "metadata changes keep the generation"


def test_finalizers_and_json_patch_test(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    core.create_namespaced_config_map("ns", {"metadata": {"name": "m", "finalizers": ["herald"]}})
    core.delete_namespaced_config_map("m", "ns")
    marked = core.read_namespaced_config_map("m", "ns")
    assert marked.metadata.deletion_timestamp is not None

    failing_test = [
        {"op": "test", "path": "/metadata/finalizers", "value": ["someone-else"]},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    assert _status_code(core.patch_namespaced_config_map, "m", "ns", failing_test) == 422
    assert core.read_namespaced_config_map("m", "ns").metadata.finalizers == ["herald"]

    passing_test = [
        {"op": "test", "path": "/metadata/finalizers", "value": ["herald"]},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    core.patch_namespaced_config_map("m", "ns", passing_test)
    assert _status_code(core.read_namespaced_config_map, "m", "ns") == 404


def test_dependents_go_with_their_owner(kube: KubeCluster) -> None:
    pod = kube.create(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
    )
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod["metadata"]["uid"]}
    entry = _workload_entry("e")
    entry["metadata"].update(namespace="ns", ownerReferences=[owner])
    kube.create(entry)
    kube.delete("v1", "Pod", "p", "ns")
    assert kube.get("herald.dev/v1alpha1", "WorkloadEntry", "e", "ns") is None


def test_direct_helpers_keep_status(kube: KubeCluster) -> None:
    node = kube.create(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"phase": "x"}}
    )
    assert node["status"] == {"phase": "x"} and node["metadata"]["uid"]
    patched = kube.patch("v1", "Node", "n1", {"status": {"phase": "y"}})
    assert patched["status"] == {"phase": "y"}
    assert [n["metadata"]["name"] for n in kube.list("v1", "Node")] == ["n1"]


def test_discovery_lists_core_crds_and_herald_kinds(kube: KubeCluster) -> None:
    client = kube.api_client()
    core = CoreV1Api(client).get_api_resources()
    assert core.group_version == "v1"
    assert {"namespaces", "pods", "pods/status", "secrets", "nodes"} <= {
        r.name for r in core.resources
    }
    herald = CustomObjectsApi(client).get_api_resources(*HERALD)
    kinds = {r.kind for r in herald.resources if "/" not in r.name}
    assert kinds == {
        "ClusterSPIFFEID",
        "SPIFFEID",
        "ClusterStaticEntry",
        "ClusterFederatedTrustDomain",
        "WorkloadEntry",
    }
    groups = {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
    assert {"apiextensions.k8s.io", "coordination.k8s.io", "herald.dev"} <= groups


def test_reactions_still_inject_failures(kube: KubeCluster) -> None:
    core = CoreV1Api(kube.api_client())
    kube.emulator["get /api/v1/namespaces/ns/secrets/s"] << 503
    assert _status_code(core.read_namespaced_secret, "s", "ns") == 503
    assert _status_code(core.read_namespaced_secret, "t", "ns") == 404
