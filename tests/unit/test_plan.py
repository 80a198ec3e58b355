"""Across identities for one pod (className, fallback, masking), and diffing against the API."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from herald_operator.crds import validate
from herald_operator.identities import Identity, parse_identity
from herald_operator.plan import diff, precedence, resolve
from herald_operator.render import DesiredEntry, RenderResult, render_for_pod

UID = "0b5c3c1e-uid"
SA_ID = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)
POD = {
    "metadata": {"name": "web-0", "namespace": "shop", "uid": UID, "labels": {"app": "web"}},
    "spec": {"nodeName": "node-a", "serviceAccountName": "web-sa"},
    "status": {"phase": "Running"},
}
NAMESPACE = {"metadata": {"name": "shop", "labels": {"mesh": "on"}}}
NODE = {"metadata": {"name": "node-a", "uid": "node-uid"}}


def _identity(
    name: str,
    kind: str = "ClusterSPIFFEID",
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> Identity:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if kind == "SPIFFEID":
        meta["namespace"] = "shop"
    spec.setdefault("spiffeIDTemplate", SA_ID)
    return parse_identity({"kind": kind, "metadata": meta, "spec": spec})


def _render(identity: Identity, pod: dict[str, Any] = POD) -> RenderResult:
    return render_for_pod(
        identity,
        pod,
        NAMESPACE,
        NODE,
        trust_domain="example.org",
        cluster_name="prod",
        cluster_domain="cluster.local",
    )


def _sources(entries: list[DesiredEntry]) -> list[str]:
    for entry in entries:
        assert validate("WorkloadEntry", entry.to_object()) == []
    return [entry.source.name for entry in entries]


def _resolve(*identities: Identity, class_name: str = "") -> tuple[list[str], list[str]]:
    winners, masked = resolve([_render(i) for i in identities], class_name=class_name)
    return _sources(winners), _sources(masked)


# --- masking -------------------------------------------------------------------------------


def test_distinct_entries_all_win() -> None:
    other = _identity("b", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/other")
    extra = _identity("c", workloadSelectorTemplates=["k8s:container-name:web"])
    assert _resolve(_identity("a"), other, extra) == (["a", "b", "c"], [])


def test_duplicates_are_masked_oldest_first() -> None:
    young = _identity("a", created="2026-03-01T00:00:00Z")
    old = _identity("z", created="2025-03-01T00:00:00Z")
    assert _resolve(young, old) == (["z"], ["a"])
    assert _resolve(old, young) == (["z"], ["a"])


def test_duplicates_of_the_same_age_are_decided_by_name() -> None:
    assert _resolve(_identity("b"), _identity("a"), _identity("c")) == (["a"], ["b", "c"])


def test_a_cluster_spiffeid_outranks_an_older_spiffeid() -> None:
    tenant = _identity("a", "SPIFFEID", created="2020-01-01T00:00:00Z")
    cluster = _identity("z", created="2026-01-01T00:00:00Z")
    winners, masked = resolve([_render(tenant), _render(cluster)])
    assert [(e.source.kind, e.source.name) for e in winners] == [("ClusterSPIFFEID", "z")]
    assert [(e.source.kind, e.source.name) for e in masked] == [("SPIFFEID", "a")]


def test_selector_order_does_not_make_entries_distinct() -> None:
    one = _identity("a", workloadSelectorTemplates=["k8s:ns:shop", "k8s:sa:web-sa"])
    two = _identity("b", workloadSelectorTemplates=["k8s:sa:web-sa", "k8s:ns:shop"])
    assert _resolve(one, two) == (["a"], ["b"])


def test_duplicates_differing_only_in_ttl_are_still_masked() -> None:
    assert _resolve(_identity("a", ttl="1h"), _identity("b", ttl="2h")) == (["a"], ["b"])


def test_an_unknown_creation_time_sorts_last() -> None:
    assert precedence(_identity("a", created="")) > precedence(_identity("b"))


# --- fallback ------------------------------------------------------------------------------


def test_a_fallback_applies_when_nothing_else_selects_the_pod() -> None:
    fallback = _identity("fb", fallback=True, spiffeIDTemplate="spiffe://{{ .TrustDomain }}/fb")
    elsewhere = _identity("api", podSelector={"matchLabels": {"app": "api"}})
    assert _resolve(fallback, elsewhere) == (["fb"], [])


def test_a_fallback_yields_to_a_selecting_identity() -> None:
    fallback = _identity("fb", fallback=True, spiffeIDTemplate="spiffe://{{ .TrustDomain }}/fb")
    assert _resolve(fallback, _identity("web")) == (["web"], [])


def test_a_failing_non_fallback_still_keeps_the_fallback_away() -> None:
    broken = _identity("broken", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/herald/x")
    assert _render(broken).failure is not None
    fallback = _identity("fb", fallback=True, spiffeIDTemplate="spiffe://{{ .TrustDomain }}/fb")
    assert _resolve(fallback, broken) == ([], [])


def test_several_fallbacks_apply_together_and_mask_each_other() -> None:
    one = _identity("fb1", fallback=True)
    two = _identity("fb2", fallback=True)
    other = _identity("fb3", fallback=True, spiffeIDTemplate="spiffe://{{ .TrustDomain }}/fb")
    assert _resolve(one, two, other) == (["fb1", "fb3"], ["fb2"])


# --- className -----------------------------------------------------------------------------


def test_identities_of_another_class_are_ignored() -> None:
    ours = _identity("ours", className="herald", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/o")
    theirs = _identity("theirs", className="other")
    classless = _identity("classless", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/c")
    assert _resolve(ours, theirs, classless, class_name="herald") == (["ours"], [])
    assert _resolve(ours, theirs, classless) == (["classless"], [])


def test_watching_classless_objects_includes_them() -> None:
    classless = _identity("classless")
    theirs = _identity("theirs", className="other", spiffeIDTemplate="spiffe://x.org/y")
    winners, _ = resolve(
        [_render(classless), _render(theirs)], class_name="herald", watch_classless=True
    )
    assert _sources(winners) == ["classless"]


def test_an_ignored_identity_does_not_keep_a_fallback_away() -> None:
    fallback = _identity("fb", fallback=True, className="herald")
    theirs = _identity("theirs", className="other", spiffeIDTemplate="spiffe://x.org/y")
    assert _resolve(fallback, theirs, class_name="herald") == (["fb"], [])


# --- diff ----------------------------------------------------------------------------------


def _as_stored(entry: DesiredEntry) -> dict[str, Any]:
    """The object as the API returns it after a create: with server-populated metadata."""
    obj = entry.to_object()
    obj["metadata"].update(
        resourceVersion="4711",
        uid="we-uid",
        generation=1,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "herald-operator"}],
    )
    obj["metadata"]["labels"]["team"] = "added-by-someone"
    obj["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = True
    obj["status"] = {"observedGeneration": 1}
    return obj


def _desired(**spec: Any) -> DesiredEntry:
    entry = _render(_identity("web", **spec)).entry
    assert entry is not None
    return entry


def test_nothing_exists_so_everything_is_created() -> None:
    entry = _desired()
    assert diff([entry], []) == ([entry], [], [])


def test_no_change_means_no_call() -> None:
    entry = _desired(
        ttl="1h", dnsNameTemplates=["a.example.org", "b.example.org"], federatesWith=["p.example"]
    )
    assert diff([entry], [_as_stored(entry)]) == ([], [], [])


def test_reordered_sets_and_explicit_defaults_are_no_change() -> None:
    entry = _desired(workloadSelectorTemplates=["k8s:ns:shop"], dnsNameTemplates=["a.org", "b.org"])
    stored = _as_stored(entry)
    stored["spec"]["selectors"].reverse()
    stored["spec"]["dnsNames"].reverse()
    stored["spec"].update(admin=False, hint="", jwtSVIDTTL=0, federatesWith=[])
    assert diff([entry], [stored]) == ([], [], [])


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o["spec"].update(spiffeID="spiffe://example.org/edited"),
        lambda o: o["spec"].update(nodeName="node-b"),
        lambda o: o["spec"]["selectors"].append("k8s:ns:shop"),
        lambda o: o["spec"].update(x509SVIDTTL=60),
        lambda o: o["spec"].update(x509SVIDTTL="1h"),
        lambda o: o["spec"].update(admin=True),
        lambda o: o["metadata"]["labels"].update({"herald.dev/node": "node-b"}),
        lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda o: o["metadata"]["ownerReferences"][0].update(uid="old-pod-uid"),
        lambda o: o["metadata"]["ownerReferences"][0].update(controller=False),
        lambda o: o["metadata"].pop("ownerReferences"),
    ],
)
def test_a_real_difference_is_an_update(edit: Any) -> None:
    entry = _desired(ttl="1h")
    stored = _as_stored(entry)
    edit(stored)
    assert diff([entry], [stored]) == ([], [entry], [])


def test_entries_no_longer_desired_are_deleted_unless_already_going() -> None:
    kept, gone = _desired(), _render(_identity("old")).entry
    assert gone is not None
    stored_gone = _as_stored(gone)
    going = copy.deepcopy(stored_gone)
    going["metadata"]["name"] = "cspiffeid-going-0123456789"
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    changes = diff([kept], [_as_stored(kept), stored_gone, going])
    assert changes.create == changes.update == []
    assert changes.delete == [stored_gone]


def test_the_same_name_in_another_namespace_is_another_object() -> None:
    entry = _desired()
    elsewhere = _as_stored(entry)
    elsewhere["metadata"]["namespace"] = "bank"
    assert diff([entry], [elsewhere]) == ([entry], [], [elsewhere])
