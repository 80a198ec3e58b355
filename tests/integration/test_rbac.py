"""Least privilege, proven on the real API: each component's ServiceAccount, as the chart's RBAC
(deploy/helm/herald/files/rbac.yaml) binds it, may do what its code does and is refused the rest.

Every case is a real request with the component's own token; the API server's authorizer decides
before any handler runs, so 403 means refused and any other answer (200, 201, 404, 409, 422)
means allowed. The kubelet's ``nodes/pods`` check has no API endpoint and is asked of the
authorizer directly (SelfSubjectAccessReview). The other components' code running under these
identities is exercised by the Kubernetes-mode tests of the server, operator and agent.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.k8s.api import Kube
from tests.k8s.install import HeraldRelease
from tests.k8s.rbac import load_source

HERALD = "/apis/herald.dev/v1alpha1"


def _attempt(kube: Kube, method: str, path: str, body: Any = None, **kw: Any) -> int:
    try:
        kube.request(method, path, body, **kw)
    except ApiException as exc:
        return int(exc.status)
    return 200


def _secret(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}


def _configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}


def _lease(name: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}}


def _entry(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name},
        "spec": {"spiffeID": "spiffe://example.org/x", "nodeName": "n", "selectors": ["k8s:ns:x"]},
    }


_REVIEW = {
    "apiVersion": "authentication.k8s.io/v1",
    "kind": "TokenReview",
    "spec": {"token": "not-a-token"},
}
_EVENT = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "rbac-test"},
    "involvedObject": {"kind": "SPIFFEID", "name": "x", "namespace": "{other}"},
    "reason": "Test",
    "message": "rbac test",
}
_MERGE = {"content_type": "application/merge-patch+json"}

# (component, description, method, path, body, request keywords); {ns} (the release's namespace),
# {other} (another one), {ca}, {bundle}, {lease} and {peering} (its objects) are filled in.
ALLOWED = [
    (
        "server",
        "review a token",
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        _REVIEW,
        {},
    ),
    ("server", "get a node", "GET", "/api/v1/nodes/n", None, {}),
    ("server", "watch nodes", "GET", "/api/v1/nodes?watch=1&timeoutSeconds=1", None, {}),
    ("server", "list WorkloadEntries", "GET", f"{HERALD}/workloadentries", None, {}),
    ("server", "list ClusterStaticEntries", "GET", f"{HERALD}/clusterstaticentries", None, {}),
    ("server", "get an agent pod", "GET", "/api/v1/namespaces/{ns}/pods/p", None, {}),
    ("server", "get the CA Secret", "GET", "/api/v1/namespaces/{ns}/secrets/{ca}", None, {}),
    (
        "server",
        "list the CA Secret by name",
        "GET",
        "/api/v1/namespaces/{ns}/secrets?fieldSelector=metadata.name%3D{ca}",
        None,
        {},
    ),
    (
        "server",
        "update the CA Secret",
        "PUT",
        "/api/v1/namespaces/{ns}/secrets/{ca}",
        _secret("{ca}"),
        {},
    ),
    (
        "server",
        "create the CA Secret",
        "POST",
        "/api/v1/namespaces/{ns}/secrets",
        _secret("{ca}"),
        {},
    ),
    (
        "server",
        "update the bundle ConfigMap",
        "PUT",
        "/api/v1/namespaces/{ns}/configmaps/{bundle}",
        _configmap("{bundle}"),
        {},
    ),
    (
        "server",
        "create the bundle ConfigMap",
        "POST",
        "/api/v1/namespaces/{ns}/configmaps",
        _configmap("{bundle}"),
        {},
    ),
    (
        "server",
        "update the Lease",
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{lease}",
        _lease("{lease}"),
        {},
    ),
    (
        "server",
        "create the Lease",
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
        _lease("{lease}"),
        {},
    ),
    ("operator", "list pods everywhere", "GET", "/api/v1/pods", None, {}),
    ("operator", "get a pod", "GET", "/api/v1/namespaces/{other}/pods/p", None, {}),
    ("operator", "list namespaces", "GET", "/api/v1/namespaces", None, {}),
    ("operator", "list nodes", "GET", "/api/v1/nodes", None, {}),
    ("operator", "list services", "GET", "/api/v1/services", None, {}),
    ("operator", "post an Event", "POST", "/api/v1/namespaces/{other}/events", _EVENT, {}),
    ("operator", "list ClusterSPIFFEIDs", "GET", f"{HERALD}/clusterspiffeids", None, {}),
    ("operator", "list SPIFFEIDs", "GET", f"{HERALD}/spiffeids", None, {}),
    (
        "operator",
        "patch a ClusterSPIFFEID's status",
        "PATCH",
        f"{HERALD}/clusterspiffeids/x/status",
        {"status": {}},
        _MERGE,
    ),
    (
        "operator",
        "patch a SPIFFEID's status",
        "PATCH",
        f"{HERALD}/namespaces/{{other}}/spiffeids/x/status",
        {"status": {}},
        _MERGE,
    ),
    (
        "operator",
        "create a WorkloadEntry",
        "POST",
        f"{HERALD}/namespaces/{{other}}/workloadentries",
        _entry("rbac"),
        {},
    ),
    (
        "operator",
        "patch a WorkloadEntry",
        "PATCH",
        f"{HERALD}/namespaces/{{other}}/workloadentries/x",
        {"spec": {}},
        _MERGE,
    ),
    (
        "operator",
        "delete a WorkloadEntry",
        "DELETE",
        f"{HERALD}/namespaces/{{other}}/workloadentries/x",
        None,
        {},
    ),
    (
        "operator",
        "list CRDs",
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        None,
        {},
    ),
    ("operator", "list peerings", "GET", "/apis/kopf.dev/v1/clusterkopfpeerings", None, {}),
    (
        "operator",
        "patch its peering",
        "PATCH",
        "/apis/kopf.dev/v1/clusterkopfpeerings/{peering}",
        {"status": {}},
        _MERGE,
    ),
]

REFUSED = [
    ("server", "read another Secret", "GET", "/api/v1/namespaces/{ns}/secrets/other", None, {}),
    ("server", "list every Secret", "GET", "/api/v1/namespaces/{ns}/secrets", None, {}),
    ("server", "delete the CA Secret", "DELETE", "/api/v1/namespaces/{ns}/secrets/{ca}", None, {}),
    (
        "server",
        "read a Secret elsewhere",
        "GET",
        "/api/v1/namespaces/{other}/secrets/{ca}",
        None,
        {},
    ),
    (
        "server",
        "create a Secret elsewhere",
        "POST",
        "/api/v1/namespaces/{other}/secrets",
        _secret("x"),
        {},
    ),
    (
        "server",
        "create a ConfigMap elsewhere",
        "POST",
        "/api/v1/namespaces/{other}/configmaps",
        _configmap("x"),
        {},
    ),
    (
        "server",
        "update another ConfigMap",
        "PUT",
        "/api/v1/namespaces/{ns}/configmaps/other",
        _configmap("other"),
        {},
    ),
    (
        "server",
        "update another Lease",
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/other",
        _lease("other"),
        {},
    ),
    (
        "server",
        "write a WorkloadEntry",
        "POST",
        f"{HERALD}/namespaces/{{ns}}/workloadentries",
        _entry("x"),
        {},
    ),
    ("server", "read ClusterSPIFFEIDs", "GET", f"{HERALD}/clusterspiffeids", None, {}),
    ("server", "list pods everywhere", "GET", "/api/v1/pods", None, {}),
    ("server", "get a pod elsewhere", "GET", "/api/v1/namespaces/{other}/pods/p", None, {}),
    ("server", "delete a pod", "DELETE", "/api/v1/namespaces/{ns}/pods/p", None, {}),
    ("server", "proxy to a kubelet", "GET", "/api/v1/nodes/n/proxy/pods", None, {}),
    ("operator", "read the CA Secret", "GET", "/api/v1/namespaces/{ns}/secrets/{ca}", None, {}),
    ("operator", "list Secrets", "GET", "/api/v1/secrets", None, {}),
    ("operator", "read ConfigMaps", "GET", "/api/v1/namespaces/{ns}/configmaps/{bundle}", None, {}),
    (
        "operator",
        "change an identity's spec",
        "PATCH",
        f"{HERALD}/clusterspiffeids/x",
        {"spec": {}},
        _MERGE,
    ),
    (
        "operator",
        "create an identity",
        "POST",
        f"{HERALD}/clusterspiffeids",
        {"apiVersion": "herald.dev/v1alpha1", "kind": "ClusterSPIFFEID", "metadata": {"name": "x"}},
        {},
    ),
    (
        "operator",
        "write ClusterStaticEntries",
        "POST",
        f"{HERALD}/clusterstaticentries",
        {
            "apiVersion": "herald.dev/v1alpha1",
            "kind": "ClusterStaticEntry",
            "metadata": {"name": "x"},
        },
        {},
    ),
    (
        "operator",
        "patch another peering",
        "PATCH",
        "/apis/kopf.dev/v1/clusterkopfpeerings/other",
        {"status": {}},
        _MERGE,
    ),
    (
        "operator",
        "change a pod",
        "PATCH",
        "/api/v1/namespaces/{other}/pods/p",
        {"metadata": {}},
        _MERGE,
    ),
    (
        "operator",
        "review tokens",
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        _REVIEW,
        {},
    ),
    (
        "operator",
        "take the Lease",
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{lease}",
        _lease("{lease}"),
        {},
    ),
    ("agent", "read the CA Secret", "GET", "/api/v1/namespaces/{ns}/secrets/{ca}", None, {}),
    ("agent", "list Secrets", "GET", "/api/v1/namespaces/{ns}/secrets", None, {}),
    ("agent", "list pods", "GET", "/api/v1/pods", None, {}),
    ("agent", "get a pod", "GET", "/api/v1/namespaces/{ns}/pods/p", None, {}),
    ("agent", "read WorkloadEntries", "GET", f"{HERALD}/workloadentries", None, {}),
    ("agent", "read nodes", "GET", "/api/v1/nodes/n", None, {}),
    ("agent", "review tokens", "POST", "/apis/authentication.k8s.io/v1/tokenreviews", _REVIEW, {}),
    ("agent", "proxy to a kubelet", "GET", "/api/v1/nodes/n/proxy/pods", None, {}),
    (
        "agent",
        "write the bundle ConfigMap",
        "PUT",
        "/api/v1/namespaces/{ns}/configmaps/{bundle}",
        _configmap("{bundle}"),
        {},
    ),
]


def _fill(value: Any, release: HeraldRelease, other: str) -> Any:
    names = release.names
    mapping = {
        "{ns}": release.namespace,
        "{other}": other,
        "{ca}": names["caSecret"],
        "{bundle}": names["bundleConfigMap"],
        "{lease}": names["leaderLease"],
        "{peering}": names["peering"],
    }
    if isinstance(value, str):
        for key, name in mapping.items():
            value = value.replace(key, name)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, release, other) for k, v in value.items()}
    return value


@pytest.fixture
def other_namespace(kube: Kube, release: HeraldRelease) -> str:
    """A namespace that is not the release's (named after it: deletion is not instant)."""
    name = f"{release.namespace}-other"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _run(release: HeraldRelease, other: str, case: tuple[Any, ...]) -> int:
    component, _, method, path, body, keywords = case
    client = release.kube(component)
    try:
        return _attempt(
            client, method, _fill(path, release, other), _fill(body, release, other), **keywords
        )
    finally:
        client.close()


@pytest.mark.parametrize("case", ALLOWED, ids=lambda c: f"{c[0]}: {c[1]}")
def test_allowed(release: HeraldRelease, other_namespace: str, case: tuple[Any, ...]) -> None:
    status = _run(release, other_namespace, case)
    assert status != 403, f"{case[0]} may {case[1]}, but the API server refused it"


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: f"{c[0]}: {c[1]}")
def test_refused(release: HeraldRelease, other_namespace: str, case: tuple[Any, ...]) -> None:
    status = _run(release, other_namespace, case)
    assert status == 403, f"{case[0]} must not {case[1]}, but the API server answered {status}"


def test_agent_may_read_only_its_kubelets_pod_list(release: HeraldRelease) -> None:
    agent = release.kube("agent")
    try:
        assert agent.can_i("get", "nodes", name="node-a", subresource="pods")
        assert not agent.can_i("get", "nodes", name="node-a", subresource="proxy")
        assert not agent.can_i("create", "nodes", name="node-a", subresource="proxy")
        assert not agent.can_i("get", "nodes", name="node-a", subresource="log")
    finally:
        agent.close()


def test_every_source_rule_says_why() -> None:
    source = load_source()
    for component, scopes in source.items():
        for scope, rules in scopes.items():
            for rule in rules or []:
                assert rule.get("why"), f"{component}.{scope}: a rule without why: {rule}"
                assert set(rule) <= {
                    "why",
                    "if",
                    "kubeVersion",
                    "apiGroups",
                    "resources",
                    "resourceNames",
                    "verbs",
                }, rule
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
