"""The server-restart benchmark's quick run works end to end, so the script cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def test_server_restart_bench_quick_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server_restart.py"), "--restarts", "2"],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "herald-server restart, 2 restarts" in done.stdout
    for label in (
        "new entry → agent, server running (baseline)",
        "new entry → agent, just after a restart",
        "restart: SIGTERM → new server /ready",
    ):
        assert re.search(rf"{re.escape(label)} +p50 +[\d.]+ ms +p99", done.stdout), done.stdout
