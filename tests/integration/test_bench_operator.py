"""The operator benchmark's smallest run works end to end, so the script cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "operator.py"


def test_operator_bench_smallest_run() -> None:
    sizes = ["--namespaces", "4", "--pods", "60", "--rate", "20", "--churn-seconds", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *sizes], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Every pod got its entry (the cold start finished) and every churn write saw its event.
    assert re.search(r"^\| 1 \| [\d,]+ \| [\d.]+ \|", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^\| \*\*all\*\* \| \*\*20\*\* \|", done.stdout, re.MULTILINE), done.stdout
    assert "saw no entry event" not in done.stdout
