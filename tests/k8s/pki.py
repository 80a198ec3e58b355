"""Throw-away certificate authorities and serving certificates for test servers.

One CA per test control plane signs the kube-apiserver's serving certificate (and the kubelet
stand-ins' and fault proxies'); callers trust it through ``ca_file``. Keys are EC P-256 unless a
component needs RSA (the ServiceAccount signing key, which Kubernetes signs RS256 with).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM
_LIFETIME = dt.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, written as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class TestCa:
    """A self-signed CA whose certificate is at ``ca_file``."""

    __test__ = False  # not a pytest test class, whatever its name says

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ca_file: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> TestCa:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca_file = directory / f"{name}.crt"
        ca_file.write_bytes(cert.public_bytes(_PEM))
        (directory / f"{name}.key").write_bytes(_key_pem(key))
        return cls(name, cert, key, ca_file)

    def issue(
        self,
        directory: Path,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        organizations: Sequence[str] = (),
        client: bool = False,
    ) -> KeyPair:
        """A leaf for serving ``dns_names``/``ip_addresses`` (or, with ``client``, for a client
        whose user is ``common_name`` and groups are ``organizations``, as Kubernetes reads them).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = directory / common_name.replace(":", "_")
        pair = KeyPair(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        pair.cert_file.write_bytes(cert.public_bytes(_PEM))
        pair.key_file.write_bytes(_key_pem(key))
        pair.key_file.chmod(0o600)
        return pair


def write_rsa_key(path: Path) -> Path:
    """A 2048-bit RSA private key at ``path`` (the ServiceAccount token signing key)."""
    path.write_bytes(_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    path.chmod(0o600)
    return path
