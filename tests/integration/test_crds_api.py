"""herald's CRDs installed in the real API server: what its schema and CEL rules refuse, and why.

The same objects as tests/unit/test_crds.py (which checks them with herald_operator.crds, the
Python reading of the schema) go to the API server with strict field validation, as kubectl
sends them. Every object the Python validator refuses the API server refuses too, with a 422
naming the same field (and, for a CEL rule, saying the rule's message); every shape the server
reads is admitted. So `herald_operator.crds.validate` can be trusted to say what the cluster will.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from herald_operator.crds import API_VERSION, validate
from tests.k8s.api import Kube, refusal
from tests.unit.test_crds import INVALID_ENTRY_SPECS, INVALID_IDENTITY_CHANGES, VALID_ENTRY_SPECS

Obj = dict[str, Any]
_names = itertools.count(1)


def _field(error: str) -> str:
    """The field path a Python validation error starts with (``spec.ttl: ...`` → ``spec.ttl``)."""
    return error.split(":", 1)[0]


def _refused(kube: Kube, obj: Obj) -> str:
    with pytest.raises(ApiException) as info:
        kube.create(obj)
    assert info.value.status in (400, 422), refusal(info.value)
    return refusal(info.value)


@pytest.fixture
def shop(kube: Kube) -> str:
    return kube.create_namespace(f"crds-{next(_names)}")


def _identity(kind: str = "ClusterSPIFFEID", namespace: str | None = None, **spec: Any) -> Obj:
    meta: Obj = {"name": f"id-{next(_names)}"}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": meta,
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/web", **spec},
    }


def _entry(namespace: str, **spec: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkloadEntry",
        "metadata": {"name": f"web-{next(_names)}", "namespace": namespace},
        "spec": {
            "spiffeID": "spiffe://example.org/ns/shop/sa/web",
            "nodeName": "node-a",
            "selectors": ["k8s:pod-uid:0b5c3c1e-uid"],
            **spec,
        },
    }


@pytest.mark.parametrize(("change", "error"), INVALID_IDENTITY_CHANGES, ids=lambda v: str(v)[:40])
def test_the_api_server_refuses_what_the_validator_refuses(
    kube: Kube, change: Obj, error: str
) -> None:
    obj = _identity(**copy.deepcopy(change))
    assert validate("ClusterSPIFFEID", obj), "the Python validator refuses it"
    message = _refused(kube, obj)
    assert _field(error) in message, message
    if "values must be non-empty" in error:  # a CEL rule: its own message is what users see
        assert "values must be non-empty for In and NotIn" in message, message


def test_a_tenant_identity_may_not_select_namespaces(kube: Kube, shop: str) -> None:
    obj = _identity("SPIFFEID", shop, namespaceSelector={"matchLabels": {"a": "b"}})
    message = _refused(kube, obj)
    assert "spec.namespaceSelector" in message
    assert "a SPIFFEID selects pods only in its own namespace" in message
    del obj["spec"]["namespaceSelector"]
    assert kube.create(obj)["metadata"]["uid"]


def test_bundle_endpoint_profile_rule(kube: Kube) -> None:
    def federation(**profile: Any) -> Obj:
        return {
            "apiVersion": API_VERSION,
            "kind": "ClusterFederatedTrustDomain",
            "metadata": {"name": f"partner-{next(_names)}"},
            "spec": {
                "trustDomain": "partner.example",
                "bundleEndpointURL": "https://partner.example/bundle",
                "bundleEndpointProfile": profile,
            },
        }

    rule = "endpointSPIFFEID is required for type https_spiffe and not allowed for type https_web"
    for bad in (
        federation(type="https_spiffe"),
        federation(type="https_web", endpointSPIFFEID="spiffe://partner.example/s"),
    ):
        message = _refused(kube, bad)
        assert rule in message and "spec.bundleEndpointProfile.endpointSPIFFEID" in message
    assert "Unsupported value" in _refused(kube, federation(type="https"))
    kube.create(federation(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/s"))


@pytest.mark.parametrize(("spec", "error"), INVALID_ENTRY_SPECS, ids=lambda v: str(v)[:40])
def test_invalid_workload_entries_are_refused(kube: Kube, shop: str, spec: Obj, error: str) -> None:
    message = _refused(kube, _entry(shop, **spec))
    assert _field(error) in message, message


@pytest.mark.parametrize("spec", VALID_ENTRY_SPECS, ids=lambda v: str(v)[:40])
def test_entry_shapes_the_server_reads_are_admitted(kube: Kube, shop: str, spec: Obj) -> None:
    created = kube.create(_entry(shop, **spec))
    assert created["spec"] == _entry(shop, **spec)["spec"], "stored as sent, nothing pruned"


def test_missing_required_fields_are_named(kube: Kube, shop: str) -> None:
    for field in ("spiffeID", "nodeName", "selectors"):
        obj = _entry(shop)
        del obj["spec"][field]
        message = _refused(kube, obj)
        assert f"spec.{field}: Required value" in message, message


def test_status_is_validated_through_the_status_subresource(kube: Kube) -> None:
    created = kube.create(_identity())
    name = created["metadata"]["name"]
    bad = {"status": {"podsSelected": -1}}
    with pytest.raises(ApiException) as info:
        kube.patch(API_VERSION, "ClusterSPIFFEID", name, None, bad, subresource="status")
    assert "status.podsSelected" in refusal(info.value)
    # A spec write cannot change the status (the status subresource is on).
    kube.patch(API_VERSION, "ClusterSPIFFEID", name, None, {"status": {"podsSelected": 5}})
    stored = kube.get(API_VERSION, "ClusterSPIFFEID", name)
    assert stored is not None and "status" not in stored
