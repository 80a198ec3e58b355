"""Long-running test processes (etcd, kube-apiserver, ...) with their logs, stopped for sure.

Each process gets its own session (so a signal reaches it, not pytest) and a log file; `tail`
is what a failure shows. `stop` ends it by pid and then checks that the pid is gone, so a test
that leaves a control-plane process behind fails instead of leaking it into the next test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ProcessLeft(Exception):
    """A process survived SIGKILL: something is badly wrong with the machine or the test."""


class ManagedProcess:
    """One started binary: ``name`` for messages, output in ``log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._env = {**os.environ, **(env or {})}
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self._popen is not None, f"{self.name} was never started"
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log at {self.log}"
        body = "\n".join(text.splitlines()[-lines:])
        state = "running" if self.alive() else f"exited with {self.exit_code()}"
        return f"--- {self.name} ({state}), last {lines} lines of {self.log}:\n{body}"

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (at once if 0); raises if the pid
        outlives both."""
        if self._popen is None:
            return
        if self.alive():
            if grace > 0:
                self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(5)
        self._reap_group()
        if _pid_exists(self.pid):
            raise ProcessLeft(f"{self.name} (pid {self.pid}) is still running after SIGKILL")

    def _reap_group(self) -> None:
        # Children the binary started (none today, but a shim or helper would be) share its session.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while _group_exists(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
