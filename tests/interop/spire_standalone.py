"""SPIRE in standalone mode as real processes, configured as `HeraldStandalone` configures herald.

spire-server with the sqlite3 datastore, the join_token node attestor and an ec-p256 CA (24 h
CA, 1 h X.509-SVID, 5 min JWT-SVID: the defaults of both systems, written out); one spire-agent
with the unix workload attestor and `discover_workload_path`, so `unix:path` selects as in
herald; disk key managers; logs at WARN; the agent's Prometheus telemetry on, for its SVID count.
The binaries come from `scripts/build_spire.sh`'s cache; `spire_binaries()` finds them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.interop.processes import DeploymentError, gauge, http_get
from tests.interop.standalone import EntrySpec, Standalone
from tests.server_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_spire.sh"
SPIRE_MODULE = ROOT / "bench" / "spire" / "go.mod"


def spire_version() -> str:
    """The SPIRE release bench/spire/go.mod requires (what build_spire.sh builds)."""
    for line in SPIRE_MODULE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["github.com/spiffe/spire"]:
            return words[1]
    raise DeploymentError(f"{SPIRE_MODULE} requires no github.com/spiffe/spire")


def spire_binaries() -> Path | None:
    """The cache's bin directory if both binaries are in it."""
    cache = os.environ.get("HERALD_SPIRE_CACHE") or str(Path.home() / ".cache/herald/spire")
    bin_dir = Path(cache) / spire_version() / "bin"
    if all((bin_dir / name).is_file() for name in ("spire-server", "spire-agent")):
        return bin_dir
    return None


def build_spire() -> Path:
    """Build SPIRE into the cache if it is not there yet (minutes when cold); its bin directory."""
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise DeploymentError(f"{BUILD_SCRIPT} failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


class SpireStandalone(Standalone):
    name = "spire"
    server_binary = "spire-server"
    agent_binary = "spire-agent"

    def __init__(
        self,
        workdir: Path,
        socket_dir: Path,
        bin_dir: Path,
        trust_domain: str = "example.org",
        svid_cache_size: int = 0,
        hash_workloads: bool = True,
    ) -> None:
        """``svid_cache_size``: the agent's `x509_svid_cache_max_size` (0: SPIRE's 1,000).
        ``hash_workloads=False`` sets the unix attestor's `workload_size_limit = -1`: SPIRE
        then never hashes a caller's binary, which by default it does on every call."""
        super().__init__(workdir, socket_dir, trust_domain)
        self.bin_dir = bin_dir
        self.svid_cache_size = svid_cache_size
        self.hash_workloads = hash_workloads
        self.admin_socket = socket_dir / "server.sock"
        self.server_cli_path = bin_dir / "spire-server"
        names = ("server", "health", "agent-health", "agent-metrics")
        self.ports = {name: free_port() for name in names}

    def launch_server(self) -> None:
        data = self.workdir / "server-data"
        data.mkdir(parents=True, exist_ok=True)
        config = self._write(
            "server.conf",
            f"""server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.ports["server"]}"
    socket_path = "{self.admin_socket}"
    trust_domain = "{self.trust_domain}"
    data_dir = "{data}"
    log_level = "WARN"
    ca_key_type = "ec-p256"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "disk" {{
        plugin_data {{ keys_path = "{data}/keys.json" }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
{_health(self.ports["health"])}""",
        )
        self.server.start([str(self.bin_dir / "spire-server"), "run", "-config", str(config)])

    def server_ready(self) -> bool:
        return http_get(self.ports["health"], "/ready")[0] == 200

    def configure_agent(self) -> None:
        bundle = self.workdir / "bootstrap-bundle.pem"
        bundle.write_text(self.server_cli("bundle", "show", "-format", "pem"))
        token = self.server_cli("token", "generate", "-spiffeID", self.node).split()[-1]
        data = self.workdir / "agent-data"
        data.mkdir(parents=True, exist_ok=True)
        cache = ""
        if self.svid_cache_size:
            cache = f"\n    x509_svid_cache_max_size = {self.svid_cache_size}"
        self._write(
            "agent.conf",
            f"""agent {{
    data_dir = "{data}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{self.ports["server"]}"
    socket_path = "{self.socket_path}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{self.trust_domain}"
    join_token = "{token}"{cache}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{ directory = "{data}" }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = true{"" if self.hash_workloads else _NO_HASHING}
        }}
    }}
}}
{_health(self.ports["agent-health"])}
telemetry {{
    Prometheus {{
        host = "127.0.0.1"
        port = {self.ports["agent-metrics"]}
    }}
}}
""",
        )

    def launch_agent(self) -> None:
        config = self.workdir / "agent.conf"
        self.agent.start([str(self.bin_dir / "spire-agent"), "run", "-config", str(config)])

    def agent_ready(self) -> bool:
        return http_get(self.ports["agent-health"], "/ready")[0] == 200

    def create_entries(self, entries: Sequence[EntrySpec]) -> None:
        """One `entry create -data` batch, as SPIRE operators load many entries."""
        data = self.workdir / "entries.json"
        data.write_text(json.dumps({"entries": [self._entry(entry) for entry in entries]}))
        self.server_cli("entry", "create", "-data", str(data))

    def svids(self) -> int:
        """Workload SVIDs in the agent's cache: its size less the node alias entry's SVID."""
        held = gauge(self.ports["agent-metrics"], "spire_agent_lru_cache_svid_map_size")
        return -1 if held is None else int(held) - 1

    def server_cli(self, *args: str) -> str:
        """Run ``spire-server <args>`` against this server's socket; its stdout."""
        command = [str(self.server_cli_path), *args, "-socketPath", str(self.admin_socket)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise DeploymentError(f"`spire-server {' '.join(args)}` failed: {done.stderr}")
        return done.stdout

    def _entry(self, entry: EntrySpec) -> dict[str, object]:
        return {
            "spiffe_id": self.spiffe_id(entry.path),
            "parent_id": self.node,
            "selectors": [
                {"type": kind, "value": value}
                for kind, _, value in (s.partition(":") for s in entry.selectors)
            ],
            "x509_svid_ttl": entry.x509_ttl,
            "jwt_svid_ttl": entry.jwt_ttl,
        }


_NO_HASHING = "\n            workload_size_limit = -1"


def _health(port: int) -> str:
    return f"""health_checks {{
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    live_path = "/live"
    ready_path = "/ready"
}}"""
