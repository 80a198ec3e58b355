"""herald-agent's client commands (``api fetch|watch|validate``, ``healthcheck``) as the installed
console script, in subprocesses, against a real agent stack serving the Workload API in this
test's event loop (tests/agent_harness).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from herald_agent.client_cli import api, healthcheck
from herald_agent.workload_names import ENV_SOCKET, NO_IDENTITY
from herald_core.bundle import Bundle
from herald_core.keys import generate_key
from herald_core.spiffeid import TrustDomain
from herald_core.x509svid import load_pem_certs, make_ca_certificate, spiffe_id_of
from tests.agent_harness import Agent, running_agent, socket_directory
from tests.server_harness import TRUST_DOMAIN, utcnow

pytestmark = pytest.mark.timeout(120)

HERALD_AGENT = Path(sys.executable).parent / "herald-agent"
WEB = f"spiffe://{TRUST_DOMAIN}/web"
OUTPUT_TIMEOUT = 20.0


@dataclass
class Ran:
    code: int
    out: str
    err: str


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_SOCKET}
    return env | extra


async def herald_agent(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run the console script; the event loop keeps serving the agent meanwhile."""
    process = await asyncio.create_subprocess_exec(
        str(HERALD_AGENT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), OUTPUT_TIMEOUT)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with socket_directory() as path:
        yield path


@pytest.fixture
async def agent(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path, socket_dir) as running:
        yield running


def sock(agent: Agent) -> tuple[str, str]:
    return ("-socketPath", str(agent.endpoint.public_socket))


def foreign_bundle(name: str) -> Bundle:
    td = TrustDomain(name)
    now = utcnow()
    root = make_ca_certificate(
        generate_key(), td, not_before=now, not_after=now + dt.timedelta(hours=1)
    )
    return Bundle(td, (root,))


async def test_fetch_x509_prints_and_writes_what_spire_agent_writes(
    agent: Agent, tmp_path: Path
) -> None:
    other = foreign_bundle("other.org")
    await agent.entry("/web", hint="web", federates_with=(other.trust_domain,))
    # The bundle the server would sync for other.org.
    agent.manager._federated = {other.trust_domain: other}
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    ran, as_json, bundles = await asyncio.gather(
        herald_agent("api", "fetch", "x509", "-write", str(out_dir), *sock(agent)),
        herald_agent("api", "fetch", "x509", "-output", "json", *sock(agent)),
        herald_agent("api", "fetch", "x509-bundle", *sock(agent)),
    )

    assert ran.code == 0, ran.err
    assert re.match(r"Received 1 svid after \d+\.\d{3}ms\n\n", ran.out)
    assert f"SPIFFE ID:\t\t{WEB}\nHint:\t\t\tweb\nSVID Valid After:\t" in ran.out
    assert "CA #1 Valid Until:\t" in ran.out
    assert "[spiffe://other.org] CA #1 Valid After:\t" in ran.out
    assert f"Writing key #0 to file {out_dir}/svid.0.key." in ran.out
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out_dir.iterdir()}
    assert files == {
        "svid.0.pem": 0o644,
        "svid.0.key": 0o600,
        "bundle.0.pem": 0o644,
        "federated_bundle.0.0.pem": 0o644,
    }
    chain = load_pem_certs((out_dir / "svid.0.pem").read_bytes())
    assert str(spiffe_id_of(chain[0])) == WEB
    key = load_pem_private_key((out_dir / "svid.0.key").read_bytes(), None)
    assert key.public_key() == chain[0].public_key()
    bundle = agent.manager.bundle
    assert bundle is not None
    assert load_pem_certs((out_dir / "bundle.0.pem").read_bytes()) == list(bundle.x509_authorities)
    assert load_pem_certs((out_dir / "federated_bundle.0.0.pem").read_bytes()) == list(
        other.x509_authorities
    )

    assert as_json.code == 0, as_json.err
    doc = json.loads(as_json.out)
    assert [svid["spiffe_id"] for svid in doc["svids"]] == [WEB]
    assert list(doc["federated_bundles"]) == ["spiffe://other.org"]
    assert bundles.code == 0, bundles.err
    assert "Received 2 bundles after" in bundles.out
    assert f"Trust domain:\t\tspiffe://{TRUST_DOMAIN}\nCA #1 Valid After:\t" in bundles.out


async def test_jwt_fetch_then_validate(agent: Agent) -> None:
    await agent.entry("/web")
    # SPIFFE_ENDPOINT_SOCKET is where the commands look without -socketPath.
    env = cli_env(**agent.env)

    ran = await herald_agent("api", "fetch", "jwt", "-audience", "db", "-audience", "a,b", env=env)

    assert ran.code == 0, ran.err
    found = re.search(rf"^token\({re.escape(WEB)}\):\n\t(\S+)$", ran.out, re.MULTILINE)
    assert found, ran.out
    token = found.group(1)
    bundle = re.search(rf"^bundle\(spiffe://{TRUST_DOMAIN}\):\n\t(.+)$", ran.out, re.MULTILINE)
    assert bundle, ran.out
    assert json.loads(bundle.group(1))["keys"]

    valid, garbage, bundles = await asyncio.gather(
        herald_agent("api", "validate", "jwt", "-audience", "a", "-svid", token, env=env),
        herald_agent("api", "validate", "jwt", "-audience", "a", "-svid", "garbage", env=env),
        herald_agent("api", "fetch", "jwt-bundle", "-output", "json", env=env),
    )

    assert valid.code == 0, valid.err
    lines = valid.out.splitlines()
    assert lines[:2] == ["SVID is valid.", f"SPIFFE ID : {WEB}"]
    claims = json.loads(lines[2].removeprefix("Claims    : "))
    assert claims["sub"] == WEB
    assert sorted(claims["aud"]) == ["a", "b", "db"]
    assert isinstance(claims["exp"], int)
    assert (garbage.code, garbage.out) == (1, "")
    assert garbage.err.startswith("Error: SVID is not valid: INVALID_ARGUMENT: "), garbage.err
    assert bundles.code == 0, bundles.err
    assert list(json.loads(bundles.out)["bundles"]) == [f"spiffe://{TRUST_DOMAIN}"]


async def test_without_an_entry_fetch_is_denied_and_the_agent_still_healthy(agent: Agent) -> None:
    fetched, checked = await asyncio.gather(
        herald_agent("api", "fetch", "x509", *sock(agent)),
        herald_agent("healthcheck", "-verbose", *sock(agent)),
    )

    assert (fetched.code, fetched.err) == (1, f"Error: PERMISSION_DENIED: {NO_IDENTITY}\n")
    assert checked.code == 0, checked.err
    assert checked.out.splitlines() == [
        "Checking agent health...",
        "Health service: SERVING",
        f"Workload API: answered ({NO_IDENTITY} for this process)",
        "Agent is healthy.",
    ]


async def test_watch_prints_each_rotation_until_interrupted(agent: Agent) -> None:
    await agent.entry("/short", x509_svid_ttl=3)  # renewed about 1.5 s after each issue
    process = await asyncio.create_subprocess_exec(
        str(HERALD_AGENT),
        "api",
        "watch",
        *sock(agent),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    assert process.stdout is not None
    try:
        expiries: list[str] = []
        while len(expiries) < 2:
            line = await asyncio.wait_for(process.stdout.readline(), OUTPUT_TIMEOUT)
            assert line, "watch ended"
            if line.startswith(b"SVID Valid Until:"):
                expiries.append(line.decode())
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), OUTPUT_TIMEOUT)
        except TimeoutError:
            process.kill()
            _, err = await process.communicate()
            pytest.fail(f"watch did not exit on SIGINT; stderr: {err.decode()!r}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert expiries[0] != expiries[1]
    assert process.returncode == 130


async def test_healthcheck_healthy_then_unhealthy_once_the_socket_is_gone(agent: Agent) -> None:
    await agent.entry("/web")
    deep, shallow = await asyncio.gather(
        herald_agent("healthcheck", "-verbose", *sock(agent)),
        herald_agent("healthcheck", "-shallow", *sock(agent)),
    )
    assert deep.code == 0, deep.err
    assert "Workload API: answered with X509-SVIDs\nAgent is healthy.\n" in deep.out
    assert (shallow.code, shallow.out) == (0, "Agent is healthy.\n"), shallow.err

    await agent.endpoint.stop(grace=None)
    ran = await herald_agent("healthcheck", *sock(agent))
    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith(
        f"Agent is unhealthy: no Workload API socket at {agent.endpoint.public_socket}: "
    )


async def test_without_an_agent_each_failure_is_one_line(socket_dir: Path) -> None:
    stale = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unserved:
        unserved.bind(str(stale))  # bound, never listening: connections are refused
    missing = socket_dir / "nowhere.sock"

    refused, absent, mistyped = await asyncio.gather(
        herald_agent("healthcheck", "-socketPath", str(stale)),
        herald_agent("api", "fetch", "x509", env=cli_env(**{ENV_SOCKET: f"unix://{missing}"})),
        herald_agent("healthcheck", "-shalow"),
    )

    assert (refused.code, refused.err) == (
        1,
        f"Agent is unhealthy: herald-agent at {stale} refuses connections\n",
    )
    assert (absent.code, absent.err) == (
        1,
        f"Error: no Workload API socket at {missing}: is herald-agent running? "
        "(set -socketPath or SPIFFE_ENDPOINT_SOCKET)\n",
    )
    assert mistyped.code == 2
    assert "No such option '-shalow'. Did you mean '-shallow'?" in mistyped.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["api", "fetch", "x509", "-writ", "/tmp"],
            "No such option '-writ'. Did you mean '-write'?",
        ),
        (["api", "fetch", "jwt"], "Missing option '-audience'"),
        (["api", "fetch", "jwt", "-audience", ","], "'-audience'"),
        (["api", "fetch", "jwt", "-audience", "a", "-spiffeID", "web"], "'-spiffeID'"),
        (["api", "watch", "-timeout", "soon"], "'-timeout'"),
        (["api", "fetch", "x509", "-timeout", "99999999999999999999"], "is longer than 3650d"),
        (["api", "fetch", "x509", "-write", "/nonexistent"], "'-write'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    # Parsing only: in process, where it costs no interpreter start.
    command = {"api": api, "healthcheck": healthcheck}[args[0]]
    result = CliRunner().invoke(command, args[1:], env={ENV_SOCKET: "unix:///nowhere.sock"})
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "unix:relative.sock"])
def test_an_unusable_endpoint_variable_is_named(address: str) -> None:
    result = CliRunner().invoke(api, ["fetch", "x509"], env={ENV_SOCKET: address})
    assert result.exit_code == 2, result.output
    assert f"Error: SPIFFE_ENDPOINT_SOCKET: {address!r}" in result.output


@pytest.mark.parametrize(
    "address", ["unix:///nonexistent/agent.sock", "unix:/nonexistent/agent.sock"]
)
def test_both_unix_address_forms_name_the_socket(address: str) -> None:
    result = CliRunner().invoke(api, ["fetch", "x509"], env={ENV_SOCKET: address})
    assert result.exit_code == 1, result.output
    assert "Error: no Workload API socket at /nonexistent/agent.sock: " in result.output


def test_the_client_commands_load_without_the_agents_engine() -> None:
    # An exec probe runs `herald-agent healthcheck` every few seconds: it must start light.
    probe = (
        "import sys, herald_agent.cli; "
        "print(sorted(m for m in ('aiohttp', 'herald_agent.agent', 'herald_agent.workload_api', "
        "'herald_agent.config', 'kubernetes') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
