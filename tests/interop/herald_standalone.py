"""herald in standalone mode as real processes: `herald-server run` and one `herald-agent run`.

The server keeps its SQLite store and CA in the deployment's directory; the agent attests with a
join token whose alias (`NODE`) parents every entry, and serves the Workload API with the unix
attestor. Entries are created through the admin socket, as `herald-server entry create` does.
`tests/interop/spire_standalone.py` is the same deployment made of SPIRE, with the same methods.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import parse_selectors
from herald_core.wire import bundle_from_proto, selector_to_proto
from herald_core.x509svid import certs_to_pem
from herald_server.admin_client import CHANNEL_OPTIONS
from tests.interop.processes import Child, http_get, wait_until
from tests.server_harness import free_port

BIN = Path(sys.executable).parent
SERVER_NAME = "herald-server.interop"


class HeraldStandalone:
    """A herald-server and a herald-agent in ``workdir``, the socket in ``socket_dir``."""

    name = "herald"

    def __init__(
        self,
        workdir: Path,
        socket_dir: Path,
        trust_domain: str = "example.org",
        log_level: str = "warn",
    ) -> None:
        self.workdir = workdir
        self.trust_domain = trust_domain
        self.node = f"spiffe://{trust_domain}/host/node"
        self.socket_path = socket_dir / "agent.sock"
        self.admin_socket = workdir / "server" / "admin.sock"
        self.log_level = log_level
        names = ("attestation", "agent", "health", "agent-health")
        self.ports = {name: free_port() for name in names}
        self.server = Child("herald-server", workdir / "server.log")
        self.agent = Child("herald-agent", workdir / "agent.log")
        self._admin: grpc.Channel | None = None

    @property
    def endpoint(self) -> str:
        """The socket as SPIFFE_ENDPOINT_SOCKET names it."""
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        self.start_server()
        self.start_agent()

    def start_server(self) -> None:
        (self.workdir / "server").mkdir(parents=True, exist_ok=True)
        config = self._write(
            "server.yaml",
            {
                "trust_domain": self.trust_domain,
                "data_dir": str(self.workdir / "server" / "data"),
                "admin_socket": str(self.admin_socket),
                "attestation_address": f"127.0.0.1:{self.ports['attestation']}",
                "agent_address": f"127.0.0.1:{self.ports['agent']}",
                "health_address": f"127.0.0.1:{self.ports['health']}",
                "server_dns_names": [SERVER_NAME],
                "log_level": self.log_level,
            },
        )
        self.server.start([str(BIN / "herald-server"), "run", "-config", str(config)])
        wait_until("herald-server serving its admin socket", self._admin_answers, self.server)

    def start_agent(self) -> None:
        """Attest a new agent with a fresh join token (the first start) and wait until ready."""
        bundle = self.workdir / "bootstrap-bundle.pem"
        bundle.write_bytes(certs_to_pem(self.bundle().x509_authorities))
        token = self.admin().CreateJoinToken(admin_pb2.CreateJoinTokenRequest(spiffe_id=self.node))
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._write(
            "agent.yaml",
            {
                "trust_domain": self.trust_domain,
                "server_address": f"127.0.0.1:{self.ports['agent']}",
                "attestation_address": f"127.0.0.1:{self.ports['attestation']}",
                "server_name": SERVER_NAME,
                "trust_bundle_path": str(bundle),
                "socket_path": str(self.socket_path),
                "data_dir": str(self.workdir / "agent-data"),
                "health_address": f"127.0.0.1:{self.ports['agent-health']}",
                "node_attestor": {"join_token": {"token": token.value}},
                "workload_attestors": {"unix": {}},
                "log_level": self.log_level,
            },
        )
        self.run_agent()

    def run_agent(self) -> None:
        """Start `herald-agent run` on the configuration written; it reuses its stored SVID."""
        config = self.workdir / "agent.yaml"
        self.agent.start([str(BIN / "herald-agent"), "run", "-config", str(config)])
        wait_until("herald-agent ready", lambda: self._get("/ready")[0] == 200, self.agent)

    def restart_agent(self) -> None:
        self.agent.stop()
        self.run_agent()

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self.agent.stop()
        self.server.stop()

    def create_entry(
        self, path: str, selectors: Sequence[str], x509_ttl: int = 0, jwt_ttl: int = 0
    ) -> str:
        """Register ``spiffe://<td><path>`` for ``selectors`` (``type:value``) on the agent."""
        entry = types_pb2.Entry(
            spiffe_id=f"spiffe://{self.trust_domain}{path}",
            parent_id=self.node,
            selectors=[selector_to_proto(s) for s in parse_selectors(selectors)],
            x509_svid_ttl=x509_ttl,
            jwt_svid_ttl=jwt_ttl,
        )
        created = self.admin().CreateEntry(admin_pb2.CreateEntryRequest(entry=entry))
        return str(created.spiffe_id)

    def wait_svids(self, count: int) -> None:
        """Wait until the agent holds at least ``count`` workload SVIDs."""
        wait_until(f"the agent holding {count} SVIDs", lambda: self.svids() >= count, self.agent)

    def svids(self) -> int:
        status, text = self._get("/metrics")
        if status != 200:
            return -1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "herald_agent_svids":
                    return int(sample.value)
        return -1

    def admin(self) -> Any:
        if self._admin is None:
            target = f"unix:{self.admin_socket}"
            self._admin = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        return admin_pb2_grpc.AdminAPIStub(self._admin)

    def bundle(self) -> Any:
        return bundle_from_proto(self.admin().GetBundle(admin_pb2.GetBundleRequest()).bundle)

    def _admin_answers(self) -> bool:
        if not self.admin_socket.exists():
            return False
        try:
            self.bundle()
        except grpc.RpcError:
            return False
        return True

    def _get(self, path: str) -> tuple[int, str]:
        return http_get(self.ports["agent-health"], path)

    def _write(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
