"""Workload API clients and the bare grpc.aio baseline server for ``bench/agent.py``.

Each role runs in a process of its own (so the agent's process is measured alone) and speaks
JSON lines on stdout. Clients use herald's generated Workload API stubs: py-spiffe's client is
synchronous, one blocking stream at a time, far too slow to open 5,000 streams. Times are
``time.perf_counter()`` (CLOCK_MONOTONIC, comparable across processes).

- ``probe``: one FetchX509SVID; writes the serialised first message to ``--out``;
- ``echo``: the baseline, a bare grpc.aio server (the agent's server options) on a Unix socket
  (``--relay``: behind herald's relay, `WorkloadEndpoint`) whose FetchX509SVID sends a fixed
  pre-serialised message (``--payload``), then one more per ``push`` read on stdin;
- ``latency``: first-message latency, a fresh connection per sample and on one open channel,
  alternating between ``--targets``;
- ``rate``: ``--clients`` concurrent clients, each on its own channel, fetching back to back
  from ``--start-at`` for ``--seconds``;
- ``hold``: opens ``--streams`` streams over ``--channels`` channels, says so, then reports when
  every stream has its next message, for each round until stdin closes.

    PYTHONPATH=. .venv/bin/python bench/workload_clients.py ROLE ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from herald_agent.endpoint import (
    DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    WorkloadEndpoint,
    server_options,
)
from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc

HEADER = (("workload.spiffe.io", "true"),)
SERVICE = "SpiffeWorkloadAPI"


def emit(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fetch(channel: grpc.aio.Channel) -> Any:
    """A FetchX509SVID stream on ``channel``."""
    stub: Any = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    return stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=600)


async def first_message(channel: grpc.aio.Channel) -> workload_pb2.X509SVIDResponse:
    stream = fetch(channel)
    message = await stream.read()
    stream.cancel()
    if message is grpc.aio.EOF:
        raise RuntimeError("the stream ended without a message")
    return message  # type: ignore[no-any-return]


# Roles


async def probe(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        message = await first_message(channel)
    await asyncio.to_thread(Path(args.out).write_bytes, message.SerializeToString())
    emit({"bytes": message.ByteSize(), "svids": len(message.svids)})


async def echo(args: argparse.Namespace) -> None:
    payload = await asyncio.to_thread(Path(args.payload).read_bytes)
    pushed = asyncio.Event()  # replaced by a fresh one on every push

    async def handler(request: bytes, context: Any) -> AsyncIterator[bytes]:
        while True:
            next_push = pushed
            yield payload
            await next_push.wait()

    def register(server: grpc.aio.Server) -> None:
        methods = {
            "FetchX509SVID": grpc.unary_stream_rpc_method_handler(
                handler, request_deserializer=None, response_serializer=None
            )
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, methods)])

    if args.relay:
        endpoint = WorkloadEndpoint(Path(args.socket), register)
        await endpoint.start()
        stop = endpoint.stop
    else:
        # The agent's own server options, so both hold thousands of streams alike.
        server = grpc.aio.server(
            options=server_options(DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_PENDING_REQUESTS)
        )
        register(server)
        server.add_insecure_port(f"unix:{args.socket}")
        await server.start()
        stop = server.stop
    emit({"ready": True})
    while line := await asyncio.to_thread(sys.stdin.readline):
        if line.strip() == "push":
            started = time.perf_counter()
            current, pushed = pushed, asyncio.Event()
            current.set()
            emit({"pushed": started})
    await stop(None)


async def latency(args: argparse.Namespace) -> None:
    samples: dict[str, dict[str, list[float]]] = {
        t: {"fresh": [], "open": []} for t in args.targets
    }
    open_channels = {t: grpc.aio.insecure_channel(t) for t in args.targets}
    for target in args.targets:  # warm-up: connections, attestation caches, code paths
        for _ in range(20):
            await first_message(open_channels[target])
    for _ in range(args.samples):
        for target in args.targets:
            started = time.perf_counter()
            async with grpc.aio.insecure_channel(target) as channel:
                await first_message(channel)
                samples[target]["fresh"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await first_message(open_channels[target])
            samples[target]["open"].append(time.perf_counter() - started)
    for channel in open_channels.values():
        await channel.close()
    emit(samples)


async def rate(args: argparse.Namespace) -> None:
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.clients)]
    for channel in channels:
        await first_message(channel)
    await asyncio.sleep(max(args.start_at - time.perf_counter(), 0.0))
    stop_at = args.start_at + args.seconds
    done = 0

    async def client(channel: grpc.aio.Channel) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await first_message(channel)
            done += 1

    await asyncio.gather(*(client(c) for c in channels))
    emit({"fetches": done, "ended": time.perf_counter()})
    for channel in channels:
        await channel.close()


async def hold(args: argparse.Namespace) -> None:
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    streams = [fetch(channels[n % args.channels]) for n in range(args.streams)]
    await asyncio.gather(*(s.read() for s in streams))
    emit({"open": len(streams)})
    arrivals: list[float] = []
    hints: set[str] = set()

    async def next_message(stream: Any) -> None:
        message = await stream.read()
        arrivals.append(time.perf_counter())
        hints.update(s.hint for s in message.svids)

    stdin_closed = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
    while True:
        round_ = asyncio.gather(*(next_message(s) for s in streams))
        await asyncio.wait([round_, stdin_closed], return_when=asyncio.FIRST_COMPLETED)
        if not round_.done():
            break
        await round_
        emit(
            {
                "first": min(arrivals),
                "last": max(arrivals),
                "count": len(arrivals),
                "hints": sorted(hints),
            }
        )
        arrivals.clear()
        hints.clear()
    round_.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await round_
    for stream in streams:
        stream.cancel()
    for channel in channels:
        await channel.close(grace=None)


ROLES: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "probe": probe,
    "echo": echo,
    "latency": latency,
    "rate": rate,
    "hold": hold,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--target")
    parser.add_argument("--targets", nargs="+")
    parser.add_argument("--out")
    parser.add_argument("--socket")
    parser.add_argument("--payload")
    parser.add_argument("--relay", action="store_true", help="echo: behind herald's relay")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=250)
    parser.add_argument("--channels", type=int, default=10)
    args = parser.parse_args()
    raise_fd_limit()
    asyncio.run(ROLES[args.role](args))


if __name__ == "__main__":
    main()
