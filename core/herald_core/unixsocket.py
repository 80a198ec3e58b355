"""Getting a Unix socket path ready to listen on: its directory, and what already sits there.

A stale socket left by a crashed process is replaced; a socket another live process still serves,
or anything that is not a socket, is refused rather than deleted.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path


class SocketPathError(RuntimeError):
    """The path cannot be listened on; the message names the path and why."""


def prepare_socket_path(path: Path, *, what: str, owner: str, dir_mode: int) -> None:
    """Create ``path``'s directory (``dir_mode``) when missing and clear a stale socket.

    ``what`` names the socket in messages ("admin socket"), ``owner`` the kind of process that
    would be serving it ("herald-server").
    """
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=dir_mode, parents=True)
            parent.chmod(dir_mode)  # mkdir's mode is filtered through the umask
        except OSError as exc:
            raise SocketPathError(f"cannot create {parent} for the {what}: {exc}") from exc
    elif not parent.is_dir():
        raise SocketPathError(f"{what} directory {parent} is not a directory")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(
            f"{what} path {path} exists and is not a socket; refusing to replace it"
        )
    if _in_use(path, what):
        raise SocketPathError(f"{what} {path} is in use: another {owner} is serving it")
    path.unlink()


def _in_use(path: Path, what: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            raise SocketPathError(f"cannot check {what} {path}: {exc}") from exc
        return True
