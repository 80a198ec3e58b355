"""Benchmark: herald beside SPIRE v1.13.3 — the same work, on one machine, in one run.

Both systems run in standalone mode as real processes configured alike
(tests/interop/herald_standalone.py, tests/interop/spire_standalone.py: SQLite store, join-token
agent, unix workload attestor, ec-p256, 24 h CA, 1 h X.509-SVID and 5 min JWT-SVID TTLs), with
the same entries; every Workload API client is the same Go program (bench/workload, go-spiffe's
generated stubs), registered by its binary's path. One system at a time, herald first:

1. cold start: server exec → ready; agent exec → its first SVID in a workload polling the socket;
2. entry created (the create command printed it) → the SVID reaches a workload polling every 5 ms;
3. cached FetchX509SVID with 1, 8 and 64 concurrent clients (one connection each): p50/p99,
   fetches/s, and the agent's plus the server's CPU seconds per 1,000 fetches;
4. 1,000 entries held (selecting gids nobody runs as), idle and with 5,000 open streams: RSS,
   and the agent's open descriptors;
5. one rotation of a 30 s SVID reaching 1,000 open streams: first stream to last;
6. a batch of new entries all selecting one workload → every SVID on its stream: SVIDs/s, and
   the server's CPU per 1,000 SVIDs.

The 5,000 streams run five to a connection (1,000 connections): herald's agent holds four
descriptors per workload connection, and 5,000 connections would need more than the 20,000 this
machine lets a process open (raising it needs CAP_SYS_RESOURCE, which it does not give). SPIRE's
agent keeps at most `x509_svid_cache_max_size` SVIDs (1,000 by
default); the benchmark sets it to 10,000 so that, as herald's agent does, it holds an SVID for
every entry. SPIRE's unix attestor with `discover_workload_path` hashes the caller's binary on
every call unless told not to; herald hashes a binary once and caches the digest. The benchmark
tells SPIRE not to hash (`workload_size_limit = -1`; no entry selects by `unix:sha256`) unless
`--spire-hashes`.

    PYTHONPATH=. .venv/bin/python bench/vs_spire.py            # about 5 min; builds SPIRE once
    PYTHONPATH=. .venv/bin/python bench/vs_spire.py --quick    # every part, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agent import rss_mib
from bench.operator import percentile
from bench.sign import _cpu, _process_tree
from tests.interop.golang import go_tool
from tests.interop.processes import wait_until
from tests.interop.spire_standalone import build_spire
from tests.interop.standalone import EntrySpec, Standalone
from tests.interop.systems import NAMES, make_system

BENCH = Path(__file__).resolve().parent
READ_TIMEOUT = 300.0
BASE_GID = 20000
ROTATION_TTL = 30
# herald's agent holds four descriptors per workload connection (the caller's socket, its pidfd,
# both ends of the relay), so 5,000 connections need more than the 20,000 a process may open
# here; the memory streams share connections, as a process's X509Source and JWTSource do.
STREAMS_PER_CONNECTION = 5


@dataclass(frozen=True)
class Scale:
    cold_rounds: int
    latency_samples: int
    clients: tuple[int, ...]
    fetch_rounds: int
    fetch_seconds: float
    fetch_warmup: float
    entries: int
    memory_streams: int
    rotation_streams: int
    batch: int


FULL = Scale(
    cold_rounds=3,
    latency_samples=20,
    clients=(1, 8, 64),
    fetch_rounds=3,
    fetch_seconds=3.0,
    fetch_warmup=1.0,
    entries=1000,
    memory_streams=5000,
    rotation_streams=1000,
    batch=1000,
)
# Shows that every part runs; its figures mean nothing.
QUICK = Scale(
    cold_rounds=1,
    latency_samples=2,
    clients=(1, 8),
    fetch_rounds=1,
    fetch_seconds=0.3,
    fetch_warmup=0.2,
    entries=5,
    memory_streams=10,
    rotation_streams=5,
    batch=5,
)


class Workload:
    """The Go client in one mode, as the copy of its binary at ``binary``; JSON lines out."""

    def __init__(self, binary: Path, endpoint: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"SPIFFE_ENDPOINT_SOCKET": endpoint, "PATH": "/usr/bin:/bin"},
            text=True,
        )

    def read(self, event: str, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """The next line whose event is ``event`` (earlier ones are skipped)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.process.args} ended: {self.process.wait()}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message
        raise RuntimeError(f"no {event!r} from {self.process.args} within {timeout:.0f} s")

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Clients:
    """Copies of the Go client, one binary path per role, so an entry can select each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.built = directory / "workload"
        done = subprocess.run(
            [str(go_tool()), "build", "-p", "2", "-o", str(self.built), "."],
            cwd=BENCH / "workload",
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"building bench/workload failed:\n{done.stderr}")

    def path(self, role: str) -> Path:
        copy = self.directory / role
        if not copy.exists():
            shutil.copy2(self.built, copy)
        return copy

    def selector(self, role: str) -> str:
        return f"unix:path:{self.path(role)}"


def cpu(pid: int) -> float:
    return sum(_cpu(p) for p in _process_tree(pid))


def rss(pid: int) -> float:
    return sum(rss_mib(p) for p in _process_tree(pid))


def descriptors(pid: int) -> float:
    return float(sum(len(os.listdir(f"/proc/{p}/fd")) for p in _process_tree(pid)))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Run:
    """Every measurement of one system; ``figures`` collects them by name."""

    def __init__(
        self, name: str, workdir: Path, sockets: Path, clients: Clients, scale: Scale, hashes: bool
    ) -> None:
        self.name = name
        self.hashes = hashes
        self.workdir = workdir
        self.sockets = sockets
        self.clients = clients
        self.scale = scale
        self.figures: dict[str, float] = {}

    def system(self, label: str) -> Standalone:
        return make_system(
            self.name,
            self.workdir / label,
            self.sockets / label,
            svid_cache_size=10_000,
            hash_workloads=self.hashes,
        )

    def cold_start(self) -> None:
        server_s: list[float] = []
        agent_s: list[float] = []
        for round_ in range(self.scale.cold_rounds):
            system = self.system(f"cold{round_}")
            try:
                system.workdir.mkdir(parents=True)
                began = time.monotonic()
                system.launch_server()
                wait_until("server ready", system.server_ready, system.server)
                server_s.append(time.monotonic() - began)
                spiffe_id = system.create_entry("/bench/cold", [self.clients.selector("cold")])
                system.socket_path.parent.mkdir(parents=True, exist_ok=True)
                system.configure_agent()
                waiting = Workload(
                    self.clients.path("cold"), system.endpoint, "wait", "-id", spiffe_id
                )
                launched = time.time_ns()
                system.launch_agent()
                agent_s.append((waiting.read("svid")["unix_ns"] - launched) / 1e9)
                waiting.close()
            finally:
                system.stop()
        self.figures["cold: server exec → ready (s)"] = median(server_s)
        self.figures["cold: agent exec → first SVID (s)"] = median(agent_s)

    def measure(self) -> None:
        system = self.system("main")
        try:
            system.start()
            background = [
                EntrySpec(f"/bench/w{i}", (f"unix:gid:{BASE_GID + i}",))
                for i in range(self.scale.entries)
            ]
            fetcher = EntrySpec("/bench/fetch", (self.clients.selector("fetch"),))
            system.create_entries([*background, fetcher])
            system.wait_svids(self.scale.entries + 1)
            self.entry_to_svid(system)
            self.fetches(system)
            self.memory(system)
            self.rotation(system)
            self.batch(system)
        finally:
            system.stop()

    def entry_to_svid(self, system: Standalone) -> None:
        latencies: list[float] = []
        for sample in range(self.scale.latency_samples):
            role = f"new{sample}"
            path = f"/bench/{role}"
            waiting = Workload(
                self.clients.path(role), system.endpoint, "wait", "-id", system.spiffe_id(path)
            )
            waiting.read("refused")
            command = system.entry_command(path, [self.clients.selector(role)])
            create = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            assert create.stdout is not None
            create.stdout.readline()
            created = time.time_ns()
            create.communicate(timeout=60)
            latencies.append((waiting.read("svid")["unix_ns"] - created) / 1e6)
            waiting.close()
        self.figures["entry created → SVID, p50 (ms)"] = percentile(latencies, 0.50)
        self.figures["entry created → SVID, p99 (ms)"] = percentile(latencies, 0.99)

    def fetches(self, system: Standalone) -> None:
        for clients in self.scale.clients:
            rates, p50s, p99s, cpus = [], [], [], []
            for _ in range(self.scale.fetch_rounds):
                run = Workload(
                    self.clients.path("fetch"),
                    system.endpoint,
                    "fetch",
                    f"-clients={clients}",
                    f"-seconds={self.scale.fetch_seconds}",
                    f"-warmup={self.scale.fetch_warmup}",
                )
                run.read("measuring")
                before = cpu(system.agent.pid) + cpu(system.server.pid)
                done = run.read("done")
                used = cpu(system.agent.pid) + cpu(system.server.pid) - before
                run.close()
                if done["errors"]:
                    failed = f"{done['errors']} fetches failed against {self.name}"
                    raise RuntimeError(
                        f"{failed} ({clients} clients): {done['error']}\n{system.agent.log_tail()}"
                    )
                rates.append(done["fetches"] / done["seconds"])
                p50s.append(done["p50_ms"])
                p99s.append(done["p99_ms"])
                cpus.append(used / done["fetches"] * 1000)
            self.figures[f"fetch, {clients} client(s): p50 (ms)"] = median(p50s)
            self.figures[f"fetch, {clients} client(s): p99 (ms)"] = median(p99s)
            self.figures[f"fetch, {clients} client(s): fetches/s"] = median(rates)
            self.figures[f"fetch, {clients} client(s): CPU s / 1,000 fetches"] = median(cpus)

    def memory(self, system: Standalone) -> None:
        entries = self.scale.entries
        self.figures[f"RSS, {entries} entries, idle: agent (MiB)"] = rss(system.agent.pid)
        self.figures[f"RSS, {entries} entries, idle: server (MiB)"] = rss(system.server.pid)
        streams = Workload(
            self.clients.path("fetch"),
            system.endpoint,
            "streams",
            f"-n={self.scale.memory_streams}",
            f"-per-connection={STREAMS_PER_CONNECTION}",
        )
        streams.read("open")
        label = f"RSS, {entries} entries, {self.scale.memory_streams} streams"
        self.figures[f"{label}: agent (MiB)"] = rss(system.agent.pid)
        self.figures[f"{label}: server (MiB)"] = rss(system.server.pid)
        self.figures[f"{label}: agent's open descriptors"] = descriptors(system.agent.pid)
        streams.close()

    def rotation(self, system: Standalone) -> None:
        # A fresh entry, so that every stream is open well before its SVID's half-life.
        selector = self.clients.selector("rotate")
        system.create_entry("/bench/rotate", [selector], x509_ttl=ROTATION_TTL)
        streams = Workload(
            self.clients.path("rotate"),
            system.endpoint,
            "streams",
            f"-n={self.scale.rotation_streams}",
            "-rotation",
        )
        streams.read("open")
        rotated = streams.read("rotated", timeout=ROTATION_TTL * 2)
        streams.close()
        label = f"rotation → {self.scale.rotation_streams} streams"
        self.figures[f"{label}: first to last (ms)"] = rotated["spread_ms"]

    def batch(self, system: Standalone) -> None:
        size = self.scale.batch
        selector = self.clients.selector("batch")
        entries = [EntrySpec(f"/bench/batch{i}", (selector,)) for i in range(size)]
        stream = Workload(
            self.clients.path("batch"), system.endpoint, "streams", "-n=1", f"-svids={size}"
        )
        time.sleep(0.5)  # the client is asking, and being refused
        server_cpu = cpu(system.server.pid)
        issued = time.time_ns()
        system.create_entries(entries)
        served = stream.read("open")["last_served_unix"]
        server_cpu = cpu(system.server.pid) - server_cpu
        stream.close()
        seconds = (served - issued) / 1e9
        self.figures[f"batch of {size} entries → all served (s)"] = seconds
        self.figures[f"batch of {size} entries: SVIDs/s"] = size / seconds
        self.figures[f"batch of {size} entries: server CPU s / 1,000 SVIDs"] = (
            server_cpu / size * 1000
        )


def report(results: dict[str, dict[str, float]]) -> None:
    herald, spire = results["herald"], results["spire"]
    print("\n| measure | herald | SPIRE | herald / SPIRE |")
    print("|---|---|---|---|")
    for name, value in herald.items():
        theirs = spire.get(name, float("nan"))
        ratio = value / theirs if theirs else float("nan")
        print(f"| {name} | {value:,.2f} | {theirs:,.2f} | {ratio:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every part, tiny sizes")
    parser.add_argument(
        "--spire-hashes",
        action="store_true",
        help="leave SPIRE's unix attestor hashing every caller's binary on every call (its "
        "default); without this flag it never hashes (workload_size_limit = -1)",
    )
    parser.add_argument(
        "--only", choices=NAMES, help="measure one system alone (no comparison table)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    print(f"SPIRE binaries: {build_spire()}", flush=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="herald-vs-") as tmp:
        clients = Clients(Path(tmp))
        for name in [args.only] if args.only else NAMES:
            run = Run(
                name, Path(tmp) / name, Path(tmp) / f"s-{name}", clients, scale, args.spire_hashes
            )
            began = time.monotonic()
            run.cold_start()
            run.measure()
            print(f"{name}: measured in {time.monotonic() - began:.0f} s", flush=True)
            results[name] = run.figures
    if args.only:
        for name, value in results[args.only].items():
            print(f"| {name} | {value:,.2f} |")
    else:
        report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
