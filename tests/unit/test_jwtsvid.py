"""JWT-SVIDs: minting, insecure parsing, validation (each rule both ways), cache key, refresh."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from herald_core.bundle import Bundle, BundleSet
from herald_core.jwtsvid import (
    ALLOWED_ALGORITHMS,
    JwtSvid,
    JwtSvidError,
    jwt_cache_key,
    mint_jwt_svid,
    needs_refresh,
    validate_jwt_svid,
)
from herald_core.keys import KeyType, PrivateKey, generate_key
from herald_core.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/app")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)

EC_KEY = generate_key(KeyType.EC_P256)
EC384_KEY = generate_key(KeyType.EC_P384)
RSA_KEY = generate_key(KeyType.RSA_2048)
OTHER_EC_KEY = generate_key(KeyType.EC_P256)
P521_KEY = ec.generate_private_key(ec.SECP521R1())
BUNDLES = BundleSet(
    [
        Bundle(
            TD,
            jwt_authorities={
                "k-ec": EC_KEY.public_key(),
                "k-384": EC384_KEY.public_key(),
                "k-rsa": RSA_KEY.public_key(),
                "k-521": P521_KEY.public_key(),
            },
        ),
        Bundle(OTHER_TD, jwt_authorities={"k-ec": OTHER_EC_KEY.public_key()}),
    ]
)


def mint(
    *,
    key: PrivateKey = EC_KEY,
    key_id: str = "k-ec",
    spiffe_id: SpiffeId = WORKLOAD,
    audiences: tuple[str, ...] = ("svc-a",),
    issued_at: datetime = NOW,
    lifetime: timedelta = TTL,
    **extra: Any,
) -> str:
    return mint_jwt_svid(
        key=key,
        key_id=key_id,
        spiffe_id=spiffe_id,
        audiences=audiences,
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        extra_claims=extra or None,
    )


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def segment(token: str, index: int) -> Any:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "sub": str(WORKLOAD),
        "aud": ["svc-a"],
        "exp": int((NOW + TTL).timestamp()),
        "iat": int(NOW.timestamp()),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def forge(
    payload: dict[str, Any],
    *,
    key: Any = EC_KEY,
    alg: str = "ES256",
    kid: str | None = "k-ec",
    **header: Any,
) -> str:
    """Sign an arbitrary header/payload with PyJWT (``typ=""`` drops typ; kid=None drops kid)."""
    headers: dict[str, Any] = {**({"kid": kid} if kid is not None else {}), **header}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}"


def validate(token: str, audience: Any = "svc-a", **kwargs: Any) -> JwtSvid:
    kwargs.setdefault("now", NOW)
    return validate_jwt_svid(token, BUNDLES, audience, **kwargs)


class RecordingBundles:
    """A bundle lookup that records every trust domain it was asked for."""

    def __init__(self) -> None:
        self.asked: list[TrustDomain] = []

    def __call__(self, trust_domain: TrustDomain) -> Bundle | None:
        self.asked.append(trust_domain)
        return BUNDLES.get(trust_domain)


# --- minting --------------------------------------------------------------------------------


def test_minted_header_is_exactly_alg_kid_typ() -> None:
    token = mint()
    raw_header = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    assert json.loads(raw_header) == {"alg": "ES256", "kid": "k-ec", "typ": "JWT"}
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "k-ec", "typ": "JWT"}


@pytest.mark.parametrize(
    ("key", "alg"), [(EC_KEY, "ES256"), (EC384_KEY, "ES384"), (RSA_KEY, "RS256")]
)
def test_alg_follows_the_key(key: PrivateKey, alg: str) -> None:
    assert segment(mint(key=key), 0)["alg"] == alg


def test_minted_claims() -> None:
    token = mint(audiences=("svc-a", "", "svc-b", "svc-a"))
    assert segment(token, 1) == {
        "sub": "spiffe://example.org/ns/default/sa/app",
        "aud": ["svc-a", "svc-b"],
        "exp": int(NOW.timestamp()) + 300,
        "iat": int(NOW.timestamp()),
    }


def test_single_audience_is_still_a_list() -> None:
    assert segment(mint(audiences=("only",)), 1)["aud"] == ["only"]


def test_extra_claims_are_added() -> None:
    payload = segment(mint(iss="https://oidc.example.org", jti="abc"), 1)
    assert payload["iss"] == "https://oidc.example.org"
    assert payload["jti"] == "abc"
    assert list(payload)[:4] == ["sub", "aud", "exp", "iat"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spiffe_id": TD.id}, "spiffe://example.org: a trust domain ID has no path"),
        ({"key_id": ""}, "key_id is empty"),
        ({"audiences": ()}, "no audience given"),
        ({"audiences": ("", "")}, "no audience given"),
        ({"audiences": "svc-a"}, "not a single string"),
        ({"audiences": ("x" * 1025,)}, "is 1025 bytes long; at most 1024 are allowed"),
        ({"audiences": tuple(f"a{i}" for i in range(33))}, "33 audiences requested; at most 32"),
        ({"lifetime": timedelta(0)}, "must be at least a second after issued_at"),
        ({"lifetime": timedelta(seconds=-1)}, "must be at least a second after"),
        ({"lifetime": timedelta(milliseconds=500)}, "must be at least a second after"),
        ({"issued_at": NOW.replace(tzinfo=None)}, "issued_at must be a timezone-aware datetime"),
        ({"sub": "spiffe://example.org/evil"}, "extra_claims cannot set 'sub'"),
        ({"exp": 1}, "extra_claims cannot set 'exp'"),
        ({"blob": object()}, "cannot encode the JWT-SVID claims"),
        ({"key": ec.generate_private_key(ec.SECP521R1())}, "cannot sign a JWT-SVID"),
    ],
)
def test_mint_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(JwtSvidError, match=message):
        mint(**kwargs)


def test_the_most_audiences_of_the_longest_length_are_signed() -> None:
    audiences = tuple(f"{i:02d}" + "x" * 1022 for i in range(32))
    assert segment(mint(audiences=audiences), 1)["aud"] == list(audiences)
    assert segment(mint(audiences=("a",) * 40), 1)["aud"] == ["a"], "duplicates count once"


def test_mint_refuses_naive_expiry() -> None:
    with pytest.raises(JwtSvidError, match="expires_at must be a timezone-aware"):
        mint_jwt_svid(
            key=EC_KEY,
            key_id="k",
            spiffe_id=WORKLOAD,
            audiences=["a"],
            issued_at=NOW,
            expires_at=(NOW + TTL).replace(tzinfo=None),
        )


# --- parse_insecure -------------------------------------------------------------------------


def test_parse_insecure_reads_the_token() -> None:
    token = mint(audiences=("svc-a", "svc-b"))
    svid = JwtSvid.parse_insecure(token, {"svc-a", "svc-b"}, now=NOW)
    assert svid.token == token
    assert svid.spiffe_id == WORKLOAD
    assert svid.audiences == ("svc-a", "svc-b")
    assert svid.expires_at == NOW + TTL
    assert svid.issued_at == NOW
    assert svid.claims["sub"] == str(WORKLOAD)
    assert svid.hint == ""
    assert token not in repr(svid)
    assert hash(svid) == hash(JwtSvid.parse_insecure(token, now=NOW))


def test_parse_insecure_does_not_verify_the_signature() -> None:
    token = mint()
    head, body, _ = token.split(".")
    forged = f"{head}.{body}.{b64url(b'x' * 64)}"
    assert JwtSvid.parse_insecure(forged, {"svc-a"}, now=NOW).spiffe_id == WORKLOAD


def test_parse_insecure_accepts_a_string_audience_claim_and_no_kid() -> None:
    token = forge(claims(aud="svc-a"), kid=None, typ="JOSE")
    assert JwtSvid.parse_insecure(token, ["svc-a"], now=NOW).audiences == ("svc-a",)


def test_parse_insecure_without_expected_audiences_skips_the_check() -> None:
    assert JwtSvid.parse_insecure(mint(), now=NOW).audiences == ("svc-a",)


@pytest.mark.parametrize(
    ("token", "audiences", "message"),
    [
        (mint(audiences=("svc-a",)), {"svc-a", "svc-b"}, r"audience 'svc-b' not in token"),
        (mint(), set(), "no expected audience given"),
        (mint(), {""}, "expected audiences must be non-empty strings"),
        (mint(issued_at=NOW - TTL), None, "token has expired"),
        (unsigned({"alg": "none"}, claims()), None, "algorithm 'none' is not allowed"),
        (forge(claims(), typ="at+jwt"), None, "header 'typ' is 'at\\+jwt'; it must be JWT or JOSE"),
        (forge(claims(), jku="https://evil"), None, "header field 'jku' is not allowed"),
        (forge(claims(sub=str(TD.id))), None, "'sub' claim spiffe://example.org is a trust domain"),
        (forge(claims(sub="https://example.org/x")), None, "'sub' claim is not a SPIFFE ID"),
        (forge(claims(sub=None)), None, "token has no 'sub' claim"),
        (forge(claims(aud=None)), None, "token has no 'aud' claim"),
        (forge(claims(aud=[])), None, "'aud' claim has no non-empty audience"),
        (forge(claims(aud=[""])), None, "'aud' claim has no non-empty audience"),
        (forge(claims(aud=7)), None, "'aud' claim must be a string or an array of strings"),
        (forge(claims(exp=None)), None, "token has no 'exp' claim"),
        (forge(claims(exp="soon")), None, "'exp' claim must be a number"),
        (forge(claims(exp=True)), None, "'exp' claim must be a number"),
        (forge(claims(iat="then")), None, "'iat' claim must be a number"),
    ],
)
def test_parse_insecure_refuses(token: str, audiences: Any, message: str) -> None:
    with pytest.raises(JwtSvidError, match=message):
        JwtSvid.parse_insecure(token, audiences, now=NOW)


def test_parse_insecure_needs_an_aware_now() -> None:
    with pytest.raises(JwtSvidError, match="now must be a timezone-aware datetime"):
        JwtSvid.parse_insecure(mint(), now=NOW.replace(tzinfo=None))


# --- validate_jwt_svid: success -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "key_id"), [(EC_KEY, "k-ec"), (EC384_KEY, "k-384"), (RSA_KEY, "k-rsa")]
)
def test_validates_each_key_type(key: PrivateKey, key_id: str) -> None:
    svid = validate(mint(key=key, key_id=key_id))
    assert svid.spiffe_id == WORKLOAD
    assert svid.expires_at == NOW + TTL


@pytest.mark.parametrize("alg", ["PS256", "RS512", "PS384"])
def test_validates_other_rsa_algorithms(alg: str) -> None:
    assert validate(forge(claims(), key=RSA_KEY, alg=alg, kid="k-rsa")).spiffe_id == WORKLOAD


def test_validates_es512_from_a_p521_key() -> None:
    # herald never mints with P-521, but a federated trust domain may.
    assert validate(forge(claims(), key=P521_KEY, alg="ES512", kid="k-521")).spiffe_id == WORKLOAD
    with pytest.raises(JwtSvidError, match="is an EC P-521 key; it cannot verify ES384"):
        validate(forge(claims(), key=EC384_KEY, alg="ES384", kid="k-521"))


def test_multiple_audiences() -> None:
    token = mint(audiences=("svc-a", "svc-b"))
    assert validate(token, "svc-b").audiences == ("svc-a", "svc-b")
    assert validate(token, ["svc-a", "svc-b"]).audiences == ("svc-a", "svc-b")
    with pytest.raises(JwtSvidError, match=r"audience 'svc-c' not in token audiences \['svc-a', "):
        validate(token, {"svc-a", "svc-c"})


def test_bundles_may_be_a_mapping_or_a_function() -> None:
    token = mint()
    lookup = RecordingBundles()
    assert validate_jwt_svid(token, lookup, "svc-a", now=NOW).spiffe_id == WORKLOAD
    assert lookup.asked == [TD]
    assert validate_jwt_svid(token, {TD: BUNDLES[TD]}, "svc-a", now=NOW).spiffe_id == WORKLOAD


def test_typ_jose_and_no_typ_are_accepted() -> None:
    assert validate(forge(claims(), typ="JOSE")).spiffe_id == WORKLOAD
    assert validate(forge(claims(), typ="")).spiffe_id == WORKLOAD


def test_claims_are_returned_read_only() -> None:
    svid = validate(mint(iss="herald"))
    assert svid.claims["iss"] == "herald"
    with pytest.raises(TypeError):
        svid.claims["iss"] = "x"  # type: ignore[index]


# --- validate_jwt_svid: refusals ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "HS256", "EdDSA", "ES256K", "RS1"])
def test_disallowed_algorithms_are_refused_before_any_key_lookup(alg: str) -> None:
    lookup = RecordingBundles()
    token = unsigned({"alg": alg, "kid": "k-ec", "typ": "JWT"}, claims(), b"sig" * 8)
    with pytest.raises(JwtSvidError, match=f"algorithm '{alg}' is not allowed"):
        validate_jwt_svid(token, lookup, "svc-a", now=NOW)
    assert lookup.asked == []


def test_unsigned_alg_none_token_from_pyjwt_is_refused() -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "k-ec"})
    assert token.endswith(".")
    with pytest.raises(JwtSvidError, match="algorithm 'none' is not allowed"):
        validate(token)


def test_hs256_key_confusion_attack_is_refused() -> None:
    # The classic attack: HMAC-sign with the verifier's public key bytes as the secret. PyJWT's
    # encode() refuses such a secret, so sign through its HS256 algorithm object directly.
    secret = EC_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = (
        f"{b64url_json({'alg': 'HS256', 'kid': 'k-ec', 'typ': 'JWT'})}.{b64url_json(claims())}"
    )
    signature = jwt.get_algorithm_by_name("HS256").sign(signing_input.encode(), secret)
    token = f"{signing_input}.{b64url(signature)}"
    lookup = RecordingBundles()
    with pytest.raises(JwtSvidError, match="algorithm 'HS256' is not allowed"):
        validate_jwt_svid(token, lookup, "svc-a", now=NOW)
    assert lookup.asked == []


@pytest.mark.parametrize("typ", [["JWT"], {"t": 1}, 1, None])
def test_typ_that_is_not_a_string_is_refused(typ: Any) -> None:
    with pytest.raises(JwtSvidError, match=r"header 'typ' is .*; it must be JWT or JOSE"):
        validate(unsigned({"alg": "ES256", "kid": "k-ec", "typ": typ}, claims()))


def test_alg_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(JwtSvidError, match=r"algorithm \['ES256'\] is not allowed"):
        validate(unsigned({"alg": ["ES256"], "kid": "k-ec"}, claims()))
    with pytest.raises(JwtSvidError, match="header has no 'alg'"):
        validate(unsigned({"kid": "k-ec"}, claims()))


@pytest.mark.parametrize("field", ["jku", "x5u", "jwk", "x5c", "crit", "cty", "b64", "extra"])
def test_extra_header_fields_are_refused(field: str) -> None:
    token = unsigned({"alg": "ES256", "kid": "k-ec", "typ": "JWT", field: "value"}, claims())
    with pytest.raises(JwtSvidError, match=f"header field '{field}' is not allowed"):
        validate(token)


def test_extra_header_field_in_a_signed_token_is_refused() -> None:
    with pytest.raises(JwtSvidError, match="header field 'x5u' is not allowed"):
        validate(forge(claims(), x5u="https://keys.example.org"))


def test_missing_kid_is_refused() -> None:
    with pytest.raises(JwtSvidError, match="header has no 'kid'"):
        validate(forge(claims(), kid=None))


@pytest.mark.parametrize("kid", ["", 5])
def test_bad_kid_is_refused(kid: Any) -> None:
    with pytest.raises(JwtSvidError, match="header 'kid' must be a non-empty string"):
        validate(unsigned({"alg": "ES256", "kid": kid}, claims()))


def test_unknown_kid_is_refused() -> None:
    with pytest.raises(
        JwtSvidError, match=r"key ID 'k-gone' not found in the bundle for example\.org"
    ):
        validate(forge(claims(), kid="k-gone"))


def test_token_for_a_trust_domain_without_a_bundle_is_refused() -> None:
    token = forge(claims(sub="spiffe://stranger.org/app"))
    with pytest.raises(JwtSvidError, match=r"no bundle for trust domain stranger\.org"):
        validate(token)


def test_key_is_taken_from_the_subjects_trust_domain() -> None:
    # Signed by example.org's key but claiming an other.org subject: other.org's key is used.
    token = forge(claims(sub="spiffe://other.org/app"))
    with pytest.raises(JwtSvidError, match="signature verification failed"):
        validate(token)
    honest = forge(claims(sub="spiffe://other.org/app"), key=OTHER_EC_KEY)
    assert validate(honest).spiffe_id.trust_domain == OTHER_TD


def test_bundle_registered_under_the_wrong_trust_domain_is_refused() -> None:
    with pytest.raises(
        JwtSvidError, match=r"bundle found for trust domain example\.org is for other"
    ):
        validate_jwt_svid(mint(), {TD: BUNDLES[OTHER_TD]}, "svc-a", now=NOW)


def test_expired_token_is_refused_and_leeway_is_honoured() -> None:
    token = mint()
    expiry = NOW + TTL
    with pytest.raises(JwtSvidError, match="token has expired"):
        validate(token, now=expiry)
    with pytest.raises(JwtSvidError, match="token has expired"):
        validate(token, now=expiry + timedelta(seconds=30), leeway_seconds=30)
    svid = validate(token, now=expiry + timedelta(seconds=29), leeway_seconds=30)
    assert svid.expires_at == expiry
    assert validate(token, now=expiry - timedelta(seconds=1)).spiffe_id == WORKLOAD


def test_bad_leeway_is_refused() -> None:
    with pytest.raises(JwtSvidError, match="leeway_seconds must be a finite number >= 0"):
        validate(mint(), leeway_seconds=-1)


def test_not_before_in_the_future_is_refused() -> None:
    token = forge(claims(nbf=int(NOW.timestamp()) + 60))
    with pytest.raises(JwtSvidError, match="token is not valid yet"):
        validate(token)
    assert validate(token, leeway_seconds=60).spiffe_id == WORKLOAD


def test_iat_in_the_future_is_not_checked() -> None:
    # Like py-spiffe and the JWT-SVID spec: iat is informational.
    token = forge(claims(iat=int(NOW.timestamp()) + 3600))
    assert validate(token).issued_at == NOW + timedelta(hours=1)


def test_wrong_audience_is_refused() -> None:
    with pytest.raises(JwtSvidError, match=r"audience 'svc-x' not in token audiences \['svc-a'\]"):
        validate(mint(), "svc-x")


@pytest.mark.parametrize("audience", ["", [], [""]])
def test_empty_expected_audience_is_refused(audience: Any) -> None:
    with pytest.raises(JwtSvidError, match="expected audience"):
        validate(mint(), audience)


def test_tampered_payload_is_refused() -> None:
    head, _, signature = mint().split(".")
    body = b64url_json(claims(aud=["svc-a", "svc-evil"]))
    with pytest.raises(JwtSvidError, match="signature verification failed"):
        validate(f"{head}.{body}.{signature}", "svc-evil")


def test_tampered_header_is_refused() -> None:
    _, body, signature = mint().split(".")
    head = b64url_json({"alg": "ES256", "kid": "k-ec", "typ": "JOSE"})
    with pytest.raises(JwtSvidError, match="signature verification failed"):
        validate(f"{head}.{body}.{signature}")


@pytest.mark.parametrize("key_id", ["k-ec", "k-rsa"])
def test_tampered_signature_is_refused(key_id: str) -> None:
    key = EC_KEY if key_id == "k-ec" else RSA_KEY
    head, body, signature = mint(key=key, key_id=key_id).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[5] ^= 0x01
    with pytest.raises(JwtSvidError, match="signature verification failed"):
        validate(f"{head}.{body}.{b64url(bytes(raw))}")


def test_truncated_signature_is_refused() -> None:
    head, body, _ = mint().split(".")
    with pytest.raises(JwtSvidError, match="signature"):
        validate(f"{head}.{body}.")


def test_signature_by_another_key_is_refused() -> None:
    with pytest.raises(JwtSvidError, match="signature verification failed"):
        validate(mint(key=OTHER_EC_KEY))


def test_json_serialization_is_refused() -> None:
    head, body, signature = mint().split(".")
    flattened = json.dumps({"protected": head, "payload": body, "signature": signature})
    with pytest.raises(JwtSvidError, match="JWS JSON serialization"):
        validate(flattened)


def test_two_signatures_are_refused() -> None:
    head, body, signature = mint().split(".")
    general = json.dumps(
        {
            "payload": body,
            "signatures": [
                {"protected": head, "signature": signature},
                {"protected": head, "signature": signature},
            ],
        }
    )
    with pytest.raises(JwtSvidError, match="JWS JSON serialization"):
        validate(general)
    with pytest.raises(JwtSvidError, match="token has 4 dot-separated parts"):
        validate(f"{head}.{body}.{signature}.{signature}")


ES256_HEADER = b64url_json({"alg": "ES256", "kid": "k-ec"})
DUPLICATE_ALG = b64url(b'{"alg":"ES256","alg":"none"}')


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "token is empty"),
        ("abc", "token has 1 dot-separated parts"),
        ("a.b", "token has 2 dot-separated parts"),
        ("a.b.c.d.e", "token has 5 dot-separated parts"),
        ("!!!.e30.", "token header is not unpadded base64url"),
        ("eyJhbGciOiJFUzI1NiJ9=.e30.", "token header is not unpadded base64url"),
        ("e31.e30.", "token header is not unpadded base64url"),
        (b64url(b"not json") + ".e30.", "token header is not valid JSON"),
        (b64url(b"[1]") + ".e30.", "token header must be a JSON object"),
        (b64url(b"\xff") + ".e30.", "token header is not valid JSON"),
        (DUPLICATE_ALG + ".e30.", "token header is not valid JSON: duplicate member 'alg'"),
        (ES256_HEADER + ".%%%.", "token payload is not unpadded base64url"),
        (ES256_HEADER + "." + b64url(b'{"exp":NaN}') + ".", "token payload is not valid JSON"),
        (ES256_HEADER + "." + b64url(b"1") + ".", "token payload must be a JSON object"),
        (ES256_HEADER + ".e30.!", "token signature is not unpadded base64url"),
    ],
)
def test_malformed_tokens_are_refused(token: str, message: str) -> None:
    with pytest.raises(JwtSvidError, match=message):
        validate(token)


def test_non_string_token_is_refused() -> None:
    with pytest.raises(JwtSvidError, match="token must be a string, not bytes"):
        validate(mint().encode())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        ("spiffe://example.org", "is a trust domain ID; a JWT-SVID subject needs a path"),
        ("https://example.org/app", "'sub' claim is not a SPIFFE ID: scheme must be"),
        ("spiffe://example.org/a//b", "'sub' claim is not a SPIFFE ID"),
        (17, "'sub' claim must be a string"),
        (None, "token has no 'sub' claim"),
    ],
)
def test_bad_subjects_are_refused(sub: Any, message: str) -> None:
    with pytest.raises(JwtSvidError, match=message):
        validate(forge(claims(sub=sub)))


def test_ec_key_claimed_as_rs256_is_refused() -> None:
    token = forge(claims(), key=RSA_KEY, alg="RS256", kid="k-ec")
    with pytest.raises(
        JwtSvidError, match="key ID 'k-ec' is an EC P-256 key; it cannot verify RS256"
    ):
        validate(token)


def test_p256_key_claimed_as_es384_is_refused() -> None:
    token = forge(claims(), key=EC384_KEY, alg="ES384", kid="k-ec")
    with pytest.raises(JwtSvidError, match="is an EC P-256 key; it cannot verify ES384"):
        validate(token)


def test_rsa_key_claimed_as_es256_is_refused() -> None:
    token = forge(claims(), key=EC_KEY, alg="ES256", kid="k-rsa")
    with pytest.raises(JwtSvidError, match="key ID 'k-rsa' is an RSA-2048 key; it cannot verify"):
        validate(token)


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (('"exp": ', '"expires": '), "token has no 'exp' claim"),
        (('"exp": ', '"exp": 1e400, "x": '), "'exp' claim is out of range"),
        (('"exp": ', '"exp": 1000000000000000000000000000000, "x": '), "'exp' claim is out of ran"),
        (('"aud": ["svc-a"]', '"aud": ["svc-a", 3]'), "'aud' claim must be a string or an array"),
        (('"iat": ', '"nbf": "later", "iat": '), "'nbf' claim must be a number"),
    ],
)
def test_bad_claims_in_a_signed_token_are_refused(replace: tuple[str, str], message: str) -> None:
    header = {"alg": "ES256", "kid": "k-ec", "typ": "JWT"}
    payload = json.dumps(claims()).replace(*replace)
    signing_input = f"{b64url_json(header)}.{b64url(payload.encode())}"
    signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), EC_KEY)
    with pytest.raises(JwtSvidError, match=message):
        validate(f"{signing_input}.{b64url(signature)}")


def test_error_messages_never_contain_the_token() -> None:
    token = mint()
    attempts: list[Callable[[], object]] = [
        lambda: validate(token, "nope"),
        lambda: validate(token, now=NOW + TTL),
        lambda: validate_jwt_svid(token, {}, "svc-a", now=NOW),
    ]
    for attempt in attempts:
        with pytest.raises(JwtSvidError) as caught:
            attempt()
        for part in token.split("."):
            assert part not in str(caught.value)


# --- cache key and refresh ------------------------------------------------------------------


def test_cache_key_matches_the_documented_construction() -> None:
    expected = hashlib.sha256(b"spiffe://example.org/ns/default/sa/app\0a\0b\0").hexdigest()
    assert jwt_cache_key(WORKLOAD, ["b", "a"]) == expected
    assert jwt_cache_key(WORKLOAD, ("a", "b")) == expected


def test_cache_key_separates_what_differs() -> None:
    other = SpiffeId.parse("spiffe://example.org/other")
    assert jwt_cache_key(WORKLOAD, ["ab", "c"]) != jwt_cache_key(WORKLOAD, ["a", "bc"])
    assert jwt_cache_key(WORKLOAD, ["a"]) != jwt_cache_key(other, ["a"])
    assert jwt_cache_key(WORKLOAD, ["a"]) != jwt_cache_key(WORKLOAD, ["a", "a"])
    assert len(jwt_cache_key(WORKLOAD, [])) == 64


@pytest.mark.parametrize(
    ("elapsed", "jitter", "expected"),
    [
        (timedelta(0), 0.0, False),
        (timedelta(seconds=149), 0.0, False),
        (timedelta(seconds=150), 0.0, True),
        (timedelta(seconds=134), 0.1, False),
        (timedelta(seconds=135), 0.1, True),
        (timedelta(seconds=164), -0.1, False),
        (timedelta(seconds=165), -0.1, True),
        (timedelta(seconds=300), 0.0, True),
        (timedelta(seconds=301), -0.5, True),
    ],
)
def test_needs_refresh_at_half_life(elapsed: timedelta, jitter: float, expected: bool) -> None:
    assert needs_refresh(NOW, NOW + TTL, NOW + elapsed, jitter) is expected


def test_needs_refresh_with_no_lifetime_and_bad_jitter() -> None:
    assert needs_refresh(NOW, NOW, NOW - TTL) is True
    with pytest.raises(JwtSvidError, match="jitter_fraction must be between -1 and 1"):
        needs_refresh(NOW, NOW + TTL, NOW, 1.0)


# --- properties -----------------------------------------------------------------------------


def raises_only_module_error(action: Callable[[], object]) -> None:
    with contextlib.suppress(JwtSvidError):
        action()


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=300))
def test_arbitrary_text_raises_only_jwt_svid_error(token: str) -> None:
    raises_only_module_error(lambda: JwtSvid.parse_insecure(token, {"svc-a"}, now=NOW))
    raises_only_module_error(lambda: validate(token))


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
HEADERS = st.fixed_dictionaries(
    {
        "alg": st.sampled_from(sorted(ALLOWED_ALGORITHMS)) | st.sampled_from(["none", "HS256"]),
        "kid": st.sampled_from(["k-ec", "k-384", "k-rsa", "k-521", "k-gone"]) | JSON_SCALARS,
    },
    optional={"typ": st.sampled_from(["JWT", "JOSE", "jwt"]) | JSON_VALUES, "jku": JSON_VALUES},
)
PAYLOADS = st.fixed_dictionaries(
    {
        "sub": st.sampled_from(
            [str(WORKLOAD), "spiffe://other.org/x", "spiffe://example.org", "x:/y", 3, None]
        ),
        "aud": st.sampled_from(["svc-a", ["svc-a", "b"], [], [""], ["svc-a", 1], 2, None]),
        "exp": st.integers(int(NOW.timestamp()) - 10, 2**40)
        | st.floats(allow_nan=False)
        | st.sampled_from(["1", None, True]),
    },
    optional={
        "iat": st.integers(0, 2**40) | st.sampled_from(["1", None, True]),
        "nbf": st.integers(0, 2**40) | st.sampled_from(["1", None, 1e300]),
        "extra": JSON_VALUES,
    },
)


@settings(max_examples=300, deadline=None)
@given(header=HEADERS | JSON_VALUES, payload=PAYLOADS | JSON_VALUES, signature=st.binary())
def test_structured_junk_raises_only_jwt_svid_error(
    header: Any, payload: Any, signature: bytes
) -> None:
    token = f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}"
    raises_only_module_error(lambda: JwtSvid.parse_insecure(token, {"svc-a"}, now=NOW))
    raises_only_module_error(lambda: validate(token))


@settings(max_examples=300, deadline=None)
@given(payload=PAYLOADS, typ=st.sampled_from(["JWT", "JOSE", "", "jwt"]))
def test_signed_junk_claims_raise_only_jwt_svid_error(payload: dict[str, Any], typ: str) -> None:
    # Correctly signed, so every claim check after the signature is reached.
    token = forge(payload, typ=typ)
    raises_only_module_error(lambda: validate(token))


VALID_TOKEN = mint()
B64URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(VALID_TOKEN) - 1), char=st.sampled_from(B64URL_CHARS))
def test_any_changed_character_is_refused(position: int, char: str) -> None:
    assume(VALID_TOKEN[position] != char)
    changed = VALID_TOKEN[:position] + char + VALID_TOKEN[position + 1 :]
    with pytest.raises(JwtSvidError):
        validate(changed)
