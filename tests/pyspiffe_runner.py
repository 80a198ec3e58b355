"""Run a py-spiffe script in a child interpreter and hand back the JSON it prints.

py-spiffe's Workload API proto module and herald's register the same unpackaged message names in
protobuf's descriptor pool, so the two can never share a process; every interop check that needs
the real client goes through here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest


def run_pyspiffe(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """Run ``script`` with this interpreter (``sys.argv[1:]`` = ``args``) and parse its output.

    The script must print a JSON object as its last non-empty stdout line; print earlier lines
    freely for debugging. ``env`` entries are added to (not substituted for) the current
    environment. A non-zero exit, a timeout or a missing/invalid JSON line fails the test with
    the child's stdout and stderr.
    """
    child_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"py-spiffe script timed out after {timeout}s\nstderr:\n{exc.stderr!r}")
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    if done.returncode != 0:
        pytest.fail(f"py-spiffe script exited with {done.returncode}\n{report}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        pytest.fail(f"py-spiffe script printed nothing\n{report}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        pytest.fail(f"py-spiffe script's last line is not JSON ({exc})\n{report}")
    if not isinstance(result, dict):
        pytest.fail(f"py-spiffe script's last line is JSON but not an object\n{report}")
    return result
