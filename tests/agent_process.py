"""``herald-agent run`` as a real subprocess, for tests of what the process itself does.

`AgentProcess` starts it on a configuration `write_config` wrote for a server of the test's,
reads its probes and Prometheus series, and stops it with SIGTERM; its stderr goes to a pipe, or
to ``log_path`` for a test that measures what the agent logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from herald_agent.svid_store import STATE_FILE
from herald_core.proto.spiffe.workload import workload_pb2_grpc
from herald_core.spiffeid import SpiffeId
from herald_server.server import HeraldServer
from tests.server_harness import agent_doc, free_port, join_token

HERALD_AGENT = str(Path(sys.executable).with_name("herald-agent"))


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.05)


@dataclass
class AgentProcess:
    """One ``herald-agent run`` subprocess and what a test asks of it."""

    config_path: Path
    socket_path: Path
    data_dir: Path
    health_port: int
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Set in the process's environment, over this one's."""
    process: subprocess.Popen[bytes] | None = None
    session: aiohttp.ClientSession = field(default_factory=aiohttp.ClientSession)

    def start(self) -> None:
        log = None if self.log_path is None else self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [HERALD_AGENT, "run", "-config", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if log is None else log,
                env={**os.environ, **self.env},
            )
        finally:
            if log is not None:
                log.close()

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            async with self.session.get(url) as response:
                return response.status, await response.text()
        except aiohttp.ClientConnectionError:
            return 0, ""

    async def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = self._stderr()
            pytest.fail(f"herald-agent exited {self.process.returncode}: {stderr}")
        status, _ = await self.get("/ready")
        return status == 200

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = await self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def holds_svids(self, count: int) -> None:
        async def held() -> bool:
            return metric(await self.metrics(), "herald_agent_svids") == count

        await wait_for(held)

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and stderr."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, 15)
        stderr = self._stderr()
        self.process = None
        return code, stderr

    def _stderr(self) -> str:
        if self.log_path is not None:
            return self.log_path.read_text()
        assert self.process is not None
        return self.process.stderr.read().decode() if self.process.stderr else ""

    def agent_id(self) -> SpiffeId:
        stored = json.loads((self.data_dir / STATE_FILE).read_text())
        return SpiffeId.parse(stored["spiffe_id"])

    def workload_stub(self) -> tuple[grpc.aio.Channel, Any]:
        channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}")
        return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)

    async def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        await self.session.close()


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


def write_config(
    tmp: Path, server: HeraldServer, socket_dir: Path, *, log_path: Path | None = None, **extra: Any
) -> AgentProcess:
    """An agent configuration for ``server`` (debug logs, a free health port), not started."""
    health_port = free_port()
    doc = agent_doc(tmp, server, socket_dir / "agent.sock")
    doc.update(health_address=f"127.0.0.1:{health_port}", log_level="debug")
    doc.update(extra)
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return AgentProcess(
        path, socket_dir / "agent.sock", tmp / "agent-data", health_port, log_path=log_path
    )


async def joined_agent(
    tmp: Path, server: HeraldServer, socket_dir: Path, **extra: Any
) -> AgentProcess:
    """`write_config` for an agent that attests with a fresh join token of ``server``."""
    token = await join_token(server)
    return write_config(
        tmp, server, socket_dir, node_attestor={"join_token": {"token": token}}, **extra
    )
