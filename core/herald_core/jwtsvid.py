"""JWT-SVIDs: minting, parsing and validating them exactly as the SPIFFE JWT-SVID standard says.

Validation runs its checks in a fixed order: compact serialization, the header (``alg`` against
the allow-list first, then only ``alg``/``kid``/``typ``), the key chosen by the ``sub`` trust
domain and ``kid``, the key's fit with ``alg``, the signature, then ``exp``/``nbf`` and ``aud``.
Error messages may name claims and header fields but never repeat the token.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from herald_core import b64url, strictjson
from herald_core.bundle import Bundle
from herald_core.keys import PrivateKey, PublicKey, UnsupportedKeyError, jws_algorithm
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

ALLOWED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALLOWED_HEADER_FIELDS: Final = frozenset({"alg", "kid", "typ"})
ALLOWED_TYPES: Final = frozenset({"JWT", "JOSE"})
# Claims herald sets itself when minting; extra_claims may not override them.
SPIFFE_CLAIMS: Final = frozenset({"sub", "aud", "exp", "iat"})

_EC_CURVE_FOR_ALG: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SHOW_LIMIT: Final = 80
# Bounds on what a caller may ask to be put in ``aud``. Unbounded, one 3.9 MB audience was signed
# and then could not be delivered; real audiences are a few service names or URLs.
MAX_AUDIENCES: Final = 32
MAX_AUDIENCE_BYTES: Final = 1024
_JWS: Final = jwt.PyJWS()

BundleSource = Mapping[TrustDomain, Bundle] | Callable[[TrustDomain], Bundle | None]
"""Where validation finds a trust domain's bundle: a BundleSet (any mapping) or a function."""


class JwtSvidError(ValueError):
    """A JWT-SVID that cannot be minted, parsed or validated; the message says which rule failed."""


@dataclass(frozen=True)
class JwtSvid:
    """A parsed JWT-SVID. ``claims`` is read-only; ``hint`` is the registration entry's hint.

    The token is left out of repr() so that logging a JwtSvid never leaks a usable credential.
    """

    token: str = field(repr=False)
    spiffe_id: SpiffeId
    audiences: tuple[str, ...]
    expires_at: datetime
    issued_at: datetime | None
    claims: Mapping[str, Any]
    hint: str = ""

    def __hash__(self) -> int:
        return hash(self.token)

    @classmethod
    def parse_insecure(
        cls, token: str, audiences: Collection[str] | None = None, *, now: datetime
    ) -> JwtSvid:
        """Parse and check ``token`` like py-spiffe's parse_insecure, WITHOUT verifying it.

        Use only on a token just received from a trusted source (the Workload API). Every one of
        ``audiences`` must be in the token's ``aud``; None skips the audience check.
        """
        expected = None if audiences is None else _expected_audiences(audiences)
        _check_aware(now, "now")
        _, claims = _decode(token)
        return _build(token, claims, _subject(claims), expected, now, leeway=0.0)


def mint_jwt_svid(
    *,
    key: PrivateKey,
    key_id: str,
    spiffe_id: SpiffeId,
    audiences: Sequence[str],
    issued_at: datetime,
    expires_at: datetime,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a JWT-SVID the way SPIRE does.

    The header is exactly ``alg``/``kid``/``typ: JWT``; ``aud`` is always a list holding every
    requested audience (empty ones dropped, duplicates once); ``exp`` and ``iat`` are whole
    seconds.
    """
    if spiffe_id.is_root:
        raise JwtSvidError(f"cannot mint a JWT-SVID for {spiffe_id}: a trust domain ID has no path")
    if not key_id:
        raise JwtSvidError("key_id is empty; a JWT-SVID header needs a kid")
    aud = _mint_audiences(audiences)
    iat = _epoch_seconds(issued_at, "issued_at")
    exp = _epoch_seconds(expires_at, "expires_at")
    if exp <= iat:
        raise JwtSvidError(
            f"expires_at ({expires_at.isoformat()}) must be at least a second after "
            f"issued_at ({issued_at.isoformat()})"
        )
    extra = dict(extra_claims or {})
    clash = sorted(SPIFFE_CLAIMS & extra.keys())
    if clash:
        raise JwtSvidError(f"extra_claims cannot set {clash[0]!r}; herald sets it")
    try:
        alg = jws_algorithm(key)
    except UnsupportedKeyError as exc:
        raise JwtSvidError(f"cannot sign a JWT-SVID: {exc}") from exc
    claims = {"sub": str(spiffe_id), "aud": aud, "exp": exp, "iat": iat, **extra}
    try:
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": key_id, "typ": "JWT"})
    except (TypeError, ValueError, jwt.PyJWTError) as exc:
        raise JwtSvidError(f"cannot encode the JWT-SVID claims: {exc}") from exc


def validate_jwt_svid(
    token: str,
    bundles: BundleSource,
    audience: str | Collection[str],
    *,
    now: datetime,
    leeway_seconds: float = 0.0,
) -> JwtSvid:
    """Verify ``token`` against the bundle of its subject's trust domain; see the module doc.

    Every expected audience must be in the token's ``aud``. ``leeway_seconds`` is the clock skew
    tolerated on ``exp`` and ``nbf``.
    """
    expected = _expected_audiences(audience)
    _check_aware(now, "now")
    if not math.isfinite(leeway_seconds) or leeway_seconds < 0:
        raise JwtSvidError(f"leeway_seconds must be a finite number >= 0, not {leeway_seconds}")
    header, claims = _decode(token)
    alg: str = header["alg"]
    kid = header.get("kid")
    if kid is None:
        raise JwtSvidError("header has no 'kid'; the signing key cannot be chosen")
    spiffe_id = _subject(claims)
    key = _signing_key(bundles, spiffe_id.trust_domain, kid, alg)
    _verify_signature(token, key, alg)
    return _build(token, claims, spiffe_id, expected, now, leeway_seconds)


def jwt_cache_key(spiffe_id: SpiffeId, audiences: Iterable[str]) -> str:
    """SHA-256 hex of the ID, NUL, then each audience (sorted) followed by NUL.

    Order-independent in the audiences like SPIRE's jwtSVIDKey; the NULs keep
    (``a``, ``bc``) and (``ab``, ``c``) apart.
    """
    digest = hashlib.sha256(str(spiffe_id).encode() + b"\0")
    for aud in sorted(audiences):
        digest.update(aud.encode() + b"\0")
    return digest.hexdigest()


def needs_refresh(
    issued_at: datetime, expires_at: datetime, now: datetime, jitter_fraction: float = 0.0
) -> bool:
    """True once at most half the lifetime remains (SPIRE rotationutil), or when expired.

    ``jitter_fraction`` scales that half: 0.1 refreshes when 55% remains, -0.1 at 45%. Pass a
    random value in [-0.1, 0.1] for SPIRE's ±10% so that many tokens do not refresh together.
    """
    if not -1.0 < jitter_fraction < 1.0:
        raise JwtSvidError(f"jitter_fraction must be between -1 and 1, not {jitter_fraction}")
    if now >= expires_at or expires_at <= issued_at:
        return True
    half_life = (expires_at - issued_at) / 2
    return expires_at - now <= half_life * (1.0 + jitter_fraction)


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header (checked) and claims (unverified) of a compact-serialized token."""
    if not isinstance(token, str):
        raise JwtSvidError(f"token must be a string, not {type(token).__name__}")
    if not token:
        raise JwtSvidError("token is empty")
    if token.lstrip().startswith("{"):
        raise JwtSvidError(
            "token uses JWS JSON serialization; a JWT-SVID must use compact serialization"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError(
            f"token has {len(parts)} dot-separated parts; compact serialization has exactly 3"
        )
    header = _json_object(parts[0], "header")
    _check_header(header)
    claims = _json_object(parts[1], "payload")
    if b64url.decode(parts[2]) is None:
        raise JwtSvidError("token signature is not unpadded base64url")
    return header, claims


def _check_header(header: dict[str, Any]) -> None:
    # alg first, before anything else is believed: this is what stops alg=none and HS256 tricks.
    if "alg" not in header:
        raise JwtSvidError("header has no 'alg'")
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise JwtSvidError(
            f"algorithm {_show(alg)} is not allowed; a JWT-SVID uses one of "
            f"{', '.join(sorted(ALLOWED_ALGORITHMS))}"
        )
    extra = sorted(set(header) - ALLOWED_HEADER_FIELDS)
    if extra:
        raise JwtSvidError(
            f"header field {_show(extra[0])} is not allowed; a JWT-SVID header has only "
            "alg, kid and typ"
        )
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ not in ALLOWED_TYPES:
        raise JwtSvidError(f"header 'typ' is {_show(typ)}; it must be JWT or JOSE")
    if "kid" in header and (not isinstance(header["kid"], str) or not header["kid"]):
        raise JwtSvidError("header 'kid' must be a non-empty string")


def _subject(claims: dict[str, Any]) -> SpiffeId:
    if "sub" not in claims:
        raise JwtSvidError("token has no 'sub' claim")
    sub = claims["sub"]
    if not isinstance(sub, str):
        raise JwtSvidError("'sub' claim must be a string")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except SpiffeIdError as exc:
        raise JwtSvidError(f"'sub' claim is not a SPIFFE ID: {exc}") from exc
    if spiffe_id.is_root:
        raise JwtSvidError(
            f"'sub' claim {spiffe_id} is a trust domain ID; a JWT-SVID subject needs a path"
        )
    return spiffe_id


def _signing_key(bundles: BundleSource, trust_domain: TrustDomain, kid: str, alg: str) -> PublicKey:
    bundle = bundles.get(trust_domain) if isinstance(bundles, Mapping) else bundles(trust_domain)
    if bundle is None:
        raise JwtSvidError(f"no bundle for trust domain {trust_domain}")
    if bundle.trust_domain != trust_domain:
        raise JwtSvidError(
            f"the bundle found for trust domain {trust_domain} is for {bundle.trust_domain}"
        )
    key = bundle.jwt_authorities.get(kid)
    if key is None:
        raise JwtSvidError(f"key ID {_show(kid)} not found in the bundle for {trust_domain}")
    _check_key_fits(key, alg, kid)
    return key


def _check_key_fits(key: PublicKey, alg: str, kid: str) -> None:
    """Refuse a key whose type cannot produce ``alg`` signatures (say, an EC key for RS256)."""
    if alg in _EC_CURVE_FOR_ALG:
        fits = (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVE_FOR_ALG[alg]
        )
    else:
        fits = isinstance(key, rsa.RSAPublicKey)
    if not fits:
        raise JwtSvidError(f"key ID {_show(kid)} is {_describe_key(key)}; it cannot verify {alg}")


def _verify_signature(token: str, key: PublicKey, alg: str) -> None:
    try:
        _JWS.decode(token, key=key, algorithms=[alg])
    except jwt.InvalidSignatureError as exc:
        raise JwtSvidError("signature verification failed") from exc
    except jwt.PyJWTError as exc:
        raise JwtSvidError(f"signature could not be checked: {exc}") from exc


def _build(
    token: str,
    claims: dict[str, Any],
    spiffe_id: SpiffeId,
    expected: tuple[str, ...] | None,
    now: datetime,
    leeway: float,
) -> JwtSvid:
    """Check the time and audience claims and assemble the JwtSvid."""
    expires_at = _time_claim(claims, "exp")
    if expires_at is None:
        raise JwtSvidError("token has no 'exp' claim")
    if now.timestamp() >= expires_at.timestamp() + leeway:
        raise JwtSvidError("token has expired")
    not_before = _time_claim(claims, "nbf")
    if not_before is not None and now.timestamp() + leeway < not_before.timestamp():
        raise JwtSvidError("token is not valid yet ('nbf' is in the future)")
    audiences = _token_audiences(claims)
    for aud in expected or ():
        if aud not in audiences:
            raise JwtSvidError(
                f"audience {_show(aud)} not in token audiences {_show(list(audiences))}"
            )
    return JwtSvid(
        token=token,
        spiffe_id=spiffe_id,
        audiences=audiences,
        expires_at=expires_at,
        issued_at=_time_claim(claims, "iat"),
        claims=MappingProxyType(claims),
    )


def _time_claim(claims: dict[str, Any], name: str) -> datetime | None:
    """A NumericDate claim as an aware datetime; None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtSvidError(f"'{name}' claim must be a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise JwtSvidError(f"'{name}' claim is out of range") from exc


def _token_audiences(claims: dict[str, Any]) -> tuple[str, ...]:
    if "aud" not in claims:
        raise JwtSvidError("token has no 'aud' claim")
    aud = claims["aud"]
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise JwtSvidError("'aud' claim must be a string or an array of strings")
    audiences = tuple(value for value in values if value)
    if not audiences:
        raise JwtSvidError("'aud' claim has no non-empty audience")
    return audiences


def _expected_audiences(audience: str | Collection[str]) -> tuple[str, ...]:
    values = (audience,) if isinstance(audience, str) else tuple(audience)
    if not values:
        raise JwtSvidError("no expected audience given")
    if not all(isinstance(value, str) and value for value in values):
        raise JwtSvidError("expected audiences must be non-empty strings")
    return values


def check_audience(audience: str) -> None:
    """Refuse an audience longer than MAX_AUDIENCE_BYTES, with its length in the message."""
    size = len(audience.encode())
    if size > MAX_AUDIENCE_BYTES:
        raise JwtSvidError(
            f"audience {_show(audience)} is {size} bytes long; at most {MAX_AUDIENCE_BYTES} "
            "are allowed"
        )


def check_audiences(audiences: Collection[str]) -> None:
    """Refuse more than MAX_AUDIENCES audiences, or one that is too long."""
    if len(audiences) > MAX_AUDIENCES:
        raise JwtSvidError(
            f"{len(audiences)} audiences requested; at most {MAX_AUDIENCES} are allowed"
        )
    for audience in audiences:
        check_audience(audience)


def _mint_audiences(audiences: Sequence[str]) -> list[str]:
    if isinstance(audiences, str):
        raise JwtSvidError("audiences must be a sequence of strings, not a single string")
    kept = list(dict.fromkeys(aud for aud in audiences if aud))
    if not kept:
        raise JwtSvidError("no audience given; a JWT-SVID needs at least one non-empty audience")
    check_audiences(kept)
    return kept


def _epoch_seconds(when: datetime, name: str) -> int:
    _check_aware(when, name)
    return math.floor(when.timestamp())


def _check_aware(when: datetime, name: str) -> None:
    if not isinstance(when, datetime) or when.utcoffset() is None:
        raise JwtSvidError(f"{name} must be a timezone-aware datetime")


def _json_object(segment: str, name: str) -> dict[str, Any]:
    raw = b64url.decode(segment)
    if raw is None:
        raise JwtSvidError(f"token {name} is not unpadded base64url")
    try:
        value = strictjson.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise JwtSvidError(f"token {name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise JwtSvidError(f"token {name} must be a JSON object")
    return value


def _describe_key(key: PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)} key"
    return f"an RSA-{key.key_size} key"


def _show(value: object) -> str:
    """repr() of a token-supplied value, cut short so errors stay small."""
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."
