"""Model ↔ protobuf conversions: lossless both ways, and malformed messages refused by field."""

from __future__ import annotations

import datetime as dt

import pytest

from herald_core.bundle import Bundle
from herald_core.entry import Entry
from herald_core.keys import KeyType, generate_key, public_key_to_der
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import (
    WireError,
    bundle_from_proto,
    bundle_to_proto,
    entry_from_proto,
    entry_to_proto,
)
from herald_core.x509svid import make_ca_certificate

TD = TrustDomain("example.org")
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def sample_entry() -> Entry:
    return Entry(
        id="e-1",
        spiffe_id=SpiffeId.parse("spiffe://example.org/ns/shop/sa/web"),
        parent_id=SpiffeId.parse("spiffe://example.org/herald/agent/join_token/abc"),
        selectors=parse_selectors(["k8s:ns:shop", "k8s:sa:web"]),
        x509_svid_ttl=600,
        jwt_svid_ttl=120,
        dns_names=("web.shop.svc",),
        federates_with=(TrustDomain("partner.org"),),
        hint="internal",
        admin=True,
        downstream=False,
        revision=3,
        created_at=1_700_000_000,
    )


def test_entry_round_trip() -> None:
    entry = sample_entry()
    message = entry_to_proto(entry)
    assert [f"{s.type}:{s.value}" for s in message.selectors] == ["k8s:ns:shop", "k8s:sa:web"]
    again = types_pb2.Entry.FromString(message.SerializeToString())
    assert entry_from_proto(again) == entry


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spiffe_id": "http://x/y"}, "spiffeID: scheme"),
        ({"parent_id": ""}, "parentID: SPIFFE ID is empty"),
        ({"selectors": [types_pb2.Selector(type="k8s", value="nope:x")]}, "selectors: unknown k8s"),
        ({"selectors": []}, "at least one selector"),
        ({"federates_with": ["Bad TD"]}, "federatesWith"),
        ({"x509_svid_ttl": -5}, "x509SVIDTTL"),
        ({"dns_names": ["UPPER.case"]}, "dnsNames"),
    ],
)
def test_entry_from_bad_proto(change: dict[str, object], message: str) -> None:
    proto = entry_to_proto(sample_entry())
    for field, value in change.items():
        proto.ClearField(field)  # type: ignore[arg-type]
        if isinstance(value, list):
            getattr(proto, field).extend(value)
        else:
            setattr(proto, field, value)
    with pytest.raises(WireError, match=message):
        entry_from_proto(proto)


def test_bundle_round_trip() -> None:
    ca_key = generate_key()
    ca = make_ca_certificate(ca_key, TD, not_before=NOW, not_after=NOW + dt.timedelta(days=1))
    jwt_keys = {
        "k1": generate_key().public_key(),
        "k2": generate_key(KeyType.RSA_2048).public_key(),
    }
    bundle = Bundle(TD, (ca,), jwt_keys, 300, 42)
    message = types_pb2.Bundle.FromString(bundle_to_proto(bundle).SerializeToString())
    assert message.sequence_number == 42
    assert bundle_from_proto(message) == bundle


def _jwt_key(kid: str) -> types_pb2.JWTKey:
    return types_pb2.JWTKey(key_id=kid, public_key=public_key_to_der(generate_key().public_key()))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (types_pb2.Bundle(trust_domain="bad td"), "bundle: trust domain"),
        (types_pb2.Bundle(trust_domain="td", x509_authorities=[b"junk"]), "bundle:"),
        (
            types_pb2.Bundle(
                trust_domain="td", jwt_authorities=[types_pb2.JWTKey(key_id="k", public_key=b"x")]
            ),
            "bundle: cannot parse public key",
        ),
        (
            types_pb2.Bundle(trust_domain="td", jwt_authorities=[_jwt_key("k"), _jwt_key("k")]),
            "duplicate JWT key IDs",
        ),
    ],
)
def test_bundle_from_bad_proto(message: types_pb2.Bundle, error: str) -> None:
    with pytest.raises(WireError, match=error):
        bundle_from_proto(message)
