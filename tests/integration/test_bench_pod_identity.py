"""The pod-to-SVID benchmark's quick run works end to end, so the script cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.k8s.fixtures import require_binaries

ROOT = Path(__file__).resolve().parents[2]


def test_pod_identity_bench_quick_run() -> None:
    require_binaries()  # it runs on a control plane of its own, then on the emulator
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pod_identity.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("10 pods one at a time") == 2, "the real API and the emulator"
    for label in ("pod → operator → server → agent → SVID", "WorkloadEntry → server → agent"):
        assert re.search(rf"{re.escape(label)}.*p50 +[\d.]+ ms", done.stdout), done.stdout
