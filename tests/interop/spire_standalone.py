"""SPIRE in standalone mode as real processes, configured as `HeraldStandalone` configures herald.

spire-server with the sqlite3 datastore, the join_token node attestor and an ec-p256 CA (24 h
CA, 1 h X.509-SVID, 5 min JWT-SVID: the defaults of both systems, written out); one spire-agent
attesting with a join token whose alias (`NODE`) parents every entry, ec-p256 workload keys and
the unix workload attestor with `discover_workload_path`, so `unix:path` selects as in herald.
The binaries come from `scripts/build_spire.sh`'s cache; `spire_binaries()` finds them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.interop.processes import Child, DeploymentError, http_get, wait_until
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


def spire_bin_dir() -> Path:
    cache = os.environ.get("HERALD_SPIRE_CACHE") or str(Path.home() / ".cache/herald/spire")
    return Path(cache) / spire_version() / "bin"


def spire_binaries() -> Path | None:
    """The cache's bin directory if both binaries are in it."""
    bin_dir = spire_bin_dir()
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


class SpireStandalone:
    """A spire-server and a spire-agent in ``workdir``, the agent's socket in ``socket_dir``."""

    name = "spire"

    def __init__(
        self,
        workdir: Path,
        socket_dir: Path,
        bin_dir: Path,
        trust_domain: str = "example.org",
        log_level: str = "WARN",
    ) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.trust_domain = trust_domain
        self.node = f"spiffe://{trust_domain}/host/node"
        self.socket_path = socket_dir / "agent.sock"
        self.admin_socket = socket_dir / "server.sock"
        self.log_level = log_level
        self.ports = {name: free_port() for name in ("server", "health", "agent-health")}
        self.server = Child("spire-server", workdir / "server.log")
        self.agent = Child("spire-agent", workdir / "agent.log")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        self.start_server()
        self.start_agent()

    def start_server(self) -> None:
        data = self.workdir / "server-data"
        data.mkdir(parents=True, exist_ok=True)
        config = self._write(
            "server.conf",
            f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.ports["server"]}"
    socket_path = "{self.admin_socket}"
    trust_domain = "{self.trust_domain}"
    data_dir = "{data}"
    log_level = "{self.log_level}"
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
health_checks {{
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "{self.ports["health"]}"
    live_path = "/live"
    ready_path = "/ready"
}}
""",
        )
        self.server.start([str(self.bin_dir / "spire-server"), "run", "-config", str(config)])
        wait_until(
            "spire-server ready",
            lambda: http_get(self.ports["health"], "/ready")[0] == 200,
            self.server,
        )

    def start_agent(self) -> None:
        bundle = self.workdir / "bootstrap-bundle.pem"
        bundle.write_text(self.server_cli("bundle", "show", "-format", "pem"))
        token = self.server_cli("token", "generate", "-spiffeID", self.node).split()[-1]
        data = self.workdir / "agent-data"
        data.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._write(
            "agent.conf",
            f"""
agent {{
    data_dir = "{data}"
    log_level = "{self.log_level}"
    server_address = "127.0.0.1"
    server_port = "{self.ports["server"]}"
    socket_path = "{self.socket_path}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{self.trust_domain}"
    join_token = "{token}"
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{ directory = "{data}" }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{ discover_workload_path = true }}
    }}
}}
health_checks {{
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "{self.ports["agent-health"]}"
    live_path = "/live"
    ready_path = "/ready"
}}
""",
        )
        self.run_agent()

    def run_agent(self) -> None:
        config = self.workdir / "agent.conf"
        self.agent.start([str(self.bin_dir / "spire-agent"), "run", "-config", str(config)])
        wait_until(
            "spire-agent ready",
            lambda: http_get(self.ports["agent-health"], "/ready")[0] == 200,
            self.agent,
        )

    def restart_agent(self) -> None:
        self.agent.stop()
        self.run_agent()

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()

    def create_entry(
        self, path: str, selectors: Sequence[str], x509_ttl: int = 0, jwt_ttl: int = 0
    ) -> str:
        spiffe_id = f"spiffe://{self.trust_domain}{path}"
        args = ["entry", "create", "-parentID", self.node, "-spiffeID", spiffe_id]
        for selector in selectors:
            args += ["-selector", selector]
        if x509_ttl:
            args += ["-x509SVIDTTL", str(x509_ttl)]
        if jwt_ttl:
            args += ["-jwtSVIDTTL", str(jwt_ttl)]
        self.server_cli(*args)
        return spiffe_id

    def server_cli(self, *args: str) -> str:
        """Run ``spire-server <args>`` against this server's socket; its stdout."""
        command = [str(self.bin_dir / "spire-server"), *args, "-socketPath", str(self.admin_socket)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise DeploymentError(f"`spire-server {' '.join(args)}` failed: {done.stderr}")
        return done.stdout

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text.lstrip())
        return path
