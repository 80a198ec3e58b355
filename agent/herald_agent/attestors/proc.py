"""Small readers of ``/proc/<pid>`` shared by the attestors.

A pid is only a name for a process while that process lives: it can exit and the number can be
reused. The attestors take the process's start time (``/proc/<pid>/stat`` field 22, in clock
ticks since boot) before they read anything and compare it after, so facts read from a reused pid
are never attributed to the caller.
"""

from __future__ import annotations

from herald_agent.attestors import AttestationError

PROC_ROOT = "/proc"


def start_time(pid: int, proc_root: str = PROC_ROOT) -> int:
    """The process's start time; raises AttestationError if it is gone or a zombie."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise AttestationError(f"process {pid} exited during attestation") from exc
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    state = fields[0]
    if state in (b"Z", b"X"):
        raise AttestationError(f"process {pid} exited during attestation")
    return int(fields[19])


def check_same_process(pid: int, started: int, proc_root: str = PROC_ROOT) -> None:
    """Raise AttestationError unless ``pid`` is still the process that started at ``started``."""
    if start_time(pid, proc_root) != started:
        raise AttestationError(f"process {pid} exited during attestation (its pid was reused)")
