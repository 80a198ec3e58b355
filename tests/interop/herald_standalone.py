"""herald in standalone mode as real processes: `herald-server run` and one `herald-agent run`.

The server keeps its SQLite store and CA in the deployment's directory; entries are created
through its admin socket, as `herald-server entry create` does. Logs at warning level, as
`SpireStandalone` configures SPIRE.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import parse_selectors
from herald_core.wire import bundle_from_proto, selector_to_proto
from herald_core.x509svid import certs_to_pem
from herald_server.admin_client import CHANNEL_OPTIONS
from tests.interop.processes import gauge, http_get
from tests.interop.standalone import EntrySpec, Standalone
from tests.server_harness import free_port

BIN = Path(sys.executable).parent
SERVER_NAME = "herald-server.interop"


class HeraldStandalone(Standalone):
    name = "herald"
    server_binary = "herald-server"
    agent_binary = "herald-agent"

    def __init__(self, workdir: Path, socket_dir: Path, trust_domain: str = "example.org") -> None:
        super().__init__(workdir, socket_dir, trust_domain)
        self.admin_socket = workdir / "server" / "admin.sock"
        self.server_cli_path = BIN / "herald-server"
        names = ("attestation", "agent", "health", "agent-health")
        self.ports = {name: free_port() for name in names}
        self._admin: grpc.Channel | None = None

    def launch_server(self) -> None:
        (self.workdir / "server").mkdir(parents=True, exist_ok=True)
        config = self._yaml(
            "server.yaml",
            {
                "trust_domain": self.trust_domain,
                "data_dir": str(self.workdir / "server" / "data"),
                "admin_socket": str(self.admin_socket),
                "attestation_address": f"127.0.0.1:{self.ports['attestation']}",
                "agent_address": f"127.0.0.1:{self.ports['agent']}",
                "health_address": f"127.0.0.1:{self.ports['health']}",
                "server_dns_names": [SERVER_NAME],
                "log_level": "warn",
            },
        )
        self.server.start([str(BIN / "herald-server"), "run", "-config", str(config)])

    def server_ready(self) -> bool:
        if not self.admin_socket.exists():
            return False
        try:
            self.bundle()
        except grpc.RpcError:
            return False
        return True

    def configure_agent(self) -> None:
        bundle = self.workdir / "bootstrap-bundle.pem"
        bundle.write_bytes(certs_to_pem(self.bundle().x509_authorities))
        token = self.admin().CreateJoinToken(admin_pb2.CreateJoinTokenRequest(spiffe_id=self.node))
        self._yaml(
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
                "log_level": "warn",
            },
        )

    def launch_agent(self) -> None:
        config = self.workdir / "agent.yaml"
        self.agent.start([str(BIN / "herald-agent"), "run", "-config", str(config)])

    def agent_ready(self) -> bool:
        return http_get(self.ports["agent-health"], "/ready")[0] == 200

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().stop()

    def create_entries(self, entries: Sequence[EntrySpec]) -> None:
        admin = self.admin()
        for entry in entries:
            message = types_pb2.Entry(
                spiffe_id=self.spiffe_id(entry.path),
                parent_id=self.node,
                selectors=[selector_to_proto(s) for s in parse_selectors(entry.selectors)],
                x509_svid_ttl=entry.x509_ttl,
                jwt_svid_ttl=entry.jwt_ttl,
            )
            admin.CreateEntry(admin_pb2.CreateEntryRequest(entry=message))

    def svids(self) -> int:
        held = gauge(self.ports["agent-health"], "herald_agent_svids")
        return -1 if held is None else int(held)

    def admin(self) -> Any:
        if self._admin is None:
            target = f"unix:{self.admin_socket}"
            self._admin = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        return admin_pb2_grpc.AdminAPIStub(self._admin)

    def bundle(self) -> Any:
        return bundle_from_proto(self.admin().GetBundle(admin_pb2.GetBundleRequest()).bundle)

    def _yaml(self, name: str, doc: dict[str, Any]) -> Path:
        return self._write(name, yaml.safe_dump(doc, sort_keys=False))
