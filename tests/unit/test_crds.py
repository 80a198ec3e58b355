"""The CRDs in the Helm chart: well-formed, structural, documented, and validating what they should.

Every ```yaml example in docs/crds.md must validate against its kind's CRD schema, and the
WorkloadEntry/ClusterStaticEntry examples must also be readable by herald-server.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from herald_core.spiffeid import TrustDomain
from herald_operator import crds
from herald_operator.crds import API_VERSION, KINDS, CrdError, load_crds, schema_nodes, validate
from herald_server import k8s_entries
from tests.kube_emulator import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "helm" / "herald" / "files" / "crds"
DOCS = ROOT / "docs" / "crds.md"
TRUST_DOMAIN = TrustDomain("example.org")
IDENTITY_KINDS = ("ClusterSPIFFEID", "SPIFFEID")
Obj = dict[str, Any]


def _schema(kind: str) -> Obj:
    return dict(load_crds()[kind].schema)


def _docs_examples() -> list[Obj]:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", DOCS.read_text(), flags=re.M | re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc is not None]


def _name(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- the CRD files ---------------------------------------------------------------------------


def test_default_directory_is_the_charts_one_file_per_kind() -> None:
    assert crds.SOURCE_CRD_DIR == CRD_DIR
    names = sorted(p.name for p in CRD_DIR.glob("herald.dev_*.yaml"))
    assert names == sorted(f"herald.dev_{crd.plural}.yaml" for crd in load_crds().values())
    assert len(names) == len(KINDS)


@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("herald.dev_*.yaml")), ids=lambda p: p.name)
def test_crd_is_a_valid_kubernetes_object(path: Path) -> None:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    # Kubernetes 1.32's own schema for CustomResourceDefinition, strict: a misspelt key such as
    # x-kubernetes-validation or additionalPrinterColumn fails here.
    kubernetes_validate.validate(doc, "1.32.0", strict=True)
    version = doc["spec"]["versions"][0]
    assert doc["spec"]["group"] == "herald.dev"
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.herald.dev"


@pytest.mark.parametrize("kind", KINDS)
def test_names_and_scope_match_the_emulator(kind: str) -> None:
    crd = load_crds()[kind]
    resource = RESOURCES[f"herald.dev/v1alpha1/{crd.plural}"]
    assert resource.kind == kind
    assert resource.namespaced == crd.namespaced
    assert crd.namespaced == (kind in ("SPIFFEID", "WorkloadEntry"))


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural_and_described(kind: str) -> None:
    schema = _schema(kind)
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in schema_nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert node.get("type") in ("object", "array", "string", "integer", "boolean"), path
            assert "anyOf" not in node, path
        if "properties" in node:
            assert node["type"] == "object", path
            # Structural schemas forbid properties and additionalProperties on one object.
            assert "additionalProperties" not in node, path
        if node.get("type") == "object" and path != ".metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path
        if node.get("type") == "array":
            assert "items" in node, path
        described = path.count(".") >= 1 and not path.endswith(("[]", ".*"))
        if described and path != ".metadata":
            assert node.get("description"), f"{kind}{path} has no description"
        for field in node.get("required", []):
            assert field in node["properties"], f"{kind}{path} requires unknown {field}"


@pytest.mark.parametrize("kind", KINDS)
def test_status_has_conditions_and_counters(kind: str) -> None:
    status = _schema(kind)["properties"]["status"]["properties"]
    condition = status["conditions"]["items"]
    assert set(condition["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(condition["required"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    }
    assert status["observedGeneration"]["type"] == "integer"
    counters = {"podsSelected", "entriesCreated", "renderFailures", "entriesMasked"}
    if kind in IDENTITY_KINDS:
        assert counters <= set(status)
        assert all(status[c]["type"] == "integer" for c in counters)


def _columns(kind: str) -> dict[str, str]:
    version = load_crds()[kind].definition["spec"]["versions"][0]
    return {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    schema = _schema(kind)
    for name, path in _columns(kind).items():
        top, _, rest = path.lstrip(".").partition(".")
        if top == "metadata":
            continue
        field = re.match(r"[A-Za-z]+", rest)
        assert field, path
        assert field.group() in schema["properties"][top]["properties"], f"{kind} column {name}"


def test_printer_columns_say_what_the_design_asks() -> None:
    ready = '.status.conditions[?(@.type=="Ready")].status'
    for kind in IDENTITY_KINDS:
        columns = _columns(kind)
        assert columns["SPIFFE ID Template"] == ".spec.spiffeIDTemplate"
        assert columns["Pods"] == ".status.podsSelected"
        assert columns["Ready"] == ready
        assert columns["Age"] == ".metadata.creationTimestamp"
    columns = _columns("WorkloadEntry")
    assert columns["SPIFFE ID"] == ".spec.spiffeID"
    assert columns["Node"] == ".spec.nodeName"
    assert columns["Pod"] == ".metadata.labels.herald\\.dev/pod"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_cluster_spiffeid_has_spire_controller_managers_fields() -> None:
    fields = set(_schema("ClusterSPIFFEID")["properties"]["spec"]["properties"])
    assert fields == {
        "spiffeIDTemplate",
        "podSelector",
        "namespaceSelector",
        "workloadSelectorTemplates",
        "dnsNameTemplates",
        "autoPopulateDNSNames",
        "ttl",
        "jwtTtl",
        "federatesWith",
        "hint",
        "admin",
        "downstream",
        "fallback",
        "className",
    }
    selector = _schema("ClusterSPIFFEID")["properties"]["spec"]["properties"]["podSelector"]
    assert set(selector["properties"]) == {"matchLabels", "matchExpressions"}


def test_entry_kinds_have_the_fields_the_server_reads() -> None:
    read = {
        "spiffeID",
        "nodeName",
        "selectors",
        "x509SVIDTTL",
        "jwtSVIDTTL",
        "dnsNames",
        "federatesWith",
        "hint",
        "admin",
        "downstream",
    }
    assert set(_schema("WorkloadEntry")["properties"]["spec"]["properties"]) == read
    static = set(_schema("ClusterStaticEntry")["properties"]["spec"]["properties"])
    assert static == (read - {"nodeName"}) | {"parentID", "className"}


# --- loading ---------------------------------------------------------------------------------


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CrdError, match="no CRD directory"):
        load_crds(tmp_path / "nope")


def test_missing_kind_is_an_error(tmp_path: Path) -> None:
    for path in CRD_DIR.glob("herald.dev_*.yaml"):
        if "workloadentries" not in path.name:
            (tmp_path / path.name).write_text(path.read_text())
    with pytest.raises(CrdError, match="no CRD for WorkloadEntry"):
        load_crds(tmp_path)


def test_cel_rule_without_python_twin_refuses_to_load(tmp_path: Path) -> None:
    for path in CRD_DIR.glob("herald.dev_*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    target = tmp_path / "herald.dev_spiffeids.yaml"
    text = target.read_text()
    assert "!has(self.namespaceSelector)" in text
    target.write_text(text.replace("!has(self.namespaceSelector)", "!has(self.podSelector)"))
    with pytest.raises(CrdError, match=r"CEL rules without a Python equivalent.*podSelector"):
        load_crds(tmp_path)


def test_every_cel_rule_in_the_crds_has_a_twin() -> None:
    rules = {
        rule["rule"]
        for crd in load_crds().values()
        for _, node in schema_nodes(crd.schema)
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert rules == set(crds._CEL_RULES)


def test_unknown_kind() -> None:
    with pytest.raises(CrdError, match="unknown kind 'SpiffeID'"):
        validate("SpiffeID", {})


# --- the docs' examples ----------------------------------------------------------------------


def test_docs_have_an_example_of_every_kind() -> None:
    assert {obj["kind"] for obj in _docs_examples()} == set(KINDS)


@pytest.mark.parametrize("example", _docs_examples(), ids=_name)
def test_docs_example_validates(example: Obj) -> None:
    assert example["kind"] in KINDS, f"{_name(example)}: not a herald kind"
    assert validate(example["kind"], example) == []


@pytest.mark.parametrize(
    "example",
    [e for e in _docs_examples() if e["kind"] in ("WorkloadEntry", "ClusterStaticEntry")],
    ids=_name,
)
def test_docs_entry_examples_are_readable_by_the_server(example: Obj) -> None:
    _server_reads(example)


@pytest.mark.parametrize("kind", KINDS)
def test_docs_mention_every_spec_field(kind: str) -> None:
    text = DOCS.read_text()
    for path, _ in schema_nodes(_schema(kind)["properties"]["spec"]):
        name = path.rpartition(".")[2]
        if name and not path.endswith(("[]", ".*")) and "Expressions[]" not in path:
            assert f"`{name}" in text, f"{kind}: spec{path} is not documented"


# --- migration from spire-controller-manager -------------------------------------------------

SPIRE_CONTROLLER_MANAGER_MANIFEST = """
apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: istio-sidecars
spec:
  className: spire-system-spire
  spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
  podSelector:
    matchLabels:
      security.istio.io/tlsMode: istio
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: [spire-system, kube-system]
  workloadSelectorTemplates:
    - "k8s:ns:{{ .PodMeta.Namespace }}"
    - "k8s:sa:{{ .PodSpec.ServiceAccountName }}"
  dnsNameTemplates:
    - "{{ index .PodMeta.Labels \\"app\\" }}.{{ .PodMeta.Namespace }}.svc.cluster.local"
  autoPopulateDNSNames: true
  ttl: 1h0m0s
  jwtTtl: 5m
  federatesWith:
    - partner.example
    - spiffe://other.example
  hint: istio
  admin: false
  downstream: false
  fallback: false
"""  # noqa: E501 (the manifest as its users write it)


def test_spire_controller_manager_manifest_migrates_by_changing_api_version() -> None:
    manifest = yaml.safe_load(SPIRE_CONTROLLER_MANAGER_MANIFEST)
    assert validate("ClusterSPIFFEID", manifest) == [
        "apiVersion: expected herald.dev/v1alpha1, got 'spire.spiffe.io/v1alpha1'"
    ]
    manifest["apiVersion"] = "herald.dev/v1alpha1"
    assert validate("ClusterSPIFFEID", manifest) == []


# --- invalid objects are refused, naming the field -------------------------------------------


def _identity(**spec: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": "web"},
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/web", **spec},
    }


# Each an identity change and the start of the error naming its field; the real API server
# refuses the same objects naming the same fields (tests/integration/test_crds_api.py).
INVALID_IDENTITY_CHANGES: list[tuple[Obj, str]] = [
    ({"podSelectr": {}}, "spec.podSelectr: unknown field"),
    ({"ttl": "1 hour"}, "spec.ttl: '1 hour' does not match"),
    ({"ttl": "1h30"}, "spec.ttl: '1h30' does not match"),
    ({"jwtTtl": "5min"}, "spec.jwtTtl: '5min' does not match"),
    ({"ttl": 3600}, "spec.ttl: 3600 is not of type 'string'"),
    ({"workloadSelectorTemplates": ["k8s"]}, "spec.workloadSelectorTemplates[0]: 'k8s'"),
    ({"workloadSelectorTemplates": ["K8s:ns:x"]}, "spec.workloadSelectorTemplates[0]"),
    ({"spiffeIDTemplate": "http://x/y"}, "spec.spiffeIDTemplate: 'http://x/y' does not"),
    ({"federatesWith": ["a.org", "a.org"]}, "spec.federatesWith: duplicate item 'a.org'"),
    ({"federatesWith": ["Bad Domain"]}, "spec.federatesWith[0]"),
    ({"admin": "yes"}, "spec.admin: 'yes' is not of type 'boolean'"),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        "spec.podSelector.matchExpressions[0]: values must be non-empty for In and NotIn",
    ),
    (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        "spec.podSelector.matchExpressions[0]: values must be non-empty",
    ),
    (
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}},
        "spec.namespaceSelector.matchExpressions[0].operator: 'Equals' is not one of",
    ),
    ({"namespaceSelector": {"matchLabel": {"a": "b"}}}, "spec.namespaceSelector.matchLabel"),
]


@pytest.mark.parametrize(("change", "error"), INVALID_IDENTITY_CHANGES)
def test_invalid_identity_is_refused_naming_the_field(change: Obj, error: str) -> None:
    errors = validate("ClusterSPIFFEID", _identity(**change))
    assert any(e.startswith(error) for e in errors), errors


def test_missing_spiffe_id_template_is_refused() -> None:
    obj = _identity()
    del obj["spec"]["spiffeIDTemplate"]
    assert validate("ClusterSPIFFEID", obj) == ["spec.spiffeIDTemplate: required"]


def test_missing_spec_and_name_are_refused() -> None:
    errors = validate("ClusterSPIFFEID", {"apiVersion": API_VERSION, "kind": "ClusterSPIFFEID"})
    assert errors == ["metadata.name: required", "spec: required"]
    assert validate("SPIFFEID", _identity()) == ["kind: expected SPIFFEID, got 'ClusterSPIFFEID'"]


def test_spiffeid_refuses_namespace_selector() -> None:
    obj = _identity(namespaceSelector={"matchLabels": {"a": "b"}})
    obj["kind"] = "SPIFFEID"
    obj["metadata"]["namespace"] = "shop"
    errors = validate("SPIFFEID", obj)
    assert errors == [
        "spec.namespaceSelector: a SPIFFEID selects pods only in its own namespace; "
        "use a ClusterSPIFFEID for namespaceSelector"
    ]
    del obj["spec"]["namespaceSelector"]
    assert validate("SPIFFEID", obj) == []


def test_status_is_checked_too() -> None:
    condition = {
        "type": "Ready",
        "status": "Maybe",
        "reason": "Reconciled",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    obj = _identity()
    obj["status"] = {"conditions": [condition, {**condition, "status": "True"}], "podsSelected": -1}
    errors = validate("ClusterSPIFFEID", obj)
    assert "status.conditions: two items with the same type: ('Ready',)" in errors
    assert any(e.startswith("status.conditions[0].status: 'Maybe' is not one of") for e in errors)
    assert any(e.startswith("status.podsSelected: -1 is less than") for e in errors)


def _federation(**profile: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterFederatedTrustDomain",
        "metadata": {"name": "partner"},
        "spec": {
            "trustDomain": "partner.example",
            "bundleEndpointURL": "https://partner.example/bundle",
            "bundleEndpointProfile": profile,
        },
    }


def test_bundle_endpoint_profile_fields_are_mutually_dependent() -> None:
    message = (
        "spec.bundleEndpointProfile.endpointSPIFFEID: endpointSPIFFEID is required for type "
        "https_spiffe and not allowed for type https_web"
    )
    assert validate("ClusterFederatedTrustDomain", _federation(type="https_spiffe")) == [message]
    web_with_id = _federation(type="https_web", endpointSPIFFEID="spiffe://partner.example/s")
    assert validate("ClusterFederatedTrustDomain", web_with_id) == [message]
    good = _federation(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/s")
    assert validate("ClusterFederatedTrustDomain", good) == []
    bad = _federation(type="https")
    assert any("type: 'https' is not one of" in e for e in validate(bad["kind"], bad))
    plain = _federation(type="https_web")
    plain["spec"]["bundleEndpointURL"] = "http://user@partner.example"
    assert validate(plain["kind"], plain)[0].startswith("spec.bundleEndpointURL:")


# --- WorkloadEntry and ClusterStaticEntry: what the schema accepts, the server reads ------------


def _workload(**spec: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkloadEntry",
        "metadata": {"name": "web-0.web", "namespace": "shop", "generation": 1},
        "spec": {
            "spiffeID": "spiffe://example.org/ns/shop/sa/web",
            "nodeName": "node-a",
            "selectors": ["k8s:pod-uid:0b5c3c1e-uid"],
            **spec,
        },
    }


def _server_reads(obj: Obj) -> None:
    if obj["kind"] == "WorkloadEntry":
        k8s_entries._read_workload(obj, TRUST_DOMAIN)
    else:
        k8s_entries._read_static(obj, TRUST_DOMAIN)


VALID_ENTRY_SPECS: list[Obj] = [
    {},
    {"x509SVIDTTL": 3600, "jwtSVIDTTL": 300},
    {"x509SVIDTTL": "1h", "jwtSVIDTTL": "5m"},
    {"x509SVIDTTL": "1h30m", "jwtSVIDTTL": "3600"},
    {"x509SVIDTTL": 0},
    {"dnsNames": ["web.shop.svc.cluster.local", "*.web.example.org"]},
    {"federatesWith": ["partner.example", "spiffe://other.example"]},
    {"hint": "web", "admin": True, "downstream": False},
    {"selectors": ["k8s:pod-uid:0b5c3c1e-uid", "k8s:container-name:app", "unix:uid:1000"]},
    {"selectors": ["k8s:pod-label:app.kubernetes.io/name:web"]},
]


@pytest.mark.parametrize("spec", VALID_ENTRY_SPECS)
def test_workload_entry_shapes_the_server_reads_are_accepted(spec: Obj) -> None:
    obj = _workload(**spec)
    assert validate("WorkloadEntry", obj) == []
    _server_reads(obj)


INVALID_ENTRY_SPECS: list[tuple[Obj, str]] = [
    ({"x509SVIDTTL": "1 hour"}, "spec.x509SVIDTTL: '1 hour' does not match"),
    ({"jwtSVIDTTL": -5}, "spec.jwtSVIDTTL: -5 is less than the minimum of 0"),
    ({"x509SVIDTTL": True}, "spec.x509SVIDTTL: expected an integer or a string, got True"),
    ({"selectors": []}, "spec.selectors: [] should be non-empty"),
    ({"selectors": ["pod-uid"]}, "spec.selectors[0]: 'pod-uid' does not match"),
    ({"spiffeID": "example.org/web"}, "spec.spiffeID: 'example.org/web' does not match"),
    ({"dnsNames": ["Web.Example.org"]}, "spec.dnsNames[0]: 'Web.Example.org' does not"),
    ({"nodeName": ""}, "spec.nodeName: '' should be non-empty"),
    ({"node": "node-a"}, "spec.node: unknown field"),
]


@pytest.mark.parametrize(("spec", "error"), INVALID_ENTRY_SPECS)
def test_invalid_workload_entry_is_refused_by_schema_and_server(spec: Obj, error: str) -> None:
    obj = _workload(**spec)
    errors = validate("WorkloadEntry", obj)
    assert any(e.startswith(error) for e in errors), errors
    if "unknown field" not in error:  # the server ignores fields it does not read
        with pytest.raises(k8s_entries.InvalidObjectError):
            _server_reads(obj)


def test_duplicate_selectors_are_refused_though_the_server_would_merge_them() -> None:
    # The server keeps selectors as a set; a duplicate in the object is a mistake worth showing.
    errors = validate("WorkloadEntry", _workload(selectors=["k8s:ns:a", "k8s:ns:a"]))
    assert errors == ["spec.selectors: duplicate item 'k8s:ns:a'"]


def test_workload_entry_requires_what_the_server_requires() -> None:
    for field in ("spiffeID", "nodeName", "selectors"):
        obj = _workload()
        del obj["spec"][field]
        assert validate("WorkloadEntry", obj) == [f"spec.{field}: required"]
        with pytest.raises(k8s_entries.InvalidObjectError):
            _server_reads(obj)


def test_static_entry_requires_parent_id() -> None:
    obj = copy.deepcopy(_workload())
    obj["kind"] = "ClusterStaticEntry"
    obj["metadata"] = {"name": "vm"}
    del obj["spec"]["nodeName"]
    assert validate("ClusterStaticEntry", obj) == ["spec.parentID: required"]
    obj["spec"]["parentID"] = "spiffe://example.org/herald/agent/join_token/abc"
    assert validate("ClusterStaticEntry", obj) == []
    _server_reads(obj)
