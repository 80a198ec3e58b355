"""Rendering identities for pods: selection, confinement, selectors, DNS names, names and labels.

Every entry rendered here goes through ``_checked``: its WorkloadEntry object must validate
against the CRD schema and be read back by herald-server into the same entry.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from herald_core.spiffeid import TrustDomain
from herald_operator.crds import validate
from herald_operator.identities import Identity, parse_identity
from herald_operator.render import (
    MAX_NAME_LENGTH,
    OUTSIDE_NAMESPACE,
    RENDER_FAILED,
    DesiredEntry,
    RenderResult,
    entry_name,
    label_value,
    render_for_pod,
)
from herald_server import k8s_entries

TD = "example.org"
UID = "6a1f3c2e-8d4b-4f7a-9e2c-1b3d5f7a9c0e"
SA_ID = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")


def _identity(
    kind: str = "ClusterSPIFFEID", name: str = "web", namespace: str = "shop", **spec: Any
) -> Identity:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}
    if kind == "SPIFFEID":
        meta["namespace"] = namespace
    spec.setdefault("spiffeIDTemplate", SA_ID)
    return parse_identity({"kind": kind, "metadata": meta, "spec": spec})


def _pod(
    name: str = "web-0",
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    *,
    uid: str = UID,
    node: str | None = "node-a",
    phase: str = "Running",
    **meta: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": "web-sa"}
    if node is not None:
        spec["nodeName"] = node
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": {"app": "web"} if labels is None else labels,
            **meta,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def _namespace(name: str = "shop", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}}


NODE = {"metadata": {"name": "node-a", "uid": "node-a-uid"}}


def _render(
    identity: Identity,
    pod: dict[str, Any] | None = None,
    namespace: dict[str, Any] | None = None,
    services: tuple[dict[str, Any], ...] = (),
    node: dict[str, Any] | None = NODE,
) -> RenderResult:
    pod = _pod() if pod is None else pod
    namespace = _namespace(pod["metadata"]["namespace"]) if namespace is None else namespace
    result = render_for_pod(
        identity,
        pod,
        namespace,
        node,
        trust_domain=TD,
        cluster_name="prod",
        cluster_domain="cluster.local",
        services=services,
    )
    if result.entry is not None:
        _checked(result.entry)
    return result


def _checked(entry: DesiredEntry) -> DesiredEntry:
    """The entry's object is valid for the CRD and herald-server reads it back unchanged."""
    obj = entry.to_object()
    assert validate("WorkloadEntry", obj) == []
    assert DNS_1123.match(entry.name) and len(entry.name) <= MAX_NAME_LENGTH
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in entry.labels.values())
    read = k8s_entries._read_workload(obj, TrustDomain(TD))
    assert read.node_name == obj["spec"]["nodeName"]
    assert read.template.id == entry.entry_id
    assert str(read.template.spiffe_id) == obj["spec"]["spiffeID"]
    assert sorted(map(str, read.template.selectors)) == sorted(obj["spec"]["selectors"])
    assert list(read.template.dns_names) == obj["spec"].get("dnsNames", [])
    return entry


def _entry(identity: Identity, pod: dict[str, Any] | None = None, **kwargs: Any) -> DesiredEntry:
    result = _render(identity, pod, **kwargs)
    assert result.selected and result.failure is None, result.failure
    assert result.entry is not None
    return result.entry


def _failure(identity: Identity, pod: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    result = _render(identity, pod, **kwargs)
    assert result.selected and result.entry is None
    assert result.failure is not None
    return result.failure


# --- the entry -----------------------------------------------------------------------------


def test_a_selected_pod_gets_the_documented_workload_entry() -> None:
    identity = _identity(ttl="15m", workloadSelectorTemplates=["k8s:container-name:web"])
    obj = _entry(identity).to_object()
    name = entry_name(identity, UID)
    assert obj == {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {
                "app.kubernetes.io/managed-by": "herald-operator",
                "herald.dev/node": "node-a",
                "herald.dev/pod": "web-0",
                "herald.dev/pod-uid": UID,
                "herald.dev/source-kind": "ClusterSPIFFEID",
                "herald.dev/source-name": "web",
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": UID, "controller": True}
            ],
        },
        "spec": {
            "spiffeID": "spiffe://example.org/ns/shop/sa/web-sa",
            "nodeName": "node-a",
            "selectors": [f"k8s:pod-uid:{UID}", "k8s:container-name:web"],
            "x509SVIDTTL": 900,
        },
    }
    assert name.startswith("cspiffeid-web-")


def test_every_copied_field_reaches_the_spec() -> None:
    identity = _identity(
        ttl="1h",
        jwtTtl="5m",
        federatesWith=["spiffe://partner.example", "other.example"],
        hint="envoy",
        admin=True,
        downstream=True,
    )
    spec = _entry(identity).spec
    assert spec["x509SVIDTTL"] == 3600
    assert spec["jwtSVIDTTL"] == 300
    assert spec["federatesWith"] == ["partner.example", "other.example"]
    assert (spec["hint"], spec["admin"], spec["downstream"]) == ("envoy", True, True)


def test_templates_read_pod_and_node() -> None:
    identity = _identity(
        spiffeIDTemplate="spiffe://{{ .TrustDomain }}/c/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
        '/{{ index .PodMeta.Labels "app" }}',
        workloadSelectorTemplates=[
            "k8s:ns:{{ .PodMeta.Namespace }}",
            "k8s:pod-name:{{ .PodMeta.Name }}",
            "k8s:pod-uid:{{ .PodMeta.UID }}",  # the one the operator adds: not repeated
        ],
    )
    entry = _entry(identity)
    assert entry.spec["spiffeID"] == "spiffe://example.org/c/prod/node-a-uid/web"
    assert entry.spec["selectors"] == [f"k8s:pod-uid:{UID}", "k8s:ns:shop", "k8s:pod-name:web-0"]


# --- selection -----------------------------------------------------------------------------


def test_pod_selector_selects_by_pod_labels() -> None:
    identity = _identity(podSelector={"matchLabels": {"app": "web"}})
    assert _render(identity, _pod(labels={"app": "web"})).selected
    assert not _render(identity, _pod(labels={"app": "api"})).selected


def test_namespace_selector_selects_by_namespace_labels() -> None:
    identity = _identity(namespaceSelector={"matchLabels": {"mesh": "enabled"}})
    assert _render(identity, namespace=_namespace(labels={"mesh": "enabled"})).selected
    assert not _render(identity, namespace=_namespace(labels={"mesh": "off"})).selected


def test_namespace_selector_by_name_works_without_the_label_on_the_object() -> None:
    identity = _identity(
        namespaceSelector={
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["shop"]}
            ]
        }
    )
    assert not _render(identity, _pod(namespace="shop")).selected
    assert _render(identity, _pod(namespace="bank")).selected


def test_an_unknown_namespace_is_selected_only_by_an_empty_namespace_selector() -> None:
    pod = _pod()
    kwargs: dict[str, Any] = {"trust_domain": TD, "cluster_name": "c", "cluster_domain": "x"}
    assert render_for_pod(_identity(), pod, None, NODE, **kwargs).selected
    picky = _identity(
        namespaceSelector={"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["b"]}]}
    )
    assert not render_for_pod(picky, pod, None, NODE, **kwargs).selected


@pytest.mark.parametrize(
    "pod",
    [
        _pod(node=None),
        _pod(node=""),
        _pod(phase="Succeeded"),
        _pod(phase="Failed"),
        _pod(deletionTimestamp="2026-01-01T00:00:00Z"),
    ],
    ids=["unscheduled", "empty-node", "succeeded", "failed", "deleting"],
)
def test_unscheduled_finished_and_deleting_pods_are_not_selected(pod: dict[str, Any]) -> None:
    result = _render(_identity(), pod)
    assert not result.selected
    assert result.entry is None and result.failure is None


@pytest.mark.parametrize("phase", ["Pending", "Running", "Unknown"])
def test_scheduled_live_pods_are_selected(phase: str) -> None:
    assert _render(_identity(), _pod(phase=phase)).selected


# --- SPIFFEID tenant confinement and ID checks ----------------------------------------------


def test_a_spiffeid_renders_for_pods_of_its_namespace() -> None:
    identity = _identity("SPIFFEID", name="checkout", namespace="shop")
    entry = _entry(identity, _pod(namespace="shop"))
    assert entry.spec["spiffeID"] == "spiffe://example.org/ns/shop/sa/web-sa"
    assert entry.labels["herald.dev/source-kind"] == "SPIFFEID"
    assert entry.name.startswith("sid-checkout-")


def test_a_spiffeid_never_selects_a_pod_of_another_namespace() -> None:
    identity = _identity("SPIFFEID", namespace="shop")
    result = _render(identity, _pod(namespace="bank"))
    assert not result.selected and result.entry is None and result.failure is None


@pytest.mark.parametrize(
    "template",
    [
        "spiffe://{{ .TrustDomain }}/ns/bank/sa/{{ .PodSpec.ServiceAccountName }}",
        "spiffe://{{ .TrustDomain }}/ns/shopping/x",  # a prefix of the segment is not enough
        "spiffe://{{ .TrustDomain }}/ns/shop",  # the namespace's own ID is not under it
        "spiffe://{{ .TrustDomain }}/payments",
    ],
)
def test_a_spiffeid_id_outside_its_namespace_is_refused(template: str) -> None:
    identity = _identity("SPIFFEID", namespace="shop", spiffeIDTemplate=template)
    failure = _failure(identity)
    assert failure.reason == OUTSIDE_NAMESPACE
    assert failure.message.startswith("SPIFFEID shop/web: spiffeIDTemplate: rendered ")
    assert "only give IDs under spiffe://example.org/ns/shop/" in failure.message


@pytest.mark.parametrize(
    ("names", "refused"),
    [
        (["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"], None),
        (["web.shop.svc", "payments.bank.svc"], "payments.bank.svc"),
        (["api.example.org"], "api.example.org"),
        (["web.shopping.svc"], "web.shopping.svc"),
    ],
)
def test_a_spiffeid_dns_names_stay_in_its_namespace(names: list[str], refused: str | None) -> None:
    identity = _identity("SPIFFEID", namespace="shop", dnsNameTemplates=names)
    result = _render(identity, _pod(namespace="shop"))
    if refused is None:
        assert result.entry is not None
        assert result.entry.spec["dnsNames"] == names
        return
    assert result.failure is not None
    assert result.failure.reason == OUTSIDE_NAMESPACE
    assert f"DNS name {refused!r} is outside namespace shop" in result.failure.message


def test_a_cluster_spiffeid_is_not_confined() -> None:
    identity = _identity(spiffeIDTemplate="spiffe://{{ .TrustDomain }}/payments")
    assert _entry(identity).spec["spiffeID"] == "spiffe://example.org/payments"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("spiffe://{{ .TrustDomain }}/herald/agent/x", "reserved for herald's own agents"),
        ("spiffe://{{ .TrustDomain }}/herald", "reserved for herald's own agents"),
        ("spiffe://other.org/ns/{{ .PodMeta.Namespace }}", "outside trust domain example.org"),
        ("spiffe://{{ .TrustDomain }}", "which has no path"),
        ("spiffe://{{ .TrustDomain }}/a//b", "not a SPIFFE ID"),
        ("spiffe://Example.org/ns/{{ .PodMeta.Namespace }}", "trust domain must be lowercase"),
        ('spiffe://{{ .TrustDomain }}/{{ index .PodMeta.Labels "version" }}', "no label 'version'"),
    ],
)
def test_unusable_ids_are_render_failures(template: str, message: str) -> None:
    failure = _failure(_identity(spiffeIDTemplate=template))
    assert failure.reason == RENDER_FAILED
    assert failure.message.startswith("ClusterSPIFFEID web: spiffeIDTemplate")
    assert message in failure.message


def test_heraldry_is_not_reserved() -> None:
    identity = _identity(spiffeIDTemplate="spiffe://{{ .TrustDomain }}/heraldry")
    assert _entry(identity).spec["spiffeID"] == "spiffe://example.org/heraldry"


def test_a_template_reading_an_unknown_node_fails_until_the_node_is_known() -> None:
    identity = _identity(spiffeIDTemplate="spiffe://{{ .TrustDomain }}/n/{{ .NodeMeta.UID }}")
    failure = _failure(identity, node=None)
    assert failure.reason == RENDER_FAILED and ".NodeMeta.UID" in failure.message
    assert _entry(identity).spec["spiffeID"] == "spiffe://example.org/n/node-a-uid"


def test_federating_with_the_own_trust_domain_is_refused() -> None:
    failure = _failure(_identity(federatesWith=["example.org"]))
    assert failure.message == (
        "ClusterSPIFFEID web: spec.federatesWith: lists example.org, herald's own trust domain"
    )


# --- selectors and DNS names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('k8s:{{ index .PodMeta.Labels "app" }}:x', "unknown k8s selector key 'web'"),
        ('k8s:pod-label:{{ index .PodMeta.Labels "app" }}', "must be 'k8s:pod-label:<a>:<b>'"),
        ('k8s:ns:{{ index .PodMeta.Annotations "team" }}', "the pod has no annotation 'team'"),
    ],
)
def test_a_rendered_selector_must_parse(template: str, message: str) -> None:
    failure = _failure(_identity(workloadSelectorTemplates=["k8s:ns:shop", template]))
    assert failure.reason == RENDER_FAILED
    assert failure.message.startswith("ClusterSPIFFEID web: workloadSelectorTemplates[1]")
    assert message in failure.message


def test_dns_name_templates_are_rendered_checked_and_deduplicated() -> None:
    identity = _identity(
        dnsNameTemplates=[
            "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.pod.{{ .ClusterDomain }}",
            "web.example.org",
            '{{ index .PodMeta.Labels "app" }}.example.org',
        ]
    )
    assert _entry(identity).spec["dnsNames"] == ["web-0.shop.pod.cluster.local", "web.example.org"]


def test_an_invalid_rendered_dns_name_is_a_render_failure() -> None:
    identity = _identity(dnsNameTemplates=["{{ .PodMeta.Name }}.example.org"])
    failure = _failure(identity, _pod(name="Web_0"))
    assert failure.reason == RENDER_FAILED
    assert failure.message.startswith("ClusterSPIFFEID web: dnsNameTemplates[0]: rendered ")
    assert "'Web_0.example.org'" in failure.message


def _service(name: str, selector: dict[str, str] | None, namespace: str = "shop") -> dict[str, Any]:
    spec = {} if selector is None else {"selector": selector}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_auto_populated_dns_names_come_from_the_services_selecting_the_pod() -> None:
    services = (
        _service("web", {"app": "web"}),
        _service("api", {"app": "api"}),
        _service("headless", None),
        _service("web", {"app": "web"}, namespace="bank"),
        _service("all", {"app": "web"}),
    )
    identity = _identity(autoPopulateDNSNames=True, dnsNameTemplates=["web.shop"])
    assert _entry(identity, services=services).spec["dnsNames"] == [
        "web.shop",
        "web",
        "web.shop.svc",
        "web.shop.svc.cluster.local",
        "all",
        "all.shop",
        "all.shop.svc",
        "all.shop.svc.cluster.local",
    ]


def test_services_are_ignored_without_auto_populate() -> None:
    entry = _entry(_identity(), services=(_service("web", {"app": "web"}),))
    assert "dnsNames" not in entry.spec


# --- names and labels ----------------------------------------------------------------------


def test_entry_names_are_deterministic_and_distinct() -> None:
    cluster = _identity(name="web")
    tenant = _identity("SPIFFEID", name="web")
    assert entry_name(cluster, UID) == entry_name(_identity(name="web"), UID)
    names = {
        entry_name(cluster, UID),
        entry_name(cluster, "other-uid"),
        entry_name(tenant, UID),
        entry_name(_identity(name="api"), UID),
    }
    assert len(names) == 4


def test_long_identity_names_are_shortened_to_a_valid_unique_name() -> None:
    long_a = "a" * 150 + "." + "b" * 100
    long_b = "a" * 150 + "." + "c" * 100
    name_a = entry_name(_identity(name=long_a), UID)
    name_b = entry_name(_identity(name=long_b), UID)
    assert name_a != name_b
    for name in (name_a, name_b):
        assert len(name) <= MAX_NAME_LENGTH and DNS_1123.match(name)
    cut_on_dot = "a" * (MAX_NAME_LENGTH - 22) + ".b" * 20
    assert DNS_1123.match(entry_name(_identity(name=cut_on_dot), UID))


def test_long_label_values_are_hashed() -> None:
    assert label_value("web-0") == "web-0"
    assert label_value("x" * 63) == "x" * 63
    long_one = label_value("p" * 62 + "-" + "q" * 10)
    assert len(long_one) <= 63 and LABEL_VALUE.match(long_one)
    assert long_one != label_value("p" * 62 + "-" + "r" * 10)
    assert label_value("y" * 100) == label_value("y" * 100)


def test_long_pod_node_and_identity_names_still_give_valid_labels() -> None:
    pod = _pod(name="p" * 200, node="n" * 200)
    node = {"metadata": {"name": "n" * 200, "uid": "n-uid"}}
    entry = _entry(_identity(name="i" * 200), pod, node=node)
    assert entry.labels["herald.dev/pod"] == label_value("p" * 200)
    assert entry.labels["herald.dev/node"] == label_value("n" * 200)
    assert entry.labels["herald.dev/source-name"] == label_value("i" * 200)
    assert entry.spec["nodeName"] == "n" * 200
    assert entry.owner["name"] == "p" * 200
