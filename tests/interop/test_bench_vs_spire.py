"""bench/vs_spire.py in its quickest mode, so that the herald-beside-SPIRE benchmark cannot rot
unnoticed: every part runs against both systems and yields a figure for each (the figures of
so small a run mean nothing)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.golang import INTEROP, go_tool, missing_prerequisite
from tests.interop.spire_standalone import spire_binaries

REPO = INTEROP.parents[1]

pytestmark = pytest.mark.timeout(400)


def test_the_spire_comparison_runs_every_part(tmp_path: Path) -> None:
    go_tool()
    if spire_binaries() is None:
        missing_prerequisite("SPIRE is not built: run `make spire` (scripts/build_spire.sh)")
    figures_file = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "vs_spire.py"),
            "--quick",
            "--json",
            str(figures_file),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    figures = json.loads(figures_file.read_text())
    assert figures["herald"].keys() == figures["spire"].keys()
    for system, measured in figures.items():
        for name, value in measured.items():
            assert math.isfinite(value), f"{system}: {name} = {value}"
    assert "| measure | herald | SPIRE | herald / SPIRE |" in done.stdout
