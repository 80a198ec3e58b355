"""The names both ends of the agent's Workload API agree on: where the socket is, the security
header, the refusal a caller without an identity gets.

Kept apart from the server side so the client commands (`herald-agent api …`, `healthcheck`)
start without importing the agent's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

ENV_SOCKET: Final = "SPIFFE_ENDPOINT_SOCKET"
DEFAULT_SOCKET_PATH: Final = Path("/run/herald/sockets/agent.sock")
SECURITY_HEADER: Final = "workload.spiffe.io"
SECURITY_HEADER_VALUE: Final = "true"
NO_IDENTITY: Final = "no identity issued"
