"""Go test binaries driven from pytest: find the toolchain, compile a test module, run one test.

A module under ``tests/interop/`` is compiled once with ``go test -c`` to a path the test
chooses (so an entry can select the binary with ``unix:path``), then each Go test runs alone
through ``go tool test2json``. The pytest side fails unless that Go test reported ``pass``: a
failure, a skip, a panic or a binary that never ran the test all fail it, with the Go output.
Without Go the test skips, except under ``CI=true``, where a missing prerequisite is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parent
FALLBACK_GO = Path("/usr/local/go/bin/go")
# A cold module cache downloads and compiles go-spiffe, grpc and protobuf first.
COMPILE_TIMEOUT = 900.0


def missing_prerequisite(reason: str) -> None:
    """Skip the test for ``reason``; under CI a missing prerequisite fails it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: prerequisites must be present, not skipped)")
    pytest.skip(reason)


def go_tool() -> Path:
    """The ``go`` command: on PATH, else the toolchain's usual home."""
    found = shutil.which("go")
    if found:
        return Path(found)
    if FALLBACK_GO.exists():
        return FALLBACK_GO
    missing_prerequisite("no Go toolchain: `go` is not on PATH and /usr/local/go/bin/go is absent")
    raise AssertionError("unreachable")


def compile_tests(module: Path, output: Path) -> Path:
    """``go test -c`` the package in ``module`` to ``output``; the test fails if it cannot."""
    go = go_tool()
    try:
        done = subprocess.run(
            [str(go), "test", "-c", "-o", str(output), "."],
            cwd=module,
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`go test -c` in {module} took over {COMPILE_TIMEOUT:.0f} s")
    if done.returncode != 0:
        pytest.fail(f"`go test -c` in {module} failed:\n{done.stdout}{done.stderr}")
    return output


@dataclass
class GoTestResult:
    """What test2json reported for one test of a binary."""

    name: str
    action: str = "none"
    output: list[str] = field(default_factory=list)

    def require_pass(self) -> None:
        if self.action != "pass":
            text = "".join(self.output) or "(no output)\n"
            pytest.fail(f"Go test {self.name}: {self.action}\n{text}")


class GoTest:
    """One Go test of a compiled binary, running in a child process."""

    def __init__(self, binary: Path, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [
                str(go_tool()),
                "tool",
                "test2json",
                "-t",
                str(binary),
                "-test.v=test2json",
                "-test.count=1",
                f"-test.run=^{name}$",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float = 180.0) -> GoTestResult:
        """Wait for the binary and collect the test's events."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            return GoTestResult(self.name, "timeout", [out])
        return parse_events(self.name, out)


def parse_events(name: str, out: str) -> GoTestResult:
    """The final action and the output lines of test ``name`` in a test2json stream."""
    result = GoTestResult(name)
    for line in out.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            result.output.append(line + "\n")
            continue
        if event.get("Test", name) != name and not event.get("Test", "").startswith(name + "/"):
            continue
        if "Output" in event:
            result.output.append(event["Output"])
        if event.get("Test") == name and event.get("Action") in ("pass", "fail", "skip"):
            result.action = event["Action"]
    return result


def run_go_test(binary: Path, name: str, env: Mapping[str, str], timeout: float = 180.0) -> None:
    """Run Go test ``name`` of ``binary``; the pytest test fails unless it passes."""
    GoTest(binary, name, env).finish(timeout).require_pass()
