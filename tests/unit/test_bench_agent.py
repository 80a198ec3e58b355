"""bench/agent.py in its quickest mode, so that the benchmark cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(90)


def test_the_agent_benchmark_runs_every_part() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRPC_ENABLE_FORK_SUPPORT": "false"}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "agent.py"), "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for figure in (
        "latency open p99",
        "fetches/s",
        "RSS, 20 streams",
        "one change to 10 streams",
        "attestations/s, 50 concurrent",
    ):
        assert figure in result.stdout
