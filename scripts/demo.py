"""The herald demo: what the code does today, end to end, with real keys, TLS and JWTs.

It builds a trust domain CA, issues two workload X.509-SVIDs from agent CSRs, runs a mutual-TLS
exchange between the two workloads over loopback (each authorising the other by SPIFFE ID), then
mints a JWT-SVID and validates it against the trust bundle. Run it with `make demo`.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509

from herald_core.bundle import Bundle
from herald_core.csr import check_csr, make_csr
from herald_core.jwtsvid import mint_jwt_svid, validate_jwt_svid
from herald_core.keys import generate_key, private_key_to_pem
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import (
    X509Svid,
    certs_to_pem,
    make_ca_certificate,
    make_leaf_certificate,
    svid_validity,
    verify_chain,
)

TD = TrustDomain("demo.herald.dev")
NOW = dt.datetime.now(dt.UTC)


def step(text: str) -> None:
    print(f"\n== {text}")


def issue_svid(ca_cert: x509.Certificate, ca_key: object, spiffe_id: SpiffeId) -> X509Svid:
    """The agent's half (key + CSR) and the server's half (check CSR, sign for the entry)."""
    key = generate_key()
    info = check_csr(make_csr(key, spiffe_id), expected_spiffe_id=spiffe_id)
    not_before, not_after = svid_validity(NOW, dt.timedelta(minutes=5), ca_cert.not_valid_after_utc)
    leaf = make_leaf_certificate(
        info.public_key,
        spiffe_id,
        issuer_cert=ca_cert,
        issuer_key=ca_key,  # type: ignore[arg-type]
        not_before=not_before,
        not_after=not_after,
    )
    return X509Svid(spiffe_id, (leaf,), key)


def tls_context(svid: X509Svid, bundle: Bundle, workdir: Path, *, server: bool) -> ssl.SSLContext:
    name = svid.spiffe_id.path.rsplit("/", 1)[-1]
    chain, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    chain.write_bytes(certs_to_pem(svid.cert_chain))
    key.write_bytes(private_key_to_pem(svid.private_key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE authorises by URI SAN, not host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(chain, key)
    ctx.load_verify_locations(cadata=bundle.x509_pem().decode())
    return ctx


def authorise(tls: ssl.SSLSocket, bundle: Bundle, expected: SpiffeId) -> SpiffeId:
    peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    peer_id = verify_chain([peer], bundle.x509_authorities, trust_domain=TD, now=NOW)
    if peer_id != expected:
        raise PermissionError(f"peer is {peer_id}, expected {expected}")
    return peer_id


def mtls_exchange(client: X509Svid, server: X509Svid, bundle: Bundle, workdir: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server_ctx = tls_context(server, bundle, workdir, server=True)
    client_ctx = tls_context(client, bundle, workdir, server=False)

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer = authorise(tls, bundle, client.spiffe_id)
            tls.sendall(f"hello {peer}, this is {server.spiffe_id}".encode())

    thread = threading.Thread(target=serve)
    thread.start()
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client_ctx.wrap_socket(raw) as tls,
    ):
        peer = authorise(tls, bundle, server.spiffe_id)
        print(f"client {client.spiffe_id} verified server {peer} ({tls.version()})")
        print(f"server said: {tls.recv(1024).decode()}")
    thread.join()
    listener.close()


def main() -> None:
    step(f"trust domain {TD}: a self-signed CA (EC P-256, 24h)")
    ca_key = generate_key()
    ca_cert = make_ca_certificate(
        ca_key,
        TD,
        not_before=NOW - dt.timedelta(seconds=10),
        not_after=NOW + dt.timedelta(hours=24),
    )
    jwt_key = generate_key()
    bundle = Bundle(TD, (ca_cert,), {"demo-key-1": jwt_key.public_key()}, 300, 1)
    print(f"CA subject {ca_cert.subject.rfc4514_string()}, expires {ca_cert.not_valid_after_utc}")
    print(
        f"bundle (SPIFFE JWKS, sequence {bundle.sequence_number}): "
        f"{len(bundle.to_spiffe_jwks())} bytes"
    )

    step("two workloads get X.509-SVIDs: key + CSR on the agent side, signed for the entry")
    web = issue_svid(ca_cert, ca_key, SpiffeId.from_segments(TD, "ns", "shop", "sa", "web"))
    db = issue_svid(ca_cert, ca_key, SpiffeId.from_segments(TD, "ns", "shop", "sa", "db"))
    for svid in (web, db):
        print(
            f"{svid.spiffe_id}  expires {svid.expires_at:%H:%M:%S}  "
            f"chain {len(svid.chain_der())} B DER, key {len(svid.key_der())} B PKCS#8"
        )

    step("mutual TLS between them, each authorising the other by SPIFFE ID")
    with tempfile.TemporaryDirectory(prefix="herald-demo-") as tmp:
        mtls_exchange(web, db, bundle, Path(tmp))

    step("a JWT-SVID for web, audience 'db', validated against the bundle")
    token = mint_jwt_svid(
        key=jwt_key,
        key_id="demo-key-1",
        spiffe_id=web.spiffe_id,
        audiences=["db"],
        issued_at=NOW,
        expires_at=NOW + dt.timedelta(minutes=5),
    )
    checked = validate_jwt_svid(token, {TD: bundle}, "db", now=NOW)
    print(
        f"token for {checked.spiffe_id}, audiences {list(checked.audiences)}, "
        f"expires {checked.expires_at:%H:%M:%S}"
    )

    step("next")
    print("The standalone quickstart (herald-server + herald-agent, workloads fetching SVIDs")
    print(
        "from the agent's Workload API socket) is coming with the agent; `make demo` will run it."
    )


if __name__ == "__main__":
    main()
