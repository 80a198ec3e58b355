"""The README's quickstart, run as a user runs it: `scripts/demo.py` starts the real
herald-server and herald-agent processes, registers this user, and two py-spiffe / spiffe-tls
workloads do mutual TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def test_the_quickstart_runs_to_a_verified_mtls_exchange(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(tmp_path / "demo")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    greeter = "spiffe://demo.herald.dev/demo/greeter"
    caller = "spiffe://demo.herald.dev/demo/caller"
    assert f"greeter: verified its peer as {caller} over TLSv1.3" in out
    assert f"caller: verified its peer as {greeter} over TLSv1.3" in out
    assert f"caller got:    \"hello {caller}, you said 'hi greeter'\"" in out
    fetched = out[out.index("$ herald-agent api fetch x509") :]
    assert "Received 2 svids after" in fetched
    assert f"SPIFFE ID:\t\t{greeter}" in fetched and f"SPIFFE ID:\t\t{caller}" in fetched
    assert "api fetch x509 -socketPath" in out[out.index("Run `make demo` in a terminal") :]
    # Without a terminal the demo stops what it started: nothing is left serving the socket.
    assert not (tmp_path / "demo" / "sockets" / "agent.sock").exists()


def test_the_quickstart_never_clears_a_directory_that_is_not_its_own(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not a demo directory" in done.stdout
    assert keep.read_text() == "mine"
