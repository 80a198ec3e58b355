"""Certificate signing requests between agent and server: build one, and vet one before signing.

The server takes only the public key from a CSR (the certificate's contents come from the
registration entry), so checking is about refusing anything that is not a small, well-formed,
self-signed PKCS#10 request for a key type herald accepts, naming the identity it expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from herald_core.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    UnsupportedKeyError,
    key_type_of,
    signature_hash,
)
from herald_core.spiffeid import SpiffeId, SpiffeIdError
from herald_core.x509svid import PARSE_ERRORS

DEFAULT_ALLOWED_KEY_TYPES: Final = frozenset(
    {KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.RSA_4096}
)
DEFAULT_MAX_SIZE: Final = 8192
# Self-signatures over weaker digests prove nothing worth trusting.
_ALLOWED_HASHES: Final = frozenset({"sha256", "sha384", "sha512"})


class CsrError(ValueError):
    """A CSR herald will not sign; the message says what is wrong with it."""


@dataclass(frozen=True)
class CsrInfo:
    """What a vetted CSR asks for. Only ``public_key`` ends up in the certificate."""

    spiffe_id: SpiffeId | None
    public_key: PublicKey
    dns_names: tuple[str, ...]


def make_csr(key: PrivateKey, spiffe_id: SpiffeId, dns_names: Sequence[str] = ()) -> bytes:
    """A DER PKCS#10 request for ``spiffe_id`` signed by ``key`` (SHA-384 for P-384, else 256)."""
    if isinstance(dns_names, str):
        raise CsrError("dns_names must be a sequence of names, not a single string")
    try:
        digest = signature_hash(key)
    except UnsupportedKeyError as exc:
        raise CsrError(f"CSR key: {exc}") from exc
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    try:
        sans.extend(x509.DNSName(name) for name in dns_names)
    except ValueError as exc:
        raise CsrError(f"invalid DNS name: {exc}") from exc
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        # RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(key, digest)
    )
    return request.public_bytes(serialization.Encoding.DER)


def _load(der: bytes, max_size: int) -> x509.CertificateSigningRequest:
    if not der:
        raise CsrError("CSR is empty")
    if len(der) > max_size:
        raise CsrError(f"CSR is {len(der)} bytes; at most {max_size} are allowed")
    if der.lstrip().startswith(b"-----BEGIN"):
        raise CsrError("CSR is PEM; DER is required")
    try:
        request = x509.load_der_x509_csr(der)
        # cryptography parses these lazily; touch them so malformed DER fails here.
        request.subject.rfc4514_string()
        request.extensions  # noqa: B018
    except PARSE_ERRORS as exc:
        raise CsrError(f"CSR is not a DER PKCS#10 request: {exc}") from exc
    return request


def _public_key(
    request: x509.CertificateSigningRequest, allowed_key_types: frozenset[KeyType]
) -> PublicKey:
    try:
        key = request.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError(f"CSR public key cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CsrError(
            f"CSR key type {type(key).__name__} is not supported; use EC (P-256/P-384) or RSA"
        )
    try:
        key_type = key_type_of(key)
    except UnsupportedKeyError as exc:
        raise CsrError(f"CSR key: {exc}") from exc
    if key_type not in allowed_key_types:
        allowed = ", ".join(sorted(allowed_key_types))
        raise CsrError(f"CSR key type {key_type} is not allowed; allowed: {allowed}")
    return key


def _check_signature(request: x509.CertificateSigningRequest) -> None:
    try:
        digest = request.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise CsrError(f"CSR signature algorithm is not supported: {exc}") from exc
    if digest is None or digest.name not in _ALLOWED_HASHES:
        found = "no digest" if digest is None else digest.name
        raise CsrError(f"CSR is signed with {found}; SHA-256, SHA-384 or SHA-512 is required")
    if not request.is_signature_valid:
        raise CsrError("CSR signature does not verify against its own public key")


def _requested_names(request: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    """(URI SANs, DNS SANs) requested by the CSR."""
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
    )


def _requested_id(uris: list[str], expected: SpiffeId | None) -> SpiffeId | None:
    if len(uris) > 1:
        raise CsrError(f"CSR has {len(uris)} URI SANs; at most one is allowed")
    if not uris:
        if expected is not None:
            raise CsrError(f"CSR has no URI SAN; expected {expected}")
        return None
    if expected is not None and uris[0] == str(expected):
        return expected  # the common case on the server: skip re-parsing a known-good ID
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise CsrError(f"CSR URI SAN {uris[0]!r} is not a SPIFFE ID: {exc}") from exc
    if spiffe_id.is_root:
        raise CsrError(f"CSR asks for {spiffe_id}, which has no path; SVIDs need a workload ID")
    if expected is not None and spiffe_id != expected:
        raise CsrError(f"CSR asks for {spiffe_id}, but {expected} was expected")
    return spiffe_id


def check_csr(
    der: bytes,
    *,
    allowed_key_types: frozenset[KeyType] = DEFAULT_ALLOWED_KEY_TYPES,
    expected_spiffe_id: SpiffeId | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> CsrInfo:
    """Vet a DER CSR; CsrError names the first problem found."""
    request = _load(der, max_size)
    public_key = _public_key(request, allowed_key_types)
    _check_signature(request)
    uris, dns_names = _requested_names(request)
    spiffe_id = _requested_id(uris, expected_spiffe_id)
    return CsrInfo(spiffe_id, public_key, tuple(dns_names))
