"""How herald-agent's client commands reach a Workload API socket: where it is, one bounded dial,
the security header on every call, and every failure as a one-line message.

A command dials once: a socket that refuses the connection fails at the first attempt instead of
being retried with backoff until the deadline, so a probe learns why at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import click
import grpc

from herald_agent.workload_names import (
    DEFAULT_SOCKET_PATH,
    ENV_SOCKET,
    SECURITY_HEADER,
    SECURITY_HEADER_VALUE,
)
from herald_core.proto.spiffe.workload import workload_pb2_grpc
from herald_core.spirecli import check_socket, connect_once

if TYPE_CHECKING:
    # The async stub type exists only in the generated stubs (.pyi).
    from herald_core.proto.spiffe.workload.workload_pb2_grpc import (
        SpiffeWorkloadAPIAsyncStub as Stub,
    )

HEADER: Final = ((SECURITY_HEADER, SECURITY_HEADER_VALUE),)
_UNIX_PREFIXES: Final = ("unix://", "unix:")
_T = TypeVar("_T")


def socket_from_address(address: str) -> Path:
    """The path in a ``SPIFFE_ENDPOINT_SOCKET`` value: ``unix:///p`` or ``unix:/p``."""
    for prefix in _UNIX_PREFIXES:
        if address.startswith(prefix):
            path = address.removeprefix(prefix)
            break
    else:
        raise click.UsageError(
            f"{ENV_SOCKET}: {address!r} is not a unix: address (herald-agent serves a Unix "
            "socket); set it to unix:///path/to/agent.sock or pass -socketPath"
        )
    if not path.startswith("/"):
        raise click.UsageError(
            f"{ENV_SOCKET}: {address!r} does not name an absolute path; "
            "write unix:///path/to/agent.sock"
        )
    return Path(path)


def resolve_socket(flag_value: Path | None) -> Path:
    """-socketPath when given, else ``$SPIFFE_ENDPOINT_SOCKET``, else the chart's socket."""
    if flag_value is not None:
        return flag_value
    address = os.environ.get(ENV_SOCKET)
    return socket_from_address(address) if address else DEFAULT_SOCKET_PATH


@dataclass(frozen=True)
class WorkloadSocket:
    """A Workload API socket and how long each step of a command may wait for it."""

    path: Path
    timeout: float

    def run(self, use: Callable[[Stub, grpc.aio.Channel], Awaitable[_T]]) -> _T:
        """Dial once and run ``use``; any failure becomes a ClickException with a clear line."""
        check_socket(
            self.path,
            what="Workload API socket",
            missing_hint="is herald-agent running? (set -socketPath or SPIFFE_ENDPOINT_SOCKET)",
            denied_hint="the agent's socket must be writable by every workload",
        )
        return asyncio.run(self._session(use))

    async def _session(self, use: Callable[[Stub, grpc.aio.Channel], Awaitable[_T]]) -> _T:
        async with grpc.aio.insecure_channel(f"unix:{self.path}") as channel:
            await self._connect(channel)
            try:
                return await use(workload_pb2_grpc.SpiffeWorkloadAPIStub(channel), channel)
            except grpc.aio.AioRpcError as exc:
                raise click.ClickException(self.rpc_error(exc)) from None

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        refused = f"herald-agent at {self.path} refuses connections"
        try:
            await asyncio.wait_for(connect_once(channel, refused), self.timeout)
        except TimeoutError:
            raise click.ClickException(
                f"no connection to herald-agent at {self.path} within {self.timeout:g}s"
            ) from None

    def rpc_error(self, exc: grpc.aio.AioRpcError) -> str:
        """``CODE: message``, as the agent sent it."""
        code = exc.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"{code.name}: herald-agent at {self.path} did not answer within {self.timeout:g}s"
            )
        return f"{code.name}: {exc.details()}"
