"""Benchmark: a herald-server restart, then the first new entry reaching the agent.

A real ``herald-server run`` (bench/sign.py's ServerProcess) and a real ``herald-agent run``,
each in its own process. Each restart: SIGTERM the server, start it again on the same data
directory and ports, wait for its ``/ready``, create an entry for the agent through the admin
socket and time until the agent's ``herald_agent_entries`` gauge (polled every 5 ms) counts it.
The baseline, measured in the same run and interleaved: the same entry-to-agent time with the
server left running. The restart itself (SIGTERM to the new server's ``/ready``) is printed too.

    PYTHONPATH=. .venv/bin/python bench/server_restart.py [--restarts N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.agent_run import HERALD_AGENT, admin_call, ready, write_config
from bench.sign import TD, ServerProcess
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.proto.herald.types.v1 import types_pb2

POLL_SECONDS = 0.005
WAIT_SECONDS = 120.0


def entries_held(port: int) -> int | None:
    """The agent's ``herald_agent_entries`` gauge, or None while /metrics does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    for line in text.splitlines():
        if line.startswith("herald_agent_entries "):
            return int(float(line.split()[1]))
    return None


def until(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {WAIT_SECONDS:.0f} s")
        time.sleep(POLL_SECONDS)


def new_entry_reaches_agent(server: ServerProcess, agent_id: str, port: int, n: int) -> float:
    """Seconds from CreateEntry returning to the agent counting entry number ``n``."""
    entry = types_pb2.Entry(
        id=f"bench-{n}",
        spiffe_id=f"spiffe://{TD.name}/bench/{n}",
        parent_id=agent_id,
        selectors=[types_pb2.Selector(type="unix", value="uid:4242")],
    )
    admin_call(server, "CreateEntry", admin_pb2.CreateEntryRequest(entry=entry))
    created = time.perf_counter()
    until(f"entry {n} reaching the agent", lambda: (entries_held(port) or 0) >= n)
    return time.perf_counter() - created


def restart(server: ServerProcess) -> float:
    """SIGTERM the server, start it again on the same files and ports; seconds to /ready."""
    assert server.process is not None
    stopping = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    exe = Path(sys.executable).parent / "herald-server"
    server.process = subprocess.Popen([str(exe), "run", "-config", str(server.config)])
    until("the restarted server's /ready", lambda: ready(server.ports["health"]))
    return time.perf_counter() - stopping


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(restarts: int, root: Path) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"steady": [], "restarted": [], "restart": []}
    with ServerProcess(root, workers=0) as server:
        until("the server's /ready", lambda: ready(server.ports["health"]))
        token = admin_call(server, "CreateJoinToken", admin_pb2.CreateJoinTokenRequest())
        workdir = root / "agent"
        workdir.mkdir()
        config, port = write_config(server, workdir, token.value)
        agent = subprocess.Popen([HERALD_AGENT, "run", "-config", str(config)])
        try:
            until("the agent's /ready", lambda: ready(port))
            held = 0
            for _ in range(restarts):
                held += 1
                results["steady"].append(
                    new_entry_reaches_agent(server, token.agent_id, port, held)
                )
                results["restart"].append(restart(server))
                held += 1
                results["restarted"].append(
                    new_entry_reaches_agent(server, token.agent_id, port, held)
                )
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-bench-restart-") as name:
        results = run(args.restarts, Path(name))
    print(f"herald-server restart, {args.restarts} restarts (p50, p99, max)")
    for label, key in (
        ("new entry → agent, server running (baseline)", "steady"),
        ("new entry → agent, just after a restart", "restarted"),
        ("restart: SIGTERM → new server /ready", "restart"),
    ):
        values = results[key]
        print(
            f"{label:48} p50 {statistics.median(values) * 1000:8.1f} ms  "
            f"p99 {percentile(values, 0.99) * 1000:8.1f} ms  max {max(values) * 1000:8.1f} ms"
        )


if __name__ == "__main__":
    main()
