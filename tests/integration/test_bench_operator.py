"""The operator benchmark's smallest run works end to end, so the script cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.k8s.fixtures import require_binaries

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "operator.py"


def test_operator_bench_smallest_run() -> None:
    require_binaries()  # it runs on a control plane of its own, then on the emulator
    sizes = ["--namespaces", "4", "--pods", "60", "--rate", "20", "--churn-seconds", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *sizes],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Every pod got its entry (the cold start finished) and every churn write saw its event.
    for api in ("real API", "emulator"):
        cold = rf"^\| {api} \| 1 \| [\d,]+ \| [\d.]+ \|"
        assert re.search(cold, done.stdout, re.MULTILINE), done.stdout
        churn = rf"^\| {api} \| \*\*all\*\* \| \*\*20\*\* \|.*\| \*\*[\d.]+ / [\d.]+\*\* \|$"
        assert re.search(churn, done.stdout, re.MULTILINE), done.stdout
        assert re.search(rf"^\| {api} \| herald-operator \| [\d.]+ \| \d+ \|", done.stdout, re.M)
    assert re.search(r"^\| real API \| kube-apiserver \| [\d.]+ \| \d+ \|", done.stdout, re.M)
    assert "saw no entry event" not in done.stdout
