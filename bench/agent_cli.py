"""What one run of herald-agent's client commands costs, end to end, as an exec probe pays it.

A real agent stack (tests/agent_harness: server, attested SvidManager, WorkloadEndpoint) serves
in this process; each command runs as the installed ``herald-agent`` script in a subprocess, the
samples of all commands interleaved so that noise spreads evenly. Baselines in the same run:

- **python -c pass**: starting the interpreter, the floor of any exec probe in Python;
- **herald-agent --version**: the interpreter plus importing the CLI, no socket touched;
- **in-process fetch**: a fresh channel and the first FetchX509SVID message, from this process.

    PYTHONPATH=. .venv/bin/python bench/agent_cli.py [--samples 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc
from tests.agent_harness import Agent, running_agent, socket_directory

HERALD_AGENT = str(Path(sys.executable).parent / "herald-agent")
HEADER = (("workload.spiffe.io", "true"),)


async def timed_exec(*argv: str) -> float:
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode()}")
    return elapsed


async def in_process_fetch(socket: Path) -> float:
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub: Any = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        await call.read()
        call.cancel()
    return time.perf_counter() - start


def commands(agent: Agent) -> dict[str, list[str]]:
    sock = ["-socketPath", str(agent.endpoint.public_socket)]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "herald-agent --version": [HERALD_AGENT, "--version"],
        "healthcheck -shallow": [HERALD_AGENT, "healthcheck", "-shallow", *sock],
        "healthcheck": [HERALD_AGENT, "healthcheck", *sock],
        "api fetch x509": [HERALD_AGENT, "api", "fetch", "x509", *sock],
        "api fetch jwt": [HERALD_AGENT, "api", "fetch", "jwt", "-audience", "bench", *sock],
    }


async def measure(samples: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp, socket_directory() as sockets:
        async with running_agent(Path(tmp), sockets) as agent:
            await agent.entry("/bench")
            runs = commands(agent)
            times: dict[str, list[float]] = {name: [] for name in ["in-process fetch", *runs]}
            for _ in range(samples):
                times["in-process fetch"].append(
                    await in_process_fetch(agent.endpoint.public_socket)
                )
                for name, argv in runs.items():
                    times[name].append(await timed_exec(*argv))
            return times


def report(times: dict[str, list[float]]) -> None:
    floor = statistics.median(times["python -c pass"])
    cli = statistics.median(times["herald-agent --version"])
    print(f"{'':28} {'median ms':>10} {'p90 ms':>8} {'/ python':>9} {'- --version ms':>15}")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(
            f"{name:28} {median * 1000:10.1f} {p90 * 1000:8.1f} {median / floor:8.2f}x "
            f"{(median - cli) * 1000:15.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    report(asyncio.run(measure(args.samples)))


if __name__ == "__main__":
    main()
