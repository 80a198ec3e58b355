"""TCP listeners that never share their port, and a failed bind explained by its port and cause.

grpc sets SO_REUSEPORT on every TCP listener by default, so a second process (a second
herald-server with its own CA, say) binds the ports of a running one and the kernel splits the
connections between the two. herald's gRPC servers take `GRPC_SERVER_OPTIONS` so that a port
in use is refused; grpc then says only "failed to bind", so `add_port` binds a plain socket to
the same address to learn the kernel's reason and names the port and the field it came from.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import grpc

from herald_core.configfile import Address

# Every gRPC server herald runs on TCP takes these.
GRPC_SERVER_OPTIONS: Final = (("grpc.so_reuseport", 0),)


class ListenError(RuntimeError):
    """A listener could not be opened; the message names the address, its field and why."""


def add_port(
    server: grpc.aio.Server,
    address: Address,
    field: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Listen on ``address`` (TLS with ``credentials``); the port bound, or `ListenError`."""
    try:
        if credentials is None:
            return server.add_insecure_port(str(address))
        return server.add_secure_port(str(address), credentials)
    except RuntimeError as exc:
        raise ListenError(
            f"{field}: cannot listen on {address}: {bind_failure(address) or exc}"
        ) from exc


def bind_failure(address: Address) -> str | None:
    """Why binding ``address`` fails now, as the kernel says it (None if it binds)."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {address.host!r}: {exc.strerror}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {address.port} is already in use (address in use)"
            return exc.strerror or str(exc)
    return None
