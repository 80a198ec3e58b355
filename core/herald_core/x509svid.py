"""X.509-SVIDs: mint CA and leaf certificates the way SPIRE does, and parse and verify them.

Minting mirrors SPIRE's credential templates so clients built for SPIRE see nothing unusual.
Checking follows the X.509-SVID standard (§5) and is at least as strict as py-spiffe and
go-spiffe, so an SVID that passes herald's checks passes theirs too. Wire encodings are
concatenated DER for chains and bundles and unencrypted PKCS#8 DER for keys; PEM is only for
files humans handle.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from herald_core.keys import (
    PrivateKey,
    PublicKey,
    UnsupportedKeyError,
    key_type_of,
    load_private_key,
    private_key_to_der,
    signature_hash,
)
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

NOT_BEFORE_CUSHION: Final = timedelta(seconds=10)
"""SPIRE's NotBeforeCushion: leaves are backdated so peers with a slow clock accept them."""

_SERIAL_BITS: Final = 128
# RFC 5280 §4.1.2.2: a positive integer of at most 20 octets, so at most 159 value bits.
_MAX_SERIAL_BITS: Final = 159
_MAX_CN_LENGTH: Final = 64
_SEQUENCE_TAG: Final = 0x30
# Four length octets allow 4 GiB, far past any certificate; more means garbage, not a cert.
_MAX_LENGTH_OCTETS: Final = 4
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
# Critical extensions verify_chain enforces; any other critical one makes it fail closed.
_ENFORCED_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)
_BOTH_AUTHS: Final = (
    (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
    (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
)

PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
"""What cryptography raises for malformed DER (certificates, CSRs); several are not ValueErrors."""

_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


class X509SvidError(ValueError):
    """A certificate, chain, key or request that is not a valid X.509-SVID; the message says why."""


def _require_supported_key(key: PrivateKey | PublicKey, what: str) -> None:
    try:
        key_type_of(key)
    except UnsupportedKeyError as exc:
        raise X509SvidError(f"{what}: {exc}") from exc


def _aware(when: datetime, name: str) -> None:
    # A naive datetime would silently be read as UTC by cryptography; make the caller say so.
    if when.utcoffset() is None:
        raise X509SvidError(f"{name} must be a timezone-aware datetime")


def _serial(serial: int | None) -> int:
    if serial is None:
        return secrets.randbelow(2**_SERIAL_BITS - 1) + 1
    if serial <= 0 or serial.bit_length() > _MAX_SERIAL_BITS:
        raise X509SvidError(
            f"serial number {serial} is out of range; it must be positive and at most 20 octets"
        )
    return serial


def _spki(key: PublicKey | x509.Certificate) -> bytes:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def describe_certificate(cert: x509.Certificate) -> str:
    """The subject as RFC 4514 text, for error messages."""
    return cert.subject.rfc4514_string() or "empty subject"


def _extensions(cert: x509.Certificate, label: str) -> x509.Extensions:
    try:
        return cert.extensions
    except PARSE_ERRORS as exc:
        raise X509SvidError(f"{label} has malformed extensions: {exc}") from exc


def _find(cert: x509.Certificate, ext_type: type[_Ext], label: str) -> _Ext | None:
    """The value of one extension, None when absent; malformed extensions are an error."""
    try:
        return _extensions(cert, label).get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def _require(cert: x509.Certificate, ext_type: type[_Ext], label: str, needs: str) -> _Ext:
    value = _find(cert, ext_type, label)
    if value is None:
        raise X509SvidError(f"{label} has no {ext_type.__name__} extension; {needs}")
    return value


def _uri_sans(cert: x509.Certificate, label: str) -> list[str]:
    san = _find(cert, x509.SubjectAlternativeName, label)
    return [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)


def _single_spiffe_id(cert: x509.Certificate, label: str) -> SpiffeId:
    uris = _uri_sans(cert, label)
    if len(uris) != 1:
        found = "no URI SAN" if not uris else f"{len(uris)} URI SANs"
        raise X509SvidError(f"{label} has {found}; exactly one is required")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise X509SvidError(f"{label} URI SAN {uris[0]!r} is not a SPIFFE ID: {exc}") from exc


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"is not valid until {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc.isoformat()}"
    return None


def issuance_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Why ``issuer`` did not directly issue ``cert`` (name and signature), or None if it did."""
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "the signature does not verify"
    except ValueError as exc:
        return str(exc)
    except (TypeError, UnsupportedAlgorithm) as exc:
        return f"the issuer's key cannot verify it: {exc}"
    return None


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID in the certificate's single URI SAN."""
    return _single_spiffe_id(cert, "certificate")


def _check_leaf(cert: x509.Certificate, label: str) -> SpiffeId:
    if _require(cert, x509.BasicConstraints, label, "a leaf needs cA=false").ca:
        raise X509SvidError(f"{label} has cA=true; a leaf SVID must not be a CA")
    usage = _require(cert, x509.KeyUsage, label, "a leaf needs digitalSignature")
    if not usage.digital_signature:
        raise X509SvidError(f"{label} KeyUsage lacks digitalSignature")
    if usage.key_cert_sign:
        raise X509SvidError(f"{label} KeyUsage has keyCertSign; only signing certificates may")
    if usage.crl_sign:
        raise X509SvidError(f"{label} KeyUsage has cRLSign; only signing certificates may")
    spiffe_id = _single_spiffe_id(cert, label)
    if spiffe_id.is_root:
        raise X509SvidError(f"{label} has SPIFFE ID {spiffe_id} with no path; a leaf needs one")
    extended = _find(cert, x509.ExtendedKeyUsage, label)
    if extended is not None:
        missing = [name for oid, name in _BOTH_AUTHS if oid not in extended]
        if missing:
            raise X509SvidError(
                f"{label} ExtendedKeyUsage lacks {' and '.join(missing)}; "
                "serverAuth and clientAuth are both required when EKU is present"
            )
    return spiffe_id


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    """Apply the X.509-SVID leaf rules (§5.2 plus py-spiffe's) and return the leaf's SPIFFE ID."""
    return _check_leaf(cert, "leaf")


def _check_signing(cert: x509.Certificate, label: str) -> None:
    if not _require(cert, x509.BasicConstraints, label, "a signing certificate needs cA=true").ca:
        raise X509SvidError(f"{label} has cA=false; a signing certificate needs cA=true")
    usage = _require(cert, x509.KeyUsage, label, "a signing certificate needs keyCertSign")
    if not usage.key_cert_sign:
        raise X509SvidError(f"{label} KeyUsage lacks keyCertSign")
    if _uri_sans(cert, label):
        spiffe_id = _single_spiffe_id(cert, label)
        if not spiffe_id.is_root:
            raise X509SvidError(
                f"{label} has SPIFFE ID {spiffe_id} with a path; "
                "a signing certificate's ID must be a trust domain ID"
            )


def check_signing_cert(cert: x509.Certificate) -> None:
    """Apply the signing-certificate rules: cA=true, keyCertSign, any SPIFFE ID path-less."""
    _check_signing(cert, "signing certificate")


def _check_chain(chain: Sequence[x509.Certificate]) -> tuple[SpiffeId, list[str]]:
    """Leaf rules on the first certificate, signing rules on the rest.

    Returns the leaf's SPIFFE ID and the label naming each certificate in error messages.
    """
    labels = [
        f"certificate {position} ({describe_certificate(cert)})"
        for position, cert in enumerate(chain)
    ]
    spiffe_id = _check_leaf(chain[0], labels[0])
    for cert, label in zip(chain[1:], labels[1:], strict=True):
        _check_signing(cert, label)
    return spiffe_id, labels


def svid_validity(
    now: datetime, ttl: timedelta, issuer_not_after: datetime
) -> tuple[datetime, datetime]:
    """SPIRE's leaf window: NotBefore = now - 10 s, NotAfter = now + ttl capped at the issuer's."""
    _aware(now, "now")
    _aware(issuer_not_after, "issuer_not_after")
    if ttl <= timedelta(0):
        raise X509SvidError(f"ttl must be positive, got {ttl}")
    if issuer_not_after <= now:
        raise X509SvidError(f"the issuer expired at {issuer_not_after.isoformat()}")
    return now - NOT_BEFORE_CUSHION, min(now + ttl, issuer_not_after)


def _window(
    not_before: datetime, not_after: datetime, cap: datetime | None
) -> tuple[datetime, datetime]:
    _aware(not_before, "not_before")
    _aware(not_after, "not_after")
    capped = not_after if cap is None else min(not_after, cap)
    if capped <= not_before:
        reason = "" if capped == not_after else " once capped at the issuer's not_after"
        raise X509SvidError(
            f"validity window is empty: not_after {capped.isoformat()} is not after "
            f"not_before {not_before.isoformat()}{reason}"
        )
    return not_before, capped


def _authority_key_id(
    issuer_cert: x509.Certificate, issuer_key: PrivateKey
) -> x509.AuthorityKeyIdentifier:
    """Check the issuer can sign SVIDs and return the AKI its children carry (= its SKI)."""
    _check_signing(issuer_cert, "issuer")
    _require_supported_key(issuer_key, "issuer key")
    if _spki(issuer_key.public_key()) != _spki(issuer_cert):
        raise X509SvidError("issuer key does not match the issuer certificate's public key")
    ski = _find(issuer_cert, x509.SubjectKeyIdentifier, "issuer")
    if ski is None:
        # An upstream CA without SKI: derive the key ID the same way (RFC 5280 method 1).
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    serial: int,
    window: tuple[datetime, datetime],
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca_certificate(
    key: PrivateKey,
    trust_domain: TrustDomain,
    *,
    not_before: datetime,
    not_after: datetime,
    issuer_cert: x509.Certificate | None = None,
    issuer_key: PrivateKey | None = None,
    serial: int | None = None,
    path_len: int | None = None,
) -> x509.Certificate:
    """A CA certificate for ``trust_domain``: a self-signed root, or an intermediate when given
    an issuer. Subject C=US, O=SPIFFE, serialNumber=<serial> like SPIRE, so every CA has a
    distinct name; a root carries no AKI (as Go omits it on self-signed certificates).
    """
    _require_supported_key(key, "CA key")
    if path_len is not None and path_len < 0:
        raise X509SvidError(f"path_len must be 0 or more, got {path_len}")
    if (issuer_cert is None) != (issuer_key is None):
        raise X509SvidError("issuer_cert and issuer_key must be given together")
    serial_number = _serial(serial)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial_number)),
        ]
    )
    if issuer_cert is None or issuer_key is None:
        window = _window(not_before, not_after, cap=None)
        builder = _builder(subject, subject, key.public_key(), serial_number, window)
        signer = key
    else:
        aki = _authority_key_id(issuer_cert, issuer_key)
        _check_issuer_may_sign_ca(issuer_cert, trust_domain)
        window = _window(not_before, not_after, cap=issuer_cert.not_valid_after_utc)
        builder = _builder(subject, issuer_cert.subject, key.public_key(), serial_number, window)
        builder = builder.add_extension(aki, critical=False)
        signer = issuer_key
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]),
            critical=False,
        )
    )
    return builder.sign(signer, signature_hash(signer))


def _check_issuer_may_sign_ca(issuer_cert: x509.Certificate, trust_domain: TrustDomain) -> None:
    constraints = _find(issuer_cert, x509.BasicConstraints, "issuer")
    if constraints is not None and constraints.path_length == 0:
        raise X509SvidError("issuer has pathLenConstraint 0; it cannot sign another CA")
    if _uri_sans(issuer_cert, "issuer"):
        issuer_td = _single_spiffe_id(issuer_cert, "issuer").trust_domain
        if issuer_td != trust_domain:
            raise X509SvidError(
                f"issuer belongs to trust domain {issuer_td}, not {trust_domain}; "
                "an intermediate must stay in its issuer's trust domain"
            )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # SPIRE: CAs get keyCertSign|cRLSign, leaves digitalSignature|keyEncipherment|keyAgreement.
    leaf = not cert_sign
    return x509.KeyUsage(
        digital_signature=leaf,
        content_commitment=False,
        key_encipherment=leaf,
        data_encipherment=False,
        key_agreement=leaf,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_dns_names(dns_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(dns_names, str):
        raise X509SvidError("dns_names must be a sequence of names, not a single string")
    for name in dns_names:
        if not name or not name.isascii() or any(ch.isspace() for ch in name):
            raise X509SvidError(
                f"DNS name {name!r} is invalid; use a non-empty ASCII (A-label) name"
            )
    if dns_names and len(dns_names[0]) > _MAX_CN_LENGTH:
        raise X509SvidError(
            f"first DNS name {dns_names[0]!r} becomes the CN, which allows at most "
            f"{_MAX_CN_LENGTH} characters; it has {len(dns_names[0])}"
        )
    return tuple(dns_names)


_LEAF_SUBJECT: Final = (
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
)
_LEAF_BASIC_CONSTRAINTS: Final = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE: Final = _key_usage(cert_sign=False)
_LEAF_EXTENDED_KEY_USAGE: Final = x509.ExtendedKeyUsage([oid for oid, _ in _BOTH_AUTHS])


class SvidIssuer:
    """A signing certificate and its key, checked once, that issues many leaf SVIDs.

    Everything about the issuer that each leaf needs (AKI, trust domain, digest, subject) is
    worked out here, so a CA signing thousands of leaves pays for it once.
    """

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key
        self._aki = _authority_key_id(cert, key)
        self.trust_domain = _single_spiffe_id(cert, "issuer").trust_domain
        self._digest = signature_hash(key)
        self.not_after = cert.not_valid_after_utc

    def leaf(
        self,
        public_key: PublicKey,
        spiffe_id: SpiffeId,
        *,
        not_before: datetime,
        not_after: datetime,
        dns_names: Sequence[str] = (),
        serial: int | None = None,
    ) -> x509.Certificate:
        """A workload leaf SVID shaped exactly like SPIRE's (see docs/x509-svid.md).

        ``not_before`` should already be backdated (see svid_validity); ``not_after`` is capped
        at the issuer's.
        """
        if spiffe_id.is_root:
            raise X509SvidError(f"{spiffe_id} has no path; a leaf SVID needs a workload ID")
        _require_supported_key(public_key, "leaf public key")
        names = _check_dns_names(dns_names)
        if spiffe_id.trust_domain != self.trust_domain:
            raise X509SvidError(
                f"{spiffe_id} is not in the issuer's trust domain {self.trust_domain}"
            )
        attributes = list(_LEAF_SUBJECT)
        if names:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, names[0]))
        window = _window(not_before, not_after, cap=self.not_after)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans.extend(x509.DNSName(name) for name in names)
        builder = (
            _builder(x509.Name(attributes), self.cert.subject, public_key, _serial(serial), window)
            .add_extension(self._aki, critical=False)
            .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        )
        return builder.sign(self.key, self._digest)


def make_leaf_certificate(
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    dns_names: Sequence[str] = (),
    serial: int | None = None,
) -> x509.Certificate:
    """One leaf SVID from ``issuer_cert``; use SvidIssuer to sign many with one issuer."""
    return SvidIssuer(issuer_cert, issuer_key).leaf(
        public_key,
        spiffe_id,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
        serial=serial,
    )


def _sequence_end(data: bytes, start: int, position: int) -> int:
    """End offset of the DER SEQUENCE at ``data[start]``, certificate number ``position``."""
    where = f"certificate {position} (at byte {start})"
    if data[start] != _SEQUENCE_TAG:
        raise X509SvidError(
            f"{where} does not start with a DER SEQUENCE tag (0x30); found 0x{data[start]:02x}"
        )
    if start + 1 >= len(data):
        raise X509SvidError(f"{where} is truncated inside its length")
    first = data[start + 1]
    if first < 0x80:
        header, length = 2, first
    else:
        octets = first & 0x7F
        if octets == 0:
            raise X509SvidError(f"{where} uses an indefinite length, which DER forbids")
        if octets > _MAX_LENGTH_OCTETS:
            raise X509SvidError(f"{where} declares a {octets}-octet length; that is not a cert")
        header = 2 + octets
        if start + header > len(data):
            raise X509SvidError(f"{where} is truncated inside its length")
        length = int.from_bytes(data[start + 2 : start + header], "big")
        if length < 0x80 or data[start + 2] == 0:
            raise X509SvidError(f"{where} uses a non-minimal length encoding, which DER forbids")
    available = len(data) - start - header
    if length > available:
        raise X509SvidError(
            f"{where} is truncated: it declares {length} content bytes but {available} follow"
        )
    return start + header + length


def _load_cert(
    loader: Callable[[bytes], x509.Certificate], data: bytes, what: str
) -> x509.Certificate:
    try:
        cert = loader(data)
        # cryptography parses these lazily; touch them so a malformed certificate fails here,
        # with this message, rather than later wherever the field is first read.
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.extensions  # noqa: B018
    except PARSE_ERRORS as exc:
        raise X509SvidError(f"{what} is not a valid X.509 certificate: {exc}") from exc
    return cert


def parse_der_chain(data: bytes) -> list[x509.Certificate]:
    """Split and load concatenated DER certificates (the Workload API's chain/bundle encoding)."""
    if not data:
        raise X509SvidError("certificate data is empty")
    if data.lstrip().startswith(b"-----BEGIN"):
        raise X509SvidError("certificate data is PEM; concatenated DER is required")
    certs: list[x509.Certificate] = []
    start = 0
    while start < len(data):
        if certs and data[start] != _SEQUENCE_TAG:
            raise X509SvidError(
                f"{len(data) - start} trailing bytes after certificate {len(certs) - 1} "
                "are not a DER certificate"
            )
        end = _sequence_end(data, start, len(certs))
        certs.append(
            _load_cert(x509.load_der_x509_certificate, data[start:end], f"certificate {len(certs)}")
        )
        start = end
    return certs


def chain_to_der(certs: Iterable[x509.Certificate]) -> bytes:
    """Concatenated DER, leaf first for a chain."""
    return _encode(certs, serialization.Encoding.DER)


def certs_to_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """PEM CERTIFICATE blocks, one per certificate, in order."""
    return _encode(certs, serialization.Encoding.PEM)


def _encode(certs: Iterable[x509.Certificate], encoding: serialization.Encoding) -> bytes:
    encoded = [cert.public_bytes(encoding) for cert in certs]
    if not encoded:
        raise X509SvidError("no certificates to encode")
    return b"".join(encoded)


def load_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Load PEM CERTIFICATE blocks; any other block type (a key, say) is refused, not skipped."""
    if not data.strip():
        raise X509SvidError("PEM data is empty")
    if data[0] == _SEQUENCE_TAG:
        raise X509SvidError("data is DER, not PEM")
    blocks = list(_PEM_BLOCK.finditer(data))
    if data.count(b"-----BEGIN ") != len(blocks):
        raise X509SvidError("PEM data has an unterminated or malformed block")
    if not blocks:
        raise X509SvidError("no PEM CERTIFICATE block found")
    certs: list[x509.Certificate] = []
    for position, block in enumerate(blocks):
        kind = block.group(1).decode()
        if kind != "CERTIFICATE":
            raise X509SvidError(f"PEM block {position} is {kind!r}, not a CERTIFICATE")
        certs.append(
            _load_cert(x509.load_pem_x509_certificate, block.group(0), f"PEM block {position}")
        )
    return certs


def _load_key_der(key_der: bytes) -> PrivateKey:
    if key_der.lstrip().startswith(b"-----"):
        raise X509SvidError("SVID private key is PEM; PKCS#8 DER is required")
    try:
        return load_private_key(key_der)
    except UnsupportedKeyError as exc:
        raise X509SvidError(f"SVID private key: {exc}") from exc


@dataclass(frozen=True)
class X509Svid:
    """An X.509-SVID as the Workload API carries it: leaf first, intermediates, never the root."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.cert_chain:
            raise X509SvidError("an X.509-SVID needs at least its leaf certificate")
        leaf_id = _single_spiffe_id(self.leaf, "leaf")
        if leaf_id != self.spiffe_id:
            raise X509SvidError(f"spiffe_id {self.spiffe_id} does not match the leaf's {leaf_id}")
        try:
            leaf_spki = _spki(self.leaf)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise X509SvidError(f"leaf public key cannot be read: {exc}") from exc
        if _spki(self.private_key.public_key()) != leaf_spki:
            raise X509SvidError("private key does not match the leaf certificate's public key")

    @classmethod
    def parse(cls, chain_der: bytes, key_der: bytes) -> X509Svid:
        """Parse Workload API bytes: concatenated DER chain and PKCS#8 DER key, fully checked."""
        chain = parse_der_chain(chain_der)
        spiffe_id, _ = _check_chain(chain)
        return cls(spiffe_id, tuple(chain), _load_key_der(key_der))

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def expires_at(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def chain_der(self) -> bytes:
        return chain_to_der(self.cert_chain)

    def key_der(self) -> bytes:
        """Unencrypted PKCS#8 DER, as ``X509SVID.x509_svid_key`` requires."""
        return private_key_to_der(self.private_key)


def _anchor(
    last: x509.Certificate,
    label: str,
    roots: Sequence[x509.Certificate],
    bundle: str,
    now: datetime,
) -> x509.Certificate:
    """The bundle authority that issued ``last`` and is valid at ``now``."""
    signers = [root for root in roots if issuance_problem(last, root) is None]
    if not signers:
        raise X509SvidError(f"{label} is not signed by any authority in {bundle}")
    # During a CA rotation an old and a new authority may both verify; any valid one will do.
    for root in signers:
        if _validity_problem(root, now) is None:
            return root
    problem = _validity_problem(signers[0], now)
    raise X509SvidError(
        f"{label} is signed by authority ({describe_certificate(signers[0])}) in {bundle}, "
        f"which {problem}"
    )


def _check_critical_extensions(cert: x509.Certificate, label: str) -> None:
    # RFC 5280 §4.2: a certificate with a critical extension the validator does not process
    # must be rejected (NameConstraints included: herald does not evaluate them).
    for ext in _extensions(cert, label):
        if ext.critical and ext.oid not in _ENFORCED_CRITICAL:
            raise X509SvidError(
                f"{label} has a critical {type(ext.value).__name__} extension "
                f"({ext.oid.dotted_string}) that herald does not enforce"
            )


def _check_path_lengths(path: Sequence[x509.Certificate], labels: Sequence[str]) -> None:
    # path[0] is the leaf, so the CA at path[j] has j - 1 CAs between itself and the leaf.
    for j in range(1, len(path)):
        constraints = _find(path[j], x509.BasicConstraints, labels[j])
        if constraints is None or constraints.path_length is None:
            continue
        if j - 1 > constraints.path_length:
            raise X509SvidError(
                f"{labels[j]} allows {constraints.path_length} intermediate CA(s) below it "
                f"(pathLenConstraint) but the chain has {j - 1}"
            )


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    trust_domain: TrustDomain | None = None,
    now: datetime,
) -> SpiffeId:
    """Verify a peer's chain (leaf first) against the X.509 authorities of its trust domain.

    Returns the leaf's SPIFFE ID. The last chain certificate may itself be an authority.
    """
    _aware(now, "now")
    if not chain:
        raise X509SvidError("certificate chain is empty")
    spiffe_id, labels = _check_chain(chain)
    if trust_domain is not None and spiffe_id.trust_domain != trust_domain:
        raise X509SvidError(
            f"{labels[0]} has SPIFFE ID {spiffe_id}, which is not in trust domain {trust_domain}"
        )
    bundle = f"the bundle for {spiffe_id.trust_domain}"
    if not roots:
        raise X509SvidError(f"{bundle} has no authorities")
    for cert, label in zip(chain, labels, strict=True):
        _check_critical_extensions(cert, label)
        problem = _validity_problem(cert, now)
        if problem is not None:
            raise X509SvidError(f"{label} {problem}")
    for position in range(len(chain) - 1):
        problem = issuance_problem(chain[position], chain[position + 1])
        if problem is not None:
            raise X509SvidError(
                f"{labels[position]} is not signed by {labels[position + 1]}: {problem}"
            )
    path, path_labels = list(chain), list(labels)
    if len(chain) == 1 or chain[-1] not in roots:
        root = _anchor(chain[-1], labels[-1], roots, bundle, now)
        path.append(root)
        path_labels.append(f"authority ({describe_certificate(root)}) in {bundle}")
    _check_path_lengths(path, path_labels)
    return spiffe_id
