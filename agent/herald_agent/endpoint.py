"""The Workload API endpoint transport: a public Unix socket whose callers the kernel identifies.

grpcio cannot report a Unix peer's credentials, so the agent accepts on the public socket itself,
reads SO_PEERCRED (+ SO_PEERPIDFD) and the caller's start time, and relays the bytes to a private
grpc.aio server listening inside a 0700 directory. Each relayed connection comes from a socket
bound to a fresh random abstract name, which grpc reports as ``context.peer()`` =
``unix-abstract:<name>``; the name → caller registry lets handlers ask `caller_of(context)`.
A connection made straight to the private socket is in no record, so it is never identified.

Each uid may hold at most ``max_connections_per_uid`` connections (one more is closed at once,
counted and logged once a minute per uid), and a connection with no Workload API call open for
``idle_timeout`` seconds is closed, so idle connections cannot use up the agent's descriptors.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from asyncio.trsock import TransportSocket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from herald_agent.peercred import (
    PeerCredentials,
    PeerCredentialsError,
    ProcessGoneError,
    ProcessIdentity,
    process_identity,
    read_peer_credentials,
)
from herald_core.logs import RepeatLimiter, log_event
from herald_core.unixsocket import SocketPathError
from herald_core.unixsocket import prepare_socket_path as shared_prepare

CALLER_NOT_IDENTIFIED: Final = "caller not identified"
DEFAULT_MAX_STREAMS_PER_CONNECTION: Final = 100_000
DEFAULT_MAX_PENDING_REQUESTS: Final = 100_000
# A node's workloads of one uid (often all of a node's root containers) each hold a channel or
# two; a few hundred leaves room for them and still bounds what one uid can take (each relayed
# connection costs the agent three descriptors).
DEFAULT_MAX_CONNECTIONS_PER_UID: Final = 500
# Workload clients keep a stream open on the channel they use, so an idle connection is one a
# client forgot; five minutes outlasts any pause between calls of a client that polls.
DEFAULT_IDLE_TIMEOUT: Final = 300.0

_ABSTRACT_PEER_PREFIX: Final = "unix-abstract:"
_NAME_PREFIX: Final = "herald-"
_PRIVATE_SOCKET_NAME: Final = "workload.sock"
_PRIVATE_DIR_PREFIX: Final = "herald-agent-"
_PRIVATE_DIR_MODE: Final = 0o700
# A private directory without a socket may belong to an agent between mkdtemp and bind.
_SOCKETLESS_GRACE_SECONDS: Final = 60.0
_CHUNK: Final = 64 * 1024
# Every workload on the node may reconnect at once after an agent restart; the kernel caps this
# at net.core.somaxconn, as it does Go's listeners in SPIRE.
_BACKLOG: Final = 4096
_SOCKET_DIR_MODE: Final = 0o755
# Like SPIRE: any local process may connect; who it is comes from the kernel, not the mode.
_PUBLIC_SOCKET_MODE: Final = 0o777

_log = logging.getLogger(__name__)

HandlerRegistrar = Callable[[grpc.aio.Server], None]
_Context = grpc.aio.ServicerContext[Any, Any]


class EndpointError(RuntimeError):
    """The endpoint cannot serve at the configured path."""


@dataclass(frozen=True)
class Caller:
    """A relayed caller: the kernel's credentials and the process they pin."""

    credentials: PeerCredentials
    process: ProcessIdentity


def endpoint_uri(path: Path) -> str:
    """The ``SPIFFE_ENDPOINT_SOCKET`` value for ``path``: ``unix:///abs/path``."""
    return "unix://" + os.path.abspath(path)


@dataclass
class _Connection:
    """One relayed connection: its caller (None when the kernel could not pin one), the calls
    open on it and since when none has been."""

    caller: Caller | None
    calls: int = 0
    idle_since: float = field(default_factory=time.monotonic)


@dataclass
class EndpointCounters:
    """Plain counters for metrics wiring."""

    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Connections closed at once, by reason (``uid_limit``)."""
    idle_closed: int = 0


class CallerRegistry:
    """Abstract client name → the relayed connection (its `Caller`, its open calls)."""

    def __init__(self) -> None:
        self._connections: dict[str, _Connection] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, name: str, caller: Caller | None) -> None:
        self._connections[name] = _Connection(caller)

    def remove(self, name: str) -> None:
        self._connections.pop(name, None)

    def _connection(self, context: _Context) -> _Connection | None:
        peer = context.peer()
        if not peer.startswith(_ABSTRACT_PEER_PREFIX):
            return None
        return self._connections.get(peer.removeprefix(_ABSTRACT_PEER_PREFIX))

    def caller_of(self, context: _Context) -> Caller | None:
        """The caller behind this RPC, or None when it did not come through the relay."""
        connection = self._connection(context)
        return None if connection is None else connection.caller

    def call_started(self, context: _Context) -> None:
        connection = self._connection(context)
        if connection is not None:
            connection.calls += 1

    def call_ended(self, context: _Context) -> None:
        connection = self._connection(context)
        if connection is not None:
            connection.calls -= 1
            connection.idle_since = time.monotonic()

    def idle_for(self, name: str, now: float) -> float | None:
        """Seconds since the last call on connection ``name`` ended; None while one is open."""
        connection = self._connections.get(name)
        if connection is None or connection.calls:
            return None
        return now - connection.idle_since

    async def require_caller(self, context: _Context) -> Caller:
        """The caller behind this RPC; aborts it with PERMISSION_DENIED when there is none."""
        caller = self.caller_of(context)
        if caller is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, CALLER_NOT_IDENTIFIED)
        return caller


def server_options(
    max_streams_per_connection: int, max_pending_requests: int
) -> list[tuple[str, int]]:
    """grpc.aio options for the private server: many long-lived streams, tolerant keepalive."""
    return [
        # One workload channel multiplexes every X509Source/JwtSource stream of its process over
        # one connection. grpc 1.85's default is unbounded; the explicit, generous bound keeps it
        # so across grpc upgrades and puts a ceiling on what one connection can hold.
        ("grpc.max_concurrent_streams", max_streams_per_connection),
        # grpc core cancels calls beyond 3,000 waiting for the application (1,000 soft), which
        # every workload reconnecting at once after an agent restart would exceed.
        ("grpc.server.max_pending_requests", max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", max_pending_requests),
        # Clients (Envoy, go-spiffe users) may ping idle connections; do not GOAWAY them for it.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        # Server pings find a relay connection that is wedged without being closed.
        ("grpc.keepalive_time_ms", 300_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


class WorkloadEndpoint:
    """Serve gRPC handlers on ``public_socket`` with every caller identified by the kernel.

    ``handler_registrar`` adds the services to the private grpc.aio server; handlers identify
    their caller with `caller_of` / `require_caller` (or the shared ``callers`` registry).
    """

    def __init__(
        self,
        public_socket: Path,
        handler_registrar: HandlerRegistrar,
        *,
        callers: CallerRegistry | None = None,
        max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        private_parent: Path | None = None,
    ) -> None:
        self.public_socket = Path(os.path.abspath(public_socket))
        self.callers = callers if callers is not None else CallerRegistry()
        self.counters = EndpointCounters()
        self._registrar = handler_registrar
        self._options = server_options(max_streams_per_connection, max_pending_requests)
        self._max_per_uid = max_connections_per_uid
        self._idle_timeout = idle_timeout
        self._private_parent = private_parent
        self._private_dir: Path | None = None
        self._grpc: grpc.aio.Server | None = None
        self._public: asyncio.Server | None = None
        self._public_inode: int | None = None
        # Relay task → its connection's name in the registry (None until it is known).
        self._relays: dict[asyncio.Task[None], str | None] = {}
        self._per_uid: collections.Counter[int | None] = collections.Counter()
        self._limit_log = RepeatLimiter()
        self._idle_sweeper: asyncio.Task[None] | None = None

    @property
    def private_socket(self) -> Path:
        if self._private_dir is None:
            raise EndpointError("the endpoint is not started")
        return self._private_dir / _PRIVATE_SOCKET_NAME

    @property
    def open_connections(self) -> int:
        return len(self._relays)

    def caller_of(self, context: _Context) -> Caller | None:
        return self.callers.caller_of(context)

    async def require_caller(self, context: _Context) -> Caller:
        return await self.callers.require_caller(context)

    async def start(self) -> None:
        """Start the private server, then listen on the public socket (0777)."""
        prepare_socket_path(self.public_socket)
        parent = Path(self._private_parent or tempfile.gettempdir())
        for stale in remove_stale_private_dirs(parent):
            log_event(_log, "info", "removed a stale private directory", path=str(stale))
        self._private_dir = Path(tempfile.mkdtemp(prefix=_PRIVATE_DIR_PREFIX, dir=parent))
        try:
            await self._start_private()
            self._public = await asyncio.start_unix_server(
                self._relay_connection, path=str(self.public_socket), backlog=_BACKLOG
            )
            self._public_inode = self.public_socket.lstat().st_ino
            self.public_socket.chmod(_PUBLIC_SOCKET_MODE)
            self._idle_sweeper = asyncio.create_task(
                self._close_idle(), name="herald-agent-idle-connections"
            )
        except BaseException:
            await self.stop(grace=None)
            raise
        log_event(
            _log,
            "info",
            "workload API listening",
            socket=str(self.public_socket),
            private=str(self.private_socket),
        )

    async def _start_private(self) -> None:
        # maximum_concurrent_rpcs stays None (unlimited): streams live as long as the workloads.
        server = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=None)
        self._registrar(server)
        try:
            server.add_insecure_port(f"unix:{self.private_socket}")
        except RuntimeError as exc:
            raise EndpointError(f"cannot listen on {self.private_socket}: {exc}") from exc
        self._grpc = server
        await server.start()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting, let RPCs finish for ``grace`` seconds, then close every relay."""
        if self._idle_sweeper is not None:
            self._idle_sweeper.cancel()
            await asyncio.gather(self._idle_sweeper, return_exceptions=True)
            self._idle_sweeper = None
        if self._public is not None:
            self._public.close()
            await self._public.wait_closed()
            self._public = None
            self._remove_public_socket()
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def _remove_public_socket(self) -> None:
        # A newer agent may already have replaced the socket; only remove the one we made.
        try:
            if self.public_socket.lstat().st_ino == self._public_inode:
                self.public_socket.unlink()
        except FileNotFoundError:
            pass

    async def _relay_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection callback in its own task
        self._relays[task] = None
        try:
            await self._relay(task, reader, writer)
        except asyncio.CancelledError:
            # stop() or the loop's shutdown ended this connection. Python 3.11's stream callback
            # logs a cancelled connection task as an error, so this task ends normally instead.
            return
        except Exception as exc:
            # One bad connection must never reach asyncio's handler or stop the accept loop.
            log_event(_log, "warning", "workload connection failed", error=repr(exc))
        finally:
            writer.close()
            self._relays.pop(task, None)

    async def _relay(
        self,
        task: asyncio.Task[None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        caller = _identify(writer.get_extra_info("socket"))
        uid = None if caller is None else caller.credentials.uid
        if not self._admit(uid, caller):
            if caller is not None:
                caller.credentials.close()
            return
        self._per_uid[uid] += 1
        try:
            await self._relay_admitted(task, caller, reader, writer)
        finally:
            self._per_uid[uid] -= 1
            if not self._per_uid[uid]:
                del self._per_uid[uid]

    async def _relay_admitted(
        self,
        task: asyncio.Task[None],
        caller: Caller | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        name = _NAME_PREFIX + secrets.token_hex(16)
        try:
            private_reader, private_writer = await self._connect_private(name)
        except BaseException:
            if caller is not None:
                caller.credentials.close()
            raise
        # Recorded before any byte reaches grpc, so no handler can run ahead of its record.
        self.callers.add(name, caller)
        self._relays[task] = name
        try:
            await _copy_both_ways(reader, writer, private_reader, private_writer)
        finally:
            private_writer.close()
            self.callers.remove(name)
            if caller is not None:
                caller.credentials.close()

    def _admit(self, uid: int | None, caller: Caller | None) -> bool:
        """False (counted, logged once a minute per uid) when ``uid`` holds its limit already."""
        held = self._per_uid[uid]
        if held < self._max_per_uid:
            return True
        self.counters.refused["uid_limit"] += 1
        left_out = self._limit_log.allow(uid)
        if left_out is not None:
            log_event(
                _log,
                "warning",
                "workload connection refused: this uid holds the most connections allowed",
                uid=uid,
                pid=None if caller is None else caller.credentials.pid,
                connections=held,
                max_connections_per_uid=self._max_per_uid,
                left_out=left_out,
            )
        return False

    async def _close_idle(self) -> None:
        """Close connections with no call open for ``idle_timeout`` seconds."""
        interval = min(max(self._idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, name in list(self._relays.items()):
                idle = None if name is None else self.callers.idle_for(name, now)
                if idle is not None and idle >= self._idle_timeout:
                    self.counters.idle_closed += 1
                    log_event(_log, "debug", "idle workload connection closed", idle=round(idle))
                    task.cancel()

    async def _connect_private(
        self, name: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + name)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, str(self.private_socket))
            return await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise


def _identify(sock: TransportSocket) -> Caller | None:
    """The connected caller, or None (logged) when the kernel's answer cannot pin a process.

    An unidentified connection is still relayed so that its RPCs fail with a clear
    PERMISSION_DENIED instead of a dropped connection the client would retry blindly.
    """
    try:
        credentials = read_peer_credentials(sock)
    except PeerCredentialsError as exc:
        log_event(_log, "warning", CALLER_NOT_IDENTIFIED, reason=str(exc))
        return None
    try:
        return Caller(credentials=credentials, process=process_identity(credentials))
    except ProcessGoneError as exc:
        credentials.close()
        log_event(_log, "debug", CALLER_NOT_IDENTIFIED, pid=credentials.pid, reason=str(exc))
        return None


async def _copy_both_ways(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy until either side closes; the caller then closes both."""
    copies = [
        asyncio.create_task(_copy(a_reader, b_writer)),
        asyncio.create_task(_copy(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            # drain() waits while the peer is slow, so the agent never buffers without bound.
            await writer.drain()
    except ConnectionError:
        # A reset or broken pipe is just the end of this connection.
        return


def remove_stale_private_dirs(parent: Path) -> list[Path]:
    """Remove private directories agents killed with SIGKILL left in ``parent``; those removed.

    Only an agent's own kind is touched: a real directory (not a symlink) named
    ``herald-agent-*``, owned by this user, mode 0700, whose ``workload.sock`` refuses
    connections (no agent serves it), or which has no socket and is over a minute old.
    """
    removed = []
    for path in parent.glob(_PRIVATE_DIR_PREFIX + "*"):
        if _is_stale_private_dir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _is_stale_private_dir(path: Path) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) != _PRIVATE_DIR_MODE
    ):
        return False
    sock_path = path / _PRIVATE_SOCKET_NAME
    try:
        sock_info = sock_path.lstat()
    except FileNotFoundError:
        return time.time() - info.st_mtime > _SOCKETLESS_GRACE_SECONDS
    if not stat.S_ISSOCK(sock_info.st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock_path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory (0755) and remove a stale socket; refuse anything else."""
    try:
        shared_prepare(path, what="workload socket", owner="agent", dir_mode=_SOCKET_DIR_MODE)
    except SocketPathError as exc:
        raise EndpointError(str(exc)) from exc
