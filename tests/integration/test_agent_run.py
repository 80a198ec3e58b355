"""``herald-agent run`` as a real subprocess against a real herald-server in this process: probes,
the Workload API on its socket, Prometheus series, SIGTERM, restart from ``data_dir``, bad
configuration, and what happens once the agent SVID expires while the server is away (a
join-token agent stays not ready; a k8s_psat agent, run in this process against the Kubernetes
API emulator, reads its rotated token and attests again).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from herald_agent.agent import HeraldAgent
from herald_agent.config import ConfigError
from herald_agent.config import config_from_mapping as agent_config
from herald_agent.server_client import attest_join_token
from herald_agent.svid_store import STATE_FILE
from herald_core.proto.spiffe.workload import workload_pb2
from herald_core.x509svid import parse_der_chain
from herald_server.config import config_from_mapping as server_config
from herald_server.server import HeraldServer
from tests.agent_process import (
    HERALD_AGENT,
    AgentProcess,
    joined_agent,
    metric,
    wait_for,
    write_config,
)
from tests.k8s.api import Kube
from tests.k8s.api import wait_for as wait_until
from tests.k8s.install import HeraldRelease
from tests.server_harness import (
    SERVER_NAME,
    add_agent_pod,
    add_node,
    agent_token,
    create_entry,
    fixed_ports,
    join_token,
    k8s_agent_doc,
    kube_config,
    start_server,
    utcnow,
)

pytestmark = pytest.mark.timeout(120)

HEADER = (("workload.spiffe.io", "true"),)
MY_UID = f"unix:uid:{os.getuid()}"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="herald-run-test-") as name:
        yield Path(name)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[HeraldServer]:
    server = await start_server(tmp_path / "server")
    yield server
    await server.stop()


async def fetch_x509(agent: AgentProcess) -> workload_pb2.X509SVIDResponse:
    channel, stub = agent.workload_stub()
    async with channel:
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        response: workload_pb2.X509SVIDResponse = await call.read()
        call.cancel()
    return response


async def test_run_serves_counts_stops_and_restarts_from_data_dir(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    agent = await joined_agent(tmp_path, server, socket_dir)
    try:
        agent.start()
        await wait_for(agent.ready)
        assert (await agent.get("/live"))[0] == 200
        assert (agent.data_dir.stat().st_mode & 0o777) == 0o700
        assert ((agent.data_dir / STATE_FILE).stat().st_mode & 0o777) == 0o600
        entry = await create_entry(server, "/run/web", agent.agent_id(), selectors=(MY_UID,))
        await agent.holds_svids(1)

        channel, stub = agent.workload_stub()
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(), metadata=HEADER)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            first = await stream.read()
            assert first.svids[0].spiffe_id == str(entry.spiffe_id)
            samples = await agent.metrics()
            assert metric(samples, "herald_agent_workload_api_streams_open") == 1
            assert metric(samples, "herald_agent_svids") == 1
            assert metric(samples, "herald_agent_ready") == 1
            stream.cancel()

        async def stream_counted() -> bool:
            samples = await agent.metrics()
            return (
                metric(samples, "herald_agent_workload_api_streams_open") == 0
                and metric(
                    samples,
                    "herald_agent_workload_api_calls_total",
                    rpc="FetchX509SVID",
                    code="CANCELLED",
                )
                == 1
            )

        await wait_for(stream_counted)
        samples = await agent.metrics()
        assert (
            metric(
                samples,
                "herald_agent_workload_api_calls_total",
                rpc="FetchJWTSVID",
                code="INVALID_ARGUMENT",
            )
            == 1
        )
        assert (
            metric(samples, "herald_agent_workload_api_calls_total", rpc="FetchJWTSVID", code="OK")
            == 0
        )
        assert (
            metric(
                samples,
                "herald_agent_node_attestations_total",
                method="join_token",
                result="ok",
            )
            == 1
        )
        assert (
            metric(
                samples,
                "herald_agent_workload_attestations_total",
                attestor="unix",
                result="ok",
            )
            == 1
        )
        assert metric(samples, "herald_agent_rotation_lag_seconds_count", kind="workload") == 0

        code, stderr = await agent.stop()
        assert code == 0, stderr
        assert not agent.socket_path.exists()
        assert "herald-agent stopping" in stderr

        # The join token is spent: only the stored SVID can bring the agent back.
        agent.start()
        await wait_for(agent.ready)
        await agent.holds_svids(1)
        response = await fetch_x509(agent)
        assert response.svids[0].spiffe_id == str(entry.spiffe_id)
        samples = await agent.metrics()
        assert (
            metric(
                samples, "herald_agent_node_attestations_total", method="join_token", result="ok"
            )
            == 0
        )
        code, stderr = await agent.stop()
        assert code == 0, stderr
        assert "reusing the stored agent SVID" in stderr
    finally:
        await agent.close()


async def test_unusable_trust_bundle_exits_2_naming_the_field(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    agent = write_config(
        tmp_path,
        server,
        socket_dir,
        node_attestor={"join_token": {"token": "unused"}},
        trust_bundle_path="missing.pem",
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [HERALD_AGENT, "run", "--config", str(agent.config_path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Error: trust_bundle_path: trust bundle" in result.stderr.decode()
    assert not agent.socket_path.exists()


async def test_unusable_kubelet_ca_is_a_config_error_before_the_token_is_spent(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    token = await join_token(server)
    process = write_config(
        tmp_path,
        server,
        socket_dir,
        node_attestor={"join_token": {"token": token}},
        workload_attestors={"k8s": {"kubelet_ca_path": "missing-ca.crt"}},
    )
    agent = HeraldAgent(
        agent_config(yaml.safe_load(process.config_path.read_text()), base_dir=tmp_path)
    )
    try:
        with pytest.raises(
            ConfigError, match=r"workload_attestors\.k8s\.kubelet_ca_path: cannot read"
        ):
            await agent.start()
    finally:
        await agent.stop()
        await process.close()
    # The join token is still unspent.
    attested = await attest_join_token(
        f"127.0.0.1:{server.attestation_port}",
        token,
        server.ca.bundle().x509_authorities,
        SERVER_NAME,
    )
    assert attested.svid.expires_at > utcnow()


async def test_join_token_agent_whose_svid_expired_is_not_ready_but_keeps_serving(
    tmp_path: Path, socket_dir: Path
) -> None:
    server = await start_server(tmp_path / "server", ca={"agent_svid_ttl": "2s"}, **fixed_ports())
    agent = await joined_agent(tmp_path, server, socket_dir)
    try:
        agent.start()
        await wait_for(agent.ready)
        entry = await create_entry(
            server, "/run/db", agent.agent_id(), selectors=(MY_UID,), x509_svid_ttl=3600
        )
        await agent.holds_svids(1)
        await fetch_x509(agent)

        async def agent_svid_renewed() -> bool:
            samples = await agent.metrics()
            return (
                metric(samples, "herald_agent_agent_svid_renewals_total") >= 1
                and metric(samples, "herald_agent_rotation_lag_seconds_count", kind="agent") >= 1
            )

        stored = (agent.data_dir / STATE_FILE).read_text()
        await wait_for(agent_svid_renewed)
        # Every renewal is written to data_dir, so a restart never goes back to an older SVID.
        assert (agent.data_dir / STATE_FILE).read_text() != stored
        await server.stop()

        async def not_ready() -> bool:
            status, body = await agent.get("/ready")
            return status == 503 and "join token" in body

        await wait_for(not_ready)
        response = await fetch_x509(agent)
        leaf = parse_der_chain(response.svids[0].x509_svid)[0]
        assert response.svids[0].spiffe_id == str(entry.spiffe_id)
        assert leaf.not_valid_after_utc > utcnow()
        code, stderr = await agent.stop()
        assert code == 0
        assert "restart the agent with a new join token" in stderr
    finally:
        await agent.close()
        await server.stop()


async def test_k8s_psat_agent_reads_a_fresh_token_and_attests_again(
    kube: Kube, release: HeraldRelease, tmp_path: Path, socket_dir: Path
) -> None:
    server_doc = kube_config(tmp_path, "server", release)
    server_doc.update(fixed_ports(), ca={"agent_svid_ttl": "2s"})

    async def start_kube_server() -> HeraldServer:
        server = HeraldServer(server_config(server_doc, base_dir=tmp_path))
        await server.start()
        return server

    server = await start_kube_server()
    node_uid = add_node(kube, "node-a")
    pod = add_agent_pod(kube, release, "node-a")
    token_file = tmp_path / "psat-token"
    token_file.write_text(agent_token(kube, pod) + "\n")
    config = agent_config(
        k8s_agent_doc(tmp_path, server, token_file, socket_dir / "agent.sock"),
        base_dir=tmp_path,
    )
    agent = HeraldAgent(config, backoff_base=0.05)
    try:
        await agent.start()
        assert agent.readiness() == (True, "ok")
        assert agent.manager is not None
        first = agent.manager.client.svid
        assert str(first.spiffe_id).endswith(f"/k8s_psat/test/{node_uid}")
        await server.stop()

        async def expired() -> bool:
            return "attesting the node again" in agent.readiness()[1]

        await wait_for(expired)
        # The agent's pod was replaced on the same node (a DaemonSet roll): the old pod's token
        # no longer passes a TokenReview, and the kubelet projected the new pod's token.
        name = pod["metadata"]["name"]
        kube.delete("v1", "Pod", name, release.namespace)
        await asyncio.to_thread(
            wait_until,
            lambda: kube.get("v1", "Pod", name, release.namespace) is None,
            what="the old agent pod to go",
        )
        token_file.write_text(agent_token(kube, add_agent_pod(kube, release, "node-a")) + "\n")
        server = await start_kube_server()

        async def ready_again() -> bool:
            return agent.readiness()[0]

        await wait_for(ready_again)
        assert agent.manager.client.svid is not first
        assert agent.manager.client.svid.spiffe_id == first.spiffe_id
        attested = agent.metrics.registry.get_sample_value(
            "herald_agent_node_attestations_total", {"method": "k8s_psat", "result": "ok"}
        )
        assert attested == 2
    finally:
        await agent.stop()
        await server.stop()


def stale_socket(directory: Path, mode: int = 0o700) -> Path:
    """``directory`` (made with ``mode``) holding a socket file nobody listens on any more."""
    directory.mkdir(mode=mode)
    directory.chmod(mode)
    path = directory / "workload.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="a directory of another owner needs root")
async def test_a_restart_after_kill_9_removes_only_stale_private_directories_of_its_own(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    agent = await joined_agent(tmp_path, server, socket_dir)
    agent.env = {"TMPDIR": str(tmp)}
    # Not stale, or not an agent's: each must survive the restart.
    stale_socket(tmp / "herald-agent-other-owner")
    os.chown(tmp / "herald-agent-other-owner", 12345, 12345)
    stale_socket(tmp / "herald-agent-wrong-mode", mode=0o755)
    (tmp / "herald-agent-starting").mkdir(mode=0o700)
    (tmp / "herald-agent-a-file").write_text("not a directory")
    stale_socket(tmp / "elsewhere")
    (tmp / "herald-agent-link").symlink_to(tmp / "elsewhere")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    (tmp / "herald-agent-live").mkdir(mode=0o700)
    live.bind(str(tmp / "herald-agent-live" / "workload.sock"))
    live.listen()
    # Stale: a socketless directory older than a minute.
    old = tmp / "herald-agent-old-and-empty"
    old.mkdir(mode=0o700)
    os.utime(old, (time.time() - 120, time.time() - 120))
    kept = sorted(p.name for p in tmp.iterdir() if p != old)
    try:
        agent.start()
        await wait_for(agent.ready)
        (first,) = set(tmp.iterdir()) - {tmp / name for name in kept} - {old}
        assert not old.exists(), "removed at the first start"
        assert agent.process is not None
        agent.process.kill()
        agent.process.wait()
        agent.process = None
        assert first.exists(), "SIGKILL leaves the private directory behind"

        agent.start()
        await wait_for(agent.ready)
        assert not first.exists(), "the killed agent's directory is gone"
        (second,) = set(tmp.iterdir()) - {tmp / name for name in kept}
        assert second.name.startswith("herald-agent-") and second != first
        assert sorted(p.name for p in tmp.iterdir() if p != second) == kept
        code, _ = await agent.stop()
        assert code == 0
        assert not second.exists(), "a clean stop removes its own"
    finally:
        live.close()
        await agent.close()


async def test_api_watch_follows_the_agent_through_a_restart(
    tmp_path: Path, server: HeraldServer, socket_dir: Path
) -> None:
    agent = await joined_agent(tmp_path, server, socket_dir)
    watch: asyncio.subprocess.Process | None = None
    try:
        agent.start()
        await wait_for(agent.ready)
        await create_entry(server, "/watched", agent.agent_id(), selectors=(MY_UID,))
        await agent.holds_svids(1)
        watch = await asyncio.create_subprocess_exec(
            HERALD_AGENT,
            "api",
            "watch",
            "-socketPath",
            str(agent.socket_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watch.stdout is not None and watch.stderr is not None

        async def next_update() -> None:
            assert watch is not None and watch.stdout is not None
            while True:
                line = await asyncio.wait_for(watch.stdout.readline(), 30)
                assert line, "watch exited"
                if line.startswith(b"SPIFFE ID:"):
                    assert b"spiffe://example.org/watched" in line
                    return

        await next_update()
        code, _ = await agent.stop()
        assert code == 0
        retry = await asyncio.wait_for(watch.stderr.readline(), 30)
        assert retry.startswith(b"Watch: ") and b"; retrying in " in retry, retry
        assert watch.returncode is None, "watch keeps going while the agent is away"
        agent.start()
        await wait_for(agent.ready)
        await next_update()
    finally:
        if watch is not None and watch.returncode is None:
            watch.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(watch.wait(), 15) == 130
        await agent.close()
