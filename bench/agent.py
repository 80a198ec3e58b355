"""Benchmark: herald-agent's Workload API — latency, fetch rate, memory, stream fan-out, k8s.

A real `herald-server run` (standalone, its own process) and the agent built from its real
classes in a process of its own (`bench/agent_process.py`); every Workload API client runs in
other processes (`bench/workload_clients.py`), so the agent's process is measured alone. Entry
``w<i>`` selects ``unix:gid:<20000+i>``; as root each client process runs with one of those
gids, otherwise entry ``w0`` selects this process's gid and every client shares it. Two
baselines run in the same benchmark, each sending a message of the agent's answer's size: a bare
grpc.aio server on a Unix socket (the floor for any Python gRPC Workload API on this machine)
and the same server behind herald's relay.

1. first-message latency of a cached FetchX509SVID, a fresh connection per sample and on an
   open channel (target p99 < 5 ms);
2. fetches/s from concurrent clients in several processes, with the server's CPU;
3. RSS idle (the agent holding the SVIDs), then with the streams open (target < 250 MB);
4. one entry change reaching every open stream: from the admin call, and from the agent's
   wake-up, to the last client holding the new message (target < 100 ms for 1,000);
5. k8s attestations/s against a 110-pod kubelet list (`bench/k8s_attestation.py`).

    GRPC_ENABLE_FORK_SUPPORT=false PYTHONPATH=. .venv/bin/python bench/agent.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.k8s_attestation import K8sResult, measure_k8s
from bench.sign import TD, ServerProcess, _cpu
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.wire import bundle_from_proto
from herald_core.x509svid import certs_to_pem

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASE_GID = 20000
# No step of the benchmark waits this long for a child's answer unless something is stuck.
READ_TIMEOUT = 300.0
STREAMS_PER_PROCESS = 1000
MODES = ("fresh", "open")


@dataclass(frozen=True)
class Scale:
    entries: int
    latency_samples: int
    rate_processes: int
    rate_clients: int
    rate_seconds: float
    rate_warmup: float
    """Seconds the rate clients get to connect and warm up before the clock starts."""
    rounds: int
    memory_streams: int
    fanout_streams: int
    fanout_processes: int
    k8s_seconds: float


FULL = Scale(
    entries=1000,
    latency_samples=200,
    rate_processes=5,
    rate_clients=10,
    rate_seconds=3.0,
    rate_warmup=1.5,
    rounds=5,
    memory_streams=5000,
    fanout_streams=1000,
    fanout_processes=4,
    k8s_seconds=2.0,
)
# Only shows that every part runs (tests/unit/test_bench_agent.py); its figures mean nothing.
QUICK = Scale(
    entries=3,
    latency_samples=10,
    rate_processes=1,
    rate_clients=2,
    rate_seconds=0.2,
    rate_warmup=0.5,
    rounds=1,
    memory_streams=20,
    fanout_streams=10,
    fanout_processes=1,
    k8s_seconds=0.05,
)


class Child:
    """A bench process speaking JSON lines on stdout, told things on stdin."""

    def __init__(self, script: Path, *args: str, gid: int | None = None) -> None:
        env = {"PYTHONPATH": str(REPO), **os.environ}
        ids: dict[str, Any] = {} if gid is None else {"group": gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
            **ids,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), READ_TIMEOUT)
        if not line:
            raise RuntimeError(f"{self.process.args[1]} ended: {self.process.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return await self.read()

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client(role: str, *args: str, gid: int | None) -> Child:
    return Child(BENCH / "workload_clients.py", role, *args, gid=gid)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


class Bench:
    """The server, the agent, the two baseline servers, and the gids of the entries' clients."""

    def __init__(self, tmp: Path, server: ServerProcess, scale: Scale) -> None:
        self.tmp = tmp
        self.server = server
        self.scale = scale
        self.as_root = os.geteuid() == 0
        self.admin_channel = grpc.aio.insecure_channel(f"unix:{server.admin_socket}")
        self.admin: Any = admin_pb2_grpc.AdminAPIStub(self.admin_channel)
        self.entries: list[types_pb2.Entry] = []
        self.servers: dict[str, Child] = {}
        self.targets: dict[str, str] = {}

    @property
    def agent(self) -> Child:
        return self.servers["agent"]

    def gid(self, entry: int) -> int | None:
        """The gid a client of entry ``entry`` runs with (None: this process's own)."""
        return BASE_GID + entry if self.as_root else None

    def selected_gid(self, entry: int) -> int:
        """The gid entry ``entry`` selects; without root the first one is this process's own,
        which every client then shares, and the others select nobody's."""
        return os.getgid() if entry == 0 and not self.as_root else BASE_GID + entry

    async def start_agent(self) -> None:
        response = await self.admin.GetBundle(admin_pb2.GetBundleRequest())
        bundle_file = self.tmp / "bundle.pem"
        pem = certs_to_pem(bundle_from_proto(response.bundle).x509_authorities)
        await asyncio.to_thread(bundle_file.write_bytes, pem)
        token = (await self.admin.CreateJoinToken(admin_pb2.CreateJoinTokenRequest())).value
        ports = self.server.ports
        socket = self.tmp / "agent" / "agent.sock"
        agent = Child(
            BENCH / "agent_process.py",
            *("--attestation", f"127.0.0.1:{ports['attestation']}"),
            *("--agent", f"127.0.0.1:{ports['agent']}"),
            *("--bundle", str(bundle_file), "--token", token, "--socket", str(socket)),
        )
        self.servers["agent"], self.targets["agent"] = agent, f"unix:{socket}"
        agent_id = (await agent.read())["agent_id"]
        started = time.perf_counter()
        for i in range(self.scale.entries):
            entry = types_pb2.Entry(
                id=f"w{i}", spiffe_id=f"spiffe://{TD.name}/w{i}", parent_id=agent_id, hint="r0"
            )
            entry.selectors.add(type="unix", value=f"gid:{self.selected_gid(i)}")
            await self.admin.CreateEntry(admin_pb2.CreateEntryRequest(entry=entry))
            self.entries.append(entry)
        await agent.ask(f"svids {len(self.entries)}")
        print(
            f"agent holds {len(self.entries)} SVIDs "
            f"({time.perf_counter() - started:.1f} s from the first entry created)",
            flush=True,
        )

    async def start_baselines(self) -> int:
        """The bare and relayed echo servers, sending what the agent sends; its size in bytes."""
        payload = self.tmp / "payload.bin"
        probe = client(
            "probe", "--target", self.targets["agent"], "--out", str(payload), gid=self.gid(0)
        )
        size = int((await probe.read())["bytes"])
        probe.close()
        for name, flags in (("relay", ["--relay"]), ("bare", [])):
            socket = self.tmp / f"{name}.sock"
            echo = client(
                "echo", "--socket", str(socket), "--payload", str(payload), *flags, gid=None
            )
            await echo.read()
            self.servers[name], self.targets[name] = echo, f"unix:{socket}"
        return size

    async def close(self) -> None:
        for child in self.servers.values():
            child.close()
        await self.admin_channel.close()


async def measure_latency(bench: Bench) -> list[dict[str, float]]:
    """Per round, p50 and p99 of each target's first-message latency, fresh and open."""
    scale = bench.scale
    print(
        f"\n1. first FetchX509SVID message (p50 / p99), {scale.rounds} rounds of "
        f"{scale.latency_samples} samples per target and mode"
    )
    rows = []
    for _ in range(scale.rounds):
        latency = client(
            "latency",
            *("--targets", *bench.targets.values(), "--samples", str(scale.latency_samples)),
            gid=bench.gid(0),
        )
        by_target = await latency.read()
        latency.close()
        row = {
            f"{name}_{mode}_p{pct}": percentile(by_target[target][mode], pct)
            for name, target in bench.targets.items()
            for mode in MODES
            for pct in (50, 99)
        }
        rows.append(row)
        for mode in MODES:
            print(
                f"   round, {mode:5}: "
                + "  ".join(
                    f"{n} {ms(row[f'{n}_{mode}_p50'])} / {ms(row[f'{n}_{mode}_p99'])}"
                    for n in bench.targets
                ),
                flush=True,
            )
    return rows


async def measure_rate(bench: Bench) -> list[dict[str, float]]:
    scale = bench.scale
    clients = scale.rate_processes * scale.rate_clients
    print(
        f"\n2. fetches/s (server CPU in cores), {clients} clients ({scale.rate_processes} "
        f"processes x {scale.rate_clients} channels), {scale.rounds} x {scale.rate_seconds} s"
    )
    rows = []
    for _ in range(scale.rounds):
        row: dict[str, float] = {}
        for name, target in bench.targets.items():
            row[name], row[f"{name}_cpu"] = await _rate_round(bench, target, bench.servers[name])
        rows.append(row)
        print(
            "   round: "
            + "  ".join(f"{n} {row[n]:5.0f}/s ({row[n + '_cpu']:4.2f})" for n in bench.targets)
            + f"  agent/bare {row['agent'] / row['bare']:5.1%}",
            flush=True,
        )
    return rows


async def _rate_round(bench: Bench, target: str, server: Child) -> tuple[float, float]:
    scale = bench.scale
    start_at = time.perf_counter() + scale.rate_warmup
    procs = [
        client(
            "rate",
            *("--target", target, "--clients", str(scale.rate_clients)),
            *("--start-at", repr(start_at), "--seconds", str(scale.rate_seconds)),
            gid=bench.gid(k % len(bench.entries)),
        )
        for k in range(scale.rate_processes)
    ]
    await asyncio.sleep(max(start_at - time.perf_counter(), 0.0))
    cpu_before = _cpu(server.pid)
    results = [await p.read() for p in procs]
    elapsed = max(r["ended"] for r in results) - start_at
    cpu = (_cpu(server.pid) - cpu_before) / elapsed
    for p in procs:
        p.close()
    return sum(r["fetches"] for r in results) / elapsed, cpu


async def open_streams(bench: Bench, target: str, total: int, *, one_identity: bool) -> list[Child]:
    """Hold processes with ``total`` streams to ``target`` between them, every stream open."""
    per = total // bench.scale.fanout_processes if one_identity else min(total, STREAMS_PER_PROCESS)
    procs = [
        client(
            "hold",
            *("--target", target, "--streams", str(per), "--channels", str(max(per // 100, 1))),
            gid=bench.gid(0 if one_identity else k % len(bench.entries)),
        )
        for k in range(total // per)
    ]
    for p in procs:
        assert (await p.read())["open"] == per
    return procs


async def measure_memory(bench: Bench) -> dict[str, tuple[float, float]]:
    streams = bench.scale.memory_streams
    print(f"\n3. RSS idle (the agent holding {len(bench.entries)} SVIDs), then {streams} streams")
    result = {}
    for name, target in bench.targets.items():
        pid = bench.servers[name].pid
        idle = rss_mib(pid)
        procs = await open_streams(bench, target, streams, one_identity=False)
        result[name] = (idle, rss_mib(pid))
        for p in procs:
            p.close()
        print(f"   {name:5}: {idle:6.1f} MiB idle, {result[name][1]:6.1f} MiB with the streams")
    return result


async def measure_fanout(bench: Bench) -> list[dict[str, float]]:
    scale = bench.scale
    print(
        f"\n4. one change to {scale.fanout_streams} open streams ({scale.fanout_processes} "
        f"processes, one identity), {scale.rounds} rounds after one warm-up"
    )
    holders = {
        name: await open_streams(bench, target, scale.fanout_streams, one_identity=True)
        for name, target in bench.targets.items()
    }
    entry = bench.entries[0]
    rows = []
    for n in range(scale.rounds + 1):
        entry.hint = f"r{n + 1}"
        admin_at = time.perf_counter()
        await bench.admin.UpdateEntry(admin_pb2.UpdateEntryRequest(entry=entry))
        last = await _last_arrival(holders["agent"], expect_hint=entry.hint)
        row = {
            "admin": last - admin_at,
            "agent": last - (await bench.agent.ask("changed"))["changed"],
        }
        for name in ("relay", "bare"):
            pushed_at = (await bench.servers[name].ask("push"))["pushed"]
            row[name] = await _last_arrival(holders[name], expect_hint=None) - pushed_at
        if n == 0:
            continue  # the warm-up
        rows.append(row)
        print(
            f"   round: agent {ms(row['admin'])} from the admin call, {ms(row['agent'])} from "
            f"its wake-up; relay {ms(row['relay'])}; bare {ms(row['bare'])}",
            flush=True,
        )
    for procs in holders.values():
        for p in procs:
            p.close()
    return rows


async def _last_arrival(procs: list[Child], expect_hint: str | None) -> float:
    reports = [await p.read() for p in procs]
    for report in reports:
        if expect_hint is not None and report["hints"] != [expect_hint]:
            raise RuntimeError(f"streams got hints {report['hints']}, expected {expect_hint}")
    return max(r["last"] for r in reports)


def summary(
    bench: Bench,
    size: int,
    latency: list[dict[str, float]],
    rates: list[dict[str, float]],
    memory: dict[str, tuple[float, float]],
    fanout: list[dict[str, float]],
) -> None:
    """Medians, each next to the bare and relayed baselines and as a ratio to bare grpc.aio."""
    scale = bench.scale
    names = list(bench.targets)
    print(f"\nsummary: {len(bench.entries)} entries, a {size}-byte response; columns: {names}")
    for mode in MODES:
        for pct in (50, 99):
            values = [_median(latency, f"{n}_{mode}_p{pct}") for n in names]
            print(_row(f"latency {mode} p{pct} (ms)", [v * 1000 for v in values], "p99 < 5 ms"))
    clients = scale.rate_processes * scale.rate_clients
    print(_row(f"fetches/s, {clients} clients", [_median(rates, n) for n in names]))
    print(_row("server CPU (cores)", [_median(rates, f"{n}_cpu") for n in names]))
    print(_row("RSS idle (MiB)", [memory[n][0] for n in names]))
    print(
        _row(
            f"RSS, {scale.memory_streams} streams (MiB)", [memory[n][1] for n in names], "< 250 MB"
        )
    )
    print(
        _row(
            f"one change to {scale.fanout_streams} streams (ms)",
            [_median(fanout, n) * 1000 for n in names],
            "< 100 ms",
        )
    )
    print(f"   the agent from the admin call: {ms(_median(fanout, 'admin'))}")


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _row(label: str, values: list[float], target: str = "") -> str:
    figures = "  ".join(f"{v:9.2f}" for v in values)
    ratio = values[0] / values[-1]
    return f"   {label:38} {figures}   agent/bare {ratio:5.2f}x  {target}"


async def run(args: argparse.Namespace) -> None:
    scale = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="herald-bench-agent-") as name:
        tmp = Path(name)
        # Clients with other gids must reach the sockets inside.
        await asyncio.to_thread(tmp.chmod, 0o755)
        with ServerProcess(tmp, workers=0) as server:
            bench = Bench(tmp, server, scale)
            try:
                await bench.start_agent()
                size = await bench.start_baselines()
                latency = await measure_latency(bench)
                rates = await measure_rate(bench)
                memory = await measure_memory(bench)
                fanout = await measure_fanout(bench)
            finally:
                await bench.close()
        summary(bench, size, latency, rates, memory, fanout)
        if not args.skip_k8s:
            k8s: K8sResult = await measure_k8s(tmp, scale.k8s_seconds, scale.rounds)
            print(k8s.summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that only shows it works")
    parser.add_argument("--skip-k8s", action="store_true", help="leave out the k8s attestor")
    args = parser.parse_args()
    # This process forks client processes while its channels are open; grpc's fork handlers
    # would only warn about that.
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
