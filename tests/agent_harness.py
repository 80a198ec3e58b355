"""A whole agent stack in the test's event loop, for tests of what workloads see.

A real herald-server (tests/server_harness), a real SvidManager attested to it, the
WorkloadApiService behind the kernel-identifying WorkloadEndpoint, with the unix attestor. Test
modules wrap `running_agent` and `socket_directory` in their own fixtures.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herald_agent.attestors.unix import UnixAttestor
from herald_agent.endpoint import CallerRegistry, WorkloadEndpoint, endpoint_uri
from herald_agent.svid_manager import SvidManager
from herald_agent.workload_api import WorkloadApiService
from herald_agent.workload_names import ENV_SOCKET
from herald_core.entry import Entry
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.spiffeid import SpiffeId
from herald_server.server import HeraldServer
from tests.pyspiffe_runner import run_pyspiffe
from tests.server_harness import (
    admin_stub,
    attested_manager,
    create_entry,
    fixed_ports,
    start_server,
)

MY_UID = f"unix:uid:{os.getuid()}"


@dataclass
class Agent:
    server: HeraldServer
    manager: SvidManager
    endpoint: WorkloadEndpoint
    service: WorkloadApiService
    server_args: dict[str, Any]
    tmp: Path

    async def restart_server(self) -> None:
        self.server = await start_server(self.tmp, **self.server_args)

    @property
    def agent_id(self) -> SpiffeId:
        return self.manager.client.svid.spiffe_id

    @property
    def env(self) -> dict[str, str]:
        return {ENV_SOCKET: endpoint_uri(self.endpoint.public_socket)}

    @property
    def target(self) -> str:
        return f"unix:{self.endpoint.public_socket}"

    async def entry(self, path: str, selector: str = MY_UID, **fields: Any) -> Entry:
        """Create an entry and wait until the manager holds its SVID."""
        entry = await create_entry(
            self.server, path, self.agent_id, selectors=(selector,), **fields
        )
        await wait_for(lambda: self.manager.svid(entry.id) is not None)
        return entry

    async def delete(self, entry_id: str) -> None:
        channel, admin = admin_stub(self.server)
        async with channel:
            await admin.DeleteEntry(admin_pb2.DeleteEntryRequest(id=entry_id))

    async def pyspiffe(self, script: str, *args: str) -> dict[str, Any]:
        # run_pyspiffe blocks; this event loop must keep serving the agent meanwhile.
        return await asyncio.to_thread(run_pyspiffe, script, *args, env=self.env)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


@contextmanager
def socket_directory() -> Iterator[Path]:
    # pytest's tmp_path is 0700 for root; a client of another uid must be able to reach the socket.
    with tempfile.TemporaryDirectory(prefix="herald-wlapi-test-") as name:
        Path(name).chmod(0o755)
        yield Path(name)


@asynccontextmanager
async def running_agent(tmp: Path, socket_dir: Path) -> AsyncIterator[Agent]:
    """The stack, serving ``socket_dir/public/agent.sock``; stopped on exit."""
    # Fixed ports, so a restarted server is where the agent looks for it.
    server_args = fixed_ports()
    server = await start_server(tmp, **server_args)
    manager = await attested_manager(server)
    client = manager.client
    callers = CallerRegistry()
    service = WorkloadApiService(manager, callers, [UnixAttestor()])
    endpoint = WorkloadEndpoint(
        socket_dir / "public" / "agent.sock", service.register, callers=callers
    )
    await manager.start()
    await wait_for(lambda: manager.ready)
    await endpoint.start()
    agent = Agent(server, manager, endpoint, service, server_args, tmp)
    try:
        yield agent
    finally:
        await endpoint.stop(grace=None)
        await manager.stop()
        await client.close()
        await agent.server.stop()
