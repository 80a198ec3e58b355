"""Trust bundles: one trust domain's X.509 and JWT authorities, in every encoding SPIFFE uses.

A Bundle is immutable and always tied to its trust domain. It converts to and from the SPIFFE
bundle format (a JWK Set with ``spiffe_sequence`` and ``spiffe_refresh_hint``), the Workload
API's two encodings (concatenated DER certificates; a plain JWK Set of JWT keys) and PEM.
BundleSet holds bundles by trust domain; parse_bundle_map reads the SPIFFE bundle-map document.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from herald_core import b64url, strictjson
from herald_core.keys import PublicKey, public_key_to_der
from herald_core.spiffeid import SpiffeIdError, TrustDomain
from herald_core.x509svid import parse_der_chain

X509_SVID_USE: Final = "x509-svid"
JWT_SVID_USE: Final = "jwt-svid"
MAX_SEQUENCE_NUMBER: Final = 2**64 - 1
MAX_REFRESH_HINT: Final = 2**63 - 1
MIN_RSA_BITS: Final = 2048

# The curves a JWT-SVID algorithm can use (ES256/384/512), by JWK "crv" name (RFC 7518 §6.2.1).
_CURVES_BY_CRV: Final[dict[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CRV_BY_CURVE: Final = {curve.name: crv for crv, curve in _CURVES_BY_CRV.items()}
_KEY_PARAMS: Final = {"EC": ("crv", "x", "y"), "RSA": ("n", "e")}


class BundleError(ValueError):
    """A bundle, bundle document or bundle map that is malformed; the message says what is wrong."""


@dataclass(frozen=True)
class Bundle:
    """The authorities one trust domain publishes.

    ``jwt_authorities`` maps key IDs to public keys and is stored read-only. Use
    ``dataclasses.replace`` to derive a changed bundle; the fields are re-validated.
    """

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, PublicKey] = field(default_factory=lambda: MappingProxyType({}))
    refresh_hint: int | None = None
    sequence_number: int = 0

    def __post_init__(self) -> None:
        # Copy both collections so a caller's list or dict cannot change the bundle afterwards.
        object.__setattr__(self, "x509_authorities", tuple(self.x509_authorities))
        object.__setattr__(self, "jwt_authorities", MappingProxyType(dict(self.jwt_authorities)))
        if not isinstance(self.trust_domain, TrustDomain):
            raise BundleError(f"trust_domain must be a TrustDomain, not {_type(self.trust_domain)}")
        for index, cert in enumerate(self.x509_authorities):
            if not isinstance(cert, x509.Certificate):
                raise BundleError(
                    f"x509_authorities[{index}] is a {_type(cert)}, not a certificate"
                )
            _check_key(_certificate_key(cert), f"x509_authorities[{index}]")
        for kid, key in self.jwt_authorities.items():
            if not isinstance(kid, str) or not kid:
                raise BundleError(f"JWT authority key IDs must be non-empty strings, not {kid!r}")
            _check_key(key, f"JWT authority {kid!r}")
        _check_int(self.sequence_number, "sequence_number", MAX_SEQUENCE_NUMBER)
        if self.refresh_hint is not None:
            _check_int(self.refresh_hint, "refresh_hint", MAX_REFRESH_HINT)

    def __hash__(self) -> int:
        keys = frozenset((kid, public_key_to_der(key)) for kid, key in self.jwt_authorities.items())
        return hash(
            (
                self.trust_domain,
                self.x509_authorities,
                keys,
                self.refresh_hint,
                self.sequence_number,
            )
        )

    def x509_der(self) -> bytes:
        """The X.509 authorities as concatenated DER certificates, the Workload API encoding."""
        return b"".join(cert.public_bytes(Encoding.DER) for cert in self.x509_authorities)

    def x509_pem(self) -> bytes:
        return b"".join(cert.public_bytes(Encoding.PEM) for cert in self.x509_authorities)

    def to_spiffe_jwks(self) -> bytes:
        """The SPIFFE bundle format: every authority as a JWK, plus sequence and refresh hint."""
        keys: list[dict[str, Any]] = [
            {"use": X509_SVID_USE, **_key_to_jwk(_certificate_key(cert)), "x5c": [_x5c(cert)]}
            for cert in self.x509_authorities
        ]
        keys += [
            {"use": JWT_SVID_USE, **_key_to_jwk(key, kid)} for kid, key in self._sorted_jwt_keys()
        ]
        doc: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence_number}
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return _dump(doc)

    def to_workload_jwt_jwks(self) -> bytes:
        """The JWT keys alone, each with ``kid`` and without ``use``: what the Workload API sends.

        SPIRE strips X.509 entries, ``use`` and the SPIFFE members here; py-spiffe cannot parse
        a JWK without ``kid``, so an X.509 entry would break every JWT client.
        """
        return _dump({"keys": [_key_to_jwk(key, kid) for kid, key in self._sorted_jwt_keys()]})

    def _sorted_jwt_keys(self) -> list[tuple[str, PublicKey]]:
        # Sorted so that equal bundles always encode to the same bytes.
        return sorted(self.jwt_authorities.items(), key=lambda item: item[0])

    @classmethod
    def from_spiffe_jwks(cls, trust_domain: TrustDomain, data: bytes | str) -> Bundle:
        """Parse a SPIFFE bundle (JWK Set) for ``trust_domain``."""
        where = f"SPIFFE bundle for {trust_domain}"
        return _bundle_from_jwks(trust_domain, _load_json(data, where), where, workload_form=False)

    @classmethod
    def from_jwt_jwks(cls, trust_domain: TrustDomain, data: bytes | str) -> Bundle:
        """Parse the Workload API's JWT bundle (a JWK Set of JWT keys; ``use`` optional)."""
        where = f"JWT bundle for {trust_domain}"
        return _bundle_from_jwks(trust_domain, _load_json(data, where), where, workload_form=True)

    @classmethod
    def from_der(cls, trust_domain: TrustDomain, data: bytes) -> Bundle:
        """X.509 authorities from concatenated DER certificates (empty data: no authorities)."""
        if not data:
            return cls(trust_domain)
        try:
            certs = parse_der_chain(data)
        except ValueError as exc:
            raise BundleError(f"X.509 bundle for {trust_domain} is not DER: {exc}") from exc
        return cls(trust_domain, tuple(certs))

    @classmethod
    def from_pem(cls, trust_domain: TrustDomain, data: bytes) -> Bundle:
        """X.509 authorities from PEM certificates (blank data: no authorities)."""
        if not data.strip():
            return cls(trust_domain)
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise BundleError(f"X.509 bundle for {trust_domain} is not PEM: {exc}") from exc
        return cls(trust_domain, tuple(certs))


class BundleSet(Mapping[TrustDomain, Bundle]):
    """Bundles keyed by their trust domains: the own trust domain's plus federated ones."""

    def __init__(self, bundles: Iterable[Bundle] = ()) -> None:
        self._bundles: dict[TrustDomain, Bundle] = {}
        for bundle in bundles:
            self.put(bundle)

    def put(self, bundle: Bundle) -> None:
        """Add ``bundle``, replacing any bundle of the same trust domain."""
        self._bundles[bundle.trust_domain] = bundle

    def remove(self, trust_domain: TrustDomain) -> Bundle | None:
        """Drop the bundle of ``trust_domain``; returns it, or None when there was none."""
        return self._bundles.pop(trust_domain, None)

    def __getitem__(self, trust_domain: TrustDomain) -> Bundle:
        return self._bundles[trust_domain]

    def __iter__(self) -> Iterator[TrustDomain]:
        return iter(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __repr__(self) -> str:
        return f"BundleSet({sorted(str(td) for td in self._bundles)})"


def parse_bundle_map(data: bytes | str) -> dict[TrustDomain, Bundle]:
    """Parse ``{"trust_domains": {"<td>": <SPIFFE bundle>, ...}}``.

    Keys may be ``td`` or ``spiffe://td``; a trust domain listed twice, in any spelling, is an
    error, as the SPIFFE federation spec requires.
    """
    doc = _load_json(data, "bundle map")
    if not isinstance(doc, dict):
        raise BundleError(f"bundle map must be a JSON object, not {_json_type(doc)}")
    if "trust_domains" not in doc:
        raise BundleError("bundle map has no 'trust_domains' member")
    entries = doc["trust_domains"]
    if not isinstance(entries, dict):
        raise BundleError(
            f"bundle map 'trust_domains' must be an object, not {_json_type(entries)}"
        )
    bundles: dict[TrustDomain, Bundle] = {}
    spellings: dict[TrustDomain, str] = {}
    for name, value in entries.items():
        trust_domain = _map_key(name)
        if trust_domain in bundles:
            raise BundleError(
                f"bundle map lists trust domain {trust_domain} twice "
                f"(as {spellings[trust_domain]!r} and {name!r})"
            )
        where = f"bundle map entry {name!r}"
        bundles[trust_domain] = _bundle_from_jwks(trust_domain, value, where, workload_form=False)
        spellings[trust_domain] = name
    return bundles


def _map_key(name: str) -> TrustDomain:
    try:
        return TrustDomain.parse(name)
    except SpiffeIdError as exc:
        raise BundleError(f"bundle map key {name!r} is not a trust domain: {exc}") from exc


def _bundle_from_jwks(
    trust_domain: TrustDomain, doc: Any, where: str, *, workload_form: bool
) -> Bundle:
    """Build a bundle from a decoded JWK Set.

    Elements with an unknown ``kty`` or ``use`` are skipped, as the SPIFFE bundle spec requires.
    In the Workload API form a missing ``use`` means a JWT key; in the SPIFFE form it means skip.
    """
    if not isinstance(doc, dict):
        raise BundleError(f"{where} must be a JSON object, not {_json_type(doc)}")
    if "keys" not in doc:
        raise BundleError(f"{where} has no 'keys' member")
    elements = doc["keys"]
    if not isinstance(elements, list):
        raise BundleError(f"{where}: 'keys' must be an array, not {_json_type(elements)}")
    certs: list[x509.Certificate] = []
    jwt_keys: dict[str, PublicKey] = {}
    for index, jwk in enumerate(elements):
        element = f"{where}: keys[{index}]"
        if not isinstance(jwk, dict):
            raise BundleError(f"{element} must be an object, not {_json_type(jwk)}")
        kty = jwk.get("kty")
        if not isinstance(kty, str):
            raise BundleError(f"{element} has no 'kty' string")
        use = jwk.get("use", JWT_SVID_USE if workload_form else None)
        if kty not in _KEY_PARAMS:
            continue
        if use == X509_SVID_USE and not workload_form:
            cert = _x509_authority(jwk, kty, element)
            if cert is not None:
                certs.append(cert)
        elif use == JWT_SVID_USE:
            kid = _jwt_kid(jwk, element)
            if kid in jwt_keys:
                raise BundleError(f"{element} repeats key ID {kid!r}")
            jwt_keys[kid] = _jwk_to_key(jwk, kty, element)
    if workload_form:
        return Bundle(trust_domain, jwt_authorities=jwt_keys)
    return Bundle(
        trust_domain,
        tuple(certs),
        jwt_keys,
        refresh_hint=_optional_member(doc, "spiffe_refresh_hint", MAX_REFRESH_HINT, where),
        sequence_number=_optional_member(doc, "spiffe_sequence", MAX_SEQUENCE_NUMBER, where) or 0,
    )


def _x509_authority(jwk: dict[str, Any], kty: str, element: str) -> x509.Certificate | None:
    """The certificate of an ``x509-svid`` JWK; None when it carries no ``x5c`` (ignored)."""
    if "x5c" not in jwk:
        return None
    chain = jwk["x5c"]
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise BundleError(f"{element}: 'x5c' must be a non-empty array of base64 strings")
    # Only the first value counts (SPIFFE X.509-SVID §6); the rest is not trusted.
    try:
        der = base64.b64decode(chain[0], validate=True)
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise BundleError(f"{element}: x5c[0] is not a base64 DER certificate: {exc}") from exc
    key = _certificate_key(cert)
    _check_key(key, element)
    cert_kty = _kty(key)
    if kty != cert_kty:
        raise BundleError(f"{element} has kty {kty!r} but its certificate has an {cert_kty} key")
    if any(name in jwk for name in _KEY_PARAMS[kty]) and _jwk_to_key(jwk, kty, element) != key:
        raise BundleError(f"{element}: the JWK key parameters do not match the certificate's key")
    return cert


def _jwt_kid(jwk: dict[str, Any], element: str) -> str:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise BundleError(f"{element} is a JWT authority without a 'kid'")
    return kid


def _optional_member(doc: dict[str, Any], name: str, limit: int, where: str) -> int | None:
    value = doc.get(name)
    return None if value is None else _check_int(value, name, limit, f"{where}: ")


def _check_int(value: object, name: str, limit: int, prefix: str = "") -> int:
    """``value`` if it is an int (not a bool) in ``[0, limit]``; BundleError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{prefix}{name} must be an integer, not {_json_type(value)}")
    if not 0 <= value <= limit:
        raise BundleError(f"{prefix}{name} must be between 0 and {limit}, not {value}")
    return value


def _certificate_key(cert: x509.Certificate) -> object:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"certificate has an unreadable public key: {exc}") from exc


def _check_key(key: object, what: str) -> None:
    """Accept the keys a JWT-SVID algorithm can use: EC P-256/P-384/P-521 or RSA >= 2048 bits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CRV_BY_CURVE:
            raise BundleError(f"{what} has an EC key on unsupported curve {key.curve.name}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BundleError(f"{what} has a {key.key_size}-bit RSA key; at least 2048 is needed")
    else:
        raise BundleError(f"{what} has a {_type(key)}; only EC and RSA public keys are supported")


def _kty(key: object) -> str:
    """The JWK key type of a key _check_key accepted."""
    return "EC" if isinstance(key, ec.EllipticCurvePublicKey) else "RSA"


def _key_to_jwk(key: object, kid: str | None = None) -> dict[str, str]:
    """The public JWK members of ``key`` (RFC 7518 §6), with ``kid`` after ``kty`` if given."""
    jwk = {"kty": _kty(key)}
    if kid is not None:
        jwk["kid"] = kid
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = _coordinate_size(key.curve)
        numbers = key.public_numbers()
        return jwk | {
            "crv": _CRV_BY_CURVE[key.curve.name],
            "x": _b64url_int(numbers.x, size),
            "y": _b64url_int(numbers.y, size),
        }
    assert isinstance(key, rsa.RSAPublicKey)
    rsa_numbers = key.public_numbers()
    return jwk | {"n": _b64url_int(rsa_numbers.n), "e": _b64url_int(rsa_numbers.e)}


def _jwk_to_key(jwk: dict[str, Any], kty: str, element: str) -> PublicKey:
    key: PublicKey
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES_BY_CRV:
            raise BundleError(f"{element} has an unsupported or missing curve {crv!r}")
        curve = _CURVES_BY_CRV[crv]
        size = _coordinate_size(curve)
        numbers: ec.EllipticCurvePublicNumbers | rsa.RSAPublicNumbers = (
            ec.EllipticCurvePublicNumbers(
                _b64url_member(jwk, "x", element, size),
                _b64url_member(jwk, "y", element, size),
                curve,
            )
        )
    else:
        numbers = rsa.RSAPublicNumbers(
            _b64url_member(jwk, "e", element), _b64url_member(jwk, "n", element)
        )
    try:
        key = numbers.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{element} is not a valid {kty} public key: {exc}") from exc
    _check_key(key, element)
    return key


def _coordinate_size(curve: ec.EllipticCurve) -> int:
    """EC coordinates are fixed-length in a JWK: leading zero bytes are kept."""
    return (curve.key_size + 7) // 8


def _b64url_member(jwk: dict[str, Any], name: str, element: str, size: int | None = None) -> int:
    """A base64url (unpadded) big-endian integer member; exactly ``size`` bytes when given."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{element} has no {name!r} string")
    raw = b64url.decode(value)
    if raw is None:
        raise BundleError(f"{element}: {name!r} is not unpadded base64url")
    if size is not None and len(raw) != size:
        raise BundleError(f"{element}: {name!r} is {len(raw)} bytes long; the curve needs {size}")
    return int.from_bytes(raw, "big")


def _b64url_int(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url.encode(value.to_bytes(length, "big"))


def _x5c(cert: x509.Certificate) -> str:
    # x5c is standard base64 with padding (RFC 7517 §4.7), unlike every other JWK member.
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _load_json(data: bytes | str, where: str) -> Any:
    """Decode JSON, refusing duplicate member names and the non-standard NaN/Infinity."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return strictjson.loads(text)
    except strictjson.DuplicateMemberError as exc:
        raise BundleError(f"{where} has a duplicate JSON member {exc.name!r}") from exc
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where} is not valid JSON: {exc}") from exc


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _type(value: object) -> str:
    return type(value).__name__
