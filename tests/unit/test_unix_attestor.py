"""The unix attestor against real processes: this one, one running as nobody, deleted binaries."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herald_agent.attestors import AttestationError, WorkloadAttestor
from herald_agent.attestors.unix import UnixAttestor
from herald_core.selector import Selector

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
PYTHON = os.path.realpath(sys.executable)
NOBODY = 65534
EXTRA_GROUP = 100


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unix(value: str) -> Selector:
    return Selector("unix", value)


@pytest.fixture
def sleeper_copy(tmp_path: Path) -> Path:
    """A private copy of sleep: a binary no other test has hashed."""
    copy = tmp_path / "sleeper"
    shutil.copy(SLEEP, copy)
    # A distinct digest too, so the digest check cannot pass by coincidence with sleep's.
    with copy.open("ab") as binary:
        binary.write(os.urandom(16))
    return copy


def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*argv, "30"], **kwargs)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_is_a_workload_attestor() -> None:
    attestor: WorkloadAttestor = UnixAttestor()
    assert attestor.name == "unix"


async def test_this_process() -> None:
    selectors = await UnixAttestor().attest(os.getpid())
    exe = os.readlink("/proc/self/exe")
    expected = {
        unix(f"uid:{os.getuid()}"),
        unix(f"gid:{os.getgid()}"),
        unix(f"user:{pwd.getpwuid(os.getuid()).pw_name}"),
        unix(f"group:{grp.getgrgid(os.getgid()).gr_name}"),
        unix(f"path:{exe}"),
        unix(f"sha256:{sha256_of(exe)}"),
    } | {unix(f"supplementary_gid:{gid}") for gid in os.getgroups()}
    assert selectors == expected
    assert exe == PYTHON


@pytest.mark.root
async def test_a_process_running_as_nobody(procs: list[subprocess.Popen[bytes]]) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a process as uid 65534 needs root")
    proc = start([SLEEP], user=NOBODY, group=NOBODY, extra_groups=[EXTRA_GROUP])
    procs.append(proc)
    selectors = await UnixAttestor().attest(proc.pid)
    binary = SLEEP
    assert selectors == {
        unix(f"uid:{NOBODY}"),
        unix(f"gid:{NOBODY}"),
        unix(f"user:{pwd.getpwuid(NOBODY).pw_name}"),
        unix(f"group:{grp.getgrgid(NOBODY).gr_name}"),
        unix(f"supplementary_gid:{EXTRA_GROUP}"),
        unix(f"path:{binary}"),
        unix(f"sha256:{sha256_of(binary)}"),
    }


@pytest.mark.root
async def test_a_uid_without_a_name_gets_no_user_selector(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a process as another uid needs root")
    unnamed = 54321
    with pytest.raises(KeyError):
        pwd.getpwuid(unnamed)
    proc = start([SLEEP], user=unnamed, group=unnamed, extra_groups=[])
    procs.append(proc)
    selectors = await UnixAttestor().attest(proc.pid)
    assert {s.key for s in selectors} == {"uid", "gid", "path", "sha256"}
    assert unix(f"uid:{unnamed}") in selectors


async def test_one_hash_per_binary(
    sleeper_copy: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    attestor = UnixAttestor()
    first, second = start([str(sleeper_copy)]), start([str(sleeper_copy)])
    procs += [first, second]
    digest = unix(f"sha256:{sha256_of(str(sleeper_copy))}")
    assert digest in await attestor.attest(first.pid)
    assert digest in await attestor.attest(second.pid)
    assert digest in await attestor.attest(first.pid)
    assert (attestor.hashes_computed, attestor.cached_hashes) == (1, 1)


async def test_concurrent_callers_of_a_new_binary_share_one_hash(
    sleeper_copy: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    attestor = UnixAttestor()
    proc = start([str(sleeper_copy)])
    procs.append(proc)
    results = await asyncio.gather(*(attestor.attest(proc.pid) for _ in range(20)))
    assert len({frozenset(r) for r in results}) == 1
    assert unix(f"sha256:{sha256_of(str(sleeper_copy))}") in results[0]
    assert attestor.hashes_computed == 1


async def test_the_cache_is_bounded(
    sleeper_copy: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    attestor = UnixAttestor(hash_cache_size=1)
    mine, other = start([str(sleeper_copy)]), start([SLEEP])
    procs += [mine, other]
    await attestor.attest(mine.pid)
    await attestor.attest(other.pid)
    await attestor.attest(mine.pid)
    assert (attestor.hashes_computed, attestor.cached_hashes) == (3, 1)


async def test_binaries_over_the_size_cap_get_no_digest(
    sleeper_copy: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc = start([str(sleeper_copy)])
    procs.append(proc)
    size = file_size(sleeper_copy)
    under, over = UnixAttestor(max_hash_size=size), UnixAttestor(max_hash_size=size - 1)
    assert "sha256" in {s.key for s in await under.attest(proc.pid)}
    selectors = await over.attest(proc.pid)
    assert "sha256" not in {s.key for s in selectors}
    assert unix(f"path:{sleeper_copy}") in selectors
    assert over.hashes_computed == 0


async def test_a_deleted_binary_keeps_its_path_and_running_digest(
    sleeper_copy: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    digest = sha256_of(str(sleeper_copy))
    proc = start([str(sleeper_copy)])
    procs.append(proc)
    # A new file at the same path is a different binary; the running one must still be hashed.
    replace_file(sleeper_copy)
    assert os.readlink(f"/proc/{proc.pid}/exe") == f"{sleeper_copy} (deleted)"
    selectors = await UnixAttestor().attest(proc.pid)
    assert unix(f"path:{sleeper_copy}") in selectors
    assert unix(f"sha256:{digest}") in selectors


async def test_a_binary_whose_name_ends_in_deleted_is_not_trimmed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    odd = tmp_path / "odd (deleted)"
    shutil.copy(SLEEP, odd)
    proc = start([str(odd)])
    procs.append(proc)
    assert unix(f"path:{odd}") in await UnixAttestor().attest(proc.pid)


async def test_an_exited_process_is_refused() -> None:
    pid = exited_pid()
    with pytest.raises(AttestationError, match=f"process {pid} exited"):
        await UnixAttestor().attest(pid)


async def test_a_zombie_is_refused(procs: list[subprocess.Popen[bytes]]) -> None:
    zombie = make_zombie()
    procs.append(zombie)
    with pytest.raises(AttestationError, match="exited"):
        await UnixAttestor().attest(zombie.pid)


def file_size(path: Path) -> int:
    return path.stat().st_size


def replace_file(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"not the running binary")


def exited_pid() -> int:
    proc = subprocess.Popen([SLEEP, "0"])
    proc.wait()
    return proc.pid


def make_zombie() -> subprocess.Popen[bytes]:
    """A killed child not yet reaped: its pid stays in /proc, in state Z, until wait()."""
    proc = start([SLEEP])
    os.kill(proc.pid, signal.SIGKILL)
    while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "Z":
        time.sleep(0.01)
    return proc
