"""Peer credentials and process identity, read from real sockets and real processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald_agent.peercred import (
    PeerCredentials,
    PeerCredentialsError,
    ProcessGoneError,
    ProcessIdentity,
    process_identity,
    read_peer_credentials,
    read_start_time,
    still_same,
)

# A comm field shaped to break naive parsers: spaces, ')' and a fake state/start time inside.
TRICKY_COMM = "a) R 1 2 ) b"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def pidfd_credentials(pid: int) -> PeerCredentials:
    """Credentials for a process we spawned ourselves, pinned by a pidfd like SO_PEERPIDFD's."""
    return PeerCredentials(pid=pid, uid=os.getuid(), gid=os.getgid(), pidfd=os.pidfd_open(pid))


def test_socketpair_peer_is_this_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right, read_peer_credentials(left) as creds:
        assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())
        assert creds.pidfd is not None, "this kernel supports SO_PEERPIDFD (testenv §5)"
        assert not os.get_inheritable(creds.pidfd)
        assert os.readlink(f"/proc/self/fd/{creds.pidfd}") == "anon_inode:[pidfd]"
    assert creds.closed


def test_close_closes_the_pidfd_once() -> None:
    left, right = socket.socketpair()
    with left, right:
        creds = read_peer_credentials(left)
    fd = creds.pidfd
    assert fd is not None
    creds.close()
    creds.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_peer_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        script = (
            "import socket, time\n"
            f"s = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n"
            "time.sleep(30)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", script])
        try:
            conn, _ = server.accept()
            with conn, read_peer_credentials(conn) as creds:
                assert creds.pid == child.pid
                identity = process_identity(creds)
                assert identity.pid == child.pid
                assert still_same(identity)
        finally:
            child.kill()
            child.wait()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root+unshare")
def test_peer_outside_the_readers_pid_namespace_is_refused(tmp_path: Path) -> None:
    # The reader runs in a new pid namespace; this process is outside it, so the kernel
    # reports our pid as 0 there: exactly an agent without hostPID.
    path = tmp_path / "s.sock"
    reader = (
        "import socket\n"
        "from herald_agent.peercred import read_peer_credentials, PeerCredentialsError\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen()\n"
        "print('ready', flush=True)\n"
        "c, _ = s.accept()\n"
        "try:\n    read_peer_credentials(c)\n    print('accepted')\n"
        "except PeerCredentialsError as e:\n    print('refused:', e)\n"
    )
    child = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-c", reader],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        out, _ = child.communicate(timeout=30)
    assert out.startswith("refused:"), out
    assert "hostPID" in out


def test_pid_zero_from_the_kernel_is_refused() -> None:
    class KernelSaysPidZero:
        """What getsockopt returns to an agent that cannot see the peer's pid namespace."""

        def getsockopt(self, level: int, optname: int, buflen: int = 0) -> bytes:
            return (0).to_bytes(4, "little") + (1000).to_bytes(4, "little") * 2

    with pytest.raises(PeerCredentialsError, match="pid namespace"):
        read_peer_credentials(KernelSaysPidZero())


def test_still_same_while_alive_false_after_exit(sleeper: subprocess.Popen[bytes]) -> None:
    with pidfd_credentials(sleeper.pid) as creds:
        identity = process_identity(creds)
        assert still_same(identity)
        sleeper.kill()
        sleeper.wait()
        assert not still_same(identity)


def test_a_zombie_is_not_the_same_process(sleeper: subprocess.Popen[bytes]) -> None:
    with pidfd_credentials(sleeper.pid) as creds:
        identity = process_identity(creds)
        sleeper.kill()
        os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        assert not still_same(identity)


def test_without_a_pidfd_the_start_time_guards(sleeper: subprocess.Popen[bytes]) -> None:
    creds = PeerCredentials(pid=sleeper.pid, uid=0, gid=0, pidfd=None)
    identity = process_identity(creds)
    assert still_same(identity)
    sleeper.kill()
    sleeper.wait()
    assert not still_same(identity)


def test_a_reused_pid_has_another_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    creds = PeerCredentials(pid=sleeper.pid, uid=0, gid=0, pidfd=None)
    real = process_identity(creds)
    # The same pid with another start time: what a pid recycled after the caller left looks like.
    recycled = ProcessIdentity(credentials=creds, start_time=real.start_time - 1)
    assert not still_same(recycled)


def test_closed_credentials_are_never_the_same(sleeper: subprocess.Popen[bytes]) -> None:
    creds = pidfd_credentials(sleeper.pid)
    identity = process_identity(creds)
    creds.close()
    assert not still_same(identity)


def test_identity_of_an_exited_process_is_refused(sleeper: subprocess.Popen[bytes]) -> None:
    creds = PeerCredentials(pid=sleeper.pid, uid=0, gid=0, pidfd=None)
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(ProcessGoneError):
        process_identity(creds)


def test_start_time_survives_a_hostile_comm() -> None:
    script = (
        "import sys\n"
        "sys.stdin.readline()\n"
        f"open('/proc/self/comm', 'w').write({TRICKY_COMM!r})\n"
        "print('renamed', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        before = read_start_time(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "renamed"
        assert TRICKY_COMM in Path(f"/proc/{child.pid}/stat").read_text()
        assert read_start_time(child.pid) == before
    finally:
        child.kill()
        child.wait()


def test_start_time_parses_at_the_last_paren(tmp_path: Path) -> None:
    after_comm = ["S", *map(str, range(4, 22)), "777", "0"]  # fields 3..23; field 22 = 777
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(f"42 ({TRICKY_COMM}) {' '.join(after_comm)}\n")
    assert read_start_time(42, proc=tmp_path) == 777


def test_start_time_of_a_missing_pid(tmp_path: Path) -> None:
    with pytest.raises(ProcessGoneError, match="exited"):
        read_start_time(42, proc=tmp_path)
