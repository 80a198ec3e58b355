"""Reading ClusterSPIFFEID and SPIFFEID objects: every field, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from herald_core.spiffeid import TrustDomain
from herald_operator.identities import (
    Identity,
    IdentityError,
    class_matches,
    parse_identity,
)
from herald_operator.templates import TemplateError


def _obj(kind: str = "ClusterSPIFFEID", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "web",
        "uid": "id-uid",
        "generation": 3,
        "creationTimestamp": "2026-01-02T03:04:05Z",
    }
    if kind == "SPIFFEID":
        meta["namespace"] = "shop"
    spec.setdefault("spiffeIDTemplate", "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/x")
    return {"apiVersion": "herald.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def _error(obj: dict[str, Any]) -> str:
    with pytest.raises(IdentityError) as info:
        parse_identity(obj)
    return str(info.value)


def test_a_minimal_identity_has_the_defaults() -> None:
    identity = parse_identity(_obj())
    assert (identity.kind, identity.name, identity.namespace) == ("ClusterSPIFFEID", "web", None)
    assert (identity.uid, identity.generation) == ("id-uid", 3)
    assert identity.created == "2026-01-02T03:04:05Z"
    assert identity.pod_selector.is_everything and identity.namespace_selector.is_everything
    assert identity.workload_selector_templates == identity.dns_name_templates == ()
    assert (identity.x509_svid_ttl, identity.jwt_svid_ttl) == (0, 0)
    assert not (identity.admin or identity.downstream or identity.fallback)
    assert not identity.auto_populate_dns_names
    assert (identity.class_name, identity.hint, identity.federates_with) == ("", "", ())
    assert identity.key == ("ClusterSPIFFEID", "", "web")
    assert identity.label == "ClusterSPIFFEID web"


def test_every_field_is_read() -> None:
    identity = parse_identity(
        _obj(
            podSelector={"matchLabels": {"app": "web"}},
            namespaceSelector={"matchExpressions": [{"key": "mesh", "operator": "Exists"}]},
            workloadSelectorTemplates=[
                "k8s:container-name:envoy",
                "k8s:ns:{{ .PodMeta.Namespace }}",
            ],
            dnsNameTemplates=["{{ .PodMeta.Name }}.example.org", "static.example.org"],
            autoPopulateDNSNames=True,
            ttl="1h30m",
            jwtTtl="300",
            federatesWith=["partner.example", "spiffe://other.example"],
            hint="envoy",
            admin=True,
            downstream=True,
            fallback=True,
            className="herald",
        )
    )
    assert identity.pod_selector.matches({"app": "web"})
    assert not identity.pod_selector.matches({"app": "api"})
    assert identity.namespace_selector.matches({"mesh": ""})
    assert not identity.namespace_selector.matches({})
    assert [t.text for t in identity.workload_selector_templates] == [
        "k8s:container-name:envoy",
        "k8s:ns:{{ .PodMeta.Namespace }}",
    ]
    assert len(identity.dns_name_templates) == 2
    assert (identity.x509_svid_ttl, identity.jwt_svid_ttl) == (5400, 300)
    assert identity.federates_with == (TrustDomain("partner.example"), TrustDomain("other.example"))
    assert (identity.hint, identity.class_name) == ("envoy", "herald")
    assert identity.admin and identity.downstream and identity.fallback
    assert identity.auto_populate_dns_names


def test_go_duration_form_is_accepted() -> None:
    assert parse_identity(_obj(ttl="1h0m0s")).x509_svid_ttl == 3600


def test_a_spiffeid_is_namespaced() -> None:
    identity = parse_identity(_obj("SPIFFEID"))
    assert identity.namespace == "shop"
    assert identity.key == ("SPIFFEID", "shop", "web")
    assert identity.label == "SPIFFEID shop/web"


def test_template_names_carry_the_object_and_field() -> None:
    identity = parse_identity(_obj(workloadSelectorTemplates=["k8s:ns:{{ .PodMeta.Namespace }}"]))
    assert identity.spiffe_id_template.name == "ClusterSPIFFEID web: spiffeIDTemplate"
    assert identity.workload_selector_templates[0].name == (
        "ClusterSPIFFEID web: workloadSelectorTemplates[0]"
    )


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        (
            "ClusterSPIFFEID",
            {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Nmae }}"},
            "ClusterSPIFFEID web: spiffeIDTemplate: unknown field .PodMeta.Nmae at column 32",
        ),
        (
            "SPIFFEID",
            {"dnsNameTemplates": ["ok.example.org", "{{ .PodMeta.Name | lower }}"]},
            "SPIFFEID shop/web: dnsNameTemplates[1]: pipelines not supported",
        ),
        (
            "ClusterSPIFFEID",
            {"workloadSelectorTemplates": ["k8s:ns:{{ .Pod.Name }}"]},
            "workloadSelectorTemplates[0]: unknown field .Pod.Name",
        ),
    ],
)
def test_an_invalid_template_names_the_template(
    kind: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(IdentityError) as info:
        parse_identity(_obj(kind, **spec))
    assert str(info.value).startswith(f"{kind} ")
    assert message in str(info.value)
    assert str(info.value).count(kind) == 1
    assert isinstance(info.value.__cause__, TemplateError)


def test_the_documented_template_error_is_the_real_one() -> None:
    message = _error(_obj(spiffeIDTemplate="spiffe://{{ .TrustDomain }}/{{ .PodMeta.Nmae }}"))
    assert message.startswith(
        "ClusterSPIFFEID web: spiffeIDTemplate: unknown field .PodMeta.Nmae at column 32; "
        "known: .TrustDomain, "
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"spiffeIDTemplate": ""}, "spec.spiffeIDTemplate: required"),
        ({"spiffeIDTemplate": "https://x/{{ .PodMeta.Name }}"}, "must start with spiffe://"),
        ({"spiffeIDTemplate": 7}, "spec.spiffeIDTemplate: expected a string"),
        ({"podSelector": {"matchLabels": {"app": ["web"]}}}, "spec.podSelector.matchLabels['app']"),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
            "spec.namespaceSelector.matchExpressions[0].operator: 'Is' is not one of",
        ),
        ({"workloadSelectorTemplates": ["k8s:namespace:x"]}, "workloadSelectorTemplates[0]: unkn"),
        ({"workloadSelectorTemplates": "k8s:ns:x"}, "spec.workloadSelectorTemplates: expected a"),
        ({"dnsNameTemplates": ["Bad_Name.example"]}, "spec.dnsNameTemplates[0]: dnsNames: 'Bad"),
        ({"ttl": "an hour"}, "spec.ttl: cannot read duration 'an hour'"),
        ({"ttl": 3600}, "spec.ttl: expected a string"),
        ({"jwtTtl": "1.5s"}, "spec.jwtTtl: must be whole seconds"),
        ({"ttl": "367d"}, "spec.ttl: at most 31622400 seconds"),
        ({"ttl": "99999999999999999999"}, "spec.ttl: duration '99999999999999999999' is longer"),
        ({"jwtTtl": "99999999999999999999s"}, "spec.jwtTtl: duration '99999999999999999999s'"),
        ({"federatesWith": ["partner.example", "partner.example"]}, "partner.example is listed"),
        ({"federatesWith": ["PARTNER.example"]}, "trust domain must be lowercase; found 'P'"),
        ({"federatesWith": ["spiffe://a.example/path"]}, "spec.federatesWith: 'spiffe://a.ex"),
        ({"hint": "x" * 1025}, "spec.hint: at most 1024 bytes"),
        ({"admin": "yes"}, "spec.admin: expected a boolean, got 'yes'"),
        ({"fallback": 1}, "spec.fallback: expected a boolean"),
        ({"className": ["a"]}, "spec.className: expected a string"),
        ({"podSelectr": {}}, "ClusterSPIFFEID web: spec.podSelectr: unknown field"),
    ],
)
def test_invalid_fields_are_named(spec: dict[str, Any], message: str) -> None:
    assert message in _error(_obj(**spec))


def test_a_spiffeid_may_not_select_namespaces() -> None:
    message = _error(_obj("SPIFFEID", namespaceSelector={}))
    assert message.startswith("SPIFFEID shop/web: spec.namespaceSelector: not allowed")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"kind": "Pod", "metadata": {"name": "x"}, "spec": {}}, "kind: expected ClusterSPIFFEID"),
        ({"kind": "ClusterSPIFFEID", "metadata": {}, "spec": {}}, "metadata.name: required"),
        ({"kind": "SPIFFEID", "metadata": {"name": "x"}, "spec": {}}, "metadata.namespace: requ"),
        ({"kind": "ClusterSPIFFEID", "metadata": {"name": "x"}}, "spec: missing or not an obj"),
    ],
)
def test_malformed_objects_are_refused(obj: dict[str, Any], message: str) -> None:
    assert message in _error(obj)


@pytest.mark.parametrize(
    ("object_class", "operator_class", "watch_classless", "expected"),
    [
        ("", "", False, True),
        ("herald", "herald", False, True),
        ("other", "herald", False, False),
        ("herald", "", False, False),
        ("", "herald", False, False),
        ("", "herald", True, True),
        ("other", "herald", True, False),
    ],
)
def test_class_matches_follows_spire_controller_manager(
    object_class: str, operator_class: str, watch_classless: bool, expected: bool
) -> None:
    assert class_matches(object_class, operator_class, watch_classless=watch_classless) is expected


def test_identity_is_a_value() -> None:
    assert parse_identity(_obj()) == parse_identity(_obj())
    assert isinstance(parse_identity(_obj()), Identity)
