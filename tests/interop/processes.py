"""Long-running server and agent processes of a deployment under test: start, wait, stop, logs.

Each child writes stdout and stderr to its own log file; every wait that gives up says what it
waited for and shows the end of the log of the process that should have made it happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

START_TIMEOUT = 60.0


class DeploymentError(RuntimeError):
    """A process did not start, exited early, or never reached the state waited for."""


class Child:
    """One long-running child process with its log file."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DeploymentError(f"{self.name} is not running")
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DeploymentError(
                f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if it was not running)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return f"({self.log} does not exist)"
        tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"last lines of {self.log}:\n" + "\n".join(tail)


def wait_until(
    what: str, check: Callable[[], bool], child: Child, timeout: float = START_TIMEOUT
) -> float:
    """Seconds until ``check()`` holds; DeploymentError with ``child``'s log if it never does."""
    began = time.monotonic()
    while not check():
        child.check_alive()
        if time.monotonic() - began > timeout:
            raise DeploymentError(f"{what}: not within {timeout:.0f} s\n{child.log_tail()}")
        time.sleep(0.01)
    return time.monotonic() - began


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET a health or metrics path on loopback; (0, "") if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def gauge(port: int, name: str) -> float | None:
    """The first sample of Prometheus series ``name`` on loopback ``port``; None without it."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None
