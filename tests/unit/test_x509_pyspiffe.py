"""Cross-check herald's X.509-SVIDs with the real client library, py-spiffe, in a subprocess.

Good SVIDs must parse in py-spiffe exactly as herald built them; malformed leaves herald
refuses must be refused by py-spiffe too. Where herald is deliberately stricter than py-spiffe
(key/leaf mismatch, one-sided EKU) the test pins that down as well.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from herald_core.keys import KeyType, PrivateKey, generate_key, private_key_to_der
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import (
    X509Svid,
    X509SvidError,
    certs_to_pem,
    chain_to_der,
    make_ca_certificate,
    make_leaf_certificate,
    svid_validity,
)
from tests import certs
from tests.certs import Ca, Change, der, drop, keep, key_usage, swap
from tests.pyspiffe_runner import run_pyspiffe

NOW = datetime.now(UTC)
TD = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/api")

# Each argv entry is a case directory holding chain.der, key.der, bundle.der and td.txt.
SCRIPT = """
import hashlib, json, sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import TrustDomain, X509Bundle, X509Svid


def attempt(fn):
    try:
        return {"ok": True, **fn()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


def parse_svid(case):
    svid = X509Svid.parse_raw((case / "chain.der").read_bytes(), (case / "key.der").read_bytes())
    return {
        "spiffe_id": str(svid.spiffe_id),
        "certs": len(svid.cert_chain),
        "chain_sha256": [hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest()
                         for c in svid.cert_chain],
    }


def parse_bundle(case):
    td = TrustDomain((case / "td.txt").read_text())
    bundle = X509Bundle.parse_raw(td, (case / "bundle.der").read_bytes())
    return {"trust_domain": str(bundle.trust_domain), "authorities": len(bundle.x509_authorities)}


results = {}
for arg in sys.argv[1:]:
    case = Path(arg)
    results[case.name] = {
        "svid": attempt(lambda: parse_svid(case)),
        "bundle": attempt(lambda: parse_bundle(case)),
    }
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    chain: bytes
    key: bytes
    bundle: bytes


def root_ca(key_type: KeyType = KeyType.EC_P256) -> Ca:
    key = generate_key(key_type)
    cert = make_ca_certificate(
        key, TD, not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=1)
    )
    return Ca(cert, key)


def intermediate_ca(parent: Ca) -> Ca:
    key = generate_key()
    cert = make_ca_certificate(
        key,
        TD,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=12),
        issuer_cert=parent.cert,
        issuer_key=parent.key,
    )
    return Ca(cert, key)


def herald_leaf(issuer: Ca, dns_names: tuple[str, ...] = ()) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key()
    not_before, not_after = svid_validity(NOW, timedelta(hours=1), issuer.cert.not_valid_after_utc)
    cert = make_leaf_certificate(
        key.public_key(),
        WORKLOAD,
        issuer_cert=issuer.cert,
        issuer_key=issuer.key,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
    )
    return cert, key


def run_cases(tmp_path: Path, cases: Mapping[str, Case]) -> dict[str, Any]:
    dirs = []
    for name, case in cases.items():
        case_dir = tmp_path / name
        case_dir.mkdir()
        (case_dir / "chain.der").write_bytes(case.chain)
        (case_dir / "key.der").write_bytes(case.key)
        (case_dir / "bundle.der").write_bytes(case.bundle)
        (case_dir / "td.txt").write_text(TD.name)
        dirs.append(str(case_dir))
    return run_pyspiffe(SCRIPT, *dirs)


def sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(der(cert)).hexdigest()


# ---------------------------------------------------------------------------------------------
# Good SVIDs


def test_pyspiffe_parses_herald_svids(tmp_path: Path) -> None:
    chains: dict[str, tuple[list[x509.Certificate], PrivateKey, list[x509.Certificate]]] = {}
    for key_type in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048):
        root = root_ca(key_type)
        cert, key = herald_leaf(root, dns_names=("api.prod.svc",))
        chains[f"direct-{key_type}"] = ([cert], key, [root.cert])
    root = root_ca()
    inter = intermediate_ca(root)
    cert, key = herald_leaf(inter)
    chains["intermediate"] = ([cert, inter.cert], key, [root.cert, root_ca().cert])

    cases = {
        name: Case(chain_to_der(chain), private_key_to_der(key), chain_to_der(bundle))
        for name, (chain, key, bundle) in chains.items()
    }
    results = run_cases(tmp_path, cases)

    for name, (chain, _key, bundle) in chains.items():
        svid = results[name]["svid"]
        assert svid["ok"], svid
        assert svid["spiffe_id"] == str(WORKLOAD)
        assert svid["certs"] == len(chain)
        # py-spiffe re-encodes every cert through pyasn1; identical bytes mean canonical DER.
        assert svid["chain_sha256"] == [sha256(c) for c in chain]
        assert results[name]["bundle"] == {
            "ok": True,
            "trust_domain": TD.name,
            "authorities": len(bundle),
        }
        ours = X509Svid.parse(cases[name].chain, cases[name].key)
        assert ours.spiffe_id == WORKLOAD
        assert list(ours.cert_chain) == chain


# ---------------------------------------------------------------------------------------------
# Malformed leaves: both refuse


# A SPIRE-shaped leaf built by hand, so each case can break one rule.
custom_leaf = partial(
    certs.custom_leaf,
    uris=(str(WORKLOAD),),
    not_before=NOW - timedelta(minutes=5),
    not_after=NOW + timedelta(hours=1),
)


# name -> (change, URI SANs, herald's message, py-spiffe's message)
MALFORMED: dict[str, tuple[Change, tuple[str, ...], str, str]] = {
    "no-basic-constraints": (
        drop(x509.BasicConstraints),
        (str(WORKLOAD),),
        "has no BasicConstraints extension",
        "must have BasicConstraints extension",
    ),
    "no-key-usage": (
        drop(x509.KeyUsage),
        (str(WORKLOAD),),
        "has no KeyUsage extension",
        "must have KeyUsage extension",
    ),
    "two-uri-sans": (
        keep,
        (str(WORKLOAD), "spiffe://example.org/ns/prod/sa/other"),
        "has 2 URI SANs; exactly one is required",
        "multiple URI SAN",
    ),
    "root-id": (
        keep,
        ("spiffe://example.org",),
        "has SPIFFE ID spiffe://example.org with no path",
        "must not be a trust domain root",
    ),
    "ca-leaf": (
        swap(x509.BasicConstraints(ca=True, path_length=None)),
        (str(WORKLOAD),),
        "has cA=true",
        "must not have CA flag set to true",
    ),
    "key-cert-sign": (
        swap(key_usage(digital_signature=True, key_cert_sign=True)),
        (str(WORKLOAD),),
        "KeyUsage has keyCertSign",
        "must not have 'keyCertSign'",
    ),
    "no-digital-signature": (
        swap(key_usage(key_encipherment=True)),
        (str(WORKLOAD),),
        "KeyUsage lacks digitalSignature",
        "must have 'digitalSignature'",
    ),
    "no-uri-san": (
        swap(x509.SubjectAlternativeName([x509.DNSName("api")]), critical=False),
        (),
        "has no URI SAN",
        "does not contain a URI SAN",
    ),
}


def test_malformed_leaves_are_refused_by_both(tmp_path: Path) -> None:
    root = root_ca()
    cases: dict[str, Case] = {}
    for name, (change, uris, herald_message, _) in MALFORMED.items():
        cert, key = custom_leaf(root, change, uris=uris)
        case = Case(chain_to_der([cert]), private_key_to_der(key), chain_to_der([root.cert]))
        cases[name] = case
        with pytest.raises(X509SvidError, match=re.escape(herald_message)):
            X509Svid.parse(case.chain, case.key)

    results = run_cases(tmp_path, cases)

    for name, (_, _, _, pyspiffe_message) in MALFORMED.items():
        svid = results[name]["svid"]
        assert not svid["ok"], f"py-spiffe accepted {name}"
        assert svid["error"] == "InvalidLeafCertificateError", svid
        assert pyspiffe_message in svid["message"], svid


def test_bad_intermediate_and_pem_are_refused_by_both(tmp_path: Path) -> None:
    root = root_ca()
    leaf_cert, leaf_key = herald_leaf(root)
    not_a_ca, _ = herald_leaf(root)
    cases = {
        "intermediate-not-ca": Case(
            chain_to_der([leaf_cert, not_a_ca]),
            private_key_to_der(leaf_key),
            chain_to_der([root.cert]),
        ),
        "pem-chain": Case(
            certs_to_pem([leaf_cert]), private_key_to_der(leaf_key), chain_to_der([root.cert])
        ),
    }
    with pytest.raises(X509SvidError, match=r"certificate 1 \(.*\) has cA=false"):
        X509Svid.parse(cases["intermediate-not-ca"].chain, cases["intermediate-not-ca"].key)
    with pytest.raises(X509SvidError, match="certificate data is PEM"):
        X509Svid.parse(cases["pem-chain"].chain, cases["pem-chain"].key)

    results = run_cases(tmp_path, cases)

    assert results["intermediate-not-ca"]["svid"]["error"] == "InvalidIntermediateCertificateError"
    assert results["pem-chain"]["svid"]["error"] == "ParseCertificateError"


# ---------------------------------------------------------------------------------------------
# Where herald is stricter than py-spiffe


def test_herald_is_stricter_than_pyspiffe(tmp_path: Path) -> None:
    root = root_ca()
    leaf_cert, _ = herald_leaf(root)
    server_only, server_only_key = custom_leaf(
        root,
        swap(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False),
    )
    cases = {
        "key-mismatch": Case(
            chain_to_der([leaf_cert]), private_key_to_der(generate_key()), chain_to_der([root.cert])
        ),
        "eku-server-only": Case(
            chain_to_der([server_only]),
            private_key_to_der(server_only_key),
            chain_to_der([root.cert]),
        ),
    }
    with pytest.raises(X509SvidError, match="private key does not match the leaf"):
        X509Svid.parse(cases["key-mismatch"].chain, cases["key-mismatch"].key)
    with pytest.raises(X509SvidError, match="ExtendedKeyUsage lacks clientAuth"):
        X509Svid.parse(cases["eku-server-only"].chain, cases["eku-server-only"].key)

    results = run_cases(tmp_path, cases)

    # py-spiffe checks neither; go-spiffe refuses the mismatch and OpenSSL the EKU (checklist).
    assert results["key-mismatch"]["svid"]["ok"] is True
    assert results["eku-server-only"]["svid"]["ok"] is True
