"""What a hostile local user can do to a running ``herald-agent run`` through its public socket.

Any local process may connect to the Workload API socket (it is 0777, as SPIRE's), so what one
caller sends must not cost the agent more than a bounded answer: undecodable requests get
INVALID_ARGUMENT and a counter, not a traceback per request in the log.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from herald_server.server import HeraldServer
from tests.agent_process import AgentProcess, metric, wait_for, write_config
from tests.server_harness import join_token, start_server

pytestmark = pytest.mark.timeout(180)
HEADER = (("workload.spiffe.io", "true"),)
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
    with tempfile.TemporaryDirectory(prefix="herald-hostile-") as name:
        yield Path(name)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[HeraldServer]:
    server = await start_server(tmp_path / "server")
    yield server
    await server.stop()


@pytest.fixture
async def agent(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> AsyncIterator[AgentProcess]:
    agent = write_config(
        tmp_path,
        server,
        socket_dir,
        log_path=tmp_path / "agent.log",
        log_level="info",
        node_attestor={"join_token": {"token": await join_token(server)}},
    )
    agent.start()
    try:
        await wait_for(agent.ready)
        yield agent
    finally:
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
