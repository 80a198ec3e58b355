"""Upstream CAs: loading cert-manager-shaped files and Secret data, and refusing unusable ones."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from herald_core.clock import FakeClock
from herald_core.keys import generate_key, private_key_to_pem
from herald_core.x509svid import certs_to_pem
from herald_server.upstream import (
    UpstreamAuthority,
    UpstreamError,
    UpstreamFiles,
    load_upstream_files,
    upstream_from_secret_data,
)
from tests.certs import Ca, ExtMap, build, custom_ca, drop, key_usage, swap

NOW = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


def corporate_root(
    *, not_before: datetime = NOW - YEAR, not_after: datetime = NOW + 5 * YEAR
) -> Ca:
    """A self-signed root without a SPIFFE ID, as a corporate PKI or cert-manager makes one."""
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp Root")])
    exts: ExtMap = {
        x509.BasicConstraints: (x509.BasicConstraints(ca=True, path_length=None), True),
        x509.KeyUsage: (key_usage(key_cert_sign=True, crl_sign=True), True),
        x509.SubjectKeyIdentifier: (
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            False,
        ),
    }
    cert = build(
        subject=name,
        issuer_name=name,
        public_key=key.public_key(),
        signer=key,
        extensions=exts,
        not_before=not_before,
        not_after=not_after,
    )
    return Ca(cert, key)


@dataclass(frozen=True)
class Pki:
    """root → intermediate → upstream (the CA herald is given)."""

    root: Ca
    intermediate: Ca
    upstream: Ca

    def authority(self) -> UpstreamAuthority:
        return UpstreamAuthority(
            (self.upstream.cert, self.intermediate.cert), self.upstream.key, (self.root.cert,)
        )

    def secret_data(self) -> dict[str, bytes]:
        return {
            "tls.crt": certs_to_pem([self.upstream.cert, self.intermediate.cert]),
            "tls.key": private_key_to_pem(self.upstream.key),
            "ca.crt": certs_to_pem([self.root.cert]),
        }


def make_pki(*, upstream_not_after: datetime = NOW + YEAR) -> Pki:
    root = corporate_root()
    intermediate = custom_ca(
        root, uri=None, not_before=NOW - YEAR, not_after=NOW + 2 * YEAR, common_name="Corp Int"
    )
    upstream = custom_ca(
        intermediate,
        uri=None,
        not_before=NOW - timedelta(days=1),
        not_after=upstream_not_after,
        common_name="herald upstream",
    )
    return Pki(root, intermediate, upstream)


def write_files(directory: Path, data: Mapping[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in data.items():
        (directory / name).write_bytes(content)
    return directory


def test_loads_a_cert_manager_directory(tmp_path: Path) -> None:
    pki = make_pki()
    upstream = load_upstream_files(write_files(tmp_path, pki.secret_data()), clock=FakeClock(NOW))
    assert upstream.cert == pki.upstream.cert
    assert upstream.roots == (pki.root.cert,)
    assert upstream.intermediates == (pki.upstream.cert, pki.intermediate.cert)
    assert upstream.path == (pki.upstream.cert, pki.intermediate.cert, pki.root.cert)
    assert upstream.not_after == pki.upstream.cert.not_valid_after_utc


def test_loads_explicit_paths(tmp_path: Path) -> None:
    pki = make_pki()
    data = pki.secret_data()
    files = UpstreamFiles(tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "roots.pem")
    files.cert.write_bytes(data["tls.crt"])
    files.key.write_bytes(data["tls.key"])
    files.roots.write_bytes(data["ca.crt"])
    assert load_upstream_files(files, clock=FakeClock(NOW)).cert == pki.upstream.cert


def test_a_self_signed_root_can_be_the_upstream_itself(tmp_path: Path) -> None:
    root = corporate_root()
    pem = certs_to_pem([root.cert])
    data = {"tls.crt": pem, "tls.key": private_key_to_pem(root.key), "ca.crt": pem}
    upstream = upstream_from_secret_data(data, clock=FakeClock(NOW))
    # The root is in the bundle only; SVID chains carry nothing of the upstream's.
    assert upstream.intermediates == ()
    assert upstream.path == (root.cert,)


def test_secret_data_is_loaded_and_missing_keys_are_named() -> None:
    pki = make_pki()
    upstream = upstream_from_secret_data(pki.secret_data(), clock=FakeClock(NOW))
    expected = pki.authority()
    assert (upstream.cert_chain, upstream.roots) == (expected.cert_chain, expected.roots)
    assert upstream.key.public_key() == pki.upstream.key.public_key()
    data = pki.secret_data()
    del data["ca.crt"]
    del data["tls.key"]
    with pytest.raises(UpstreamError, match=r"herald/up has no 'tls.key' or 'ca.crt' key"):
        upstream_from_secret_data(data, where="herald/up", clock=FakeClock(NOW))


def test_mismatched_key_names_both_files(tmp_path: Path) -> None:
    data = make_pki().secret_data()
    data["tls.key"] = private_key_to_pem(generate_key())
    directory = write_files(tmp_path, data)
    with pytest.raises(UpstreamError) as info:
        load_upstream_files(directory, clock=FakeClock(NOW))
    assert str(info.value) == (
        f"{directory / 'tls.key'} does not match the certificate in {directory / 'tls.crt'} "
        "(CN=herald upstream)"
    )


def test_a_leaf_certificate_is_not_a_usable_upstream() -> None:
    pki = make_pki()
    leaf = custom_ca(
        pki.intermediate,
        swap(x509.BasicConstraints(ca=False, path_length=None)),
        uri=None,
        not_before=NOW - YEAR,
        not_after=NOW + YEAR,
    )
    with pytest.raises(
        UpstreamError, match=r"cert_chain certificate 0 cannot sign CAs: .*cA=false"
    ):
        UpstreamAuthority((leaf.cert, pki.intermediate.cert), leaf.key, (pki.root.cert,))


def test_a_ca_without_key_cert_sign_is_refused() -> None:
    pki = make_pki()
    no_sign = custom_ca(
        pki.intermediate,
        swap(key_usage(digital_signature=True)),
        uri=None,
        not_before=NOW - YEAR,
        not_after=NOW + YEAR,
    )
    with pytest.raises(UpstreamError, match="lacks keyCertSign"):
        UpstreamAuthority((no_sign.cert, pki.intermediate.cert), no_sign.key, (pki.root.cert,))


def test_a_ca_without_basic_constraints_is_refused() -> None:
    pki = make_pki()
    bare = custom_ca(
        pki.intermediate,
        drop(x509.BasicConstraints),
        uri=None,
        not_before=NOW - YEAR,
        not_after=NOW + YEAR,
    )
    with pytest.raises(UpstreamError, match="no BasicConstraints"):
        UpstreamAuthority((bare.cert, pki.intermediate.cert), bare.key, (pki.root.cert,))


def test_expired_and_not_yet_valid_upstreams_are_refused(tmp_path: Path) -> None:
    pki = make_pki(upstream_not_after=NOW + timedelta(days=2))
    directory = write_files(tmp_path, pki.secret_data())
    with pytest.raises(UpstreamError) as info:
        load_upstream_files(directory, clock=FakeClock(NOW + timedelta(days=3)))
    assert str(info.value) == (
        f"{directory / 'tls.crt'} certificate 0 expired at "
        f"{pki.upstream.cert.not_valid_after_utc.isoformat()}"
    )
    with pytest.raises(UpstreamError, match=r"certificate 0 is not valid until"):
        load_upstream_files(directory, clock=FakeClock(NOW - timedelta(days=2)))


def test_an_expired_root_is_refused() -> None:
    pki = make_pki()
    upstream = pki.authority()
    far = pki.root.cert.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(UpstreamError, match=r"certificate 0 expired at"):
        upstream.check_valid_at(far)
    upstream.check_valid_at(NOW)


def test_a_chain_that_does_not_reach_the_roots_is_refused() -> None:
    pki = make_pki()
    data = pki.secret_data()
    data["ca.crt"] = certs_to_pem([corporate_root().cert])
    with pytest.raises(UpstreamError, match=r"does not lead to a root in .*'ca.crt': no root"):
        upstream_from_secret_data(data, clock=FakeClock(NOW))


def test_a_broken_link_in_the_chain_is_refused() -> None:
    pki = make_pki()
    stranger = make_pki().intermediate
    with pytest.raises(UpstreamError, match="certificate 0 is not signed by certificate 1"):
        UpstreamAuthority((pki.upstream.cert, stranger.cert), pki.upstream.key, (pki.root.cert,))


def test_a_root_that_is_not_self_signed_is_refused() -> None:
    pki = make_pki()
    # ca.crt holding the intermediate: OpenSSL clients would not accept it as a trust anchor.
    with pytest.raises(
        UpstreamError, match=r"roots certificate 0 \(CN=Corp Int\) is not self-signed"
    ):
        UpstreamAuthority((pki.upstream.cert,), pki.upstream.key, (pki.intermediate.cert,))


def test_path_length_must_leave_room_for_heralds_ca() -> None:
    root = corporate_root()
    zero = custom_ca(
        root, uri=None, not_before=NOW - YEAR, not_after=NOW + YEAR, path_len=0, common_name="Z"
    )
    with pytest.raises(UpstreamError, match=r"pathLenConstraint 0 but would have 1 CA"):
        UpstreamAuthority((zero.cert,), zero.key, (root.cert,))
    one = custom_ca(
        root, uri=None, not_before=NOW - YEAR, not_after=NOW + YEAR, path_len=1, common_name="O"
    )
    assert UpstreamAuthority((one.cert,), one.key, (root.cert,)).intermediates == (one.cert,)


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    data = make_pki().secret_data()
    directory = write_files(tmp_path, data)
    (directory / "ca.crt").unlink()
    with pytest.raises(
        UpstreamError, match=re.escape(f"cannot read {directory / 'ca.crt'}: No such file")
    ):
        load_upstream_files(directory, clock=FakeClock(NOW))
    (directory / "ca.crt").write_bytes(b"not a certificate")
    with pytest.raises(
        UpstreamError, match=re.escape(f"{directory / 'ca.crt'}: no PEM CERTIFICATE block")
    ):
        load_upstream_files(directory, clock=FakeClock(NOW))
    write_files(directory, data)
    (directory / "tls.key").write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(
        UpstreamError, match=re.escape(f"{directory / 'tls.key'}: cannot parse private key")
    ):
        load_upstream_files(directory, clock=FakeClock(NOW))
