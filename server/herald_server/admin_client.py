"""The admin socket's client end: where the socket is by default and how to open a channel to it.

Kept apart from the admin service so that `herald-server entry|token|bundle|healthcheck` start
without importing the server (its CA, stores and the Kubernetes client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import grpc

DEFAULT_DATA_DIR: Final = Path("/var/lib/herald/server")
ADMIN_SOCKET_NAME: Final = "admin.sock"
DEFAULT_ADMIN_SOCKET: Final = DEFAULT_DATA_DIR / ADMIN_SOCKET_NAME
# The socket is local and its callers are administrators: a listing of every entry of a large
# cluster must fit in one response.
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
CHANNEL_OPTIONS: Final = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def admin_channel(socket_path: Path) -> grpc.aio.Channel:
    """A client channel to the admin socket, accepting responses as large as the server sends."""
    return grpc.aio.insecure_channel(f"unix:{socket_path}", options=CHANNEL_OPTIONS)
