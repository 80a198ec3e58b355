"""One quickstart workload: an mTLS greeter or its caller, on the real py-spiffe clients.

It gets its X.509-SVID from the agent's socket (``SPIFFE_ENDPOINT_SOCKET``) with py-spiffe's
`X509Source`, picks the identity it was registered for, and authorises its peer by SPIFFE ID with
spiffe-tls, exactly as any SPIFFE workload would; nothing here knows about herald.

    demo_workload.py greeter PORT MY_ID PEER_ID   # prints READY, answers one caller, prints JSON
    demo_workload.py caller  PORT MY_ID PEER_ID   # says hello, prints JSON
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL
from spiffe import SpiffeId, X509Source
from spiffe.svid.x509_svid import X509Svid
from spiffetls import ListenOptions, dial, listen
from spiffetls.mode import ClientTlsMode, ServerTlsMode
from spiffetls.tlsconfig.authorize import authorize_id

SOURCE_TIMEOUT_SECONDS = 30


def picker(wanted: str) -> Callable[[Sequence[X509Svid]], X509Svid]:
    """The SVID with SPIFFE ID ``wanted``: one caller may hold several identities."""

    def pick(svids: Sequence[X509Svid]) -> X509Svid:
        for svid in svids:
            if str(svid.spiffe_id) == wanted:
                return svid
        raise LookupError(f"the Workload API offered no SVID for {wanted}")

    return pick


def describe(svid: X509Svid) -> dict[str, str]:
    return {
        "spiffe_id": str(svid.spiffe_id),
        "serial": f"{svid.leaf.serial_number:x}",
        "expires": svid.leaf.not_valid_after_utc.isoformat(),
    }


def peer_id(conn: SSL.Connection) -> str:
    """The SPIFFE ID in the certificate the peer proved it holds the key of."""
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return ""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ",".join(san.get_values_for_type(x509.UniformResourceIdentifier))


def greeter(source: X509Source, port: int, peer: str) -> dict[str, object]:
    options = ListenOptions(tls_mode=ServerTlsMode.MTLS, authorize_fn=authorize_id(SpiffeId(peer)))
    server = listen(f"127.0.0.1:{port}", source, options)
    print("READY", flush=True)
    conn, _ = server.accept()
    request = conn.recv(1024).decode()
    verified = peer_id(conn)
    conn.sendall(f"hello {verified}, you said {request!r}".encode())
    tls_version = conn.get_protocol_version_name()
    conn.shutdown()
    conn.close()
    server.close()
    return {"heard": request, "peer": verified, "tls": tls_version}


def caller(source: X509Source, port: int, peer: str) -> dict[str, object]:
    conn = dial(
        f"127.0.0.1:{port}",
        source,
        tls_mode=ClientTlsMode.TLS,
        authorize_fn=authorize_id(SpiffeId(peer)),
    )
    conn.sendall(b"hi greeter")
    reply = conn.recv(1024).decode()
    verified = peer_id(conn)
    tls_version = conn.get_protocol_version_name()
    conn.close()
    return {"reply": reply, "peer": verified, "tls": tls_version}


def main(argv: Sequence[str]) -> int:
    role, port, me, peer = argv[1], int(argv[2]), argv[3], argv[4]
    run = {"greeter": greeter, "caller": caller}[role]
    with X509Source(timeout_in_seconds=SOURCE_TIMEOUT_SECONDS, svid_picker=picker(me)) as source:
        result = run(source, port, peer)
        result["svid"] = describe(source.svid)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
