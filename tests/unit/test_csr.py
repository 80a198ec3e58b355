"""CSR building and vetting with real keys: what the server signs and everything it refuses."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from hypothesis import given, settings
from hypothesis import strategies as st

from herald_core.csr import DEFAULT_MAX_SIZE, CsrError, CsrInfo, check_csr, make_csr
from herald_core.keys import KeyType, generate_key, public_key_to_der
from herald_core.spiffeid import SpiffeId
from tests.certs import SIGNATURE_HASHES, unknown_key_algorithm

AGENT = SpiffeId.parse("spiffe://example.org/spire/agent/k8s_psat/prod/node-1")
OTHER = SpiffeId.parse("spiffe://example.org/other")


def raw_csr(
    key: CertificateIssuerPrivateKeyTypes,
    uris: Sequence[str] = (str(AGENT),),
    digest: hashes.SHA224 | hashes.SHA256 | hashes.SHA512 | hashes.SHA3_256 | None = None,
    *,
    san: bool = True,
) -> bytes:
    """A CSR built directly with cryptography, for shapes make_csr never produces."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if san:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if digest is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        digest = hashes.SHA256()
    return builder.sign(key, digest).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(("key_type", "digest"), SIGNATURE_HASHES)
def test_make_csr_round_trips(key_type: KeyType, digest: type[hashes.HashAlgorithm]) -> None:
    key = generate_key(key_type)
    der = make_csr(key, AGENT, dns_names=("node-1.example.org",))
    request = x509.load_der_x509_csr(der)
    assert request.subject == x509.Name([])
    assert isinstance(request.signature_hash_algorithm, digest)
    assert request.is_signature_valid
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # an empty subject makes the SAN critical (RFC 5280 §4.2.1.6)
    info = check_csr(der, expected_spiffe_id=AGENT)
    assert info == CsrInfo(AGENT, info.public_key, ("node-1.example.org",))
    assert public_key_to_der(info.public_key) == public_key_to_der(key.public_key())


def test_check_csr_without_expectation_reports_the_id() -> None:
    info = check_csr(make_csr(generate_key(), AGENT))
    assert info.spiffe_id == AGENT
    assert info.dns_names == ()


def test_check_csr_accepts_rsa_4096() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    assert check_csr(make_csr(key, AGENT)).spiffe_id == AGENT


def test_check_csr_accepts_no_san_when_no_id_is_expected() -> None:
    info = check_csr(raw_csr(generate_key(), san=False))
    assert info.spiffe_id is None
    assert info.dns_names == ()


def test_check_csr_accepts_sha512() -> None:
    assert check_csr(raw_csr(generate_key(), digest=hashes.SHA512())).spiffe_id == AGENT


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (b"", "CSR is empty"),
        (b"not a csr", "CSR is not a DER PKCS#10 request"),
        (b"\x30\x03\x02\x01\x01", "CSR is not a DER PKCS#10 request"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n", "CSR is PEM; DER is required"),
    ],
)
def test_check_csr_refuses_garbage(der: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=re.escape(message)):
        check_csr(der)


def test_check_csr_refuses_pem() -> None:
    der = make_csr(generate_key(), AGENT)
    pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrError, match="CSR is PEM; DER is required"):
        check_csr(pem)


def test_check_csr_refuses_trailing_bytes() -> None:
    with pytest.raises(CsrError, match="CSR is not a DER PKCS#10 request"):
        check_csr(make_csr(generate_key(), AGENT) + b"\x00")


def test_check_csr_refuses_oversized_input() -> None:
    der = make_csr(generate_key(), AGENT)
    with pytest.raises(CsrError, match=f"CSR is {DEFAULT_MAX_SIZE + 1} bytes; at most 8192"):
        check_csr(b"\x30" * (DEFAULT_MAX_SIZE + 1))
    with pytest.raises(CsrError, match=f"CSR is {len(der)} bytes; at most 100 are allowed"):
        check_csr(der, max_size=100)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_check_csr_refuses_tampered_signature(key_type: KeyType) -> None:
    der = bytearray(make_csr(generate_key(key_type), AGENT))
    # The signature BIT STRING ends the DER, so the last byte is signature material.
    der[-1] ^= 0x01
    with pytest.raises(CsrError, match="CSR signature does not verify against its own public key"):
        check_csr(bytes(der))


def test_check_csr_refuses_tampered_request_info() -> None:
    der = make_csr(generate_key(), AGENT)
    tampered = der.replace(b"node-1", b"node-2")
    assert tampered != der
    with pytest.raises(CsrError, match="CSR signature does not verify"):
        check_csr(tampered)


def test_check_csr_refuses_wrong_id() -> None:
    with pytest.raises(
        CsrError,
        match=re.escape(
            "CSR asks for spiffe://example.org/other, but "
            "spiffe://example.org/spire/agent/k8s_psat/prod/node-1 was expected"
        ),
    ):
        check_csr(make_csr(generate_key(), OTHER), expected_spiffe_id=AGENT)


def test_check_csr_refuses_missing_id_when_one_is_expected() -> None:
    with pytest.raises(
        CsrError, match=re.escape("CSR has no URI SAN; expected spiffe://example.org/spire")
    ):
        check_csr(raw_csr(generate_key(), san=False), expected_spiffe_id=AGENT)


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ((str(AGENT), str(OTHER)), "CSR has 2 URI SANs; at most one is allowed"),
        (("https://example.org/x",), "CSR URI SAN 'https://example.org/x' is not a SPIFFE ID"),
        (("spiffe://example.org/a/../b",), "is not a SPIFFE ID: path cannot contain dot"),
        (("spiffe://example.org",), "CSR asks for spiffe://example.org, which has no path"),
    ],
)
def test_check_csr_refuses_bad_uri_sans(uris: Sequence[str], message: str) -> None:
    with pytest.raises(CsrError, match=re.escape(message)):
        check_csr(raw_csr(generate_key(), uris))


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: dsa.generate_private_key(2048), "CSR key type DSAPublicKey is not supported"),
        (
            ed25519.Ed25519PrivateKey.generate,
            "CSR key type Ed25519PublicKey is not supported; use EC (P-256/P-384) or RSA",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP521R1()),
            "CSR key: unsupported EC curve secp521r1; use P-256 or P-384",
        ),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
            "CSR key: unsupported RSA key size 1024; use 2048 or 4096",
        ),
    ],
    ids=["DSA", "Ed25519", "P-521", "RSA-1024"],
)
def test_check_csr_refuses_unsupported_keys(
    make_key: Callable[[], CertificateIssuerPrivateKeyTypes], message: str
) -> None:
    key = make_key()
    with pytest.raises(CsrError, match=re.escape(message)):
        check_csr(raw_csr(key))


def test_check_csr_refuses_unreadable_key() -> None:
    der = unknown_key_algorithm(make_csr(generate_key(), AGENT))
    with pytest.raises(CsrError, match="CSR public key cannot be read"):
        check_csr(der)


def test_check_csr_refuses_unknown_signature_algorithm() -> None:
    # ecdsa-with-SHA256 (1.2.840.10045.4.3.2) turned into an unknown ...4.3.99.
    der = make_csr(generate_key(), AGENT).replace(
        bytes.fromhex("2a8648ce3d040302"), bytes.fromhex("2a8648ce3d040363")
    )
    with pytest.raises(CsrError, match="CSR signature algorithm is not supported"):
        check_csr(der)


def test_check_csr_refuses_key_type_not_allowed() -> None:
    der = make_csr(generate_key(KeyType.RSA_2048), AGENT)
    with pytest.raises(
        CsrError, match="CSR key type rsa-2048 is not allowed; allowed: ec-p256, ec-p384"
    ):
        check_csr(der, allowed_key_types=frozenset({KeyType.EC_P256, KeyType.EC_P384}))


@pytest.mark.parametrize("digest", [hashes.SHA224(), hashes.SHA3_256()], ids=["sha224", "sha3"])
def test_check_csr_refuses_other_digests(digest: hashes.SHA224 | hashes.SHA3_256) -> None:
    with pytest.raises(
        CsrError,
        match=f"CSR is signed with {digest.name}; SHA-256, SHA-384 or SHA-512 is required",
    ):
        check_csr(raw_csr(generate_key(), digest=digest))


def test_make_csr_refuses_bad_arguments() -> None:
    with pytest.raises(CsrError, match="dns_names must be a sequence of names, not a single"):
        make_csr(generate_key(), AGENT, dns_names="node-1")
    with pytest.raises(CsrError, match="CSR key: unsupported EC curve secp521r1"):
        make_csr(ec.generate_private_key(ec.SECP521R1()), AGENT)
    with pytest.raises(CsrError, match="invalid DNS name: DNSName values should be passed as"):
        make_csr(generate_key(), AGENT, dns_names=("nöde.example.org",))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_check_csr_arbitrary_bytes_only_raise_csr_error(data: bytes) -> None:
    with contextlib.suppress(CsrError):
        check_csr(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_check_csr_mutations_only_raise_csr_error(data: st.DataObject) -> None:
    der = bytearray(_fixed_csr())
    der[data.draw(st.integers(0, len(der) - 1))] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(CsrError):
        check_csr(bytes(der))


@cache
def _fixed_csr() -> bytes:
    return make_csr(generate_key(), AGENT, dns_names=("node-1",))
