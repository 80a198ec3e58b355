"""Herald's JWT-SVIDs and JWT bundles as the real client, py-spiffe, sees them.

py-spiffe runs in a child interpreter (see tests/pyspiffe_runner.py). One child run checks every
case and reports each outcome; the tests below assert on those outcomes, and for each token herald
refuses they assert that py-spiffe refuses it too.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from herald_core.bundle import Bundle, BundleSet
from herald_core.jwtsvid import JwtSvid, JwtSvidError, mint_jwt_svid, validate_jwt_svid
from herald_core.keys import KeyType, PrivateKey, generate_key
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import make_ca_certificate
from tests.pyspiffe_runner import run_pyspiffe

TD = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/api")
TTL = timedelta(minutes=5)

EC_KEY = generate_key(KeyType.EC_P256)
EC384_KEY = generate_key(KeyType.EC_P384)
RSA_KEY = generate_key(KeyType.RSA_2048)
STRANGER_KEY = generate_key(KeyType.EC_P256)
JWT_KEYS = {
    "k-ec": EC_KEY.public_key(),
    "k-384": EC384_KEY.public_key(),
    "k-rsa": RSA_KEY.public_key(),
}
PEM_PUBLIC = EC_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

PYSPIFFE_SCRIPT = r"""
import json, sys
from spiffe import JwtBundle, JwtSvid, TrustDomain

cases = json.loads(sys.argv[1])
td = TrustDomain(cases["trust_domain"])

def attempt(action):
    try:
        return {"ok": action()}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}

def describe(svid):
    return {
        "spiffe_id": str(svid.spiffe_id),
        "audience": sorted(svid.audience),
        "expiry": svid.expiry,
    }

def kids(jwks):
    return sorted(JwtBundle.parse(td, jwks.encode()).jwt_authorities)

out = {"bundles": {}, "validate": {}, "insecure": {}}
for name, jwks in cases["bundles"].items():
    out["bundles"][name] = attempt(lambda: kids(jwks))
bundle = JwtBundle.parse(td, cases["bundles"]["workload"].encode())
for name, case in cases["validate"].items():
    out["validate"][name] = attempt(
        lambda: describe(JwtSvid.parse_and_validate(case["token"], bundle, set(case["audience"])))
    )
for name, case in cases["insecure"].items():
    out["insecure"][name] = attempt(
        lambda: describe(JwtSvid.parse_insecure(case["token"], set(case["audience"])))
    )
print(json.dumps(out))
"""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Case:
    token: str
    audience: list[str]
    message: str = ""


@dataclass
class World:
    """Tokens and bundle made at fixture time: py-spiffe checks expiry against the real clock."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __post_init__(self) -> None:
        cas = tuple(
            make_ca_certificate(
                key,
                TD,
                not_before=self.now - timedelta(hours=1),
                not_after=self.now + timedelta(days=1),
            )
            for key in (EC_KEY, RSA_KEY)
        )
        self.bundle = Bundle(TD, cas, JWT_KEYS, 300, 4)
        self.bundles = BundleSet([self.bundle])
        self.good = {
            "es256": Case(self.mint(), ["svc-a"]),
            "es384": Case(self.mint(EC384_KEY, "k-384"), ["svc-a"]),
            "rs256": Case(self.mint(RSA_KEY, "k-rsa"), ["svc-a"]),
            "two-audiences": Case(self.mint(audiences=("svc-a", "svc-b")), ["svc-a", "svc-b"]),
        }
        self.bad = {
            "alg-none": Case(
                jwt.encode(self.payload(), "", algorithm="none"),
                ["svc-a"],
                "algorithm 'none' is not allowed",
            ),
            "hs256-confusion": Case(
                self.hand_signed({"alg": "HS256", "kid": "k-ec", "typ": "JWT"}, PEM_PUBLIC),
                ["svc-a"],
                "algorithm 'HS256' is not allowed",
            ),
            "expired": Case(self.mint(issued_at=self.now - 2 * TTL), ["svc-a"], "has expired"),
            "wrong-audience": Case(
                self.mint(), ["svc-other"], "audience 'svc-other' not in token audiences"
            ),
            "unknown-kid": Case(
                self.mint(STRANGER_KEY, "k-gone"), ["svc-a"], "key ID 'k-gone' not found"
            ),
            "tampered-signature": Case(
                tampered_signature(self.mint()), ["svc-a"], "signature verification failed"
            ),
            "ec-key-as-rs256": Case(
                self.hand_signed({"alg": "RS256", "kid": "k-ec", "typ": "JWT"}, RSA_KEY),
                ["svc-a"],
                "is an EC P-256 key; it cannot verify RS256",
            ),
        }

    def mint(
        self,
        key: PrivateKey = EC_KEY,
        key_id: str = "k-ec",
        audiences: tuple[str, ...] = ("svc-a",),
        issued_at: datetime | None = None,
    ) -> str:
        start = issued_at or self.now
        return mint_jwt_svid(
            key=key,
            key_id=key_id,
            spiffe_id=WORKLOAD,
            audiences=audiences,
            issued_at=start,
            expires_at=start + TTL,
        )

    def payload(self) -> dict[str, Any]:
        return {"sub": str(WORKLOAD), "aud": ["svc-a"], "exp": int((self.now + TTL).timestamp())}

    def hand_signed(self, header: dict[str, Any], key: Any) -> str:
        """A token with any header, signed through PyJWT's algorithm object for its alg."""
        head = b64url(json.dumps(header).encode())
        signing_input = f"{head}.{b64url(json.dumps(self.payload()).encode())}"
        signature = jwt.get_algorithm_by_name(header["alg"]).sign(signing_input.encode(), key)
        return f"{signing_input}.{b64url(signature)}"


def tampered_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[3] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


GOOD_NAMES = ["es256", "es384", "rs256", "two-audiences"]
BAD_NAMES = [
    "alg-none",
    "hs256-confusion",
    "expired",
    "wrong-audience",
    "unknown-kid",
    "tampered-signature",
    "ec-key-as-rs256",
]
# Refusals that need no key: py-spiffe's parse_insecure must refuse these too.
BAD_WITHOUT_KEY = ["alg-none", "hs256-confusion", "expired", "wrong-audience"]


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def pyspiffe(world: World) -> dict[str, Any]:
    cases = {
        "trust_domain": str(TD),
        "bundles": {
            "workload": world.bundle.to_workload_jwt_jwks().decode(),
            "spiffe-with-x509": world.bundle.to_spiffe_jwks().decode(),
            "spiffe-jwt-only": Bundle(TD, (), JWT_KEYS, 300, 4).to_spiffe_jwks().decode(),
            "empty": Bundle(TD).to_workload_jwt_jwks().decode(),
        },
        "validate": {
            name: {"token": case.token, "audience": case.audience}
            for name, case in (world.good | world.bad).items()
        },
        "insecure": {
            name: {"token": case.token, "audience": case.audience}
            for name, case in world.bad.items()
            if name in BAD_WITHOUT_KEY
        }
        | {
            "two-audiences": {
                "token": world.good["two-audiences"].token,
                "audience": ["svc-a", "svc-b"],
            }
        },
    }
    return run_pyspiffe(PYSPIFFE_SCRIPT, json.dumps(cases))


def test_pyspiffe_parses_the_workload_jwt_bundle(pyspiffe: dict[str, Any]) -> None:
    assert pyspiffe["bundles"]["workload"] == {"ok": sorted(JWT_KEYS)}
    assert pyspiffe["bundles"]["empty"] == {"ok": []}


def test_pyspiffe_rejects_a_spiffe_bundle_with_x509_entries(pyspiffe: dict[str, Any]) -> None:
    # Observed: py-spiffe's JwtBundle.parse demands a kid on every JWK, and X.509 entries carry
    # none (SPIFFE bundle spec), so the whole bundle is refused. This is why the Workload API
    # sends to_workload_jwt_jwks(), never to_spiffe_jwks().
    assert pyspiffe["bundles"]["spiffe-with-x509"] == {
        "error": "ParseJWTBundleError",
        "message": 'Error parsing JWT bundle: Error adding authority from JWKS: "keyID" cannot be '
        "empty",
    }


def test_pyspiffe_tolerates_use_sequence_and_hint(pyspiffe: dict[str, Any]) -> None:
    # Observed: with JWT keys only, the SPIFFE members (use, spiffe_sequence, refresh hint) pass.
    assert pyspiffe["bundles"]["spiffe-jwt-only"] == {"ok": sorted(JWT_KEYS)}


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_both_accept_good_tokens_and_agree(
    world: World, pyspiffe: dict[str, Any], name: str
) -> None:
    case = world.good[name]
    ours = validate_jwt_svid(case.token, world.bundles, case.audience, now=world.now)
    assert pyspiffe["validate"][name] == {
        "ok": {
            "spiffe_id": str(ours.spiffe_id),
            "audience": sorted(ours.audiences),
            "expiry": int(ours.expires_at.timestamp()),
        }
    }


def test_pyspiffe_parse_insecure_needs_every_audience(
    world: World, pyspiffe: dict[str, Any]
) -> None:
    case = world.good["two-audiences"]
    ours = JwtSvid.parse_insecure(case.token, case.audience, now=world.now)
    assert ours.audiences == ("svc-a", "svc-b")
    assert pyspiffe["insecure"]["two-audiences"] == {
        "ok": {
            "spiffe_id": str(WORKLOAD),
            "audience": ["svc-a", "svc-b"],
            "expiry": int(ours.expires_at.timestamp()),
        }
    }


@pytest.mark.parametrize("name", BAD_NAMES)
def test_both_refuse_bad_tokens(world: World, pyspiffe: dict[str, Any], name: str) -> None:
    case = world.bad[name]
    with pytest.raises(JwtSvidError, match=case.message):
        validate_jwt_svid(case.token, world.bundles, case.audience, now=world.now)
    assert "error" in pyspiffe["validate"][name], pyspiffe["validate"][name]


@pytest.mark.parametrize("name", BAD_WITHOUT_KEY)
def test_both_refuse_bad_tokens_without_a_key(
    world: World, pyspiffe: dict[str, Any], name: str
) -> None:
    case = world.bad[name]
    with pytest.raises(JwtSvidError, match=case.message):
        JwtSvid.parse_insecure(case.token, case.audience, now=world.now)
    assert "error" in pyspiffe["insecure"][name], pyspiffe["insecure"][name]


def test_pyspiffe_refusal_reasons(pyspiffe: dict[str, Any]) -> None:
    # Recorded so that a py-spiffe upgrade that changes its reasons shows up here.
    def reasons(section: str) -> dict[str, str]:
        return {name: result.get("error", "") for name, result in pyspiffe[section].items()}

    assert {name: reasons("validate")[name] for name in BAD_NAMES} == {
        "alg-none": "InvalidAlgorithmError",
        "hs256-confusion": "InvalidAlgorithmError",
        "expired": "InvalidTokenError",  # PyJWT's "Signature has expired"
        "wrong-audience": "InvalidTokenError",  # PyJWT's "Audience doesn't match"
        "unknown-kid": "AuthorityNotFoundError",
        "tampered-signature": "InvalidTokenError",
        "ec-key-as-rs256": "InvalidTokenError",  # PyJWT's "Invalid Key type for RSAAlgorithm"
    }
    assert {name: reasons("insecure")[name] for name in BAD_WITHOUT_KEY} == {
        "alg-none": "InvalidAlgorithmError",
        "hs256-confusion": "InvalidAlgorithmError",
        "expired": "TokenExpiredError",
        "wrong-audience": "InvalidClaimError",
    }
