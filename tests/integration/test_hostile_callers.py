"""What a hostile local user can do to a running ``herald-agent run`` through its public socket.

Any local process may connect to the Workload API socket (it is 0777, as SPIRE's), so what one
caller sends must not cost the agent more than a bounded answer: undecodable requests get
INVALID_ARGUMENT and a counter, not a traceback per request in the log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from herald_core.proto.spiffe.workload import workload_pb2
from herald_server.server import HeraldServer
from tests.agent_harness import socket_directory
from tests.agent_process import AgentProcess, joined_agent, metric, wait_for
from tests.server_harness import create_entry, start_server

pytestmark = pytest.mark.timeout(180)
HEADER = (("workload.spiffe.io", "true"),)
MY_UID = f"unix:uid:{os.getuid()}"
# RPC → (is a stream, the request message the agent expects).
RPCS = {
    "FetchX509SVID": (True, "X509SVIDRequest"),
    "FetchX509Bundles": (True, "X509BundlesRequest"),
    "FetchJWTSVID": (False, "JWTSVIDRequest"),
    "FetchJWTBundles": (True, "JWTBundlesRequest"),
    "ValidateJWTSVID": (False, "ValidateJWTSVIDRequest"),
    "FetchWITSVID": (True, "WITSVIDRequest"),
    "FetchWITBundles": (True, "WITBundlesRequest"),
}
# Not protobuf for any request message: a truncated varint, a field longer than the message, a
# bad wire type, a tag with no value.
GARBAGE = (b"\xff", b"\x0a\x05ab", b"\x0f", b"\x08")
ROUNDS = 50


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with socket_directory() as path:
        yield path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[HeraldServer]:
    server = await start_server(tmp_path / "server")
    yield server
    await server.stop()


async def start_agent(
    tmp: Path, server: HeraldServer, socket_dir: Path, **extra: Any
) -> AgentProcess:
    agent = await joined_agent(
        tmp, server, socket_dir, log_path=tmp / "agent.log", log_level="info", **extra
    )
    agent.start()
    try:
        await wait_for(agent.ready)
    except BaseException:
        await agent.close()
        raise
    return agent


@pytest.fixture
async def agent(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> AsyncIterator[AgentProcess]:
    agent = await start_agent(tmp_path, server, socket_dir)
    yield agent
    await agent.close()


async def send_raw(channel: grpc.aio.Channel, rpc: str, body: bytes) -> grpc.aio.AioRpcError:
    """``body`` as the request of ``rpc``, bytes as they are; the error the agent answers."""
    stream, _ = RPCS[rpc]
    path = f"/SpiffeWorkloadAPI/{rpc}"
    try:
        if stream:
            call = channel.unary_stream(path)(body, metadata=HEADER, timeout=10)
            await call.read()
        else:
            await channel.unary_unary(path)(body, metadata=HEADER, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    pytest.fail(f"{rpc} answered a malformed request")


async def test_malformed_requests_are_invalid_argument_counted_and_logged_once(
    agent: AgentProcess,
) -> None:
    assert agent.log_path is not None
    logged_before = agent.log_path.stat().st_size
    sent = ROUNDS * len(GARBAGE)
    async with grpc.aio.insecure_channel(f"unix:{agent.socket_path}") as channel:
        for rpc, (_, request_type) in RPCS.items():
            for _ in range(ROUNDS):
                for body in GARBAGE:
                    error = await send_raw(channel, rpc, body)
                    assert (error.code(), error.details()) == (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"malformed request: not a valid {request_type}",
                    ), rpc

    samples = await agent.metrics()
    for rpc in RPCS:
        name = "herald_agent_workload_api_malformed_requests_total"
        assert metric(samples, name, rpc=rpc) == sent, rpc
        calls = metric(
            samples, "herald_agent_workload_api_calls_total", rpc=rpc, code="INVALID_ARGUMENT"
        )
        assert calls == sent, rpc
    # 1,400 bad requests from one uid within a minute: one line, no traceback.
    log = agent.log_path.read_text()
    grown = len(log.encode()) - logged_before
    assert grown < 1024, log[logged_before:]
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "malformed Workload API request" in line]
    assert len(lines) == 1, lines
    assert "rpc=FetchX509SVID" in lines[0] and "left_out=0" in lines[0]


def raw_connection(path: Path) -> socket.socket:
    """A connection to the public socket that never speaks gRPC."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.setblocking(False)
    return sock


def closed_by_agent(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


async def until_closed(sock: socket.socket, within: float) -> float:
    started = time.monotonic()
    while not closed_by_agent(sock):
        if time.monotonic() - started > within:
            pytest.fail(f"the agent kept the connection open for {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_one_uid_holds_at_most_its_connection_limit(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    agent = await start_agent(
        tmp_path, server, socket_dir, workload_api={"max_connections_per_uid": 3}
    )
    held: list[socket.socket] = []
    try:
        held = [raw_connection(agent.socket_path) for _ in range(3)]

        async def all_admitted() -> bool:
            samples = await agent.metrics()
            name = "herald_agent_workload_connections_refused_total"
            return metric(samples, name, reason="uid_limit") == 0 and len(held) == 3

        await wait_for(all_admitted)
        extra = [raw_connection(agent.socket_path) for _ in range(5)]
        for sock in extra:
            assert await until_closed(sock, within=5.0) < 5.0
            sock.close()
        assert not any(closed_by_agent(sock) for sock in held), "the first three stay open"
        samples = await agent.metrics()
        assert (
            metric(samples, "herald_agent_workload_connections_refused_total", reason="uid_limit")
            == 5
        )
        assert agent.log_path is not None
        lines = [
            line
            for line in agent.log_path.read_text().splitlines()
            if "workload connection refused" in line
        ]
        assert len(lines) == 1, lines
        assert "connections=3" in lines[0] and "max_connections_per_uid=3" in lines[0]

        # One closed, one more admitted: the limit counts what is open now.
        held.pop().close()
        await asyncio.sleep(0.2)
        again = raw_connection(agent.socket_path)
        held.append(again)
        await asyncio.sleep(0.5)
        assert not closed_by_agent(again)
    finally:
        for sock in held:
            sock.close()
        await agent.close()


async def test_idle_connections_are_closed_and_busy_ones_kept(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    agent = await start_agent(tmp_path, server, socket_dir, workload_api={"idle_timeout": "1s"})
    try:
        await create_entry(server, "/idle/web", agent.agent_id(), selectors=(MY_UID,))
        await agent.holds_svids(1)
        idle = [raw_connection(agent.socket_path) for _ in range(3)]
        for sock in idle:
            assert await until_closed(sock, within=5.0) >= 0.9
            sock.close()

        # A connection with a stream open is busy however long nothing is sent on it.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"unix:{agent.socket_path}", options) as channel:
            stream = channel.unary_stream(
                "/SpiffeWorkloadAPI/FetchX509SVID",
                request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
                response_deserializer=workload_pb2.X509SVIDResponse.FromString,
            )(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            assert (await stream.read()).svids
            await asyncio.sleep(3.0)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            samples = await agent.metrics()
            assert metric(samples, "herald_agent_workload_connections_idle_closed_total") == 3
            stream.cancel()

            async def closed() -> bool:
                samples = await agent.metrics()
                return metric(samples, "herald_agent_workload_connections_idle_closed_total") == 4

            await wait_for(closed, within=10.0)
    finally:
        await agent.close()
