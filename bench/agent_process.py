"""The agent measured by ``bench/agent.py``: herald-agent's real parts in a process of its own.

Attests to a running herald-server with a join token, then runs `SvidManager`,
`WorkloadApiService` (unix attestor) and `WorkloadEndpoint` on ``--socket``, as ``herald-agent
run`` will. It prints one JSON line ``{"agent_id": ...}`` once it serves, then answers commands
read from stdin, one JSON line each, until stdin closes:

- ``svids N``: waits until N SVIDs are held, answers ``{"svids": N}``;
- ``changed``: answers ``{"changed": t}``, the ``time.perf_counter()`` of the last wake-up the
  manager sent its subscribers (CLOCK_MONOTONIC: comparable with other processes' clocks).

    PYTHONPATH=. .venv/bin/python bench/agent_process.py --attestation 127.0.0.1:P \
        --agent 127.0.0.1:Q --bundle bundle.pem --token T --socket /tmp/x/agent.sock
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.sign import SERVER_NAME
from herald_agent.attestors.unix import UnixAttestor
from herald_agent.endpoint import CallerRegistry, WorkloadEndpoint
from herald_agent.server_client import ServerClient, attest_join_token, load_trust_bundle
from herald_agent.svid_manager import SvidManager
from herald_agent.workload_api import WorkloadApiService


class TimedManager(SvidManager):
    """A `SvidManager` that remembers when it last woke its subscribers."""

    last_change = 0.0

    def _changed(self) -> None:
        self.last_change = time.perf_counter()
        super()._changed()


def raise_fd_limit() -> None:
    """Thousands of streams and relay connections need more than the usual 1,024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def reply(document: dict[str, object]) -> None:
    print(json.dumps(document), flush=True)


async def wait_until(manager: SvidManager, predicate: Callable[[], bool]) -> None:
    with manager.subscribe() as changes:
        async with asyncio.timeout(120):
            while not predicate():
                await changes.wait()


async def serve(args: argparse.Namespace) -> None:
    raise_fd_limit()
    attested = await attest_join_token(
        args.attestation, args.token, load_trust_bundle(Path(args.bundle)), SERVER_NAME
    )
    client = ServerClient(args.agent, attested, SERVER_NAME)
    manager = TimedManager(client)
    callers = CallerRegistry()
    service = WorkloadApiService(manager, callers, [UnixAttestor()])
    endpoint = WorkloadEndpoint(Path(args.socket), service.register, callers=callers)
    await manager.start()
    await wait_until(manager, lambda: manager.ready)
    await endpoint.start()
    reply({"agent_id": str(client.svid.spiffe_id)})
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            command, *rest = line.split()
            if command == "svids":
                wanted = int(rest[0])
                await wait_until(manager, lambda: manager.svid_count >= wanted)  # noqa: B023
                reply({"svids": manager.svid_count})
            elif command == "changed":
                reply({"changed": manager.last_change})
    finally:
        await endpoint.stop(grace=None)
        await manager.stop()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--attestation", "--agent", "--bundle", "--token", "--socket"):
        parser.add_argument(flag, required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
