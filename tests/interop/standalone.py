"""What a standalone deployment of herald or of SPIRE offers the interop tests and benchmarks.

One server and one agent as real processes in a directory of their own; the agent attests with a
join token whose alias (`node`) parents every entry and serves the Workload API with the unix
attestor. Subclasses (`HeraldStandalone`, `SpireStandalone`) say how each system is configured,
launched and asked; the order of things and the waiting are here, the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.interop.processes import Child, wait_until


@dataclass(frozen=True)
class EntrySpec:
    """A registration entry: ``spiffe://<td><path>`` for ``selectors``, parented to the node."""

    path: str
    selectors: tuple[str, ...]
    x509_ttl: int = 0
    """Seconds; 0 is the server's default (1 h in both)."""
    jwt_ttl: int = 0


class Standalone:
    """A server and an agent; the socket in ``socket_dir`` (short: a sockaddr_un holds 107)."""

    name = ""
    server_binary = ""
    agent_binary = ""

    def __init__(self, workdir: Path, socket_dir: Path, trust_domain: str = "example.org") -> None:
        self.workdir = workdir
        self.trust_domain = trust_domain
        self.node = f"spiffe://{trust_domain}/host/node"
        self.socket_path = socket_dir / "agent.sock"
        self.server = Child(self.server_binary, workdir / "server.log")
        self.server_cli_path = Path(self.server_binary)
        self.admin_socket = workdir / "admin.sock"
        self.agent = Child(self.agent_binary, workdir / "agent.log")

    @property
    def endpoint(self) -> str:
        """The socket as SPIFFE_ENDPOINT_SOCKET names it."""
        return f"unix://{self.socket_path}"

    def spiffe_id(self, path: str) -> str:
        return f"spiffe://{self.trust_domain}{path}"

    def start(self) -> None:
        self.start_server()
        self.start_agent()

    def start_server(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.launch_server()
        wait_until(f"{self.server.name} ready", self.server_ready, self.server)

    def start_agent(self) -> None:
        """Attest a new agent with a fresh join token and wait until it is ready."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.configure_agent()
        self.run_agent()

    def run_agent(self) -> None:
        """Start the agent on the configuration written; a restart reuses its stored SVID."""
        self.launch_agent()
        wait_until(f"{self.agent.name} ready", self.agent_ready, self.agent)

    def restart_agent(self) -> None:
        self.agent.stop()
        self.run_agent()

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()

    def create_entry(
        self, path: str, selectors: Sequence[str], x509_ttl: int = 0, jwt_ttl: int = 0
    ) -> str:
        """Register one entry; its SPIFFE ID."""
        self.create_entries([EntrySpec(path, tuple(selectors), x509_ttl, jwt_ttl)])
        return self.spiffe_id(path)

    def wait_svids(self, count: int) -> None:
        """Wait until the agent holds at least ``count`` workload SVIDs."""
        wait_until(f"the agent holding {count} SVIDs", lambda: self.svids() >= count, self.agent)

    # What each system does its own way.

    def launch_server(self) -> None:
        raise NotImplementedError

    def server_ready(self) -> bool:
        raise NotImplementedError

    def configure_agent(self) -> None:
        """Write the agent's configuration with a new join token."""
        raise NotImplementedError

    def launch_agent(self) -> None:
        raise NotImplementedError

    def agent_ready(self) -> bool:
        raise NotImplementedError

    def create_entries(self, entries: Sequence[EntrySpec]) -> None:
        raise NotImplementedError

    def entry_command(self, path: str, selectors: Sequence[str]) -> list[str]:
        """The command line that creates an entry (default TTLs) and prints it, as an operator
        types it: both CLIs spell it the same."""
        command = [str(self.server_cli_path), "entry", "create", "-socketPath"]
        command += [str(self.admin_socket), "-parentID", self.node, "-spiffeID"]
        command.append(self.spiffe_id(path))
        for selector in selectors:
            command += ["-selector", selector]
        return command

    def svids(self) -> int:
        """Workload SVIDs the agent holds now; -1 before it can say."""
        raise NotImplementedError

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path
