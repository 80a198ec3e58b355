"""Private and public keys: the key types herald supports, generation, DER encoding, JWS alg.

EC P-256 is the default for every key (SPIRE's default too); P-384 and RSA are accepted for
upstream CAs and for operators who must match an existing PKI.
"""

from __future__ import annotations

from enum import StrEnum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class UnsupportedKeyError(ValueError):
    """A key of a type or size herald does not accept."""


class KeyType(StrEnum):
    """Key types by the names SPIRE's configuration uses."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"


_CURVES: dict[str, KeyType] = {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}
_RSA_SIZES: dict[int, KeyType] = {2048: KeyType.RSA_2048, 4096: KeyType.RSA_4096}


def generate_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    """A fresh private key of ``key_type``; CPU-heavy for RSA, so call it off the event loop."""
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    size = 2048 if key_type is KeyType.RSA_2048 else 4096
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def key_type_of(key: PrivateKey | PublicKey | object) -> KeyType:
    """The KeyType of a key; UnsupportedKeyError for anything herald does not accept."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        found = _CURVES.get(key.curve.name)
        if found is None:
            raise UnsupportedKeyError(f"unsupported EC curve {key.curve.name}; use P-256 or P-384")
        return found
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        found = _RSA_SIZES.get(key.key_size)
        if found is None:
            raise UnsupportedKeyError(f"unsupported RSA key size {key.key_size}; use 2048 or 4096")
        return found
    raise UnsupportedKeyError(
        f"unsupported key type {type(key).__name__}; use EC (P-256/P-384) or RSA"
    )


def jws_algorithm(key: PrivateKey | PublicKey) -> str:
    """The JWS ``alg`` a JWT signed with this key carries."""
    key_type = key_type_of(key)
    if key_type is KeyType.EC_P256:
        return "ES256"
    if key_type is KeyType.EC_P384:
        return "ES384"
    return "RS256"


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest Go's x509 (so SPIRE) pairs with a signing key: SHA-384 for P-384, else SHA-256.

    Raises UnsupportedKeyError for a key herald does not accept.
    """
    return hashes.SHA384() if key_type_of(key) is KeyType.EC_P384 else hashes.SHA256()


def private_key_to_der(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER, the encoding the Workload API requires for ``x509_svid_key``."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes) -> PrivateKey:
    """Load a PEM or DER private key of a supported type; UnsupportedKeyError says what is wrong."""
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UnsupportedKeyError(f"cannot parse private key: {exc}") from exc
    key_type_of(key)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def public_key_to_der(key: PublicKey | CertificatePublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER, how herald's own protos carry public keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_der(data: bytes) -> PublicKey:
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UnsupportedKeyError(f"cannot parse public key: {exc}") from exc
    key_type_of(key)
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key
