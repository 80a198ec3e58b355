"""Benchmark: ``herald-agent run`` from exec to ``/ready``, attesting afresh or reusing the agent
SVID stored in ``data_dir``, and from SIGTERM to exit.

A real ``herald-server run`` (bench/sign.py's ServerProcess) in its own process; each sample
starts the installed ``herald-agent run`` script and polls ``/ready`` every 5 ms. "fresh" spends a
new join token on an empty ``data_dir``; "stored" restarts on the ``data_dir`` a fresh run left.
The baseline, in the same run and interleaved with the rest: ``herald-agent --version`` from exec
to exit (interpreter plus imports, the floor of any start).

    PYTHONPATH=. .venv/bin/python bench/agent_run.py [--samples N]
"""

from __future__ import annotations

import argparse
import asyncio
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

import grpc
import yaml

from bench.sign import SERVER_NAME, TD, ServerProcess, free_port
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.wire import bundle_from_proto

HERALD_AGENT = str(Path(sys.executable).with_name("herald-agent"))


def admin_call(server: ServerProcess, method: str, request: Any) -> Any:
    async def call() -> Any:
        async with grpc.aio.insecure_channel(f"unix:{server.admin_socket}") as channel:
            stub: Any = admin_pb2_grpc.AdminAPIStub(channel)
            return await getattr(stub, method)(request)

    return asyncio.run(call())


def write_config(server: ServerProcess, workdir: Path, token: str) -> tuple[Path, int]:
    bundle = admin_call(server, "GetBundle", admin_pb2.GetBundleRequest()).bundle
    (workdir / "bundle.pem").write_bytes(bundle_from_proto(bundle).x509_pem())
    health = free_port()
    config = {
        "trust_domain": TD.name,
        "server_address": f"127.0.0.1:{server.ports['agent']}",
        "attestation_address": f"127.0.0.1:{server.ports['attestation']}",
        "server_name": SERVER_NAME,
        "trust_bundle_path": "bundle.pem",
        "socket_path": str(workdir / "agent.sock"),
        "data_dir": "data",
        "health_address": f"127.0.0.1:{health}",
        "log_level": "warn",
        "node_attestor": {"join_token": {"token": token}},
    }
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, health


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def start_to_ready(config: Path, port: int) -> tuple[float, float]:
    """Seconds from exec to /ready 200, and from SIGTERM to exit (which must be 0)."""
    started = time.perf_counter()
    process = subprocess.Popen([HERALD_AGENT, "run", "-config", str(config)])
    while not ready(port):
        if process.poll() is not None:
            raise RuntimeError(f"herald-agent exited {process.returncode}")
        time.sleep(0.005)
    up = time.perf_counter() - started
    stopping = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    if process.wait(15) != 0:
        raise RuntimeError(f"herald-agent exited {process.returncode} on SIGTERM")
    return up, time.perf_counter() - stopping


def version_run() -> float:
    started = time.perf_counter()
    subprocess.run([HERALD_AGENT, "--version"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"version": [], "fresh": [], "stored": [], "stop": []}
    with tempfile.TemporaryDirectory(prefix="herald-bench-run-") as name:
        root = Path(name)
        with ServerProcess(root, workers=0) as server:
            for sample in range(args.samples):
                results["version"].append(version_run())
                workdir = root / f"agent-{sample}"
                workdir.mkdir()
                token = admin_call(
                    server, "CreateJoinToken", admin_pb2.CreateJoinTokenRequest()
                ).value
                config, port = write_config(server, workdir, token)
                up, stop = start_to_ready(config, port)
                results["fresh"].append(up)
                results["stop"].append(stop)
                up, stop = start_to_ready(config, port)
                results["stored"].append(up)
                results["stop"].append(stop)
    base = statistics.median(results["version"])
    print(f"herald-agent run, {args.samples} samples each (median, max; ratio to --version)")
    for label, key in (
        ("herald-agent --version (baseline)", "version"),
        ("run → /ready, fresh join-token attestation", "fresh"),
        ("run → /ready, stored agent SVID", "stored"),
        ("SIGTERM → exit 0", "stop"),
    ):
        values = results[key]
        median = statistics.median(values)
        print(
            f"{label:45} {median * 1000:8.1f} ms  max {max(values) * 1000:8.1f} ms  "
            f"{median / base:5.2f}x"
        )


if __name__ == "__main__":
    main()
