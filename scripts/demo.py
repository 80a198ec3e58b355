"""The quickstart (`make demo`): herald on one machine, no cluster, with the real processes.

It starts `herald-server` (SQLite entries, join tokens) and `herald-agent` (unix attestor),
registers the current user as two workloads with `herald-server entry create`, and runs two
workloads built on the unmodified py-spiffe and spiffe-tls clients that fetch their SVIDs from the
agent's socket and complete a mutual-TLS exchange, each authorising the other by SPIFFE ID.
Everything lives in `.demo/`; logs are `.demo/server.log` and `.demo/agent.log`. On a terminal the
server and agent stay up afterwards so `herald-agent api fetch x509` can be tried by hand; Ctrl-C
stops them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".demo"
BIN = Path(sys.executable).parent
TRUST_DOMAIN = "demo.herald.dev"
SERVER_NAME = "herald-server.demo"
NODE_ALIAS = f"spiffe://{TRUST_DOMAIN}/demo/node"
GREETER = f"spiffe://{TRUST_DOMAIN}/demo/greeter"
CALLER = f"spiffe://{TRUST_DOMAIN}/demo/caller"
START_TIMEOUT = 60.0
# Unix socket paths are limited to 107 bytes; a deep checkout puts the socket in /tmp instead.
MAX_SOCKET_PATH = 100


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def socket_path(demo: Path) -> Path:
    path = demo / "sockets" / "agent.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.gettempdir()) / f"herald-demo-{os.getuid()}" / "agent.sock"


def command(*args: str) -> str:
    """Run a herald CLI command; its stdout, or DemoError with what it printed."""
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def wait_until(what: str, check: Callable[[], bool], log: Path) -> float:
    """Seconds until ``check`` holds; DemoError naming the log if it never does."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > START_TIMEOUT:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"{what} did not happen within {START_TIMEOUT:.0f} s; {log}:\n{tail}")
        time.sleep(0.05)
    return time.monotonic() - began


def succeeds(*args: str) -> Callable[[], bool]:
    def check() -> bool:
        return subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0

    return check


class Processes:
    """The long-running processes the demo started, stopped in reverse order."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self._running.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self._running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_server(processes: Processes, demo: Path) -> tuple[Path, dict[str, int]]:
    ports = {name: free_port() for name in ("attestation", "agent", "health")}
    admin = demo / "server" / "admin.sock"
    config = write_yaml(
        demo / "server.yaml",
        {
            "trust_domain": TRUST_DOMAIN,
            "data_dir": str(demo / "server" / "data"),
            "admin_socket": str(admin),
            "attestation_address": f"127.0.0.1:{ports['attestation']}",
            "agent_address": f"127.0.0.1:{ports['agent']}",
            "health_address": f"127.0.0.1:{ports['health']}",
            "server_dns_names": [SERVER_NAME],
            "log_level": "info",
        },
    )
    log = demo / "server.log"
    processes.start([str(BIN / "herald-server"), "run", "-config", str(config)], log)
    healthy = succeeds(str(BIN / "herald-server"), "healthcheck", "-socketPath", str(admin))
    took = wait_until("herald-server becoming healthy", healthy, log)
    print(f"herald-server is up in {took:.1f} s (admin socket {admin}, log {log})")
    return admin, ports


def start_agent(
    processes: Processes, demo: Path, admin: Path, ports: dict[str, int], sock: Path
) -> None:
    bundle = demo / "bootstrap-bundle.pem"
    bundle.write_text(command("herald-server", "bundle", "show", "-socketPath", str(admin)))
    token_line = command(
        "herald-server", "token", "generate", "-socketPath", str(admin), "-spiffeID", NODE_ALIAS
    )
    token = token_line.split()[1]
    print(f"join token generated for the agent (alias {NODE_ALIAS})")
    config = write_yaml(
        demo / "agent.yaml",
        {
            "trust_domain": TRUST_DOMAIN,
            "server_address": f"127.0.0.1:{ports['agent']}",
            "attestation_address": f"127.0.0.1:{ports['attestation']}",
            "server_name": SERVER_NAME,
            "trust_bundle_path": str(bundle),
            "socket_path": str(sock),
            "data_dir": str(demo / "agent" / "data"),
            "health_address": f"127.0.0.1:{free_port()}",
            "node_attestor": {"join_token": {"token": token}},
            "workload_attestors": {"unix": {}},
            "log_level": "info",
        },
    )
    log = demo / "agent.log"
    processes.start([str(BIN / "herald-agent"), "run", "-config", str(config)], log)
    healthy = succeeds(
        str(BIN / "herald-agent"), "healthcheck", "-shallow", "-socketPath", str(sock)
    )
    took = wait_until("herald-agent serving its socket", healthy, log)
    print(f"herald-agent attested and serving {sock} in {took:.1f} s (log {log})")


def register_workloads(admin: Path) -> None:
    uid = os.getuid()
    for spiffe_id in (GREETER, CALLER):
        command(
            "herald-server",
            "entry",
            "create",
            "-socketPath",
            str(admin),
            "-parentID",
            NODE_ALIAS,
            "-spiffeID",
            spiffe_id,
            "-selector",
            f"unix:uid:{uid}",
            "-x509SVIDTTL",
            "10m",
        )
        print(f"entry: {spiffe_id} for processes of uid {uid} (unix:uid:{uid})")


def svids_served(sock: Path) -> set[str]:
    """The SPIFFE IDs the agent gives this process now (this process runs as the same user)."""
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            stream = stub.FetchX509SVID(
                workload_pb2.X509SVIDRequest(),
                metadata=(("workload.spiffe.io", "true"),),
                timeout=5,
            )
            return {svid.spiffe_id for svid in next(iter(stream)).svids}
        except grpc.RpcError:
            return set()


def run_workloads(sock: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix:{sock}"}
    script = str(ROOT / "scripts" / "demo_workload.py")
    port = str(free_port())
    greeter = subprocess.Popen(
        [sys.executable, script, "greeter", port, GREETER, CALLER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert greeter.stdout is not None
        ready = greeter.stdout.readline().strip()
        if ready != "READY":
            raise DemoError(f"the greeter did not start: {ready} {greeter.communicate()[1]}")
        done = subprocess.run(
            [sys.executable, script, "caller", port, CALLER, GREETER],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"the caller failed:\n{done.stderr}")
        out, err = greeter.communicate(timeout=30)
        if greeter.returncode != 0:
            raise DemoError(f"the greeter failed:\n{err}")
    finally:
        if greeter.poll() is None:
            greeter.kill()
            greeter.wait()
    return yaml.safe_load(out.splitlines()[-1]), yaml.safe_load(done.stdout.splitlines()[-1])


def show_exchange(greeter: dict[str, Any], caller: dict[str, Any]) -> None:
    for name, result in (("greeter", greeter), ("caller", caller)):
        svid = result["svid"]
        held = f"{svid['spiffe_id']} (serial {svid['serial']}, expires {svid['expires']})"
        print(f"{name}: holds {held}")
        print(f"{name}: verified its peer as {result['peer']} over {result['tls']}")
    print(f"greeter heard: {greeter['heard']!r}")
    print(f"caller got:    {caller['reply']!r}")


def fetch_by_hand(sock: Path) -> None:
    """What `herald-agent api fetch x509` prints for this user, as typed in a shell."""
    print(f"$ herald-agent api fetch x509 -socketPath {sock}")
    print(command("herald-agent", "api", "fetch", "x509", "-socketPath", str(sock)).rstrip())


def try_by_hand(demo: Path, sock: Path, *, running: bool) -> None:
    agent = BIN / "herald-agent"
    if running:
        intro = "Try it yourself while this runs (another terminal, same user):"
    else:
        intro = "Run `make demo` in a terminal to keep the server and agent up, then try:"
    print(
        f"\n{intro}\n"
        f"  {agent} api fetch x509 -socketPath {sock}\n"
        f"  {agent} api fetch x509 -socketPath {sock} -write /tmp/svids\n"
        f"  {agent} api fetch jwt -audience demo -socketPath {sock}\n"
        f"  {agent} api watch -socketPath {sock}\n"
        f"  {BIN / 'herald-server'} entry show -socketPath {demo / 'server' / 'admin.sock'}"
    )
    if running:
        print("Press Ctrl-C to stop the server and the agent.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the demo's own directory")
    demo = parser.parse_args().dir.resolve()
    # A previous run's directory is cleared; anything else given by mistake is never deleted.
    if demo.exists() and any(demo.iterdir()) and not (demo / "server.yaml").exists():
        print(f"demo: {demo} is not empty and not a demo directory; choose another --dir")
        return 2
    shutil.rmtree(demo, ignore_errors=True)
    sock = socket_path(demo)
    for directory in (demo / "server", demo / "agent", sock.parent):
        directory.mkdir(parents=True, exist_ok=True)
    processes = Processes()
    try:
        step("1. herald-server: CA, SQLite entry store, join tokens")
        admin, ports = start_server(processes, demo)
        step("2. herald-agent: node attestation with a join token, Workload API on a Unix socket")
        start_agent(processes, demo, admin, ports, sock)
        step("3. Register the current user as two workloads")
        register_workloads(admin)
        took = wait_until(
            "both SVIDs minted", lambda: svids_served(sock) == {GREETER, CALLER}, demo / "agent.log"
        )
        print(f"both SVIDs were on the socket {took * 1000:.0f} ms after `entry create` returned")
        step("4. Two py-spiffe / spiffe-tls workloads: mutual TLS, each checking the other's ID")
        show_exchange(*run_workloads(sock))
        step("5. The same identities from the command line")
        fetch_by_hand(sock)
        step("Done: each workload got its identity because the kernel said which user called")
        running = sys.stdin.isatty()
        try_by_hand(demo, sock, running=running)
        if running:
            signal.pause()
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        processes.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
