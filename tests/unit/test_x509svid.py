"""X.509-SVID minting, encodings, leaf/signing rules and chain verification, with real crypto.

Certificates that break a rule are built by tests/certs.py from a good extension set with one
change, so each test shows exactly which field is wrong.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache, partial

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from herald_core.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    private_key_to_der,
    private_key_to_pem,
)
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import (
    NOT_BEFORE_CUSHION,
    X509Svid,
    X509SvidError,
    certs_to_pem,
    chain_to_der,
    check_leaf,
    check_signing_cert,
    load_pem_certs,
    make_ca_certificate,
    make_leaf_certificate,
    parse_der_chain,
    spiffe_id_of,
    svid_validity,
    verify_chain,
)
from tests import certs
from tests.certs import (
    SIGNATURE_HASHES,
    Ca,
    Change,
    ExtMap,
    der,
    drop,
    keep,
    key_usage,
    ski,
    swap,
    unknown_key_algorithm,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")

# Random DER often carries a zero or negative serial, which cryptography only warns about.
NOISY_DER = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

custom_leaf = partial(
    certs.custom_leaf, uris=(str(WORKLOAD),), not_before=NOW - HOUR, not_after=NOW + HOUR
)
custom_ca = partial(
    certs.custom_ca, uri=str(TD.id), not_before=NOW - HOUR, not_after=NOW + 12 * HOUR
)


def root_ca(
    trust_domain: TrustDomain = TD,
    *,
    key_type: KeyType = KeyType.EC_P256,
    path_len: int | None = None,
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + 24 * HOUR,
) -> Ca:
    key = generate_key(key_type)
    cert = make_ca_certificate(
        key, trust_domain, not_before=not_before, not_after=not_after, path_len=path_len
    )
    return Ca(cert, key)


def intermediate_ca(
    parent: Ca,
    trust_domain: TrustDomain = TD,
    *,
    path_len: int | None = None,
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + 12 * HOUR,
) -> Ca:
    key = generate_key()
    cert = make_ca_certificate(
        key,
        trust_domain,
        not_before=not_before,
        not_after=not_after,
        issuer_cert=parent.cert,
        issuer_key=parent.key,
        path_len=path_len,
    )
    return Ca(cert, key)


def leaf(
    ca: Ca,
    spiffe_id: SpiffeId = WORKLOAD,
    *,
    dns_names: Sequence[str] = (),
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + HOUR,
) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key()
    cert = make_leaf_certificate(
        key.public_key(),
        spiffe_id,
        issuer_cert=ca.cert,
        issuer_key=ca.key,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
    )
    return cert, key


@pytest.fixture(scope="module")
def root() -> Ca:
    return root_ca()


@pytest.fixture(scope="module")
def other_root() -> Ca:
    return root_ca()


# ---------------------------------------------------------------------------------------------
# CA minting


@pytest.mark.parametrize(("key_type", "digest"), SIGNATURE_HASHES)
def test_root_ca_has_spire_shape(key_type: KeyType, digest: type[hashes.HashAlgorithm]) -> None:
    ca = root_ca(key_type=key_type, path_len=1)
    cert = ca.cert
    assert cert.subject == cert.issuer
    serial_attr = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert [a.value for a in serial_attr] == [str(cert.serial_number)]
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "US"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SPIFFE"
    assert 0 < cert.serial_number < 2**128
    assert spiffe_id_of(cert) == TD.id
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    # A self-signed root carries no AKI, as Go's x509 (so SPIRE) omits it.
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert ski(cert) == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    assert isinstance(cert.signature_hash_algorithm, digest)
    cert.verify_directly_issued_by(cert)
    check_signing_cert(cert)


def test_ca_serial_is_random_unless_given() -> None:
    key = generate_key()
    serials = {
        make_ca_certificate(key, TD, not_before=NOW, not_after=NOW + HOUR).serial_number
        for _ in range(5)
    }
    assert len(serials) == 5
    given_serial = make_ca_certificate(key, TD, not_before=NOW, not_after=NOW + HOUR, serial=42)
    assert given_serial.serial_number == 42
    assert given_serial.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "42"


def test_intermediate_is_signed_by_issuer_and_capped(root: Ca) -> None:
    inter = intermediate_ca(root, not_after=NOW + 1000 * HOUR, path_len=0)
    cert = inter.cert
    assert cert.issuer == root.cert.subject
    cert.verify_directly_issued_by(root.cert)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski(root.cert).digest
    assert cert.not_valid_after_utc == root.cert.not_valid_after_utc
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert spiffe_id_of(cert) == TD.id
    check_signing_cert(cert)


def test_intermediate_under_upstream_ca_without_ski_or_spiffe_id(root: Ca) -> None:
    upstream = custom_ca(root, drop(x509.SubjectKeyIdentifier), uri=None)
    inter = intermediate_ca(upstream)
    aki = inter.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    expected = x509.SubjectKeyIdentifier.from_public_key(upstream.key.public_key())
    assert aki.key_identifier == expected.digest
    cert, _ = leaf(inter)
    chain = [cert, inter.cert, upstream.cert]
    assert verify_chain(chain, [root.cert], trust_domain=TD, now=NOW) == WORKLOAD


def test_p384_issuer_signs_with_sha384() -> None:
    parent = root_ca(key_type=KeyType.EC_P384)
    assert isinstance(intermediate_ca(parent).cert.signature_hash_algorithm, hashes.SHA384)
    cert, _ = leaf(parent)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)


def test_ca_refuses_half_an_issuer(root: Ca) -> None:
    with pytest.raises(X509SvidError, match="issuer_cert and issuer_key must be given together"):
        make_ca_certificate(
            generate_key(), TD, not_before=NOW, not_after=NOW + HOUR, issuer_cert=root.cert
        )


def test_ca_refuses_issuer_key_mismatch(root: Ca) -> None:
    with pytest.raises(X509SvidError, match="issuer key does not match the issuer certificate"):
        make_ca_certificate(
            generate_key(),
            TD,
            not_before=NOW,
            not_after=NOW + HOUR,
            issuer_cert=root.cert,
            issuer_key=generate_key(),
        )


def test_ca_refuses_leaf_as_issuer(root: Ca) -> None:
    cert, key = leaf(root)
    with pytest.raises(X509SvidError, match="issuer has cA=false"):
        make_ca_certificate(
            generate_key(),
            TD,
            not_before=NOW,
            not_after=NOW + HOUR,
            issuer_cert=cert,
            issuer_key=key,
        )


def test_ca_refuses_issuer_with_path_len_zero() -> None:
    parent = root_ca(path_len=0)
    with pytest.raises(X509SvidError, match="issuer has pathLenConstraint 0"):
        intermediate_ca(parent)


def test_ca_refuses_issuer_of_another_trust_domain(root: Ca) -> None:
    with pytest.raises(
        X509SvidError, match=re.escape("issuer belongs to trust domain example.org, not other")
    ):
        intermediate_ca(root, OTHER_TD)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path_len": -1}, "path_len must be 0 or more, got -1"),
        ({"serial": 0}, "serial number 0 is out of range"),
        ({"serial": 2**159}, "is out of range; it must be positive and at most 20 octets"),
        ({"not_before": datetime(2026, 1, 1)}, "not_before must be a timezone-aware datetime"),
        ({"not_after": NOW - HOUR}, "validity window is empty"),
    ],
)
def test_ca_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"not_before": NOW, "not_after": NOW + HOUR, **kwargs}
    with pytest.raises(X509SvidError, match=re.escape(message)):
        make_ca_certificate(generate_key(), TD, **args)  # type: ignore[arg-type]


def test_ca_refuses_unsupported_key() -> None:
    with pytest.raises(X509SvidError, match="CA key: unsupported EC curve secp521r1"):
        make_ca_certificate(
            ec.generate_private_key(ec.SECP521R1()), TD, not_before=NOW, not_after=NOW + HOUR
        )


def test_intermediate_window_empty_once_capped() -> None:
    parent = root_ca(not_after=NOW + HOUR)
    with pytest.raises(X509SvidError, match="once capped at the issuer's not_after"):
        intermediate_ca(parent, not_before=NOW + 2 * HOUR, not_after=NOW + 3 * HOUR)


# ---------------------------------------------------------------------------------------------
# Leaf minting and validity


def test_leaf_has_spire_shape(root: Ca) -> None:
    cert, key = leaf(root, dns_names=("web.example.org", "web"))
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs == {
        NameOID.COUNTRY_NAME: "US",
        NameOID.ORGANIZATION_NAME: "SPIRE",
        NameOID.COMMON_NAME: "web.example.org",
    }
    assert cert.issuer == root.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD)]
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org", "web"]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert (ku.value.digital_signature, ku.value.key_encipherment, ku.value.key_agreement) == (
        True,
        True,
        True,
    )
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ski(cert) == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski(root.cert).digest
    assert 0 < cert.serial_number < 2**128
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(root.cert)
    assert check_leaf(cert) == WORKLOAD


def test_leaf_without_dns_names_has_no_cn(root: Ca) -> None:
    cert, _ = leaf(root)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(WORKLOAD))]


def test_leaf_not_after_capped_at_issuer() -> None:
    parent = root_ca(not_after=NOW + 2 * HOUR)
    cert, _ = leaf(parent, not_after=NOW + 100 * HOUR)
    assert cert.not_valid_after_utc == parent.cert.not_valid_after_utc


def test_leaf_serial_can_be_given(root: Ca) -> None:
    cert = make_leaf_certificate(
        generate_key().public_key(),
        WORKLOAD,
        issuer_cert=root.cert,
        issuer_key=root.key,
        not_before=NOW,
        not_after=NOW + HOUR,
        serial=7,
    )
    assert cert.serial_number == 7


def test_leaf_refuses_root_id(root: Ca) -> None:
    with pytest.raises(X509SvidError, match=re.escape("spiffe://example.org has no path")):
        leaf(root, TD.id)


def test_leaf_refuses_id_outside_issuer_trust_domain(root: Ca) -> None:
    with pytest.raises(
        X509SvidError,
        match=re.escape("spiffe://other.org/w is not in the issuer's trust domain example.org"),
    ):
        leaf(root, SpiffeId.parse("spiffe://other.org/w"))


def test_leaf_refuses_issuer_without_spiffe_id(root: Ca) -> None:
    upstream = custom_ca(root, uri=None)
    with pytest.raises(X509SvidError, match="issuer has no URI SAN; exactly one is required"):
        leaf(upstream)


def test_leaf_refuses_leaf_as_issuer(root: Ca) -> None:
    cert, key = leaf(root)
    with pytest.raises(X509SvidError, match="issuer has cA=false"):
        leaf(Ca(cert, key))


def test_leaf_refuses_unsupported_public_key(root: Ca) -> None:
    with pytest.raises(X509SvidError, match="leaf public key: unsupported EC curve secp521r1"):
        make_leaf_certificate(
            ec.generate_private_key(ec.SECP521R1()).public_key(),
            WORKLOAD,
            issuer_cert=root.cert,
            issuer_key=root.key,
            not_before=NOW,
            not_after=NOW + HOUR,
        )


@pytest.mark.parametrize(
    ("dns_names", "message"),
    [
        ("web.example.org", "dns_names must be a sequence of names, not a single string"),
        (("",), "DNS name '' is invalid"),
        (("wéb.example.org",), "DNS name 'wéb.example.org' is invalid"),
        (("a b",), "DNS name 'a b' is invalid"),
        (("a" * 65,), "becomes the CN, which allows at most 64 characters; it has 65"),
    ],
)
def test_leaf_refuses_bad_dns_names(root: Ca, dns_names: Sequence[str], message: str) -> None:
    with pytest.raises(X509SvidError, match=re.escape(message)):
        leaf(root, dns_names=dns_names)


def test_leaf_refuses_expired_issuer_window() -> None:
    parent = root_ca(not_before=NOW - 10 * HOUR, not_after=NOW - HOUR)
    with pytest.raises(X509SvidError, match="validity window is empty"):
        leaf(parent, not_before=NOW, not_after=NOW + HOUR)


def test_svid_validity_backdates_and_caps() -> None:
    assert timedelta(seconds=10) == NOT_BEFORE_CUSHION
    assert svid_validity(NOW, HOUR, NOW + 24 * HOUR) == (
        NOW - timedelta(seconds=10),
        NOW + HOUR,
    )
    assert svid_validity(NOW, 5 * HOUR, NOW + 2 * HOUR) == (
        NOW - timedelta(seconds=10),
        NOW + 2 * HOUR,
    )


@pytest.mark.parametrize(
    ("now", "ttl", "issuer_not_after", "message"),
    [
        (NOW, timedelta(0), NOW + HOUR, "ttl must be positive, got 0:00:00"),
        (NOW, HOUR, NOW, "the issuer expired at 2026-03-01T12:00:00+00:00"),
        (datetime(2026, 3, 1), HOUR, NOW + HOUR, "now must be a timezone-aware datetime"),
    ],
)
def test_svid_validity_refuses(
    now: datetime, ttl: timedelta, issuer_not_after: datetime, message: str
) -> None:
    with pytest.raises(X509SvidError, match=re.escape(message)):
        svid_validity(now, ttl, issuer_not_after)


def test_svid_validity_feeds_make_leaf(root: Ca) -> None:
    not_before, not_after = svid_validity(NOW, HOUR, root.cert.not_valid_after_utc)
    cert = make_leaf_certificate(
        generate_key().public_key(),
        WORKLOAD,
        issuer_cert=root.cert,
        issuer_key=root.key,
        not_before=not_before,
        not_after=not_after,
    )
    assert cert.not_valid_before_utc == NOW - NOT_BEFORE_CUSHION
    assert cert.not_valid_after_utc == NOW + HOUR


# ---------------------------------------------------------------------------------------------
# spiffe_id_of, check_leaf, check_signing_cert


def test_spiffe_id_of(root: Ca) -> None:
    assert spiffe_id_of(leaf(root)[0]) == WORKLOAD
    assert spiffe_id_of(root.cert) == TD.id


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ((), "certificate has no URI SAN; exactly one is required"),
        (
            (str(WORKLOAD), "spiffe://example.org/other"),
            "certificate has 2 URI SANs; exactly one is required",
        ),
        (("https://example.org/x",), "URI SAN 'https://example.org/x' is not a SPIFFE ID"),
        (("spiffe://example.org/a//b",), "is not a SPIFFE ID: path cannot contain empty"),
    ],
)
def test_spiffe_id_of_refuses(root: Ca, uris: Sequence[str], message: str) -> None:
    def dns_only_when_empty(exts: ExtMap) -> None:
        if not uris:
            exts[x509.SubjectAlternativeName] = (
                x509.SubjectAlternativeName([x509.DNSName("web")]),
                False,
            )

    cert, _ = custom_leaf(root, dns_only_when_empty, uris=uris)
    with pytest.raises(X509SvidError, match=re.escape(message)):
        spiffe_id_of(cert)


def test_spiffe_id_of_without_san_extension(root: Ca) -> None:
    cert, _ = custom_leaf(root, drop(x509.SubjectAlternativeName))
    with pytest.raises(X509SvidError, match="certificate has no URI SAN"):
        spiffe_id_of(cert)


def violation(
    case_id: str, change: Change, message: str, uris: Sequence[str] = (str(WORKLOAD),)
) -> pytest.ParameterSet:
    return pytest.param(change, uris, message, id=case_id)


# Each leaf rule broken once; check_leaf and X509Svid.parse must both refuse.
LEAF_VIOLATIONS = pytest.mark.parametrize(
    ("change", "uris", "message"),
    [
        violation(
            "no BasicConstraints",
            drop(x509.BasicConstraints),
            "leaf has no BasicConstraints extension; a leaf needs cA=false",
        ),
        violation(
            "CA leaf",
            swap(x509.BasicConstraints(ca=True, path_length=None)),
            "leaf has cA=true; a leaf SVID must not be a CA",
        ),
        violation("no KeyUsage", drop(x509.KeyUsage), "leaf has no KeyUsage extension"),
        violation(
            "KeyUsage without digitalSignature",
            swap(key_usage(key_agreement=True)),
            "leaf KeyUsage lacks digitalSignature",
        ),
        violation(
            "KeyUsage with keyCertSign",
            swap(key_usage(digital_signature=True, key_cert_sign=True)),
            "leaf KeyUsage has keyCertSign; only signing certificates may",
        ),
        violation(
            "KeyUsage with cRLSign",
            swap(key_usage(digital_signature=True, crl_sign=True)),
            "leaf KeyUsage has cRLSign; only signing certificates may",
        ),
        violation("no URI SAN", drop(x509.SubjectAlternativeName), "leaf has no URI SAN", ()),
        violation(
            "two URI SANs",
            keep,
            "leaf has 2 URI SANs; exactly one is required",
            (str(WORKLOAD), "spiffe://example.org/b"),
        ),
        violation(
            "root ID",
            keep,
            "leaf has SPIFFE ID spiffe://example.org with no path",
            ("spiffe://example.org",),
        ),
        violation(
            "EKU serverAuth only",
            swap(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False),
            "leaf ExtendedKeyUsage lacks clientAuth; serverAuth and clientAuth are both required",
        ),
        violation(
            "EKU clientAuth only",
            swap(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False),
            "leaf ExtendedKeyUsage lacks serverAuth",
        ),
        violation(
            "EKU codeSigning only",
            swap(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False),
            "leaf ExtendedKeyUsage lacks serverAuth and clientAuth",
        ),
    ],
)


@LEAF_VIOLATIONS
def test_check_leaf_refuses(root: Ca, change: Change, uris: Sequence[str], message: str) -> None:
    cert, _ = custom_leaf(root, change, uris=uris)
    with pytest.raises(X509SvidError, match=re.escape(message)):
        check_leaf(cert)


@pytest.mark.parametrize(
    "change",
    [
        drop(x509.ExtendedKeyUsage),
        swap(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.CLIENT_AUTH,
                    ExtendedKeyUsageOID.CODE_SIGNING,
                    ExtendedKeyUsageOID.SERVER_AUTH,
                ]
            ),
            critical=True,
        ),
        drop(x509.SubjectKeyIdentifier),
    ],
    ids=["no EKU", "EKU with extra purposes", "no SKI"],
)
def test_check_leaf_accepts_variants(root: Ca, change: Change) -> None:
    cert, _ = custom_leaf(root, change)
    assert check_leaf(cert) == WORKLOAD


def test_check_signing_cert_accepts(root: Ca) -> None:
    check_signing_cert(root.cert)
    check_signing_cert(intermediate_ca(root).cert)
    check_signing_cert(custom_ca(root, uri=None).cert)


@pytest.mark.parametrize(
    ("change", "uri", "message"),
    [
        (
            drop(x509.BasicConstraints),
            str(TD.id),
            "signing certificate has no BasicConstraints extension",
        ),
        (
            swap(x509.BasicConstraints(ca=False, path_length=None)),
            str(TD.id),
            "signing certificate has cA=false; a signing certificate needs cA=true",
        ),
        (drop(x509.KeyUsage), str(TD.id), "signing certificate has no KeyUsage extension"),
        (
            swap(key_usage(digital_signature=True, crl_sign=True)),
            str(TD.id),
            "signing certificate KeyUsage lacks keyCertSign",
        ),
        (
            lambda exts: None,
            "spiffe://example.org/ca",
            "signing certificate has SPIFFE ID spiffe://example.org/ca with a path",
        ),
        (lambda exts: None, "urn:x", "signing certificate URI SAN 'urn:x' is not a SPIFFE ID"),
    ],
)
def test_check_signing_cert_refuses(root: Ca, change: Change, uri: str, message: str) -> None:
    ca = custom_ca(root, change, uri=uri)
    with pytest.raises(X509SvidError, match=re.escape(message)):
        check_signing_cert(ca.cert)


# ---------------------------------------------------------------------------------------------
# DER and PEM encodings


@cache
def cert_pool() -> tuple[x509.Certificate, ...]:
    """A few real certificates of different sizes (EC and RSA keys, CA and leaf)."""
    ec_root = root_ca()
    rsa_root = root_ca(key_type=KeyType.RSA_2048)
    return (
        ec_root.cert,
        rsa_root.cert,
        leaf(ec_root, dns_names=("a.example.org",))[0],
        leaf(rsa_root)[0],
        intermediate_ca(ec_root).cert,
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4))
def test_der_chain_round_trips(picks: list[int]) -> None:
    certs = [cert_pool()[i] for i in picks]
    data = chain_to_der(certs)
    assert data == b"".join(der(c) for c in certs)
    assert parse_der_chain(data) == certs


@NOISY_DER
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | st.binary(max_size=64).map(lambda b: b"\x30" + b))
def test_der_chain_arbitrary_bytes_only_raise_module_error(data: bytes) -> None:
    with contextlib.suppress(X509SvidError):
        parse_der_chain(data)


@cache
def svid_material() -> tuple[Ca, Ca, x509.Certificate, PrivateKey]:
    """(root, intermediate, leaf, leaf key) for the mutation tests."""
    top = root_ca()
    inter = intermediate_ca(top)
    cert, key = leaf(inter, dns_names=("web.example.org",))
    return top, inter, cert, key


@NOISY_DER
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_chains_only_raise_module_error(data: st.DataObject) -> None:
    top, inter, cert, key = svid_material()
    original = chain_to_der([cert, inter.cert])
    cut = data.draw(st.integers(0, len(original)))
    flip_at = data.draw(st.integers(0, len(original) - 1))
    flipped = bytearray(original)
    flipped[flip_at] ^= data.draw(st.integers(1, 255))
    for candidate in (original[:cut], bytes(flipped)):
        try:
            X509Svid.parse(candidate, private_key_to_der(key))
            verify_chain(parse_der_chain(candidate), [top.cert], now=NOW)
        except X509SvidError:
            pass


def test_der_chain_of_one(root: Ca) -> None:
    assert parse_der_chain(der(root.cert)) == [root.cert]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "certificate data is empty"),
        (
            b"\x02\x01\x01",
            "certificate 0 (at byte 0) does not start with a DER SEQUENCE tag (0x30)",
        ),
        (b"\x30", "certificate 0 (at byte 0) is truncated inside its length"),
        (b"\x30\x82\x01", "certificate 0 (at byte 0) is truncated inside its length"),
        (b"\x30\x80\x00\x00", "uses an indefinite length, which DER forbids"),
        (b"\x30\x81\x05abcde", "uses a non-minimal length encoding, which DER forbids"),
        (b"\x30\x82\x00\x90" + b"x" * 0x90, "uses a non-minimal length encoding"),
        (b"\x30\x85\x01\x00\x00\x00\x00", "declares a 5-octet length; that is not a cert"),
        (b"\x30\x05abc", "is truncated: it declares 5 content bytes but 3 follow"),
        (b"\x30\x03\x02\x01\x01", "certificate 0 is not a valid X.509 certificate"),
    ],
)
def test_der_chain_refuses(data: bytes, message: str) -> None:
    with pytest.raises(X509SvidError, match=re.escape(message)):
        parse_der_chain(data)


def test_der_chain_refuses_pem(root: Ca) -> None:
    with pytest.raises(X509SvidError, match="certificate data is PEM; concatenated DER"):
        parse_der_chain(b"\n" + certs_to_pem([root.cert]))


def test_der_chain_refuses_trailing_garbage(root: Ca) -> None:
    with pytest.raises(
        X509SvidError, match="2 trailing bytes after certificate 1 are not a DER certificate"
    ):
        parse_der_chain(der(root.cert) * 2 + b"\x00\x00")


def test_der_chain_refuses_truncated_second_cert(root: Ca) -> None:
    data = der(root.cert) * 2
    with pytest.raises(X509SvidError, match=r"certificate 1 \(at byte \d+\) is truncated"):
        parse_der_chain(data[:-1])


def test_duplicate_extensions_are_refused(root: Ca) -> None:
    # Rename the SKI extension's OID (2.5.29.14) to the AKI's (2.5.29.35): two AKIs.
    cert, _ = leaf(root)
    data = der(cert).replace(b"\x06\x03\x55\x1d\x0e", b"\x06\x03\x55\x1d\x23")
    with pytest.raises(
        X509SvidError, match=re.escape("certificate 0 is not a valid X.509 certificate")
    ):
        parse_der_chain(data)
    lazily_loaded = x509.load_der_x509_certificate(data)
    with pytest.raises(X509SvidError, match="leaf has malformed extensions"):
        check_leaf(lazily_loaded)


def test_chain_to_der_refuses_nothing() -> None:
    with pytest.raises(X509SvidError, match="no certificates to encode"):
        chain_to_der([])
    with pytest.raises(X509SvidError, match="no certificates to encode"):
        certs_to_pem([])


def test_pem_round_trip_ignores_text_between_blocks() -> None:
    certs = list(cert_pool()[:3])
    pem = certs_to_pem(certs)
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    assert load_pem_certs(b"# bundle\n" + pem.replace(b"-\n-", b"-\nnote\n-")) == certs


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "PEM data is empty"),
        (b" \n", "PEM data is empty"),
        (b"\x30\x03\x02\x01\x01", "data is DER, not PEM"),
        (b"hello", "no PEM CERTIFICATE block found"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "PEM data has an unterminated or malformed"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "PEM block 0 is not a valid X.509 certificate",
        ),
    ],
)
def test_load_pem_certs_refuses(data: bytes, message: str) -> None:
    with pytest.raises(X509SvidError, match=re.escape(message)):
        load_pem_certs(data)


def test_load_pem_certs_refuses_private_key(root: Ca) -> None:
    key_pem = private_key_to_pem(root.key)
    with pytest.raises(X509SvidError, match="PEM block 1 is 'PRIVATE KEY', not a CERTIFICATE"):
        load_pem_certs(certs_to_pem([root.cert]) + key_pem)


# ---------------------------------------------------------------------------------------------
# X509Svid


def test_svid_round_trip(root: Ca) -> None:
    cert, key = leaf(root)
    svid = X509Svid(WORKLOAD, (cert,), key, hint="internal")
    assert svid.leaf == cert
    assert svid.expires_at == cert.not_valid_after_utc
    assert svid.key_der() == private_key_to_der(key)
    assert svid.chain_der() == der(cert)
    parsed = X509Svid.parse(svid.chain_der(), svid.key_der())
    assert parsed.spiffe_id == WORKLOAD
    assert parsed.cert_chain == (cert,)
    assert parsed.key_der() == svid.key_der()
    assert parsed.hint == ""


def test_svid_parse_with_intermediate(root: Ca) -> None:
    inter = intermediate_ca(root)
    cert, key = leaf(inter)
    parsed = X509Svid.parse(chain_to_der([cert, inter.cert]), private_key_to_der(key))
    assert parsed.cert_chain == (cert, inter.cert)
    assert parsed.spiffe_id == WORKLOAD


@LEAF_VIOLATIONS
def test_svid_parse_applies_leaf_rules(
    root: Ca, change: Change, uris: Sequence[str], message: str
) -> None:
    cert, key = custom_leaf(root, change, uris=uris)
    expected = message.replace("leaf", "certificate 0 (CN=custom-leaf)", 1)
    with pytest.raises(X509SvidError, match=re.escape(expected)):
        X509Svid.parse(der(cert), private_key_to_der(key))


def test_svid_parse_refuses_intermediate_that_is_not_a_ca(root: Ca) -> None:
    bad = custom_ca(root, swap(x509.BasicConstraints(ca=False, path_length=None)))
    cert, key = leaf(root)
    with pytest.raises(X509SvidError, match=re.escape("certificate 1 (CN=custom-ca) has cA=false")):
        X509Svid.parse(chain_to_der([cert, bad.cert]), private_key_to_der(key))


def test_svid_parse_refuses_key_mismatch(root: Ca) -> None:
    cert, _ = leaf(root)
    with pytest.raises(X509SvidError, match="private key does not match the leaf certificate"):
        X509Svid.parse(der(cert), private_key_to_der(generate_key()))


@pytest.mark.parametrize(
    ("key_bytes", "message"),
    [
        (b"", "SVID private key: cannot parse private key"),
        (b"\x30\x03\x02\x01\x00", "SVID private key: cannot parse private key"),
        (
            private_key_to_der(ec.generate_private_key(ec.SECP521R1())),
            "SVID private key: unsupported EC curve secp521r1",
        ),
        (
            unknown_key_algorithm(private_key_to_der(generate_key())),
            "SVID private key: cannot parse private key: Unknown key type: 1.2.840.10045.2.99",
        ),
    ],
    ids=["empty", "not a key", "P-521", "unknown key OID"],
)
def test_svid_parse_refuses_bad_key(root: Ca, key_bytes: bytes, message: str) -> None:
    cert, _ = leaf(root)
    with pytest.raises(X509SvidError, match=re.escape(message)):
        X509Svid.parse(der(cert), key_bytes)


def test_svid_parse_refuses_unreadable_leaf_key(root: Ca) -> None:
    cert, key = leaf(root)
    data = unknown_key_algorithm(der(cert))  # in the leaf's SubjectPublicKeyInfo
    with pytest.raises(X509SvidError, match="leaf public key cannot be read"):
        X509Svid.parse(data, private_key_to_der(key))


def test_svid_parse_refuses_pem(root: Ca) -> None:
    cert, key = leaf(root)
    key_pem = private_key_to_pem(key)
    with pytest.raises(X509SvidError, match="SVID private key is PEM; PKCS#8 DER is required"):
        X509Svid.parse(der(cert), key_pem)
    with pytest.raises(X509SvidError, match="certificate data is PEM"):
        X509Svid.parse(certs_to_pem([cert]), private_key_to_der(key))


def test_svid_constructor_checks_consistency(root: Ca) -> None:
    cert, key = leaf(root)
    with pytest.raises(X509SvidError, match="needs at least its leaf certificate"):
        X509Svid(WORKLOAD, (), key)
    with pytest.raises(
        X509SvidError,
        match=re.escape(
            "spiffe_id spiffe://example.org/x does not match the leaf's spiffe://example.org/ns"
        ),
    ):
        X509Svid(SpiffeId.parse("spiffe://example.org/x"), (cert,), key)
    with pytest.raises(X509SvidError, match="private key does not match"):
        X509Svid(WORKLOAD, (cert,), generate_key())


# ---------------------------------------------------------------------------------------------
# verify_chain


def test_verify_direct_leaf(root: Ca, other_root: Ca) -> None:
    cert, _ = leaf(root)
    assert verify_chain([cert], [root.cert], now=NOW) == WORKLOAD
    assert verify_chain([cert], [other_root.cert, root.cert], trust_domain=TD, now=NOW) == WORKLOAD


def test_verify_with_intermediate(root: Ca) -> None:
    inter = intermediate_ca(root)
    cert, _ = leaf(inter)
    assert verify_chain([cert, inter.cert], [root.cert], trust_domain=TD, now=NOW) == WORKLOAD


def test_verify_chain_that_ends_with_the_root(root: Ca) -> None:
    inter = intermediate_ca(root)
    cert, _ = leaf(inter)
    assert verify_chain([cert, inter.cert, root.cert], [root.cert], now=NOW) == WORKLOAD


def test_verify_refuses_leaf_alone_in_bundle(root: Ca) -> None:
    cert, _ = leaf(root)
    with pytest.raises(X509SvidError, match="is not signed by any authority"):
        verify_chain([cert], [cert], now=NOW)


def test_verify_refuses_wrong_trust_domain(root: Ca) -> None:
    cert, _ = leaf(root)
    with pytest.raises(
        X509SvidError,
        match=re.escape(
            "certificate 0 (O=SPIRE,C=US) has SPIFFE ID spiffe://example.org/ns/default/sa/web, "
            "which is not in trust domain other.org"
        ),
    ):
        verify_chain([cert], [root.cert], trust_domain=OTHER_TD, now=NOW)


@pytest.mark.parametrize(
    ("not_before", "not_after", "problem"),
    [
        (NOW - 2 * HOUR, NOW - HOUR, "expired at 2026-03-01T11:00:00+00:00"),
        (NOW + HOUR, NOW + 2 * HOUR, "is not valid until 2026-03-01T13:00:00+00:00"),
    ],
)
def test_verify_refuses_leaf_outside_validity(
    root: Ca, not_before: datetime, not_after: datetime, problem: str
) -> None:
    cert, _ = leaf(root, dns_names=("web",), not_before=not_before, not_after=not_after)
    with pytest.raises(
        X509SvidError, match=re.escape(f"certificate 0 (CN=web,O=SPIRE,C=US) {problem}")
    ):
        verify_chain([cert], [root.cert], now=NOW)


def test_verify_refuses_expired_intermediate(root: Ca) -> None:
    inter = custom_ca(root, not_before=NOW - 3 * HOUR, not_after=NOW - HOUR)
    cert, _ = custom_leaf(inter)
    with pytest.raises(X509SvidError, match=re.escape("certificate 1 (CN=custom-ca) expired at")):
        verify_chain([cert, inter.cert], [root.cert], now=NOW)


def test_verify_refuses_expired_root() -> None:
    old = root_ca(not_before=NOW - 10 * HOUR, not_after=NOW + HOUR)
    cert, _ = leaf(old)
    later = NOW + 2 * HOUR
    with pytest.raises(X509SvidError, match=r"certificate 0 .* expired at"):
        verify_chain([cert], [old.cert], now=later)
    long_leaf, _ = custom_leaf(old, not_after=NOW + 10 * HOUR)
    with pytest.raises(
        X509SvidError,
        match=r"certificate 0 \(CN=custom-leaf\) is signed by authority \(.*O=SPIFFE,C=US\) in "
        r"the bundle for example.org, which expired at",
    ):
        verify_chain([long_leaf], [old.cert], now=later)


def test_verify_picks_the_valid_authority_during_rotation() -> None:
    # Two authorities with the same key and name (a re-issued root): one expired, one valid.
    key = generate_key()
    old = make_ca_certificate(key, TD, not_before=NOW - 10 * HOUR, not_after=NOW - HOUR, serial=9)
    new = make_ca_certificate(key, TD, not_before=NOW - HOUR, not_after=NOW + 9 * HOUR, serial=9)
    cert, _ = leaf(Ca(new, key))
    assert verify_chain([cert], [old, new], now=NOW) == WORKLOAD


def test_verify_names_a_certificate_without_subject(root: Ca) -> None:
    cert, _ = custom_leaf(
        root, subject=x509.Name([]), not_before=NOW - 2 * HOUR, not_after=NOW - HOUR
    )
    with pytest.raises(X509SvidError, match=re.escape("certificate 0 (empty subject) expired")):
        verify_chain([cert], [root.cert], now=NOW)


def test_verify_refuses_wrong_signer(root: Ca, other_root: Ca) -> None:
    cert, _ = leaf(root)
    with pytest.raises(
        X509SvidError,
        match=re.escape(
            "certificate 0 (O=SPIRE,C=US) is not signed by any authority in the bundle for "
            "example.org"
        ),
    ):
        verify_chain([cert], [other_root.cert], now=NOW)


def test_verify_refuses_forged_signature_under_the_right_name(root: Ca) -> None:
    forged, _ = custom_leaf(root, signer=generate_key())
    with pytest.raises(X509SvidError, match=r"certificate 0 \(CN=custom-leaf\) is not signed by"):
        verify_chain([forged], [root.cert], now=NOW)


def test_verify_refuses_intermediate_from_another_root(root: Ca, other_root: Ca) -> None:
    inter = intermediate_ca(other_root)
    cert, _ = leaf(inter)
    with pytest.raises(
        X509SvidError,
        match=r"certificate 1 \(.*O=SPIFFE,C=US\) is not signed by any authority in the bundle "
        r"for example.org",
    ):
        verify_chain([cert, inter.cert], [root.cert], now=NOW)


def test_verify_refuses_broken_link(root: Ca) -> None:
    inter = intermediate_ca(root)
    cert, _ = leaf(root)
    with pytest.raises(
        X509SvidError, match=r"certificate 0 \(O=SPIRE,C=US\) is not signed by certificate 1"
    ):
        verify_chain([cert, inter.cert], [root.cert], now=NOW)


def test_verify_refuses_bad_signature_on_a_link(root: Ca) -> None:
    inter = custom_ca(root)
    forged, _ = custom_leaf(inter, signer=generate_key())
    with pytest.raises(
        X509SvidError,
        match=r"certificate 0 \(CN=custom-leaf\) is not signed by certificate 1 \(CN=custom-ca\): "
        "the signature does not verify",
    ):
        verify_chain([forged, inter.cert], [root.cert], now=NOW)


def test_verify_refuses_intermediate_that_is_not_a_ca(root: Ca) -> None:
    bad = custom_ca(root, drop(x509.KeyUsage))
    cert, _ = custom_leaf(bad)
    with pytest.raises(
        X509SvidError, match=re.escape("certificate 1 (CN=custom-ca) has no KeyUsage extension")
    ):
        verify_chain([cert, bad.cert], [root.cert], now=NOW)


def test_verify_refuses_ca_as_leaf(root: Ca) -> None:
    inter = intermediate_ca(root)
    with pytest.raises(X509SvidError, match=r"certificate 0 \(.*\) has cA=true"):
        verify_chain([inter.cert], [root.cert], now=NOW)


def test_verify_refuses_unknown_critical_extension(root: Ca) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    cert, _ = custom_leaf(root, swap(unknown, critical=True))
    assert check_leaf(cert) == WORKLOAD  # the SVID rules alone do not look at it
    with pytest.raises(
        X509SvidError,
        match=re.escape(
            "certificate 0 (CN=custom-leaf) has a critical UnrecognizedExtension extension "
            "(1.3.6.1.4.1.55555.1) that herald does not enforce"
        ),
    ):
        verify_chain([cert], [root.cert], now=NOW)
    tolerated, _ = custom_leaf(root, swap(unknown, critical=False))
    assert verify_chain([tolerated], [root.cert], now=NOW) == WORKLOAD


def test_verify_refuses_critical_name_constraints(root: Ca) -> None:
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier("example.org")], excluded_subtrees=None
    )
    inter = custom_ca(root, swap(constraints, critical=True))
    cert, _ = custom_leaf(inter)
    with pytest.raises(
        X509SvidError,
        match=re.escape("certificate 1 (CN=custom-ca) has a critical NameConstraints extension"),
    ):
        verify_chain([cert, inter.cert], [root.cert], now=NOW)


def test_verify_path_length_of_root_is_honoured() -> None:
    strict = root_ca(path_len=0)
    direct, _ = leaf(strict)
    assert verify_chain([direct], [strict.cert], now=NOW) == WORKLOAD
    inter = custom_ca(strict)
    cert, _ = custom_leaf(inter)
    with pytest.raises(
        X509SvidError,
        match=r"authority \(.*\) in the bundle for example.org allows 0 intermediate CA\(s\) "
        r"below it \(pathLenConstraint\) but the chain has 1",
    ):
        verify_chain([cert, inter.cert], [strict.cert], now=NOW)


def test_verify_path_length_of_intermediate_is_honoured() -> None:
    top = root_ca(path_len=1)
    ok_inter = intermediate_ca(top)
    ok_leaf, _ = leaf(ok_inter)
    assert verify_chain([ok_leaf, ok_inter.cert], [top.cert], now=NOW) == WORKLOAD

    first = custom_ca(root_ca(), common_name="first", path_len=0)
    second = custom_ca(first, common_name="second")
    cert, _ = custom_leaf(second)
    chain = [cert, second.cert, first.cert]
    with pytest.raises(
        X509SvidError,
        match=re.escape(
            "certificate 2 (CN=first) allows 0 intermediate CA(s) below it (pathLenConstraint) "
            "but the chain has 1"
        ),
    ):
        verify_chain(chain, [first.cert], now=NOW)


def test_verify_refuses_degenerate_input(root: Ca) -> None:
    cert, _ = leaf(root)
    with pytest.raises(X509SvidError, match="certificate chain is empty"):
        verify_chain([], [root.cert], now=NOW)
    with pytest.raises(
        X509SvidError, match=re.escape("the bundle for example.org has no authorities")
    ):
        verify_chain([cert], [], now=NOW)
    with pytest.raises(X509SvidError, match="now must be a timezone-aware datetime"):
        verify_chain([cert], [root.cert], now=datetime(2026, 3, 1))


def test_verify_refuses_unsupported_signer_key(root: Ca) -> None:
    # An Ed25519 "authority" whose name matches: the issuer key type itself is the problem.
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_root = certs.build(
        subject=root.cert.subject,
        issuer_name=root.cert.subject,
        public_key=ed_key.public_key(),
        signer=ed_key,
        extensions={
            x509.BasicConstraints: (x509.BasicConstraints(ca=True, path_length=None), True)
        },
        not_before=NOW - HOUR,
        not_after=NOW + HOUR,
    )
    cert, _ = leaf(root)
    with pytest.raises(X509SvidError, match="is not signed by any authority"):
        verify_chain([cert], [ed_root], now=NOW)
