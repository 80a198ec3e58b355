"""Bundles: construction rules, the four encodings, SPIFFE bundle parsing rules and bundle maps."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from herald_core.bundle import (
    MAX_SEQUENCE_NUMBER,
    Bundle,
    BundleError,
    BundleSet,
    parse_bundle_map,
)
from herald_core.keys import PrivateKey, PublicKey, generate_key
from herald_core.spiffeid import TrustDomain
from herald_core.x509svid import make_ca_certificate
from tests.certs import der

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
START = datetime(2026, 1, 1, tzinfo=UTC)


def make_ca(key: PrivateKey) -> x509.Certificate:
    return make_ca_certificate(key, TD, not_before=START, not_after=START + timedelta(days=1))


EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
CA_EC = make_ca(EC_KEY)
CA_EC384 = make_ca(EC384_KEY)
CA_RSA = make_ca(RSA_KEY)
CERT_POOL = [CA_EC, CA_EC384, CA_RSA, make_ca(generate_key())]
KEY_POOL = [EC_KEY.public_key(), EC384_KEY.public_key(), RSA_KEY.public_key()]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwks(*keys: dict[str, Any], **members: Any) -> bytes:
    return json.dumps({"keys": list(keys), **members}).encode()


def ec_jwk(key: ec.EllipticCurvePublicKey, **extra: Any) -> dict[str, Any]:
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
        **extra,
    }


def ec_or_rsa_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ec_jwk(key)
    numbers = key.public_numbers()
    return {"kty": "RSA", "n": b64url(numbers.n.to_bytes(256, "big")), "e": "AQAB"}


def x5c(cert: x509.Certificate) -> str:
    return base64.b64encode(der(cert)).decode()


def spiffe_doc(bundle: Bundle) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(bundle.to_spiffe_jwks())
    return parsed


def full_bundle() -> Bundle:
    return Bundle(
        TD,
        (CA_EC, CA_RSA),
        {"k-ec": EC_KEY.public_key(), "k-rsa": RSA_KEY.public_key()},
        refresh_hint=300,
        sequence_number=7,
    )


# --- construction ---------------------------------------------------------------------------


def test_defaults_are_an_empty_bundle() -> None:
    bundle = Bundle(TD)
    assert bundle.x509_authorities == ()
    assert dict(bundle.jwt_authorities) == {}
    assert bundle.refresh_hint is None
    assert bundle.sequence_number == 0


def test_jwt_authorities_are_read_only_and_copied() -> None:
    keys: dict[str, PublicKey] = {"k1": EC_KEY.public_key()}
    bundle = Bundle(TD, jwt_authorities=keys)
    keys["k2"] = RSA_KEY.public_key()
    assert list(bundle.jwt_authorities) == ["k1"]
    with pytest.raises(TypeError):
        bundle.jwt_authorities["k3"] = EC_KEY.public_key()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.sequence_number = 2  # type: ignore[misc]


def test_x509_authorities_list_becomes_a_tuple() -> None:
    certs = [CA_EC]
    bundle = Bundle(TD, certs)  # type: ignore[arg-type]
    certs.append(CA_RSA)
    assert bundle.x509_authorities == (CA_EC,)


def test_equal_bundles_hash_equal_even_with_rebuilt_keys() -> None:
    first = full_bundle()
    rebuilt = Bundle.from_spiffe_jwks(TD, first.to_spiffe_jwks())
    assert rebuilt == first
    assert hash(rebuilt) == hash(first)
    assert len({first, rebuilt}) == 1
    assert dataclasses.replace(first, sequence_number=8) != first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jwt_authorities": {"": EC_KEY.public_key()}}, "non-empty strings"),
        (
            {"jwt_authorities": {"k": ed25519.Ed25519PrivateKey.generate().public_key()}},
            "only EC and RSA",
        ),
        (
            {"jwt_authorities": {"k": ec.generate_private_key(ec.SECP256K1()).public_key()}},
            "unsupported curve secp256k1",
        ),
        (
            # A weak key on purpose: the bundle must refuse it.
            {"jwt_authorities": {"k": rsa.generate_private_key(65537, 1024).public_key()}},  # noqa: S505
            "1024-bit RSA key",
        ),
        ({"sequence_number": -1}, "sequence_number must be between 0 and"),
        ({"sequence_number": MAX_SEQUENCE_NUMBER + 1}, "sequence_number must be between"),
        ({"sequence_number": True}, "sequence_number must be an integer"),
        ({"refresh_hint": -5}, "refresh_hint must be between 0 and"),
        ({"refresh_hint": 1.5}, "refresh_hint must be an integer"),
        ({"x509_authorities": (b"der",)}, r"x509_authorities\[0\] is a bytes"),
    ],
)
def test_construction_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle(TD, **kwargs)


def test_trust_domain_must_be_a_trust_domain() -> None:
    with pytest.raises(BundleError, match="trust_domain must be a TrustDomain"):
        Bundle("example.org")  # type: ignore[arg-type]


def test_largest_sequence_number_is_accepted() -> None:
    assert Bundle(TD, sequence_number=MAX_SEQUENCE_NUMBER).sequence_number == 2**64 - 1


# --- DER and PEM ----------------------------------------------------------------------------


def test_x509_der_is_concatenated_der() -> None:
    bundle = full_bundle()
    expected = der(CA_EC) + der(CA_RSA)
    assert bundle.x509_der() == expected
    assert Bundle.from_der(TD, expected).x509_authorities == (CA_EC, CA_RSA)


def test_x509_pem_round_trips() -> None:
    pem = full_bundle().x509_pem()
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert Bundle.from_pem(TD, pem).x509_authorities == (CA_EC, CA_RSA)


def test_empty_der_and_pem_are_empty_bundles() -> None:
    assert Bundle.from_der(TD, b"") == Bundle(TD)
    assert Bundle.from_pem(TD, b" \n") == Bundle(TD)
    assert Bundle(TD).x509_der() == b""


def test_from_der_refuses_garbage_and_pem() -> None:
    with pytest.raises(BundleError, match=r"X\.509 bundle for example\.org is not DER"):
        Bundle.from_der(TD, b"\x30\x03abc")
    with pytest.raises(BundleError, match="not DER"):
        Bundle.from_der(TD, CA_EC.public_bytes(Encoding.PEM))


def test_from_pem_refuses_garbage() -> None:
    with pytest.raises(BundleError, match=r"X\.509 bundle for example\.org is not PEM"):
        Bundle.from_pem(TD, b"not a certificate")


# --- SPIFFE bundle encoding -----------------------------------------------------------------


def test_spiffe_jwks_layout() -> None:
    doc = spiffe_doc(full_bundle())
    assert list(doc) == ["keys", "spiffe_sequence", "spiffe_refresh_hint"]
    assert doc["spiffe_sequence"] == 7
    assert doc["spiffe_refresh_hint"] == 300
    ec_x509, rsa_x509, ec_jwt, rsa_jwt = doc["keys"]
    assert list(ec_x509) == ["use", "kty", "crv", "x", "y", "x5c"]
    assert ec_x509 == {"use": "x509-svid", **ec_jwk(EC_KEY.public_key()), "x5c": [x5c(CA_EC)]}
    assert list(rsa_x509) == ["use", "kty", "n", "e", "x5c"]
    assert rsa_x509["e"] == "AQAB"
    assert "kid" not in ec_x509
    assert "kid" not in rsa_x509
    assert ec_jwt == {"use": "jwt-svid", **ec_jwk(EC_KEY.public_key(), kid="k-ec")}
    assert list(ec_jwt) == ["use", "kty", "kid", "crv", "x", "y"]
    numbers = RSA_KEY.public_key().public_numbers()
    assert rsa_jwt == {
        "use": "jwt-svid",
        "kty": "RSA",
        "kid": "k-rsa",
        "n": b64url(numbers.n.to_bytes(256, "big")),
        "e": "AQAB",
    }


def test_x5c_is_padded_standard_base64_of_one_der_cert() -> None:
    entry = spiffe_doc(Bundle(TD, (CA_EC,)))["keys"][0]
    assert len(entry["x5c"]) == 1
    assert base64.b64decode(entry["x5c"][0], validate=True) == der(CA_EC)
    assert len(entry["x5c"][0]) % 4 == 0


def test_refresh_hint_is_omitted_when_unset() -> None:
    doc = spiffe_doc(Bundle(TD, sequence_number=3))
    assert doc == {"keys": [], "spiffe_sequence": 3}


@pytest.mark.parametrize(("curve", "size"), [(ec.SECP256R1(), 32), (ec.SECP384R1(), 48)])
def test_ec_coordinates_keep_leading_zero_bytes(curve: ec.EllipticCurve, size: int) -> None:
    # Find a key whose x coordinate starts with a zero byte (1 in 256 keys).
    key = next(
        key
        for key in (ec.generate_private_key(curve).public_key() for _ in range(20_000))
        if key.public_numbers().x < 2 ** (8 * size - 8)
    )
    entry = spiffe_doc(Bundle(TD, jwt_authorities={"k": key}))["keys"][0]
    raw_x = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
    assert len(raw_x) == size
    assert raw_x[0] == 0
    assert "=" not in entry["x"] + entry["y"]
    assert Bundle.from_spiffe_jwks(TD, json.dumps({"keys": [entry]})).jwt_authorities["k"] == key


def test_p521_keys_are_accepted_for_es512() -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    entry = spiffe_doc(Bundle(TD, jwt_authorities={"k": key}))["keys"][0]
    assert entry["crv"] == "P-521"
    assert len(base64.urlsafe_b64decode(entry["y"] + "==")) == 66
    assert Bundle.from_jwt_jwks(TD, jwks(entry)).jwt_authorities["k"] == key


def test_encoding_is_deterministic_whatever_the_key_order() -> None:
    first = Bundle(TD, jwt_authorities={"a": EC_KEY.public_key(), "b": RSA_KEY.public_key()})
    second = Bundle(TD, jwt_authorities={"b": RSA_KEY.public_key(), "a": EC_KEY.public_key()})
    assert first.to_spiffe_jwks() == second.to_spiffe_jwks()
    assert first.to_workload_jwt_jwks() == second.to_workload_jwt_jwks()


# --- Workload API JWT encoding --------------------------------------------------------------


def test_workload_jwt_jwks_has_only_jwt_keys_with_kid_and_no_use() -> None:
    doc = json.loads(full_bundle().to_workload_jwt_jwks())
    assert list(doc) == ["keys"]
    ec_entry, rsa_entry = doc["keys"]
    assert ec_entry == ec_jwk(EC_KEY.public_key(), kid="k-ec")
    assert list(ec_entry) == ["kty", "kid", "crv", "x", "y"]
    assert list(rsa_entry) == ["kty", "kid", "n", "e"]


def test_workload_jwt_jwks_round_trip() -> None:
    bundle = full_bundle()
    parsed = Bundle.from_jwt_jwks(TD, bundle.to_workload_jwt_jwks())
    assert parsed == Bundle(TD, jwt_authorities=bundle.jwt_authorities)


def test_from_jwt_jwks_rules() -> None:
    x509_entry = {"use": "x509-svid", **ec_jwk(EC_KEY.public_key()), "x5c": [x5c(CA_EC)]}
    tagged = ec_jwk(EC384_KEY.public_key(), kid="tagged", use="jwt-svid")
    bundle = Bundle.from_jwt_jwks(
        TD, jwks(ec_jwk(EC_KEY.public_key(), kid="plain"), tagged, x509_entry)
    )
    assert set(bundle.jwt_authorities) == {"plain", "tagged"}
    assert bundle.x509_authorities == ()
    with pytest.raises(BundleError, match=r"JWT bundle for example.org: keys\[0\] is a JWT"):
        Bundle.from_jwt_jwks(TD, jwks(ec_jwk(EC_KEY.public_key())))
    duplicate = ec_jwk(EC_KEY.public_key(), kid="k")
    with pytest.raises(BundleError, match=r"keys\[1\] repeats key ID 'k'"):
        Bundle.from_jwt_jwks(TD, jwks(duplicate, duplicate))
    assert Bundle.from_jwt_jwks(TD, b'{"keys":[]}') == Bundle(TD)


# --- SPIFFE bundle parsing ------------------------------------------------------------------


def test_spiffe_jwks_round_trip() -> None:
    bundle = full_bundle()
    assert Bundle.from_spiffe_jwks(TD, bundle.to_spiffe_jwks()) == bundle
    assert Bundle.from_spiffe_jwks(TD, bundle.to_spiffe_jwks().decode()) == bundle


def test_empty_keys_means_every_key_revoked() -> None:
    assert Bundle.from_spiffe_jwks(TD, b'{"keys":[]}') == Bundle(TD)


def test_missing_sequence_and_hint_default() -> None:
    bundle = Bundle.from_spiffe_jwks(TD, b'{"keys":[]}')
    assert bundle.sequence_number == 0
    assert bundle.refresh_hint is None


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "OKP", "use": "jwt-svid", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
        {**ec_jwk(EC_KEY.public_key(), kid="no-use")},
        {**ec_jwk(EC_KEY.public_key(), kid="odd-use", use="sig")},
        {**ec_jwk(EC_KEY.public_key(), kid="upper", use="JWT-SVID")},
        {**ec_jwk(EC_KEY.public_key(), use="X509-SVID"), "x5c": [x5c(CA_EC)]},
        {**ec_jwk(EC_KEY.public_key(), use="x509-svid")},
        {**ec_jwk(EC_KEY.public_key(), kid="num-use", use=1)},
    ],
    ids=["unknown-kty", "no-use", "unknown-use", "use-case", "x509-use-case", "no-x5c", "int-use"],
)
def test_elements_that_must_be_ignored(entry: dict[str, Any]) -> None:
    assert Bundle.from_spiffe_jwks(TD, jwks(entry)) == Bundle(TD)


def test_only_first_x5c_value_is_used() -> None:
    entry = {"use": "x509-svid", "kty": "EC", "x5c": [x5c(CA_EC), "not base64 !", 17]}
    assert Bundle.from_spiffe_jwks(TD, jwks(entry)).x509_authorities == (CA_EC,)


def test_x509_entry_without_key_params_is_accepted() -> None:
    entry = {"use": "x509-svid", "kty": "RSA", "x5c": [x5c(CA_RSA)]}
    assert Bundle.from_spiffe_jwks(TD, jwks(entry)).x509_authorities == (CA_RSA,)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"use": "x509-svid", "kty": "EC", "x5c": x5c(CA_EC)}, "'x5c' must be a non-empty array"),
        ({"use": "x509-svid", "kty": "EC", "x5c": []}, "'x5c' must be a non-empty array"),
        (
            {"use": "x509-svid", "kty": "EC", "x5c": [b64url(der(CA_EC))]},
            r"x5c\[0\] is not a base64 DER certificate",
        ),
        (
            {"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(b"junk").decode()]},
            r"x5c\[0\] is not a base64 DER certificate",
        ),
        (
            {"use": "x509-svid", "kty": "RSA", "x5c": [x5c(CA_EC)]},
            "has kty 'RSA' but its certificate has an EC key",
        ),
        (
            {"use": "x509-svid", **ec_jwk(EC384_KEY.public_key()), "x5c": [x5c(CA_EC)]},
            "do not match the certificate's key",
        ),
        (
            {
                "use": "x509-svid",
                **ec_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()),
                "x5c": [x5c(CA_EC)],
            },
            "do not match the certificate's key",
        ),
        (ec_jwk(EC_KEY.public_key(), use="jwt-svid"), "is a JWT authority without a 'kid'"),
        (ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid=""), "without a 'kid'"),
        (ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid=5), "without a 'kid'"),
        (
            {**ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid="k"), "crv": "P-192"},
            "unsupported or missing curve 'P-192'",
        ),
        (
            {**ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid="k"), "x": b64url(b"\x01" * 31)},
            "'x' is 31 bytes long; the curve needs 32",
        ),
        (
            {**ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid="k"), "y": b64url(b"\x01" * 32)},
            "not a valid EC public key",
        ),
        (
            {
                **ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid="k"),
                "x": b64url(b"\x01" * 32) + "=",
            },
            "'x' is not unpadded base64url",
        ),
        ({"kty": "EC", "use": "jwt-svid", "kid": "k", "crv": "P-256"}, "has no 'x' string"),
        (
            {"kty": "RSA", "use": "jwt-svid", "kid": "k", "n": "AQAB", "e": "AQAB"},
            "RSA public key|at least 2048",
        ),
        ({"kty": "RSA", "use": "jwt-svid", "kid": "k", "n": "AQAB"}, "has no 'e' string"),
        ({"use": "jwt-svid", "kid": "k"}, r"keys\[0\] has no 'kty' string"),
        ("not an object", r"keys\[0\] must be an object, not a string"),
    ],
)
def test_bad_elements_are_refused(entry: Any, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle.from_spiffe_jwks(TD, jwks(entry))


def test_duplicate_kid_is_refused() -> None:
    first = ec_jwk(EC_KEY.public_key(), use="jwt-svid", kid="k")
    second = ec_jwk(EC384_KEY.public_key(), use="jwt-svid", kid="k")
    with pytest.raises(BundleError, match=r"keys\[1\] repeats key ID 'k'"):
        Bundle.from_spiffe_jwks(TD, jwks(first, second))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "SPIFFE bundle for example.org is not valid JSON"),
        (b"{", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[]", "must be a JSON object, not an array"),
        (b"{}", "has no 'keys' member"),
        (b'{"keys":{}}', "'keys' must be an array, not an object"),
        (b'{"keys":null}', "'keys' must be an array, not null"),
        (b'{"keys":[],"keys":[]}', "duplicate JSON member 'keys'"),
        (b'{"keys":[],"spiffe_sequence":NaN}', "not valid JSON"),
        (b'{"keys":[],"spiffe_sequence":"1"}', "spiffe_sequence must be an integer, not a str"),
        (b'{"keys":[],"spiffe_sequence":1.0}', "spiffe_sequence must be an integer, not a number"),
        (b'{"keys":[],"spiffe_sequence":true}', "spiffe_sequence must be an integer, not a bool"),
        (b'{"keys":[],"spiffe_sequence":-1}', "spiffe_sequence must be between 0 and"),
        (b'{"keys":[],"spiffe_sequence":18446744073709551616}', "must be between 0 and"),
        (b'{"keys":[],"spiffe_refresh_hint":"5m"}', "spiffe_refresh_hint must be an integer"),
        (b'{"keys":[],"spiffe_refresh_hint":-1}', "spiffe_refresh_hint must be between"),
        (b"[" * 100_000, "is not valid JSON"),
    ],
)
def test_bad_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle.from_spiffe_jwks(TD, data)


def test_sequence_is_parsed_as_64_bit() -> None:
    data = b'{"keys":[],"spiffe_sequence":18446744073709551615,"spiffe_refresh_hint":0}'
    bundle = Bundle.from_spiffe_jwks(TD, data)
    assert bundle.sequence_number == 2**64 - 1
    assert bundle.refresh_hint == 0


# --- BundleSet and bundle maps --------------------------------------------------------------


def test_bundle_set_put_get_remove_iterate() -> None:
    own = Bundle(TD, (CA_EC,))
    other = Bundle(OTHER_TD, (CA_RSA,))
    bundles = BundleSet([own])
    assert bundles.get(TD) is own
    assert bundles.get(OTHER_TD) is None
    bundles.put(other)
    assert list(bundles) == [TD, OTHER_TD]
    assert len(bundles) == 2
    assert OTHER_TD in bundles
    newer = dataclasses.replace(own, sequence_number=1)
    bundles.put(newer)
    assert bundles[TD] is newer
    assert bundles.remove(OTHER_TD) is other
    assert bundles.remove(OTHER_TD) is None
    assert dict(bundles) == {TD: newer}
    assert repr(bundles) == "BundleSet(['example.org'])"


def test_bundle_map_accepts_both_key_forms() -> None:
    own = full_bundle()
    other = Bundle(OTHER_TD, (CA_RSA,), sequence_number=2)
    data = (
        '{"trust_domains":{"spiffe://example.org":' + own.to_spiffe_jwks().decode() + ","
        '"other.org":' + other.to_spiffe_jwks().decode() + "}}"
    )
    assert parse_bundle_map(data.encode()) == {TD: own, OTHER_TD: other}
    assert BundleSet(parse_bundle_map(data).values())[OTHER_TD] == other


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'{"trust_domains":{"example.org":{"keys":[]},"example.org":{"keys":[]}}}',
            "bundle map has a duplicate JSON member 'example.org'",
        ),
        (
            b'{"trust_domains":{"example.org":{"keys":[]},"spiffe://example.org":{"keys":[]}}}',
            "lists trust domain example.org twice "
            r"\(as 'example.org' and 'spiffe://example.org'\)",
        ),
        (
            b'{"trust_domains":{"Example.org":{"keys":[]},"example.org":{"keys":[]}}}',
            "'Example.org' is not a trust domain: trust domain must be lowercase",
        ),
        (b'{"trust_domains":{"spiffe://example.org/x":{"keys":[]}}}', "not a trust domain"),
        (b'{"trust_domains":{"bad domain":{"keys":[]}}}', "'bad domain' is not a trust domain"),
        (b'{"trust_domains":{"example.org":{}}}', "entry 'example.org' has no 'keys' member"),
        (b'{"trust_domains":[]}', "'trust_domains' must be an object, not an array"),
        (b"{}", "bundle map has no 'trust_domains' member"),
        (b"[]", "bundle map must be a JSON object"),
        (b"nope", "bundle map is not valid JSON"),
    ],
)
def test_bad_bundle_maps_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_bundle_map(data)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    certs=st.lists(st.sampled_from(CERT_POOL), max_size=3),
    keys=st.dictionaries(st.text(min_size=1, max_size=12), st.sampled_from(KEY_POOL), max_size=3),
    sequence=st.integers(0, MAX_SEQUENCE_NUMBER),
    hint=st.none() | st.integers(0, 86_400),
)
def test_round_trips(
    certs: list[x509.Certificate], keys: dict[str, Any], sequence: int, hint: int | None
) -> None:
    bundle = Bundle(TD, tuple(certs), keys, refresh_hint=hint, sequence_number=sequence)
    assert Bundle.from_spiffe_jwks(TD, bundle.to_spiffe_jwks()) == bundle
    jwt_only = Bundle.from_jwt_jwks(TD, bundle.to_workload_jwt_jwks())
    assert jwt_only == Bundle(TD, jwt_authorities=keys)
    assert Bundle.from_der(TD, bundle.x509_der()).x509_authorities == tuple(certs)
    assert Bundle.from_pem(TD, bundle.x509_pem()).x509_authorities == tuple(certs)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
REAL_PARAMS = sorted(
    {jwk[name] for jwk in map(ec_or_rsa_jwk, KEY_POOL) for name in "xyne" if name in jwk}
)
B64URL_TEXT = (
    st.sampled_from(REAL_PARAMS) | st.binary(max_size=70).map(b64url) | st.text(max_size=8)
)
JWK_LIKE = st.fixed_dictionaries(
    {
        "kty": st.sampled_from(["EC", "RSA", "EC", "RSA", "OKP", 5, None]),
        "use": st.sampled_from(["x509-svid", "jwt-svid", "jwt-svid", "sig", None]),
    },
    optional={
        "kid": st.sampled_from(["k1", "k2", "", 7]),
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "X25519", None]),
        "x": B64URL_TEXT,
        "y": B64URL_TEXT,
        "n": B64URL_TEXT,
        "e": B64URL_TEXT,
        "x5c": st.lists(st.sampled_from([x5c(c) for c in CERT_POOL]) | st.text(max_size=8)),
    },
)
JWKS_LIKE = st.fixed_dictionaries(
    {"keys": st.lists(JWK_LIKE, max_size=4) | JSON_VALUES},
    optional={"spiffe_sequence": JSON_VALUES, "spiffe_refresh_hint": JSON_VALUES},
)


@settings(max_examples=400, deadline=None)
@given(doc=JWKS_LIKE | JSON_VALUES)
def test_parsers_raise_only_bundle_error_on_json_like_input(doc: Any) -> None:
    data = json.dumps(doc).encode()
    for parse in (Bundle.from_spiffe_jwks, Bundle.from_jwt_jwks):
        with contextlib.suppress(BundleError):
            parse(TD, data)
    with contextlib.suppress(BundleError):
        parse_bundle_map(json.dumps({"trust_domains": {"example.org": doc}}))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_parsers_raise_only_bundle_error_on_bytes(data: bytes) -> None:
    for parse in (Bundle.from_spiffe_jwks, Bundle.from_jwt_jwks, Bundle.from_der, Bundle.from_pem):
        with contextlib.suppress(BundleError):
            parse(TD, data)
    with contextlib.suppress(BundleError):
        parse_bundle_map(data)
