"""No listening port of a herald process is shared: a second process on a port in use exits.

grpc enables SO_REUSEPORT by default, with which a second herald-server (its own CA) bound the
attestation and agent ports of a running one and the kernel split agents between two CAs. Here a
real server holds its ports and `herald-server run` / `herald-agent run` processes are started on
each of them in turn: each must exit 1 naming the field, the port and "address in use", and the
running server must keep every port to itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from herald_server.server import HeraldServer
from tests.server_harness import agent_doc, fixed_ports, free_port, standalone_config, start_server

pytestmark = pytest.mark.timeout(120)
BIN = Path(sys.executable).parent


async def run(script: str, config: dict[str, Any], tmp: Path) -> tuple[int, str]:
    path = tmp / f"{script}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        str(BIN / script),
        "run",
        "-config",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{script} kept running on a port in use")
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[HeraldServer, dict[str, str]]]:
    ports = fixed_ports()
    server = await start_server(tmp_path / "first", **ports)
    yield server, ports
    await server.stop()


@pytest.mark.parametrize("field", ["attestation_address", "agent_address", "health_address"])
async def test_a_second_server_on_a_port_in_use_exits_naming_it(
    running: tuple[HeraldServer, dict[str, str]], tmp_path: Path, field: str
) -> None:
    server, ports = running
    # Its own data directory, CA and admin socket: only the one port is shared.
    config = standalone_config(tmp_path / "second", **fixed_ports())
    config[field] = ports[field]
    code, err = await run("herald-server", config, tmp_path)
    port = ports[field].rpartition(":")[2]
    assert code == 1, err
    error = err.strip().splitlines()[-1]
    assert error.startswith("Error: "), err
    assert port in error and "in use" in error, err
    if field != "health_address":
        assert error == (
            f"Error: {field}: cannot listen on {ports[field]}: port {port} is already in use "
            "(address in use)"
        )
    assert "Traceback" not in err
    # The first server still answers on its ports.
    assert server.ca.bundle() is not None
    assert server.health_port == int(ports["health_address"].rpartition(":")[2])


async def test_an_agent_on_a_health_port_in_use_exits_naming_it(
    running: tuple[HeraldServer, dict[str, str]], tmp_path: Path
) -> None:
    server, ports = running
    config = agent_doc(tmp_path, server, tmp_path / "agent.sock")
    config["node_attestor"] = {"join_token": {"token": "unused"}}
    config["health_address"] = ports["health_address"]
    code, err = await run("herald-agent", config, tmp_path)
    assert code == 1, err
    port = ports["health_address"].rpartition(":")[2]
    assert f"cannot listen on {ports['health_address']}" in err, err
    assert "in use" in err and port in err
    assert "Traceback" not in err


def test_the_port_probe_names_the_cause() -> None:
    import socket

    from herald_core.configfile import Address
    from herald_core.listeners import bind_failure

    port = free_port()
    assert bind_failure(Address("127.0.0.1", port)) is None
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        assert bind_failure(Address("127.0.0.1", port)) == (
            f"port {port} is already in use (address in use)"
        )
