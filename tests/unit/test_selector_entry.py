"""Selectors, the matching rule, entries and the entry index."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald_core.durations import DurationError, format_duration, parse_duration, parse_ttl
from herald_core.entry import Entry, EntryError, EntryIndex, check_dns_name
from herald_core.selector import Selector, SelectorError, matches, parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
NODE_A = SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/c1/node-a")
NODE_B = SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/c1/node-b")


def sel(*texts: str) -> frozenset[Selector]:
    return parse_selectors(texts)


def entry(
    entry_id: str,
    path: str,
    selectors: frozenset[Selector],
    parent: SpiffeId = NODE_A,
    **kw: object,
) -> Entry:
    return Entry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
        parent_id=parent,
        selectors=selectors,
        **kw,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kind", "value", "key"),
    [
        ("k8s:ns:payments", "k8s", "ns:payments", "ns"),
        ("k8s:pod-label:app:web", "k8s", "pod-label:app:web", "pod-label"),
        ("k8s:pod-label:tier:", "k8s", "pod-label:tier:", "pod-label"),
        ("k8s:pod-owner:ReplicaSet:web-7d9", "k8s", "pod-owner:ReplicaSet:web-7d9", "pod-owner"),
        (
            "k8s:container-image:docker.io/library/nginx:1.27",
            "k8s",
            "container-image:docker.io/library/nginx:1.27",
            "container-image",
        ),
        ("unix:uid:1000", "unix", "uid:1000", "uid"),
        ("unix:path:/usr/bin/python3", "unix", "path:/usr/bin/python3", "path"),
        ("unix:uid:0", "unix", "uid:0", "uid"),
        ("unix:gid:4294967294", "unix", "gid:4294967294", "gid"),
        ("unix:sha256:" + "0f" * 32, "unix", "sha256:" + "0f" * 32, "sha256"),
        ("unix:user:www-data", "unix", "user:www-data", "user"),
        ("k8s:pod-image-count:0", "k8s", "pod-image-count:0", "pod-image-count"),
    ],
)
def test_selector_parse(text: str, kind: str, value: str, key: str) -> None:
    selector = Selector.parse(text)
    assert (selector.type, selector.value, selector.key) == (kind, value, key)
    assert str(selector) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k8s", "form 'type:value'"),
        ("k8s:", "empty value"),
        (":ns:x", "selector type ''"),
        ("K8S:ns:x", "selector type 'K8S'"),
        ("docker:label:x", "unknown selector type 'docker'"),
        ("k8s:namespace:x", "unknown k8s selector key 'namespace'"),
        ("k8s:ns", "no value after"),
        ("k8s:ns:", "no value after"),
        ("k8s:pod-label:app", "'k8s:pod-label:<a>:<b>'"),
        ("k8s:pod-owner::x", "'k8s:pod-owner:<a>:<b>'"),
        ("unix:uid:1\n0", "control character"),
        ("unix:uid:abc", "a uid is a whole number from 0 to 4294967294"),
        ("unix:uid:-1", "a uid is a whole number"),
        ("unix:uid:+5", "a uid is a whole number"),
        ("unix:uid:007", "without sign or leading zeros"),
        ("unix:uid:4294967295", "from 0 to 4294967294"),
        ("unix:uid:99999999999999999999", "a uid is a whole number"),
        ("unix:uid:\u0661", "a uid is a whole number"),
        ("unix:gid:1.5", "a gid is a whole number"),
        ("unix:supplementary_gid:x", "a supplementary_gid is a whole number"),
        ("unix:sha256:abc", "a sha256 is 64 lowercase hexadecimal digits"),
        ("unix:sha256:" + "A" * 64, "a sha256 is 64 lowercase"),
        ("unix:sha256:" + "a" * 65, "a sha256 is 64"),
        ("unix:path:usr/bin/python3", "a path is absolute"),
        ("k8s:pod-image-count:two", "a count is a whole number"),
        ("k8s:pod-init-image-count:-1", "a count is a whole number"),
        ("unix:path:" + "x" * 1100, "longer than 1024"),
    ],
)
def test_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        Selector.parse(text)


def test_matching_rule() -> None:
    workload = sel("k8s:ns:payments", "k8s:sa:api", "k8s:pod-uid:123")
    assert matches(sel("k8s:ns:payments"), workload)
    assert matches(sel("k8s:ns:payments", "k8s:sa:api"), workload)
    assert not matches(sel("k8s:ns:payments", "k8s:sa:db"), workload)
    assert not matches(frozenset(), workload)


def test_entry_validation() -> None:
    ok = entry("e1", "/ns/payments/sa/api", sel("k8s:ns:payments"), dns_names=("api.svc", "*.x"))
    assert ok.matches(sel("k8s:ns:payments", "k8s:sa:api"))
    cases: list[tuple[dict[str, object], str]] = [
        ({"entry_id": "bad id"}, "id: .* contains"),
        ({"entry_id": ""}, "id: must be"),
        ({"path": ""}, "has no path"),
        ({"selectors": frozenset()}, "at least one selector"),
        ({"x509_svid_ttl": -1}, "x509SVIDTTL"),
        ({"jwt_svid_ttl": 10**9}, "jwtSVIDTTL"),
        ({"dns_names": ("Bad_Name",)}, "not a valid DNS name"),
        ({"dns_names": ("a.b", "a.b")}, "duplicate"),
        ({"federates_with": (TD,)}, "own trust domain"),
        ({"hint": "h" * 1025}, "hint"),
    ]
    for override, message in cases:
        args: dict[str, object] = {"entry_id": "e1", "path": "/x", "selectors": sel("unix:uid:1")}
        args.update(override)
        with pytest.raises(EntryError, match=message):
            entry(**args)  # type: ignore[arg-type]
    with pytest.raises(EntryError, match="parent's trust domain"):
        Entry(
            id="e",
            spiffe_id=SpiffeId.parse("spiffe://other.org/x"),
            parent_id=NODE_A,
            selectors=sel("unix:uid:1"),
        )


@pytest.mark.parametrize("name", ["", "*", "-a.b", "a-.b", "a..b", "a b", "A.b", "x" * 64])
def test_bad_dns_names(name: str) -> None:
    with pytest.raises(EntryError):
        check_dns_name(name)


def test_index_by_parent_and_selector() -> None:
    e1 = entry("e1", "/a", sel("k8s:ns:payments"))
    e2 = entry("e2", "/b", sel("k8s:ns:payments", "k8s:sa:api"))
    e3 = entry("e3", "/c", sel("k8s:ns:other"), parent=NODE_B)
    index = EntryIndex.of([e3, e2, e1])
    assert len(index) == 3
    assert [e.id for e in index.by_parent(NODE_A)] == ["e1", "e2"]
    assert [e.id for e in index.by_parent(NODE_B)] == ["e3"]
    assert [e.id for e in index.matching(sel("k8s:ns:payments", "k8s:sa:api"))] == ["e1", "e2"]
    assert [e.id for e in index.matching(sel("k8s:ns:payments"))] == ["e1"]
    assert index.matching(sel("unix:uid:0")) == []
    moved = entry("e2", "/b", sel("k8s:ns:other"), parent=NODE_B)
    assert index.put(moved) == e2
    assert [e.id for e in index.by_parent(NODE_A)] == ["e1"]
    assert [e.id for e in index.matching(sel("k8s:ns:other"))] == ["e2", "e3"]
    assert index.remove("e1") == e1
    assert index.remove("e1") is None
    assert index.by_parent(NODE_A) == []
    assert [e.id for e in index] == ["e2", "e3"]


selector_pool = [f"k8s:ns:n{i}" for i in range(4)] + [f"unix:uid:{i}" for i in range(4)]


@given(
    st.lists(st.sets(st.sampled_from(selector_pool), min_size=1, max_size=3), max_size=12),
    st.sets(st.sampled_from(selector_pool), max_size=6),
)
def test_index_agrees_with_a_scan(entry_sels: list[set[str]], workload: set[str]) -> None:
    entries = [entry(f"e{i:02d}", f"/w{i}", sel(*s)) for i, s in enumerate(entry_sels)]
    index = EntryIndex.of(entries)
    wanted = sel(*workload)
    assert index.matching(wanted) == [e for e in entries if e.matches(wanted)]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5),
        ("1h", 3600),
        ("1h30m", 5400),
        ("90", 90),
        ("500ms", 0.5),
        ("2d", 172800),
        ("1.5h", 5400),
        (" 10m ", 600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(seconds)).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "h", "5x", "1h 30m", "-5s", "5s5", "1e3s"])
def test_ttl_and_duration_errors(text: str) -> None:
    if text == "5":
        assert parse_ttl(text, field="x509SVIDTTL") == 5
        return
    with pytest.raises(DurationError):
        parse_ttl(text, field="x509SVIDTTL")


def test_ttl_bounds() -> None:
    with pytest.raises(DurationError, match="x509SVIDTTL: TTL must be"):
        parse_ttl("0", field="x509SVIDTTL")
    with pytest.raises(DurationError, match="jwtSVIDTTL: TTL must be"):
        parse_ttl("500ms", field="jwtSVIDTTL")
    with pytest.raises(DurationError, match="jwtSVIDTTL: cannot read"):
        parse_ttl("soon", field="jwtSVIDTTL")
