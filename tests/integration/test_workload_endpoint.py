"""The Workload API endpoint transport over real Unix sockets and a real grpc.aio server.

A tiny test service, registered through the endpoint's own registrar, answers with the caller it
sees through `caller_of`, so every test checks what the kernel said about the real client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from herald_agent.endpoint import (
    CALLER_NOT_IDENTIFIED,
    Caller,
    EndpointError,
    WorkloadEndpoint,
    endpoint_uri,
)
from herald_agent.peercred import still_same
from herald_agent.workload_names import ENV_SOCKET

NOBODY = 65534
SETPRIV_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
STREAMS = 200
# More than grpc core's default hard limit of 3,000 calls waiting for the application.
BURST = 4000
FLOOD_CHUNK = 64 * 1024
# A flood the relay would have to hold if it ignored backpressure; far beyond socket buffers.
FLOOD_CAP = 64 * 1024 * 1024
BUFFERED_AT_MOST = 16 * 1024 * 1024
DROPPED_CONNECTIONS = 1000
FD_SLACK = 10
_Context = grpc.aio.ServicerContext[Any, Any]


class EchoService:
    """``/test.Echo/Who`` reports the caller; ``/test.Echo/Hold`` streams until released."""

    def __init__(self) -> None:
        self.endpoint: WorkloadEndpoint | None = None
        self.release = asyncio.Event()
        self.holding = 0
        self.last_caller: Caller | None = None
        self.flooded = 0

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo",
                    {
                        "Who": grpc.unary_unary_rpc_method_handler(self.who),
                        "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
                        "Flood": grpc.unary_stream_rpc_method_handler(self.flood),
                    },
                ),
            )
        )

    async def _report(self, context: _Context) -> bytes:
        assert self.endpoint is not None
        caller = await self.endpoint.require_caller(context)
        self.last_caller = caller
        creds = caller.credentials
        report = {
            "pid": creds.pid,
            "uid": creds.uid,
            "gid": creds.gid,
            "pidfd": creds.pidfd is not None,
            "same": still_same(caller.process),
        }
        return json.dumps(report).encode()

    async def who(self, request: bytes, context: _Context) -> bytes:
        return await self._report(context)

    async def hold(self, request: bytes, context: _Context) -> AsyncIterator[bytes]:
        yield await self._report(context)
        self.holding += 1
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        yield b"done"

    async def flood(self, request: bytes, context: _Context) -> AsyncIterator[bytes]:
        chunk = bytes(FLOOD_CHUNK)
        while self.flooded < FLOOD_CAP:
            yield chunk
            self.flooded += len(chunk)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # pytest's tmp_path is 0700 for root; a client of another uid must be able to reach the socket.
    with tempfile.TemporaryDirectory(prefix="herald-endpoint-test-") as name:
        Path(name).chmod(0o755)
        yield Path(name)


@pytest.fixture
async def served(socket_dir: Path) -> AsyncIterator[tuple[WorkloadEndpoint, EchoService]]:
    echo = EchoService()
    endpoint = WorkloadEndpoint(socket_dir / "public" / "agent.sock", echo.register)
    echo.endpoint = endpoint
    await endpoint.start()
    try:
        yield endpoint, echo
    finally:
        echo.release.set()
        await endpoint.stop(grace=None)


async def who(target: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await channel.unary_unary("/test.Echo/Who")(b"", timeout=10)
    result: dict[str, Any] = json.loads(reply)
    return result


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until_idle(endpoint: WorkloadEndpoint, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while endpoint.open_connections or len(endpoint.callers):
        if time.monotonic() > deadline:
            pytest.fail(f"{endpoint.open_connections} relays still open after {within} s")
        await asyncio.sleep(0.01)


def test_endpoint_uri_is_absolute_unix() -> None:
    assert ENV_SOCKET == "SPIFFE_ENDPOINT_SOCKET"
    assert endpoint_uri(Path("/run/herald/agent.sock")) == "unix:///run/herald/agent.sock"
    assert endpoint_uri(Path("rel.sock")) == f"unix://{os.getcwd()}/rel.sock"


async def test_handler_sees_this_process(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, _ = served
    seen = await who(endpoint_uri(endpoint.public_socket))
    assert seen == {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pidfd": True,
        "same": True,
    }
    await wait_until_idle(endpoint)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="running a client as uid 65534 needs root and setpriv",
)
async def test_a_client_of_another_uid_is_reported_as_that_uid(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, _ = served
    script = (
        "import grpc, json, os, sys\n"
        "with grpc.insecure_channel(sys.argv[1]) as ch:\n"
        "    seen = json.loads(ch.unary_unary('/test.Echo/Who')(b'', timeout=10))\n"
        "print(json.dumps({'seen': seen, 'pid': os.getpid()}))\n"
    )
    # setpriv, not Popen(user=...): here Popen's exec of this interpreter fails with EACCES
    # while setpriv's succeeds.
    child = await asyncio.create_subprocess_exec(
        *SETPRIV_NOBODY,
        sys.executable,
        "-c",
        script,
        endpoint_uri(endpoint.public_socket),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert child.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["seen"]["uid"] == NOBODY
    assert result["seen"]["gid"] == NOBODY
    assert result["seen"]["pid"] == result["pid"]


async def test_a_direct_connection_to_the_private_socket_is_refused(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await who(f"unix:{endpoint.private_socket}")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == CALLER_NOT_IDENTIFIED


async def test_socket_modes(served: tuple[WorkloadEndpoint, EchoService]) -> None:
    endpoint, _ = served
    public = endpoint.public_socket.lstat()
    assert stat.S_ISSOCK(public.st_mode)
    assert stat.S_IMODE(public.st_mode) == 0o777
    assert stat.S_IMODE(endpoint.public_socket.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(endpoint.private_socket.parent.stat().st_mode) == 0o700


async def test_stop_removes_both_sockets(socket_dir: Path) -> None:
    endpoint = WorkloadEndpoint(socket_dir / "agent.sock", EchoService().register)
    await endpoint.start()
    private_dir = endpoint.private_socket.parent
    await endpoint.stop()
    assert not endpoint.public_socket.exists()
    assert not private_dir.exists()


async def test_a_stale_socket_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # the file stays after close: a crashed agent's leftover
    stale_inode = path.lstat().st_ino
    echo = EchoService()
    endpoint = WorkloadEndpoint(path, echo.register)
    echo.endpoint = endpoint
    await endpoint.start()
    try:
        assert path.lstat().st_ino != stale_inode
        assert (await who(endpoint_uri(path)))["pid"] == os.getpid()
    finally:
        await endpoint.stop()


async def test_a_regular_file_at_the_path_is_refused(socket_dir: Path) -> None:
    path = socket_dir / "agent.sock"
    path.write_text("not a socket")
    with pytest.raises(EndpointError, match="exists and is not a socket"):
        await WorkloadEndpoint(path, EchoService().register).start()
    assert path.read_text() == "not a socket"


async def test_a_socket_in_use_is_refused(served: tuple[WorkloadEndpoint, EchoService]) -> None:
    endpoint, _ = served
    with pytest.raises(EndpointError, match="in use"):
        await WorkloadEndpoint(endpoint.public_socket, EchoService().register).start()
    assert (await who(endpoint_uri(endpoint.public_socket)))["pid"] == os.getpid()


async def test_connections_dropped_at_once_leave_it_healthy(
    served: tuple[WorkloadEndpoint, EchoService], caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, _ = served
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    await who(endpoint_uri(endpoint.public_socket))  # grpc's own first-call fds are not a leak
    await wait_until_idle(endpoint)
    # Garbage left by earlier tests must not be collected (and warn) inside the checked block.
    gc.collect()
    before = open_fds()

    async def connect_and_drop(index: int) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(endpoint.public_socket))
            if index % 2:
                await loop.sock_sendall(sock, b"PRI * HTTP/2.0\r\n")  # half a preface

    # Refcounting would close a forgotten transport anyway, hiding a leak from the fd count;
    # asyncio says so with a ResourceWarning, so catch those too.
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        for start in range(0, DROPPED_CONNECTIONS, 50):
            await asyncio.gather(*(connect_and_drop(i) for i in range(start, start + 50)))
        await wait_until_idle(endpoint)
        gc.collect()
    assert [w for w in warned if issubclass(w.category, ResourceWarning)] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert open_fds() <= before + FD_SLACK
    assert (await who(endpoint_uri(endpoint.public_socket)))["pid"] == os.getpid()


async def test_many_streams_are_held_open_at_once(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, echo = served
    async with grpc.aio.insecure_channel(endpoint_uri(endpoint.public_socket)) as channel:
        hold = channel.unary_stream("/test.Echo/Hold")
        calls = [hold(b"", timeout=60) for _ in range(STREAMS)]
        firsts = await asyncio.gather(*(call.read() for call in calls))
        assert all(json.loads(first)["pid"] == os.getpid() for first in firsts)
        assert echo.holding == STREAMS
        echo.release.set()
        lasts = await asyncio.gather(*(call.read() for call in calls))
        assert lasts == [b"done"] * STREAMS


async def test_a_burst_of_calls_is_all_served(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, _ = served
    async with grpc.aio.insecure_channel(endpoint_uri(endpoint.public_socket)) as channel:
        call = channel.unary_unary("/test.Echo/Who")
        replies = await asyncio.gather(*(call(b"", timeout=60) for _ in range(BURST)))
    assert {json.loads(reply)["pid"] for reply in replies} == {os.getpid()}


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _hpack_literal(name: str, value: str) -> bytes:
    # "Literal header field without indexing, new name", no Huffman; all our strings are short.
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def flood_request_that_never_reads() -> bytes:
    """An HTTP/2 gRPC call of /test.Echo/Flood whose client grants a 2 GiB flow-control window.

    With the window open, only the relay's backpressure stops the server from sending.
    """
    window = 2**31 - 1
    headers = b"".join(
        _hpack_literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/test.Echo/Flood"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    return b"".join(
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            _h2_frame(0x4, 0, 0, (4).to_bytes(2, "big") + window.to_bytes(4, "big")),  # SETTINGS
            _h2_frame(0x4, 0x1, 0, b""),  # ACK the server's SETTINGS without reading them
            _h2_frame(0x8, 0, 0, (window - 65535).to_bytes(4, "big")),  # WINDOW_UPDATE
            _h2_frame(0x1, 0x4, 1, headers),  # HEADERS, END_HEADERS
            _h2_frame(0x0, 0x1, 1, b"\x00" + (0).to_bytes(4, "big")),  # empty message, END_STREAM
        )
    )


async def test_a_client_that_never_reads_stalls_the_sender(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, echo = served
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(endpoint.public_socket))
        await loop.sock_sendall(sock, flood_request_that_never_reads())
        previous = -1
        while echo.flooded != previous and echo.flooded < FLOOD_CAP:
            previous = echo.flooded
            await asyncio.sleep(0.5)
        assert 0 < echo.flooded <= BUFFERED_AT_MOST


async def test_a_closed_connection_drops_its_caller(
    served: tuple[WorkloadEndpoint, EchoService],
) -> None:
    endpoint, echo = served
    async with grpc.aio.insecure_channel(endpoint_uri(endpoint.public_socket)) as channel:
        await channel.unary_unary("/test.Echo/Who")(b"", timeout=10)
        assert len(endpoint.callers) == 1
    await wait_until_idle(endpoint)
    assert echo.last_caller is not None
    assert echo.last_caller.credentials.closed
    assert not still_same(echo.last_caller.process)


async def test_stop_closes_relayed_connections(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    echo = EchoService()
    endpoint = WorkloadEndpoint(socket_dir / "agent.sock", echo.register)
    echo.endpoint = endpoint
    await endpoint.start()
    async with grpc.aio.insecure_channel(endpoint_uri(endpoint.public_socket)) as channel:
        call = channel.unary_stream("/test.Echo/Hold")(b"", timeout=60)
        await call.read()
        assert endpoint.open_connections == 1
        started = time.monotonic()
        await endpoint.stop(grace=0.2)
        assert time.monotonic() - started < 5
        assert endpoint.open_connections == 0
        assert len(endpoint.callers) == 0
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
