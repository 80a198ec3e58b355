"""The ``unix`` workload attestor: the process's user, groups and binary, as the kernel sees them.

uid and gid are the *real* ids from ``/proc/<pid>/status``, not the SO_PEERCRED ids of the
socket: SO_PEERCRED records who called ``connect()``, and a connected socket can be handed to
another process or outlive a ``setuid``; ``/proc`` describes the process now, consistently with
the binary and cgroup facts read from the same place. (SO_PEERCRED still names the pid.) The
real id, not the effective one, is reported: executing a setuid binary changes only the
effective id, so the real id still names who launched the process.

``unix:path`` is ``/proc/<pid>/exe`` as the process sees it (inside a container, a path in the
container's filesystem). When the binary has been unlinked since the process started (a package
upgrade), the kernel appends `` (deleted)``: the path it was started from is still reported,
while ``unix:sha256`` keeps describing the binary actually running, read through
``/proc/<pid>/exe``.

``unix:sha256`` is computed once per binary identity (device, inode, size, mtime and ctime;
ctime because mtime can be set back by anyone who can write the file; the opened file is checked
to still have that identity before and after it is read), kept in a bounded LRU cache, hashed
in a worker thread, and shared by concurrent callers of the same binary. Binaries larger than
``max_hash_size`` (1 GiB by default) get no ``sha256`` selector: hashing one would hold a worker
thread for seconds, and an entry cannot then select them by digest.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import stat as stat_module
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from herald_agent.attestors import AttestationError
from herald_agent.attestors.proc import PROC_ROOT, check_same_process, start_time
from herald_core.selector import Selector

_DELETED: Final = " (deleted)"
BinaryIdentity = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class ProcessIds:
    """The ids ``/proc/<pid>/status`` reports."""

    uid: int
    gid: int
    groups: tuple[int, ...]


class UnixAttestor:
    """Selectors from the kernel's view of a process's credentials and binary."""

    name = "unix"

    def __init__(
        self,
        max_hash_size: int = 1 << 30,
        hash_cache_size: int = 1024,
        proc_root: str = PROC_ROOT,
    ) -> None:
        self._max_hash_size = max_hash_size
        self._cache_size = hash_cache_size
        self._proc_root = proc_root
        self._hashes: OrderedDict[BinaryIdentity, str] = OrderedDict()
        self._hashing: dict[BinaryIdentity, asyncio.Future[str | None]] = {}
        self.hashes_computed = 0
        """Binaries hashed so far (each cache miss), for metrics and tests."""

    @property
    def cached_hashes(self) -> int:
        return len(self._hashes)

    async def attest(self, pid: int) -> frozenset[Selector]:
        started = start_time(pid, self._proc_root)
        # Name lookups may go to the network (NSS: LDAP, sssd) and stat to the disk: both
        # happen in a worker thread, never on the event loop.
        selectors, binary = await asyncio.to_thread(self._read_process, pid)
        if binary is not None:
            digest = await self._sha256(pid, binary)
            if digest is not None:
                selectors.append(Selector("unix", f"sha256:{digest}"))
        check_same_process(pid, started, self._proc_root)
        return frozenset(selectors)

    def _read_process(self, pid: int) -> tuple[list[Selector], BinaryIdentity | None]:
        ids = read_ids(pid, self._proc_root)
        values = [f"uid:{ids.uid}", f"gid:{ids.gid}"]
        values += [f"supplementary_gid:{gid}" for gid in ids.groups]
        user = _user_name(ids.uid)
        if user is not None:
            values.append(f"user:{user}")
        group = _group_name(ids.gid)
        if group is not None:
            values.append(f"group:{group}")
        exe = f"{self._proc_root}/{pid}/exe"
        path = _exe_path(exe)
        if path is not None:
            values.append(f"path:{path}")
        return [Selector("unix", value) for value in values], self._binary_identity(exe)

    def _binary_identity(self, exe: str) -> BinaryIdentity | None:
        """The running binary's identity, or None if it is not to be hashed."""
        try:
            info = os.stat(exe)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AttestationError(f"cannot stat the binary {exe}: {exc.strerror}") from exc
        if not stat_module.S_ISREG(info.st_mode) or info.st_size > self._max_hash_size:
            return None
        return _identity(info)

    async def _sha256(self, pid: int, key: BinaryIdentity) -> str | None:
        cached = self._hashes.get(key)
        if cached is not None:
            self._hashes.move_to_end(key)
            return cached
        pending = self._hashing.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._hash_once(f"{self._proc_root}/{pid}/exe", key)

    async def _hash_once(self, exe: str, key: BinaryIdentity) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._hashing[key] = future
        try:
            self.hashes_computed += 1
            digest = await asyncio.to_thread(_hash_binary, exe, key)
        except BaseException as exc:
            future.set_exception(AttestationError(f"hashing {exe} failed: {exc!r}"))
            future.exception()  # Marked as retrieved: other callers may be absent.
            raise
        finally:
            del self._hashing[key]
        future.set_result(digest)
        if digest is not None:
            self._hashes[key] = digest
            if len(self._hashes) > self._cache_size:
                self._hashes.popitem(last=False)
        return digest


def read_ids(pid: int, proc_root: str = PROC_ROOT) -> ProcessIds:
    """Real uid, real gid and supplementary groups from ``/proc/<pid>/status``."""
    try:
        with open(f"{proc_root}/{pid}/status", encoding="utf-8", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise AttestationError(f"process {pid} exited during attestation") from exc
    try:
        return ProcessIds(
            uid=int(fields["Uid"].split()[0]),
            gid=int(fields["Gid"].split()[0]),
            groups=tuple(int(gid) for gid in fields.get("Groups", "").split()),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise AttestationError(f"/proc/{pid}/status has no usable Uid/Gid lines") from exc


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _exe_path(exe: str) -> str | None:
    try:
        path = os.readlink(exe)
    except FileNotFoundError:
        # A kernel thread has no binary; a process that exited is caught by the caller.
        return None
    except OSError as exc:
        raise AttestationError(f"cannot read {exe}: {exc.strerror}") from exc
    if path.endswith(_DELETED) and _unlinked(exe):
        path = path[: -len(_DELETED)]
    return path


def _unlinked(exe: str) -> bool:
    """Whether the kernel's " (deleted)" suffix is real, not part of the file's name."""
    try:
        return os.stat(exe).st_nlink == 0
    except FileNotFoundError:
        return False


def _identity(info: os.stat_result) -> BinaryIdentity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _hash_binary(exe: str, key: BinaryIdentity) -> str | None:
    """sha256 of the binary if it is still the one ``key`` names before and after reading."""
    try:
        with open(exe, "rb") as binary:
            if _identity(os.fstat(binary.fileno())) != key:
                return None
            digest = hashlib.file_digest(binary, "sha256")
            if _identity(os.fstat(binary.fileno())) != key:
                return None
    except FileNotFoundError:
        return None
    return digest.hexdigest()
