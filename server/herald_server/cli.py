"""Command-line face of herald-server: ``run`` starts the server; ``entry``, ``token``, ``bundle``
and ``healthcheck`` are spire-server-shaped clients of the admin socket.

Flags are spelt as spire-server spells them (``-spiffeID``, ``-x509SVIDTTL``), with one dash or
two, as Go's flag package accepts (the shared machinery is ``herald_core.spirecli``). Every flag
is checked here before anything is sent, so a mistake is reported with the flag's name and
nothing reaches the server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
import grpc
from click.decorators import FC

from herald_core import __version__
from herald_core.durations import DurationError, format_duration, parse_duration
from herald_core.entry import MAX_TTL_SECONDS, Entry, EntryError
from herald_core.logs import setup_logging
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_core.spirecli import (
    SpireGroup,
    check_socket,
    connect_once,
    flag,
    output_flag,
    print_json,
    run_flags,
    timestamp,
)
from herald_core.wire import bundle_from_proto, entry_to_proto, selector_to_proto
from herald_server.admin_client import DEFAULT_ADMIN_SOCKET, admin_channel

RPC_TIMEOUT_SECONDS: Final = 30.0
HEALTHCHECK_TIMEOUT_SECONDS: Final = 5.0
# Entry needs an ID to validate; a create without -entryID is checked under this one and sent
# without it, so the server generates the real ID.
_PROVISIONAL_ID: Final = "provisional"
_T = TypeVar("_T")

if TYPE_CHECKING:
    # The async stub type exists only in the generated stubs (.pyi).
    from herald_core.proto.herald.admin.v1.admin_pb2_grpc import AdminAPIAsyncStub as Stub


def socket_flag() -> Callable[[FC], FC]:
    return flag(
        "socketPath",
        "socket_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=DEFAULT_ADMIN_SOCKET,
        show_default=True,
        help="Path to the server's admin socket.",
    )


# ---------------------------------------------------------------- checking flags


def _spiffe_id(flag_name: str, text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise click.ClickException(f"{flag_name}: {exc}") from None


def _selectors(texts: Iterable[str]) -> list[Selector]:
    try:
        return sorted({Selector.parse(text) for text in texts})
    except SelectorError as exc:
        raise click.ClickException(f"-selector: {exc}") from None


def _trust_domains(texts: Iterable[str]) -> tuple[TrustDomain, ...]:
    try:
        return tuple(TrustDomain.parse(text) for text in texts)
    except SpiffeIdError as exc:
        raise click.ClickException(f"-federatesWith: {exc}") from None


def _ttl(flag_name: str, text: str | None) -> int:
    """Seconds from ``5s``, ``1h30m`` or ``3600``; 0 when the flag is absent (server default)."""
    if text is None:
        return 0
    if text.strip().startswith("-"):
        raise click.ClickException(f"{flag_name}: must be positive, got {text!r}")
    try:
        seconds = parse_duration(text).total_seconds()
    except DurationError as exc:
        raise click.ClickException(f"{flag_name}: {exc}") from None
    if seconds <= 0:
        raise click.ClickException(
            f"{flag_name}: must be positive, got {text!r}; leave the flag out for the server's "
            "default"
        )
    if seconds != int(seconds) or seconds > MAX_TTL_SECONDS:
        raise click.ClickException(
            f"{flag_name}: must be a whole number of seconds from 1s to "
            f"{format_duration(MAX_TTL_SECONDS)}, got {text!r}"
        )
    return int(seconds)


def _entry_message(
    *,
    entry_id: str | None,
    spiffe_id: str,
    parent_id: str,
    selectors: Sequence[str],
    x509_svid_ttl: str | None,
    jwt_svid_ttl: str | None,
    dns_names: Sequence[str],
    hint: str,
    federates_with: Sequence[str],
    admin: bool,
    downstream: bool,
) -> types_pb2.Entry:
    """The entry the flags describe, validated as the server will validate it."""
    try:
        entry = Entry(
            id=entry_id or _PROVISIONAL_ID,
            spiffe_id=_spiffe_id("-spiffeID", spiffe_id),
            parent_id=_spiffe_id("-parentID", parent_id),
            selectors=frozenset(_selectors(selectors)),
            x509_svid_ttl=_ttl("-x509SVIDTTL", x509_svid_ttl),
            jwt_svid_ttl=_ttl("-jwtSVIDTTL", jwt_svid_ttl),
            dns_names=tuple(dns_names),
            federates_with=_trust_domains(federates_with),
            hint=hint,
            admin=admin,
            downstream=downstream,
        )
    except EntryError as exc:
        raise click.ClickException(str(exc)) from None
    message = entry_to_proto(entry)
    if not entry_id:
        message.id = ""
    return message


# ---------------------------------------------------------------- talking to the server


def _check_socket(socket_path: Path) -> None:
    check_socket(
        socket_path,
        what="admin socket",
        missing_hint="is herald-server running? (point -socketPath at its admin_socket)",
        denied_hint="run as the server's user or root",
    )


def _rpc_error(exc: grpc.aio.AioRpcError, socket_path: Path, connected: bool) -> str:
    code = exc.code()
    if code is grpc.StatusCode.UNAVAILABLE and not connected:
        return f"cannot reach herald-server at {socket_path}: {exc.details()}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"herald-server at {socket_path} did not answer in time"
    return exc.details() or code.name


def _run_on_channel(
    socket_path: Path,
    use: Callable[[grpc.aio.Channel], Awaitable[_T]],
    timeout: float,
) -> _T:
    """Open a channel to the admin socket, run ``use`` on it once; failures become messages."""
    _check_socket(socket_path)

    async def once() -> _T:
        async with admin_channel(socket_path) as channel:
            try:
                return await asyncio.wait_for(use(channel), timeout)
            except grpc.aio.AioRpcError as exc:
                # UNAVAILABLE from a server that answered is its own message, not a lost line.
                connected = channel.get_state() is grpc.ChannelConnectivity.READY
                raise click.ClickException(_rpc_error(exc, socket_path, connected)) from None

    try:
        return asyncio.run(once())
    except TimeoutError:
        raise click.ClickException(
            f"herald-server at {socket_path} did not answer within {timeout:g}s"
        ) from None


def call(
    socket_path: Path,
    rpc: Callable[[Stub], Awaitable[_T]],
    timeout: float = RPC_TIMEOUT_SECONDS,
) -> _T:
    """Run one admin RPC; any failure becomes a ClickException with a readable message."""

    def with_stub(channel: grpc.aio.Channel) -> Awaitable[_T]:
        stub: Stub = admin_pb2_grpc.AdminAPIStub(channel)
        return rpc(stub)

    return _run_on_channel(socket_path, with_stub, timeout)


# ---------------------------------------------------------------- printing


def _entry_lines(entry: types_pb2.Entry) -> list[str]:
    """One entry as spire-server prints it: ``Label : value`` rows, repeated rows for lists."""
    rows: list[tuple[str, object]] = [
        ("Entry ID", entry.id),
        ("SPIFFE ID", entry.spiffe_id),
        ("Parent ID", entry.parent_id),
        ("Revision", entry.revision),
    ]
    if entry.downstream:
        rows.append(("Downstream", "true"))
    rows.append(("X509-SVID TTL", entry.x509_svid_ttl or "default"))
    rows.append(("JWT-SVID TTL", entry.jwt_svid_ttl or "default"))
    rows += [("Selector", f"{s.type}:{s.value}") for s in entry.selectors]
    rows += [("FederatesWith", td) for td in entry.federates_with]
    rows += [("DNS name", name) for name in entry.dns_names]
    if entry.admin:
        rows.append(("Admin", "true"))
    if entry.hint:
        rows.append(("Hint", entry.hint))
    if entry.created_at:
        rows.append(("Created At", timestamp(entry.created_at)))
    return [f"{label:<16} : {value}" for label, value in rows]


def entry_json(entry: types_pb2.Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": [{"type": s.type, "value": s.value} for s in entry.selectors],
        "x509_svid_ttl": entry.x509_svid_ttl,
        "jwt_svid_ttl": entry.jwt_svid_ttl,
        "dns_names": list(entry.dns_names),
        "federates_with": list(entry.federates_with),
        "hint": entry.hint,
        "admin": entry.admin,
        "downstream": entry.downstream,
        "revision": entry.revision,
        "created_at": entry.created_at,
    }


def _print_entry(entry: types_pb2.Entry, output: str) -> None:
    if output == "json":
        print_json(entry_json(entry))
    else:
        click.echo("\n".join(_entry_lines(entry)) + "\n")


def _print_entries(entries: Sequence[types_pb2.Entry], output: str) -> None:
    if output == "json":
        print_json({"entries": [entry_json(e) for e in entries]})
        return
    noun = "entry" if len(entries) == 1 else "entries"
    click.echo(f"Found {len(entries)} {noun}")
    for entry in entries:
        click.echo("\n".join(_entry_lines(entry)) + "\n")


# ---------------------------------------------------------------- commands


@click.group(cls=SpireGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="herald-server")
def main() -> None:
    """herald-server: the only process that holds CA and JWT signing keys; attests agents,
    streams each agent its node's entries and signs SVIDs for them."""


@main.command()
@run_flags("docs/server-cli.md")
def run(
    config_path: Path | None,
    trust_domain: str | None,
    log_level: str | None,
    log_format: str | None,
    data_dir: Path | None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    # Imported here so that the client commands start without loading the server.
    from herald_core.health import HealthServerError
    from herald_core.listeners import ListenError
    from herald_server.admin_api import AdminSocketError
    from herald_server.config import ConfigError, load_config
    from herald_server.server import run as run_server

    overrides = {
        "trust_domain": trust_domain,
        "log_level": log_level,
        "log_format": log_format,
        "data_dir": data_dir,
    }
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(run_server(config))
    except (ConfigError, AdminSocketError, HealthServerError, ListenError) as exc:
        # Startup failures the operator can fix; anything else is a bug and keeps its traceback.
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def entry_flags(*, update: bool) -> Callable[[FC], FC]:
    """The flags of ``entry create`` and ``entry update`` (an update replaces every field)."""

    def apply(command: FC) -> FC:
        decorators = [
            socket_flag(),
            flag(
                "entryID",
                "entry_id",
                required=update,
                help="The entry's ID" + ("." if update else " (generated when absent)."),
            ),
            flag("spiffeID", "spiffe_id", required=True, help="The SPIFFE ID workloads get."),
            flag(
                "parentID",
                "parent_id",
                required=True,
                help="The SPIFFE ID of the agent that may serve the entry.",
            ),
            flag(
                "selector",
                "selectors",
                multiple=True,
                required=True,
                help="A type:value selector, e.g. unix:uid:1000. Repeatable; all must match.",
            ),
            flag(
                "x509SVIDTTL",
                "x509_svid_ttl",
                help="X509-SVID lifetime: 5m, 1h or seconds (default: the server's).",
            ),
            flag(
                "jwtSVIDTTL",
                "jwt_svid_ttl",
                help="JWT-SVID lifetime: 5m, 1h or seconds (default: the server's).",
            ),
            flag("dns", "dns_names", multiple=True, help="A DNS name for the SVID. Repeatable."),
            flag("hint", default="", help="A hint workloads see, to tell identities apart."),
            flag(
                "federatesWith",
                "federates_with",
                multiple=True,
                help="A trust domain whose bundle workloads get. Repeatable.",
            ),
            flag("admin", is_flag=True, help="Mark the entry as an admin identity."),
            flag("downstream", is_flag=True, help="Mark the entry as a downstream server."),
            output_flag(),
        ]
        for decorate in reversed(decorators):
            command = decorate(command)
        return command

    return apply


def filter_flags(command: FC) -> FC:
    for decorate in reversed(
        [
            socket_flag(),
            flag("spiffeID", "spiffe_id", help="Only entries with this SPIFFE ID."),
            flag("parentID", "parent_id", help="Only entries with this parent."),
            flag(
                "selector",
                "selectors",
                multiple=True,
                help="Only entries having this selector. Repeatable; all must be present.",
            ),
            output_flag(),
        ]
    ):
        command = decorate(command)
    return command


@main.group()
def entry() -> None:
    """Create, show, update and delete registration entries (standalone mode)."""


@entry.command("create")
@entry_flags(update=False)
def entry_create(socket_path: Path, output: str, **flags: Any) -> None:
    """Create a registration entry."""
    message = _entry_message(**flags)
    request = admin_pb2.CreateEntryRequest(entry=message)
    created = call(socket_path, lambda stub: stub.CreateEntry(request))
    _print_entry(created, output)


@entry.command("update")
@entry_flags(update=True)
def entry_update(socket_path: Path, output: str, **flags: Any) -> None:
    """Replace every field of an existing entry."""
    message = _entry_message(**flags)
    request = admin_pb2.UpdateEntryRequest(entry=message)
    updated = call(socket_path, lambda stub: stub.UpdateEntry(request))
    _print_entry(updated, output)


def _list_request(
    spiffe_id: str | None, parent_id: str | None, selectors: Sequence[str]
) -> admin_pb2.ListEntriesRequest:
    return admin_pb2.ListEntriesRequest(
        by_spiffe_id=str(_spiffe_id("-spiffeID", spiffe_id)) if spiffe_id else "",
        by_parent_id=str(_spiffe_id("-parentID", parent_id)) if parent_id else "",
        by_selectors=[selector_to_proto(s) for s in _selectors(selectors)],
    )


@entry.command("list")
@filter_flags
def entry_list(
    socket_path: Path,
    spiffe_id: str | None,
    parent_id: str | None,
    selectors: tuple[str, ...],
    output: str,
) -> None:
    """List entries, optionally filtered; filters combine with AND."""
    request = _list_request(spiffe_id, parent_id, selectors)
    response = call(socket_path, lambda stub: stub.ListEntries(request))
    _print_entries(response.entries, output)


@entry.command("show")
@flag("entryID", "entry_id", help="Show only the entry with this ID.")
@filter_flags
def entry_show(
    socket_path: Path,
    entry_id: str | None,
    spiffe_id: str | None,
    parent_id: str | None,
    selectors: tuple[str, ...],
    output: str,
) -> None:
    """Show one entry (-entryID) or the entries matching the filters."""
    if entry_id is None:
        request = _list_request(spiffe_id, parent_id, selectors)
        response = call(socket_path, lambda stub: stub.ListEntries(request))
        _print_entries(response.entries, output)
        return
    if spiffe_id or parent_id or selectors:
        raise click.ClickException(
            "-entryID cannot be combined with -spiffeID, -parentID or -selector"
        )
    found = call(socket_path, lambda stub: stub.GetEntry(admin_pb2.GetEntryRequest(id=entry_id)))
    _print_entries([found], output)


@entry.command("delete")
@socket_flag()
@flag("entryID", "entry_id", required=True, help="The ID of the entry to delete.")
def entry_delete(socket_path: Path, entry_id: str) -> None:
    """Delete an entry."""
    request = admin_pb2.DeleteEntryRequest(id=entry_id)
    call(socket_path, lambda stub: stub.DeleteEntry(request))
    click.echo(f"Deleted entry with ID: {entry_id}")


@main.group()
def token() -> None:
    """Join tokens for standalone node attestation."""


@token.command("generate")
@socket_flag()
@flag(
    "spiffeID",
    "spiffe_id",
    help="An alias for the agent that uses the token; entries may name it as their parent.",
)
@flag("ttl", help="How long the token stays usable: 10m, 1h or seconds (default: the server's).")
@output_flag()
def token_generate(socket_path: Path, spiffe_id: str | None, ttl: str | None, output: str) -> None:
    """Generate a one-time join token for an agent."""
    alias = str(_spiffe_id("-spiffeID", spiffe_id)) if spiffe_id else ""
    request = admin_pb2.CreateJoinTokenRequest(ttl_seconds=_ttl("-ttl", ttl), spiffe_id=alias)
    created = call(socket_path, lambda stub: stub.CreateJoinToken(request))
    if output == "json":
        print_json(
            {
                "value": created.value,
                "agent_id": created.agent_id,
                "alias_id": created.alias_id,
                "expires_at": created.expires_at,
            }
        )
        return
    # Only the token on stdout, as spire-server prints it, so `| awk '{print $2}'` keeps working.
    click.echo(f"Token: {created.value}")
    click.echo(f"Agent ID: {created.agent_id}", err=True)
    if created.alias_id:
        click.echo(f"Alias: {created.alias_id}", err=True)
    click.echo(f"Expires: {timestamp(created.expires_at)}", err=True)


@main.group()
def bundle() -> None:
    """The trust bundle of the server's trust domain."""


@bundle.command("show")
@socket_flag()
@flag(
    "format",
    "bundle_format",
    type=click.Choice(["pem", "spiffe"]),
    default="pem",
    show_default=True,
    help="pem: the X.509 authorities; spiffe: the SPIFFE bundle (JWKS) with the JWT keys too.",
)
def bundle_show(socket_path: Path, bundle_format: str) -> None:
    """Print the trust bundle."""
    response = call(socket_path, lambda stub: stub.GetBundle(admin_pb2.GetBundleRequest()))
    if bundle_format == "spiffe":
        print_json(json.loads(response.spiffe_jwks))
        return
    click.echo(bundle_from_proto(response.bundle).x509_pem().decode(), nl=False)


async def _connects(channel: grpc.aio.Channel) -> None:
    await connect_once(channel, "the admin socket refuses connections")


@main.command()
@socket_flag()
@flag("shallow", is_flag=True, help="Only check that the server accepts connections.")
def healthcheck(socket_path: Path, shallow: bool) -> None:
    """Check once whether the server is healthy; exit 0 if it is, 1 if not."""
    try:
        if shallow:
            _run_on_channel(socket_path, _connects, HEALTHCHECK_TIMEOUT_SECONDS)
        else:
            response = call(
                socket_path,
                lambda stub: stub.GetBundle(admin_pb2.GetBundleRequest()),
                HEALTHCHECK_TIMEOUT_SECONDS,
            )
            if not response.bundle.x509_authorities:
                raise click.ClickException("the trust bundle has no X.509 authority yet")
    except click.ClickException as exc:
        raise click.ClickException(f"server is unhealthy: {exc.message}") from None
    click.echo("Server is healthy.")
