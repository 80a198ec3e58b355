"""SPIFFE ID and trust domain parsing against every rule of the SPIFFE ID standard."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald_core.spiffeid import (
    MAX_ID_LENGTH,
    MAX_TRUST_DOMAIN_LENGTH,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
)

TD_ALPHABET = string.ascii_lowercase + string.digits + ".-_"
PATH_ALPHABET = string.ascii_letters + string.digits + ".-_"

trust_domains = st.text(TD_ALPHABET, min_size=1, max_size=40)
segments = st.text(PATH_ALPHABET, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, max_size=6).map(lambda segs: "".join("/" + s for s in segs))


@pytest.mark.parametrize(
    ("text", "td", "path"),
    [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/ns/default/sa/web", "example.org", "/ns/default/sa/web"),
        ("spiffe://example.org/Path/Case", "example.org", "/Path/Case"),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ("spiffe://a_b-c.d/x.y-z_1", "a_b-c.d", "/x.y-z_1"),
        ("spiffe://td/...", "td", "/..."),
    ],
)
def test_valid_ids(text: str, td: str, path: str) -> None:
    parsed = SpiffeId.parse(text)
    assert parsed.trust_domain == TrustDomain(td)
    assert parsed.path == path
    assert str(parsed) == f"spiffe://{td}{path}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("example.org/foo", "scheme must be"),
        ("http://example.org/foo", "scheme must be"),
        ("spiffe:/example.org/foo", "scheme must be"),
        ("spiffe://", "trust domain is missing"),
        ("spiffe:///path", "trust domain is missing"),
        ("spiffe://example.org:8080/foo", "port"),
        ("spiffe://user@example.org/foo", "userinfo"),
        ("spiffe://exa%41mple.org/foo", "percent-encoding"),
        ("spiffe://example.org/f%41oo", "percent-encoding"),
        ("spiffe://example.org/foo?x=1", "query"),
        ("spiffe://example.org/foo#frag", "fragment"),
        ("spiffe://example.org/", "trailing"),
        ("spiffe://example.org/foo/", "trailing"),
        ("spiffe://example.org//foo", "empty segments"),
        ("spiffe://example.org/./foo", "dot segments"),
        ("spiffe://example.org/foo/..", "dot segments"),
        ("spiffe://example.org/fo o", "found ' '"),
        ("spiffe://example.org/f*o", "found '\\*'"),
        ("spiffe://[::1]/foo", "found '\\['"),
        ("spiffe://exam ple.org/foo", "found ' '"),
        ("spiffe://ex\u00e4mple.org/foo", "lowercase letters"),
        ("spiffe://Example.org/foo", "must be lowercase; found 'E' at position 0 .write 'example"),
        ("spiffe://example.ORG", "must be lowercase; found 'O' at position 8"),
        ("SPIFFE://example.org/foo", "scheme must be lowercase 'spiffe://'"),
        ("Spiffe://example.org/foo", "scheme must be lowercase"),
    ],
)
def test_invalid_ids(text: str, message: str) -> None:
    with pytest.raises(SpiffeIdError, match=message):
        SpiffeId.parse(text)


def test_trust_domain_forms() -> None:
    assert TrustDomain.parse("example.org") == TrustDomain("example.org")
    with pytest.raises(SpiffeIdError, match=r"must be lowercase; found 'E' .* 'example\.org'"):
        TrustDomain.parse("Example.org")
    with pytest.raises(SpiffeIdError, match="must be lowercase"):
        TrustDomain.parse("spiffe://Example.org")
    assert TrustDomain.parse("spiffe://example.org") == TrustDomain("example.org")
    assert str(TrustDomain("example.org").id) == "spiffe://example.org"
    with pytest.raises(SpiffeIdError, match="cannot have a path"):
        TrustDomain.parse("spiffe://example.org/foo")
    with pytest.raises(SpiffeIdError, match="lowercase"):
        TrustDomain("Example.org")


def test_length_limits() -> None:
    td = "a" * MAX_TRUST_DOMAIN_LENGTH
    assert TrustDomain(td).name == td
    with pytest.raises(SpiffeIdError, match="at most 255"):
        TrustDomain(td + "a")
    prefix = "spiffe://example.org/"
    longest = prefix + "x" * (MAX_ID_LENGTH - len(prefix))
    assert str(SpiffeId.parse(longest)) == longest
    with pytest.raises(SpiffeIdError, match="at most 2048"):
        SpiffeId.parse(longest + "x")
    with pytest.raises(SpiffeIdError, match="at most 2048"):
        SpiffeId.from_segments(TrustDomain("example.org"), "x" * MAX_ID_LENGTH)


def test_from_segments_and_relations() -> None:
    td = TrustDomain("example.org")
    ns = SpiffeId.from_segments(td, "ns", "payments")
    assert str(ns) == "spiffe://example.org/ns/payments"
    assert SpiffeId.from_segments(td, "ns", "payments", "sa", "api").is_under(ns)
    assert ns.is_under(ns)
    assert not SpiffeId.parse("spiffe://example.org/ns/payments2").is_under(ns)
    assert not SpiffeId.parse("spiffe://other.org/ns/payments/x").is_under(ns)
    assert td.id.is_root and not ns.is_root
    assert ns.is_member_of(td)
    with pytest.raises(SpiffeIdError, match="cannot contain '/'"):
        SpiffeId.from_segments(td, "ns/payments")
    with pytest.raises(SpiffeIdError, match="must start with '/'"):
        SpiffeId(td, "ns")


@given(trust_domains, paths)
def test_round_trip(td: str, path: str) -> None:
    spiffe_id = SpiffeId.parse(f"spiffe://{td}{path}")
    assert SpiffeId.parse(str(spiffe_id)) == spiffe_id
    assert str(spiffe_id) == f"spiffe://{td}{path}"


@given(trust_domains.filter(lambda td: td != td.upper()), paths)
def test_an_upper_case_trust_domain_is_refused_not_lowercased(td: str, path: str) -> None:
    with pytest.raises(SpiffeIdError, match=f"must be lowercase.*write {td!r}"):
        SpiffeId.parse(f"spiffe://{td.upper()}{path}")
    with pytest.raises(SpiffeIdError, match="scheme must be lowercase"):
        SpiffeId.parse(f"SPIFFE://{td}{path}")


@given(st.text())
def test_never_crashes_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(SpiffeIdError):
        SpiffeId.parse(text)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_never_accepts_an_invalid_id(tail: str) -> None:
    text = "spiffe://" + tail
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    # Whatever was accepted satisfies every rule of the standard.
    td, _, path = tail.partition("/")
    assert td and set(td) <= set(TD_ALPHABET)
    assert "?" not in tail and "#" not in tail and "%" not in tail
    if path or tail.endswith("/"):
        segs = path.split("/")
        assert all(s and s not in (".", "..") and set(s) <= set(PATH_ALPHABET) for s in segs)
    assert str(parsed) == text, "only the canonical form is accepted"
