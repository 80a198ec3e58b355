"""Who is on the other end of a Unix socket, per the kernel, and whether it is still that process.

The Workload API never trusts anything a caller sends about itself. `read_peer_credentials` asks
the kernel for the peer's pid/uid/gid (SO_PEERCRED) and, where the kernel has it, a pidfd
(SO_PEERPIDFD) that pins the very process that connected. `process_identity` adds the process's
start time from /proc, and `still_same` later confirms that the pid still names that process, so a
caller that exits, or whose pid is reused, during attestation is caught.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, overload

# Linux 6.5+; Python 3.11's socket module does not name it.
SO_PEERPIDFD: Final = 77
PROC: Final = Path("/proc")

_UCRED: Final = struct.Struct("3i")
# /proc/<pid>/stat fields counted from 1; everything after the comm field's last ')' starts at 3.
_FIRST_FIELD_AFTER_COMM: Final = 3
_STATE_FIELD: Final = 3
_STARTTIME_FIELD: Final = 22
# A zombie has exited and only waits to be reaped; it can no longer be the caller.
_DEAD_STATES: Final = frozenset({"Z", "X", "x"})


class PeerCredentialsError(RuntimeError):
    """The kernel's view of the peer cannot identify a process in this agent's pid namespace."""


class ProcessGoneError(RuntimeError):
    """The process has exited (or its /proc entry cannot be read as a live process)."""


class _OptionSocket(Protocol):
    """`socket.socket` or asyncio's `TransportSocket`, which forwards getsockopt to one."""

    @overload
    def getsockopt(self, level: int, optname: int, /) -> int: ...

    @overload
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(eq=False)
class PeerCredentials:
    """The peer of a connected AF_UNIX socket at connect time, with a pidfd it owns.

    Close it (or use it as a context manager) when the connection ends: the pidfd is a file
    descriptor.
    """

    pid: int
    uid: int
    gid: int
    pidfd: int | None
    closed: bool = field(default=False, init=False)

    def close(self) -> None:
        """Close the pidfd once; later `still_same` checks on this caller answer False."""
        if self.closed:
            return
        self.closed = True
        if self.pidfd is not None:
            os.close(self.pidfd)

    def __enter__(self) -> PeerCredentials:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class ProcessIdentity:
    """A process pinned by pid, start time (clock ticks since boot) and the peer's pidfd."""

    credentials: PeerCredentials
    start_time: int

    @property
    def pid(self) -> int:
        return self.credentials.pid


def read_peer_credentials(sock: _OptionSocket) -> PeerCredentials:
    """Read SO_PEERCRED and, if the kernel supports it, SO_PEERPIDFD from a connected socket.

    Raises `PeerCredentialsError` for pid 0: the kernel translates the peer's pid into this
    process's pid namespace, and 0 means the peer lives in a namespace the agent cannot see
    (the agent needs `hostPID`).
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    if pid == 0:
        raise PeerCredentialsError(
            "peer is in a pid namespace the agent cannot see (SO_PEERCRED pid 0); "
            "run the agent in the host pid namespace (hostPID: true)"
        )
    return PeerCredentials(pid=pid, uid=uid, gid=gid, pidfd=_peer_pidfd(sock))


def _peer_pidfd(sock: _OptionSocket) -> int | None:
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        # Older kernels do not know the option; the start-time check still guards pid reuse.
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return None
        raise
    # The agent spawns helpers; a caller's pidfd must never leak into them.
    os.set_inheritable(fd, False)
    return fd


def process_identity(credentials: PeerCredentials, proc: Path = PROC) -> ProcessIdentity:
    """Pin the peer's process by its start time; `ProcessGoneError` if it has already exited."""
    return ProcessIdentity(
        credentials=credentials, start_time=read_start_time(credentials.pid, proc)
    )


def read_start_time(pid: int, proc: Path = PROC) -> int:
    """Field 22 of /proc/<pid>/stat; `ProcessGoneError` if the process is gone or a zombie."""
    fields = _stat_fields(pid, proc)
    if _field(fields, _STATE_FIELD) in _DEAD_STATES:
        raise ProcessGoneError(f"process {pid} has exited")
    return int(_field(fields, _STARTTIME_FIELD))


def _stat_fields(pid: int, proc: Path) -> list[str]:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGoneError(f"process {pid} has exited") from exc
    # comm (field 2) is "(name)" and name may hold spaces and ')': only the last ')' ends it.
    end_of_comm = text.rfind(")")
    if end_of_comm < 0:
        raise ProcessGoneError(f"/proc/{pid}/stat is not in the kernel's format: {text[:80]!r}")
    return text[end_of_comm + 1 :].split()


def _field(fields_after_comm: list[str], number: int) -> str:
    index = number - _FIRST_FIELD_AFTER_COMM
    if index >= len(fields_after_comm):
        raise ProcessGoneError(f"/proc stat line has no field {number}")
    return fields_after_comm[index]


def still_same(identity: ProcessIdentity, proc: Path = PROC) -> bool:
    """True while the process that connected is alive and its pid has not been reused.

    The pidfd answers "is that exact process alive" without any race; the start time re-read
    covers kernels without pidfds and confirms /proc/<pid> still describes the same process.
    """
    credentials = identity.credentials
    if credentials.closed or not _pidfd_alive(credentials.pidfd):
        return False
    try:
        return read_start_time(identity.pid, proc) == identity.start_time
    except ProcessGoneError:
        return False


def _pidfd_alive(pidfd: int | None) -> bool:
    if pidfd is None:
        return True
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A non-root agent may not signal another user's process, but EPERM proves it exists.
        return True
    return True
