"""Builders of deliberately malformed or hand-made certificates for tests.

herald's own builders are in herald_core.x509svid; a test that only needs a good CA or leaf
should use those. The builders here start from a good SPIRE-shaped extension set, keyed by class,
that a test changes (``drop``, ``swap``) so each case shows exactly which field is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herald_core.keys import KeyType, PrivateKey, generate_key

ExtMap = dict[type[x509.ExtensionType], tuple[x509.ExtensionType, bool]]
"""Extensions by class, each with its criticality."""

Change = Callable[[ExtMap], None]

SIGNATURE_HASHES = [
    (KeyType.EC_P256, hashes.SHA256),
    (KeyType.EC_P384, hashes.SHA384),
    (KeyType.RSA_2048, hashes.SHA256),
]
"""The digest herald signs with for each key type, as Go's x509 (so SPIRE) pairs them."""

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: PrivateKey


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def unknown_key_algorithm(data: bytes) -> bytes:
    """``data`` with id-ecPublicKey (1.2.840.10045.2.1) turned into an unknown OID (...2.99)."""
    return data.replace(bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("2a8648ce3d0263"))


def key_usage(**flags: bool) -> x509.KeyUsage:
    """A KeyUsage with only ``flags`` set, named as x509.KeyUsage's arguments."""
    return x509.KeyUsage(**(dict.fromkeys(_KEY_USAGE_FLAGS, False) | flags))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


_CUSTOM_LEAF = _name("custom-leaf")


def keep(exts: ExtMap) -> None:
    """Leave the good extension set as it is (for cases made by the URIs or the signer)."""


def drop(ext_type: type[x509.ExtensionType]) -> Change:
    return lambda exts: exts.__delitem__(ext_type)


def swap(ext: x509.ExtensionType, critical: bool = True) -> Change:
    def change(exts: ExtMap) -> None:
        exts[type(ext)] = (ext, critical)

    return change


def build(
    *,
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: CertificatePublicKeyTypes,
    signer: CertificateIssuerPrivateKeyTypes,
    extensions: ExtMap,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext, critical in extensions.values():
        builder = builder.add_extension(ext, critical=critical)
    # Ed25519 hashes internally and takes no separate digest.
    digest = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, digest)


def custom_leaf(
    issuer: Ca,
    change: Change = keep,
    *,
    uris: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name = _CUSTOM_LEAF,
    signer: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf issued (by name) by ``issuer``, with ``change`` applied to a good leaf's extensions.

    ``signer`` forges the signature under the issuer's name.
    """
    key = generate_key()
    exts: ExtMap = {
        x509.BasicConstraints: (x509.BasicConstraints(ca=False, path_length=None), True),
        x509.KeyUsage: (
            key_usage(digital_signature=True, key_encipherment=True, key_agreement=True),
            True,
        ),
        x509.ExtendedKeyUsage: (
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        ),
        x509.SubjectAlternativeName: (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            False,
        ),
    }
    cert = _issue(
        issuer,
        key,
        exts,
        change,
        subject=subject,
        signer=signer or issuer.key,
        not_before=not_before,
        not_after=not_after,
    )
    return cert, key


def custom_ca(
    parent: Ca,
    change: Change = keep,
    *,
    uri: str | None,
    not_before: datetime,
    not_after: datetime,
    common_name: str = "custom-ca",
    path_len: int | None = None,
) -> Ca:
    """A CA issued by ``parent``, with ``change`` applied to a good CA's extensions.

    ``uri`` is its one URI SAN; None leaves the SAN out, like an upstream CA without a SPIFFE ID.
    """
    key = generate_key()
    exts: ExtMap = {
        x509.BasicConstraints: (x509.BasicConstraints(ca=True, path_length=path_len), True),
        x509.KeyUsage: (key_usage(key_cert_sign=True, crl_sign=True), True),
    }
    if uri is not None:
        exts[x509.SubjectAlternativeName] = (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
            False,
        )
    cert = _issue(
        parent,
        key,
        exts,
        change,
        subject=_name(common_name),
        signer=parent.key,
        not_before=not_before,
        not_after=not_after,
    )
    return Ca(cert, key)


def _issue(
    issuer: Ca,
    key: PrivateKey,
    exts: ExtMap,
    change: Change,
    *,
    subject: x509.Name,
    signer: PrivateKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """``key``'s certificate under ``issuer``'s name: SKI and AKI added, then ``change`` applied."""
    exts[x509.SubjectKeyIdentifier] = (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        False,
    )
    exts[x509.AuthorityKeyIdentifier] = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski(issuer.cert)),
        False,
    )
    change(exts)
    return build(
        subject=subject,
        issuer_name=issuer.cert.subject,
        public_key=key.public_key(),
        signer=signer,
        extensions=exts,
        not_before=not_before,
        not_after=not_after,
    )
