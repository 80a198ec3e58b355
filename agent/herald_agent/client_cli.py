"""herald-agent's spire-agent-shaped client commands: ``api fetch|watch|validate`` call the
Workload API as a workload would, ``healthcheck`` asks whether the agent serves it.

Flags are spelt as spire-agent spells them (``-socketPath``, ``-audience``), with one dash or
two. Every command dials the socket once (workload_client); bad flags exit 2 naming the flag,
every other failure exits 1 with one line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
import grpc
from click.decorators import FC
from grpc_health.v1 import health_pb2

from herald_agent.api_output import (
    jwt_bundles_text,
    jwt_svids_text,
    message_json,
    parse_x509_response,
    validation_text,
    write_x509,
    x509_bundles_text,
    x509_text,
)
from herald_agent.rotation import Backoff
from herald_agent.workload_client import HEADER, WorkloadSocket, resolve_socket
from herald_agent.workload_names import DEFAULT_SOCKET_PATH, ENV_SOCKET, NO_IDENTITY
from herald_core.durations import DurationError, parse_duration
from herald_core.proto.spiffe.workload import workload_pb2
from herald_core.spiffeid import SpiffeId, SpiffeIdError
from herald_core.spirecli import SpireCommand, SpireGroup, flag, output_flag, print_json

if TYPE_CHECKING:
    from herald_core.proto.spiffe.workload.workload_pb2_grpc import (
        SpiffeWorkloadAPIAsyncStub as Stub,
    )

_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
# go-spiffe's watcher backoff: 1 s doubling to 30 s.
WATCH_RETRY_BASE: Final = 1.0
WATCH_RETRY_CAP: Final = 30.0
_M = TypeVar("_M")


def _seconds(text: str) -> float:
    """``5s``, ``500ms``, ``1m`` or whole seconds, more than zero."""
    try:
        seconds = parse_duration(text).total_seconds()
    except DurationError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter(f"must be more than zero, got {text!r}")
    return seconds


def workload_flags(command: FC) -> FC:
    """-socketPath and -timeout, handed to the command as one ``socket`` (a WorkloadSocket)."""

    def to_socket(ctx: click.Context, _: click.Parameter, timeout: str) -> None:
        path = ctx.params.pop("socket_path")
        ctx.params["socket"] = WorkloadSocket(resolve_socket(path), _seconds(timeout))

    command = flag(
        "timeout",
        default="5s",
        show_default=True,
        callback=to_socket,
        expose_value=False,
        help="How long to wait for the agent to connect and to answer.",
    )(command)
    return flag(
        "socketPath",
        "socket_path",
        type=click.Path(path_type=Path, dir_okay=False),
        is_eager=True,
        help=f"The Workload API socket [default: ${ENV_SOCKET}, else {DEFAULT_SOCKET_PATH}].",
    )(command)


def _spiffe_id(_: click.Context, __: click.Parameter, value: str | None) -> str:
    if value is None:
        return ""
    try:
        return str(SpiffeId.parse(value))
    except SpiffeIdError as exc:
        raise click.BadParameter(str(exc)) from None


def _audiences(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """Repeated flags and comma-separated lists both, as spire-agent's -audience takes."""
    audiences = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not audiences:
        raise click.BadParameter("must name at least one audience")
    return audiences


async def _first(call: grpc.aio.UnaryStreamCall[Any, _M], what: str) -> _M:
    """The first message of a stream; the stream is cancelled once it is read."""
    async for message in call:
        call.cancel()
        return message
    raise click.ClickException(f"the agent ended the {what} stream without an answer")


async def _first_timed(call: grpc.aio.UnaryStreamCall[Any, _M], what: str) -> tuple[_M, float]:
    """The first message of a stream and the seconds it took, as spire-agent reports."""
    start = time.monotonic()
    message = await _first(call, what)
    return message, time.monotonic() - start


@click.group(cls=SpireGroup)
def api() -> None:
    """Call the Workload API as a workload would (spire-agent's api commands)."""


@api.group()
def fetch() -> None:
    """Fetch SVIDs or bundles once."""


@fetch.command("x509")
@workload_flags
@flag(
    "write",
    "write_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True, writable=True),
    help="Write svid.N.pem, svid.N.key (0600), bundle.N.pem and federated_bundle.N.M.pem here.",
)
@flag("silent", is_flag=True, help="Print nothing on stdout.")
@output_flag()
def fetch_x509(socket: WorkloadSocket, write_dir: Path | None, silent: bool, output: str) -> None:
    """Fetch this process's X509-SVIDs, with bundles."""

    async def fetch_once(
        stub: Stub, _: grpc.aio.Channel
    ) -> tuple[workload_pb2.X509SVIDResponse, float]:
        request = workload_pb2.X509SVIDRequest()
        call = stub.FetchX509SVID(request, metadata=HEADER, timeout=socket.timeout)
        return await _first_timed(call, "X509-SVID")

    response, elapsed = socket.run(fetch_once)
    svids = parse_x509_response(response)
    said = write_x509(write_dir, svids) if write_dir is not None else []
    if silent:
        return
    if output == "json":
        print_json(message_json(response))
        return
    click.echo(x509_text(svids, elapsed))
    for line in said:
        click.echo(line)


@fetch.command("jwt")
@workload_flags
@flag(
    "audience",
    "audiences",
    multiple=True,
    required=True,
    callback=_audiences,
    help="An audience for the token; repeat the flag or separate audiences with commas.",
)
@flag("spiffeID", "spiffe_id", callback=_spiffe_id, help="Only a token for this SPIFFE ID.")
@output_flag()
def fetch_jwt(socket: WorkloadSocket, audiences: list[str], spiffe_id: str, output: str) -> None:
    """Fetch JWT-SVIDs for the audiences, and the JWT bundles to check them with."""
    request = workload_pb2.JWTSVIDRequest(audience=audiences, spiffe_id=spiffe_id)

    async def fetch_both(
        stub: Stub, _: grpc.aio.Channel
    ) -> tuple[workload_pb2.JWTSVIDResponse, workload_pb2.JWTBundlesResponse]:
        svids = await stub.FetchJWTSVID(request, metadata=HEADER, timeout=socket.timeout)
        bundles = stub.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=socket.timeout
        )
        return svids, await _first(bundles, "JWT bundle")

    svids, bundles = socket.run(fetch_both)
    if output == "json":
        print_json([message_json(svids), message_json(bundles)])
        return
    click.echo(jwt_svids_text(svids) + jwt_bundles_text(bundles.bundles), nl=False)


@fetch.command("jwt-bundle")
@workload_flags
@output_flag()
def fetch_jwt_bundle(socket: WorkloadSocket, output: str) -> None:
    """Fetch the JWT bundles (JWKS) of the trust domains this process may talk to."""

    async def fetch_once(stub: Stub, _: grpc.aio.Channel) -> workload_pb2.JWTBundlesResponse:
        call = stub.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=socket.timeout
        )
        return await _first(call, "JWT bundle")

    response = socket.run(fetch_once)
    if output == "json":
        print_json(message_json(response))
        return
    click.echo(jwt_bundles_text(response.bundles), nl=False)


@fetch.command("x509-bundle")
@workload_flags
@output_flag()
def fetch_x509_bundle(socket: WorkloadSocket, output: str) -> None:
    """Fetch the X.509 bundles of the trust domains this process may talk to."""

    async def fetch_once(
        stub: Stub, _: grpc.aio.Channel
    ) -> tuple[workload_pb2.X509BundlesResponse, float]:
        request = workload_pb2.X509BundlesRequest()
        call = stub.FetchX509Bundles(request, metadata=HEADER, timeout=socket.timeout)
        return await _first_timed(call, "X.509 bundle")

    response, elapsed = socket.run(fetch_once)
    if output == "json":
        print_json(message_json(response))
        return
    click.echo(x509_bundles_text(response.bundles, elapsed))


@api.group()
def validate() -> None:
    """Validate SVIDs through the agent."""


@validate.command("jwt")
@workload_flags
@flag("audience", required=True, help="The audience the token must carry.")
@flag("svid", required=True, help="The JWT-SVID to validate.")
@output_flag()
def validate_jwt(socket: WorkloadSocket, audience: str, svid: str, output: str) -> None:
    """Validate a JWT-SVID against the bundles the agent holds."""
    request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=svid)

    async def validate_once(
        stub: Stub, _: grpc.aio.Channel
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        try:
            return await stub.ValidateJWTSVID(request, metadata=HEADER, timeout=socket.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                raise
            raise click.ClickException(f"SVID is not valid: {socket.rpc_error(exc)}") from None

    response = socket.run(validate_once)
    if output == "json":
        print_json(message_json(response))
        return
    click.echo(validation_text(response), nl=False)


@api.command("watch")
@workload_flags
def watch(socket: WorkloadSocket) -> None:
    """Print this process's X509-SVIDs each time they change, until interrupted.

    A stream the agent ends or loses (an agent restart, say) is opened again with backoff, as
    go-spiffe's watcher (and so spire-agent's) does; INVALID_ARGUMENT alone ends the command.
    """

    async def follow(stub: Stub, _: grpc.aio.Channel) -> None:
        backoff = Backoff(base=WATCH_RETRY_BASE, cap=WATCH_RETRY_CAP)
        last = time.monotonic()
        while True:
            # No deadline: the stream is meant to stay open; -timeout bounds the first dial
            # only. wait_for_ready: a retry waits for the agent's socket to accept again.
            call = stub.FetchX509SVID(
                workload_pb2.X509SVIDRequest(), metadata=HEADER, wait_for_ready=True
            )
            try:
                async for response in call:
                    now = time.monotonic()
                    click.echo(x509_text(parse_x509_response(response), now - last))
                    last = now
                    backoff.reset()
                reason = "the agent ended the X509-SVID stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    raise  # the Workload API's "do not retry"
                reason = socket.rpc_error(exc)
            delay = backoff.next_delay()
            click.echo(f"Watch: {reason}; retrying in {delay:.1f}s", err=True)
            await asyncio.sleep(delay)

    try:
        socket.run(follow)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


async def _check_health(
    stub: Stub, channel: grpc.aio.Channel, *, shallow: bool, rpc_timeout: float
) -> list[str]:
    """Ask the health service, then (unless shallow) the Workload API; return what was seen."""
    check = channel.unary_unary(
        _HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply = await check(health_pb2.HealthCheckRequest(), timeout=rpc_timeout)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise click.ClickException(f"the health service reports {status}")
    seen = [f"Health service: {status}"]
    if shallow:
        return seen
    call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=rpc_timeout)
    try:
        await _first(call, "X509-SVID")
        seen.append("Workload API: answered with X509-SVIDs")
    except grpc.aio.AioRpcError as exc:
        # A caller without an entry is refused by a working agent: that is health, as in SPIRE.
        if exc.code() is not grpc.StatusCode.PERMISSION_DENIED or exc.details() != NO_IDENTITY:
            raise
        seen.append(f"Workload API: answered ({NO_IDENTITY} for this process)")
    return seen


@click.command(cls=SpireCommand)
@workload_flags
@flag("shallow", is_flag=True, help="Only ask the health service, not the Workload API.")
@flag("verbose", is_flag=True, help="Say what was checked.")
def healthcheck(socket: WorkloadSocket, shallow: bool, verbose: bool) -> None:
    """Check once whether the agent serves the Workload API; exit 0 if healthy, 1 if not."""
    if verbose:
        click.echo("Checking agent health...")

    def check(stub: Stub, channel: grpc.aio.Channel) -> Awaitable[list[str]]:
        return _check_health(stub, channel, shallow=shallow, rpc_timeout=socket.timeout)

    try:
        seen = socket.run(check)
    except click.ClickException as exc:
        click.echo(f"Agent is unhealthy: {exc.message}", err=True)
        raise SystemExit(1) from None
    if verbose:
        for line in seen:
            click.echo(line)
    click.echo("Agent is healthy.")
