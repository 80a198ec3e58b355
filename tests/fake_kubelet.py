"""A local HTTPS kubelet stand-in for the k8s attestor's tests and benchmark.

`make_tls` makes a throw-away CA and a serving certificate for the node name and 127.0.0.1;
`FakeKubelet` answers ``/pods`` to one bearer token only and counts its requests.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kubelet_pods import NODE

TOKEN = "kubelet-test-token"


@dataclass
class Tls:
    ca_file: Path
    server: ssl.SSLContext


def make_tls(directory: Path, name: str = "kubelet-ca") -> Tls:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(NODE), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (directory / f"{name}{s}" for s in (".crt", "-srv.crt", ".key"))
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Tls(ca_file, server)


@dataclass
class FakeKubelet:
    """Serves ``body`` on /pods to ``Bearer <token>``; 401 otherwise, or ``status`` if set."""

    body: bytes
    token: str | None = TOKEN
    status: int | None = None
    delay: float = 0.0
    requests: int = 0
    url_port: int = 0

    async def pods(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            return aiohttp.web.Response(status=401, text="Unauthorized")
        if self.status is not None:
            return aiohttp.web.Response(
                status=self.status,
                text="Forbidden (user=system:serviceaccount:herald:herald-agent, verb=get, "
                "resource=nodes, subresource=proxy)",
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        return aiohttp.web.Response(body=self.body, content_type="application/json")


def site_port(site: aiohttp.web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound port only through the asyncio server.
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])
