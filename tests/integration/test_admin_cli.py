"""herald-server's admin commands against a real admin socket, SQLite store and CA.

The AdminService runs in the test's event loop on a Unix socket; the commands run through
click's CliRunner in a worker thread (each opens its own grpc.aio channel, as the console script
does) and, at least once, as the installed ``herald-server`` script in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from herald_core.bundle import Bundle
from herald_core.entry import Entry
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_server.admin_api import (
    JOIN_TOKENS_STANDALONE_ONLY,
    AdminService,
    AdminSocketError,
    serve_admin,
)
from herald_server.admin_client import admin_channel
from herald_server.ca import CAManager, CASettings
from herald_server.cli import main
from herald_server.entries import EntryCache, ReadOnlyStoreError
from herald_server.keystore import DirKeyStore
from herald_server.node_attestation import agent_id_for
from herald_server.sqlite_store import SqliteStore

TD = TrustDomain("example.org")
AGENT = "spiffe://example.org/herald/agent/join_token/abc"
WEB = "spiffe://example.org/web"
HERALD_SERVER = Path(sys.executable).parent / "herald-server"


@dataclass
class Admin:
    socket: Path
    store: SqliteStore
    ca: CAManager

    async def cli(self, *args: str) -> Result:
        """Run ``herald-server <args> -socketPath <socket>`` the way a shell would."""
        argv = [*args, "-socketPath", str(self.socket)]
        return await asyncio.to_thread(CliRunner().invoke, main, argv)

    def stored(self) -> list[Entry]:
        return list(self.store.cache)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path is limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="herald-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def ca(tmp_path: Path) -> CAManager:
    manager = CAManager(CASettings(trust_domain=TD), DirKeyStore(tmp_path / "ca"))
    await manager.start()
    return manager


@pytest.fixture
async def admin(tmp_path: Path, short_dir: Path, ca: CAManager) -> AsyncIterator[Admin]:
    store = SqliteStore(tmp_path / "herald.db")
    await store.start()
    service = AdminService(
        entries=store,
        tokens=store,
        ca=ca,
        trust_domain=TD,
        join_token_ttl=timedelta(minutes=10),
    )
    sock = short_dir / "run" / "admin.sock"
    server = await serve_admin(sock, service)
    yield Admin(sock, store, ca)
    await server.stop(None)
    await store.stop()


def field(output: str, label: str) -> list[str]:
    """The values of every ``Label : value`` row with this label."""
    return re.findall(rf"^{re.escape(label)}\s+: (.*)$", output, re.MULTILINE)


def fails(result: Result, message: str) -> None:
    """The command failed with exit code 1 and exactly this error, without a traceback."""
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: {message}", result.output
    assert "Traceback" not in result.output


async def create_web(admin: Admin, *extra: str) -> str:
    result = await admin.cli(
        "entry",
        "create",
        "-spiffeID",
        WEB,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1000",
        *extra,
    )
    assert result.exit_code == 0, result.output
    [entry_id] = field(result.output, "Entry ID")
    return entry_id


# ---------------------------------------------------------------- the socket


async def test_socket_is_0600_in_a_new_0700_directory(admin: Admin) -> None:
    assert stat.S_ISSOCK(admin.socket.lstat().st_mode)
    assert stat.S_IMODE(admin.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(admin.socket.parent.stat().st_mode) == 0o700


async def test_a_stale_socket_is_replaced(short_dir: Path, ca: CAManager, tmp_path: Path) -> None:
    path = short_dir / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a crashed server leaves behind
    store = SqliteStore(tmp_path / "db")
    await store.start()
    service = AdminService(
        entries=store, tokens=store, ca=ca, trust_domain=TD, join_token_ttl=timedelta(minutes=1)
    )
    server = await serve_admin(path, service)
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["healthcheck", "-socketPath", str(path)]
        )
        assert result.output == "Server is healthy.\n"
    finally:
        await server.stop(None)
        await store.stop()


async def test_refuses_a_path_that_is_not_a_socket(short_dir: Path, admin: Admin) -> None:
    path = short_dir / "admin.sock"
    path.write_text("precious")
    with pytest.raises(
        AdminSocketError, match=rf"^admin socket path {path} exists and is not a socket"
    ):
        await serve_admin(
            path,
            AdminService(
                entries=admin.store,
                tokens=None,
                ca=admin.ca,
                trust_domain=TD,
                join_token_ttl=timedelta(minutes=1),
            ),
        )
    assert path.read_text() == "precious"


async def test_refuses_a_socket_another_server_is_serving(admin: Admin) -> None:
    with pytest.raises(AdminSocketError, match="is in use: another herald-server is serving it"):
        await serve_admin(
            admin.socket,
            AdminService(
                entries=admin.store,
                tokens=None,
                ca=admin.ca,
                trust_domain=TD,
                join_token_ttl=timedelta(minutes=1),
            ),
        )
    assert (await admin.cli("healthcheck")).exit_code == 0


# ---------------------------------------------------------------- entries


async def test_entry_lifecycle(admin: Admin) -> None:
    entry_id = await create_web(admin, "-x509SVIDTTL", "5m")
    [stored] = admin.stored()
    assert stored.id == entry_id
    assert stored.x509_svid_ttl == 300
    assert stored.selectors == parse_selectors(["unix:uid:1000"])

    listed = await admin.cli("entry", "list")
    assert listed.exit_code == 0
    assert listed.output.startswith("Found 1 entry\n")
    assert field(listed.output, "Entry ID") == [entry_id]
    assert field(listed.output, "SPIFFE ID") == [WEB]
    assert field(listed.output, "Parent ID") == [AGENT]
    assert field(listed.output, "X509-SVID TTL") == ["300"]
    assert field(listed.output, "JWT-SVID TTL") == ["default"]
    assert field(listed.output, "Selector") == ["unix:uid:1000"]

    updated = await admin.cli(
        "entry",
        "update",
        "-entryID",
        entry_id,
        "-spiffeID",
        WEB,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1001",
        "-selector",
        "unix:gid:50",
        "-jwtSVIDTTL",
        "90",
    )
    assert updated.exit_code == 0, updated.output
    assert field(updated.output, "Selector") == ["unix:gid:50", "unix:uid:1001"]
    assert field(updated.output, "X509-SVID TTL") == ["default"]
    assert field(updated.output, "JWT-SVID TTL") == ["90"]

    shown = await admin.cli("entry", "show", "-entryID", entry_id)
    assert shown.exit_code == 0
    assert shown.output.startswith("Found 1 entry\n")
    assert int(field(shown.output, "Revision")[0]) > int(field(listed.output, "Revision")[0])
    assert field(shown.output, "Selector") == ["unix:gid:50", "unix:uid:1001"]

    deleted = await admin.cli("entry", "delete", "-entryID", entry_id)
    assert deleted.output == f"Deleted entry with ID: {entry_id}\n"
    assert admin.stored() == []
    assert (await admin.cli("entry", "list")).output == "Found 0 entries\n"


async def test_create_with_every_flag_as_json(admin: Admin) -> None:
    result = await admin.cli(
        "entry",
        "create",
        "-entryID",
        "web-1",
        "-spiffeID",
        WEB,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1000",
        "-selector",
        "unix:user:web",
        "-x509SVIDTTL",
        "1h",
        "-jwtSVIDTTL",
        "5m",
        "-dns",
        "web.example.org",
        "-dns",
        "web",
        "-hint",
        "external",
        "-federatesWith",
        "spiffe://partner.org",
        "-admin",
        "-downstream",
        "-output",
        "json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["id"] == "web-1"
    assert (doc["spiffe_id"], doc["parent_id"]) == (WEB, AGENT)
    assert doc["selectors"] == [
        {"type": "unix", "value": "uid:1000"},
        {"type": "unix", "value": "user:web"},
    ]
    assert (doc["x509_svid_ttl"], doc["jwt_svid_ttl"]) == (3600, 300)
    assert doc["dns_names"] == ["web.example.org", "web"]
    assert doc["federates_with"] == ["partner.org"]
    assert (doc["hint"], doc["admin"], doc["downstream"]) == ("external", True, True)
    assert doc["created_at"] > 0
    [stored] = admin.stored()
    assert stored.federates_with == (TrustDomain("partner.org"),)
    assert stored.admin and stored.downstream

    pretty = await admin.cli("entry", "show", "-entryID", "web-1")
    assert field(pretty.output, "DNS name") == ["web.example.org", "web"]
    assert field(pretty.output, "FederatesWith") == ["partner.org"]
    assert field(pretty.output, "Admin") == ["true"]
    assert field(pretty.output, "Downstream") == ["true"]
    assert field(pretty.output, "Hint") == ["external"]
    [created] = field(pretty.output, "Created At")
    assert created.endswith(" +0000 UTC")


async def test_double_dash_spelling_works_too(admin: Admin) -> None:
    result = await admin.cli(
        "entry", "create", "--spiffeID", WEB, "--parentID=" + AGENT, "--selector", "unix:uid:7"
    )
    assert result.exit_code == 0, result.output
    assert [str(e.spiffe_id) for e in admin.stored()] == [WEB]


async def test_list_filters_combine(admin: Admin) -> None:
    other_agent = "spiffe://example.org/herald/agent/join_token/def"
    for spiffe_id, parent, selectors in [
        (WEB, AGENT, ["unix:uid:1000", "unix:gid:10"]),
        (WEB, other_agent, ["unix:uid:1000"]),
        ("spiffe://example.org/db", AGENT, ["unix:uid:2000", "unix:gid:10"]),
    ]:
        flags = [arg for s in selectors for arg in ("-selector", s)]
        result = await admin.cli(
            "entry", "create", "-spiffeID", spiffe_id, "-parentID", parent, *flags
        )
        assert result.exit_code == 0, result.output

    async def spiffe_ids(*filters: str) -> list[str]:
        result = await admin.cli("entry", "list", "-output", "json", *filters)
        assert result.exit_code == 0, result.output
        return sorted(e["spiffe_id"] for e in json.loads(result.output)["entries"])

    assert len(await spiffe_ids()) == 3
    assert await spiffe_ids("-spiffeID", WEB) == [WEB, WEB]
    assert await spiffe_ids("-parentID", other_agent) == [WEB]
    assert await spiffe_ids("-selector", "unix:gid:10") == ["spiffe://example.org/db", WEB]
    assert await spiffe_ids("-selector", "unix:gid:10", "-selector", "unix:uid:1000") == [WEB]
    assert await spiffe_ids("-spiffeID", WEB, "-parentID", AGENT) == [WEB]
    assert await spiffe_ids("-spiffeID", "spiffe://example.org/none") == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["-spiffeID", "http://example.org/web"],
            "-spiffeID: scheme must be 'spiffe://': 'http://example.o'",
        ),
        (
            ["-spiffeID", "spiffe://example.org/a//b"],
            "-spiffeID: path cannot contain empty segments ('//')",
        ),
        (
            ["-parentID", "spiffe://Exa mple.org/x"],
            "-parentID: trust domain characters are limited to lowercase letters, digits, '.', "
            "'-' and '_'; found ' ' at position 3",
        ),
        (
            ["-spiffeID", "spiffe://EXAMPLE.org/web"],
            "-spiffeID: trust domain must be lowercase; found 'E' at position 0 "
            "(write 'example.org')",
        ),
        (["-parentID", "SPIFFE://example.org/x"], "-parentID: scheme must be lowercase"),
        (["-federatesWith", "Partner.org"], "-federatesWith: trust domain must be lowercase"),
        (["-selector", "unix"], "-selector: selector 'unix' must have the form 'type:value'"),
        (
            ["-selector", "k8s:namespace:x"],
            "-selector: unknown k8s selector key 'namespace' in 'k8s:namespace:x'; known keys: ",
        ),
        (
            ["-x509SVIDTTL", "0"],
            "-x509SVIDTTL: must be positive, got '0'; leave the flag out for the server's default",
        ),
        (["-x509SVIDTTL", "0s"], "-x509SVIDTTL: must be positive, got '0s'"),
        (["-jwtSVIDTTL", "-5s"], "-jwtSVIDTTL: must be positive, got '-5s'"),
        (["-jwtSVIDTTL", "-30"], "-jwtSVIDTTL: must be positive, got '-30'"),
        (
            ["-x509SVIDTTL", "99999999999999999999"],
            "-x509SVIDTTL: duration '99999999999999999999' is longer than 3650d",
        ),
        (
            ["-jwtSVIDTTL", "99999999999999999999s"],
            "-jwtSVIDTTL: duration '99999999999999999999s' is longer than 3650d",
        ),
        (
            ["-jwtSVIDTTL", "soon"],
            "-jwtSVIDTTL: cannot read duration 'soon'; write e.g. '30s', '5m', '1h30m', '500ms' "
            "or '3600'",
        ),
        (
            ["-x509SVIDTTL", "1.5s"],
            "-x509SVIDTTL: must be a whole number of seconds from 1s to 366d, got '1.5s'",
        ),
        (["-dns", "Web_1"], "dnsNames: 'Web_1' is not a valid DNS name"),
        (["-federatesWith", "partner org"], "-federatesWith: trust domain characters"),
        (
            ["-federatesWith", "example.org"],
            "federatesWith: an entry cannot federate with its own trust domain",
        ),
        (["-entryID", "a b"], "id: 'a b' contains characters ' '"),
        (
            ["-spiffeID", "spiffe://other.org/web"],
            "spiffeID: spiffe://other.org/web is not in the parent's trust domain example.org",
        ),
    ],
)
async def test_bad_flags_are_refused_before_sending(
    admin: Admin, flags: list[str], message: str
) -> None:
    # The flags of a good entry, with the test's flags replacing or adding to them.
    base = {"-spiffeID": WEB, "-parentID": AGENT, "-selector": "unix:uid:1000"}
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        base[name] = value
    args = [arg for pair in base.items() for arg in pair]
    result = await admin.cli("entry", "create", *args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {message}"), result.output
    assert "Traceback" not in result.output
    assert admin.stored() == []


async def test_reserved_spiffe_ids_are_refused_by_the_server(admin: Admin) -> None:
    reserved = "spiffe://example.org/herald/agent/join_token/forged"
    result = await admin.cli(
        "entry", "create", "-spiffeID", reserved, "-parentID", AGENT, "-selector", "unix:uid:1"
    )
    fails(result, f"spiffeID: {reserved} is reserved for herald's own agents and servers")
    assert admin.stored() == []


async def test_parent_outside_the_trust_domain_is_refused_by_the_server(admin: Admin) -> None:
    result = await admin.cli(
        "entry",
        "create",
        "-spiffeID",
        "spiffe://other.org/web",
        "-parentID",
        "spiffe://other.org/agent",
        "-selector",
        "unix:uid:1",
    )
    fails(
        result,
        "parentID: spiffe://other.org/agent is not in the server's trust domain example.org",
    )
    assert admin.stored() == []


async def test_missing_flags_and_unknown_flags(admin: Admin) -> None:
    missing = await admin.cli("entry", "create", "-spiffeID", WEB, "-parentID", AGENT)
    assert missing.exit_code == 2
    assert "Missing option '-selector'" in missing.output
    typo = await admin.cli("entry", "create", "-spiffeId", WEB)
    assert typo.exit_code == 2
    assert "No such option '-spiffeId'. Did you mean '-spiffeID'?" in typo.output
    assert admin.stored() == []


async def test_unknown_entry(admin: Admin) -> None:
    await create_web(admin)
    for args in (
        ["entry", "show", "-entryID", "nope"],
        ["entry", "delete", "-entryID", "nope"],
        [
            "entry",
            "update",
            "-entryID",
            "nope",
            "-spiffeID",
            WEB,
            "-parentID",
            AGENT,
            "-selector",
            "unix:uid:1",
        ],
    ):
        result = await admin.cli(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: "), result.output
        assert "nope" in result.output
    assert len(admin.stored()) == 1


async def test_duplicate_entry_is_refused(admin: Admin) -> None:
    entry_id = await create_web(admin)
    again = await admin.cli(
        "entry",
        "create",
        "-entryID",
        entry_id,
        "-spiffeID",
        "spiffe://example.org/x",
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:5",
    )
    assert again.exit_code == 1
    assert again.output.startswith("Error: ")
    assert entry_id in again.output
    assert [e.id for e in admin.stored()] == [entry_id]


async def test_show_by_id_cannot_be_combined_with_filters(admin: Admin) -> None:
    result = await admin.cli("entry", "show", "-entryID", "x", "-spiffeID", WEB)
    fails(result, "-entryID cannot be combined with -spiffeID, -parentID or -selector")


# ---------------------------------------------------------------- join tokens


async def test_token_generate(admin: Admin) -> None:
    before = datetime.now(UTC)
    result = await admin.cli("token", "generate", "-ttl", "1h")
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    value = line.removeprefix("Token: ")
    assert value and value != line
    [agent_line] = [ln for ln in result.stderr.splitlines() if ln.startswith("Agent ID: ")]
    record = await admin.store.consume_token(value)
    assert agent_line == f"Agent ID: {agent_id_for(TD, 'join_token', record.token_id)}"
    assert (
        before + timedelta(minutes=59)
        < record.expires_at
        <= datetime.now(UTC) + timedelta(hours=1, seconds=1)
    )
    assert record.alias is None


async def test_token_with_alias_as_json(admin: Admin) -> None:
    alias = "spiffe://example.org/hosts/db-1"
    result = await admin.cli("token", "generate", "-spiffeID", alias, "-output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["alias_id"] == alias
    record = await admin.store.consume_token(doc["value"])
    assert record.alias == SpiffeId.parse(alias)
    assert doc["agent_id"] == str(agent_id_for(TD, "join_token", record.token_id))
    remaining = datetime.fromtimestamp(doc["expires_at"], UTC) - datetime.now(UTC)
    assert timedelta(minutes=9) < remaining <= timedelta(minutes=10)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["-ttl", "0"],
            "-ttl: must be positive, got '0'; leave the flag out for the server's default",
        ),
        (["-ttl", "-1m"], "-ttl: must be positive, got '-1m'"),
        (["-ttl", "99999999999999999999"], "-ttl: duration '99999999999999999999' is longer"),
        (["-spiffeID", "example.org/x"], "-spiffeID: scheme must be 'spiffe://'"),
        (
            ["-spiffeID", "spiffe://other.org/host"],
            "spiffeID: spiffe://other.org/host is not in the server's trust domain example.org",
        ),
        (
            ["-spiffeID", "spiffe://example.org/herald/agent/k8s_psat/c/n"],
            "spiffeID: spiffe://example.org/herald/agent/k8s_psat/c/n is under "
            "spiffe://example.org/herald/, which is reserved for herald's own agents and server",
        ),
        (
            ["-spiffeID", "spiffe://example.org"],
            "spiffeID: spiffe://example.org has no path; an agent alias needs one",
        ),
    ],
)
async def test_bad_token_requests(admin: Admin, flags: list[str], message: str) -> None:
    result = await admin.cli("token", "generate", *flags)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {message}"), result.output


# ---------------------------------------------------------------- bundle and health


async def test_bundle_show_pem(admin: Admin) -> None:
    result = await admin.cli("bundle", "show")
    assert result.exit_code == 0, result.output
    certs = x509.load_pem_x509_certificates(result.output.encode())
    assert tuple(certs) == admin.ca.bundle().x509_authorities
    assert len(certs) >= 1


async def test_bundle_show_spiffe(admin: Admin) -> None:
    result = await admin.cli("bundle", "show", "-format", "spiffe")
    assert result.exit_code == 0, result.output
    parsed = Bundle.from_spiffe_jwks(TD, result.output)
    expected = admin.ca.bundle()
    assert parsed.x509_authorities == expected.x509_authorities
    assert dict(parsed.jwt_authorities) == dict(expected.jwt_authorities)
    assert parsed.sequence_number == expected.sequence_number
    assert parsed.jwt_authorities


async def test_healthcheck(admin: Admin) -> None:
    for flags in ([], ["-shallow"]):
        result = await admin.cli("healthcheck", *flags)
        assert (result.exit_code, result.output) == (0, "Server is healthy.\n")


def test_healthcheck_without_a_server(short_dir: Path) -> None:
    path = short_dir / "admin.sock"
    result = CliRunner().invoke(main, ["healthcheck", "-socketPath", str(path)])
    fails(
        result,
        f"server is unhealthy: no admin socket at {path}: is herald-server running? "
        "(point -socketPath at its admin_socket)",
    )
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    result = CliRunner().invoke(main, ["healthcheck", "-shallow", "-socketPath", str(path)])
    fails(result, "server is unhealthy: the admin socket refuses connections")
    result = CliRunner().invoke(main, ["healthcheck", "-socketPath", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: server is unhealthy: cannot reach herald-server at {path}: "
    )


# ---------------------------------------------------------------- the API's status codes


async def rpc_error(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


def good_entry(**change: object) -> types_pb2.Entry:
    message = types_pb2.Entry(
        spiffe_id=WEB,
        parent_id=AGENT,
        selectors=[types_pb2.Selector(type="unix", value="uid:1000")],
    )
    for name, value in change.items():
        setattr(message, name, value)
    return message


async def test_api_status_codes(admin: Admin) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    async with admin_channel(admin.socket) as channel:
        stub = admin_pb2_grpc.AdminAPIStub(channel)
        create = stub.CreateEntry
        assert await rpc_error(
            create(admin_pb2.CreateEntryRequest(entry=good_entry(spiffe_id="web")))
        ) == (invalid, "spiffeID: scheme must be 'spiffe://': 'web'")
        no_selectors = types_pb2.Entry(spiffe_id=WEB, parent_id=AGENT)
        assert await rpc_error(create(admin_pb2.CreateEntryRequest(entry=no_selectors))) == (
            invalid,
            "selectors: at least one selector is required",
        )
        assert await rpc_error(
            create(admin_pb2.CreateEntryRequest(entry=good_entry(x509_svid_ttl=-1)))
        ) == (invalid, "x509SVIDTTL: must be between 0 (default) and 31622400 seconds")

        # Revision and creation time are the server's, whatever the client sends.
        created = await create(
            admin_pb2.CreateEntryRequest(entry=good_entry(revision=99, created_at=5))
        )
        assert created.id
        assert created.revision == 1
        assert created.created_at > 5
        assert await rpc_error(
            create(admin_pb2.CreateEntryRequest(entry=good_entry(id="second")))
        ) == (
            grpc.StatusCode.ALREADY_EXISTS,
            f"entry {created.id} already has spiffeID {WEB}, parentID {AGENT} and the same "
            "selectors",
        )
        assert await rpc_error(
            stub.UpdateEntry(admin_pb2.UpdateEntryRequest(entry=good_entry()))
        ) == (invalid, "id: required to update")
        assert await rpc_error(
            stub.UpdateEntry(admin_pb2.UpdateEntryRequest(entry=good_entry(id="gone")))
        ) == (grpc.StatusCode.NOT_FOUND, "no entry with id gone")
        assert await rpc_error(stub.GetEntry(admin_pb2.GetEntryRequest(id="gone"))) == (
            grpc.StatusCode.NOT_FOUND,
            "no entry with id gone",
        )
        assert await rpc_error(stub.DeleteEntry(admin_pb2.DeleteEntryRequest())) == (
            invalid,
            "id: required",
        )
        bad_filter = admin_pb2.ListEntriesRequest(
            by_selectors=[types_pb2.Selector(type="k8s", value="namespace:x")]
        )
        code, details = await rpc_error(stub.ListEntries(bad_filter))
        assert (code, details.split(";")[0]) == (
            invalid,
            "by_selectors: unknown k8s selector key 'namespace' in 'k8s:namespace:x'",
        )
        assert await rpc_error(
            stub.ListEntries(admin_pb2.ListEntriesRequest(by_parent_id="agent"))
        ) == (invalid, "by_parent_id: scheme must be 'spiffe://': 'agent'")
        assert await rpc_error(
            stub.CreateJoinToken(admin_pb2.CreateJoinTokenRequest(ttl_seconds=-1))
        ) == (
            invalid,
            "ttl_seconds: must be between 1 and 31622400 (0: the server default), got -1",
        )
    assert [e.id for e in admin.stored()] == [created.id]


async def test_bundle_before_the_ca_started(short_dir: Path, tmp_path: Path) -> None:
    idle = CAManager(CASettings(trust_domain=TD), DirKeyStore(tmp_path / "ca"))
    store = CustomResourceStore()
    service = AdminService(
        entries=store, tokens=None, ca=idle, trust_domain=TD, join_token_ttl=timedelta(minutes=1)
    )
    server = await serve_admin(short_dir / "admin.sock", service)
    try:
        async with admin_channel(short_dir / "admin.sock") as channel:
            stub = admin_pb2_grpc.AdminAPIStub(channel)
            assert await rpc_error(stub.GetBundle(admin_pb2.GetBundleRequest())) == (
                grpc.StatusCode.UNAVAILABLE,
                "no trust bundle yet: the CA manager is not started",
            )
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["healthcheck", "-socketPath", str(short_dir / "admin.sock")]
        )
        fails(result, "server is unhealthy: no trust bundle yet: the CA manager is not started")
    finally:
        await server.stop(None)


# ---------------------------------------------------------------- Kubernetes mode


class CustomResourceStore:
    """An EntryStore whose entries come from elsewhere, as the Kubernetes store's do."""

    writable = False
    message = "entries come from the herald.dev custom resources; use kubectl"

    def __init__(self) -> None:
        self.cache = EntryCache()

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, entry: Entry) -> Entry:
        raise ReadOnlyStoreError(self.message)

    async def update(self, entry: Entry) -> Entry:
        raise ReadOnlyStoreError(self.message)

    async def delete(self, entry_id: str) -> Entry:
        raise ReadOnlyStoreError(self.message)


async def test_kubernetes_mode_is_read_only(short_dir: Path, ca: CAManager) -> None:
    store = CustomResourceStore()
    store.cache.put(
        Entry(
            id="pod-1",
            spiffe_id=SpiffeId.parse(WEB),
            parent_id=SpiffeId.parse("spiffe://example.org/herald/agent/k8s_psat/c/node-1"),
            selectors=parse_selectors(["k8s:ns:shop"]),
        )
    )
    service = AdminService(
        entries=store, tokens=None, ca=ca, trust_domain=TD, join_token_ttl=timedelta(minutes=1)
    )
    path = short_dir / "admin.sock"
    server = await serve_admin(path, service)

    async def cli(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, [*args, "-socketPath", str(path)])

    try:
        created = await cli(
            "entry", "create", "-spiffeID", WEB, "-parentID", AGENT, "-selector", "unix:uid:1"
        )
        fails(created, CustomResourceStore.message)
        fails(await cli("entry", "delete", "-entryID", "pod-1"), CustomResourceStore.message)
        fails(await cli("token", "generate"), JOIN_TOKENS_STANDALONE_ONLY)
        listed = await cli("entry", "list")
        assert field(listed.output, "Entry ID") == ["pod-1"]
    finally:
        await server.stop(None)


# ---------------------------------------------------------------- the console script


async def run_script(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(HERALD_SERVER),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_console_script(admin: Admin) -> None:
    sock = ["-socketPath", str(admin.socket)]
    code, out, err = await run_script(
        "entry",
        "create",
        "-spiffeID",
        WEB,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1000",
        *sock,
    )
    assert (code, err) == (0, ""), err
    [entry_id] = field(out, "Entry ID")
    code, out, _ = await run_script("entry", "show", "-spiffeID", WEB, *sock)
    assert code == 0
    assert field(out, "Entry ID") == [entry_id]

    code, out, err = await run_script(
        "entry",
        "create",
        "-spiffeID",
        WEB,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1000",
        "-x509SVIDTTL",
        "0",
        *sock,
    )
    assert (code, out) == (1, "")
    assert err == (
        "Error: -x509SVIDTTL: must be positive, got '0'; leave the flag out for the server's "
        "default\n"
    )
    code, out, err = await run_script("healthcheck", *sock)
    assert (code, out, err) == (0, "Server is healthy.\n", "")
    assert len(admin.stored()) == 1


def test_run_reports_a_bad_config_without_starting(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("trust_domain: example.org\nca:\n  ttl: soon\n")
    result = CliRunner().invoke(main, ["run", "-config", str(config)])
    fails(
        result,
        "ca.ttl: cannot read duration 'soon'; write e.g. '30s', '5m', '1h30m', '500ms' or '3600'",
    )
    result = CliRunner().invoke(main, ["run", "-trustDomain", "example.org", "-logLevel", "loud"])
    fails(result, "log_level: 'loud' is not one of 'debug', 'info', 'warn', 'warning', 'error'")


def blocked_config(tmp_path: Path, blocker: Path) -> Path:
    """A server config whose admin socket path is taken by a regular file."""
    blocker.write_text("not a socket")
    config = tmp_path / "server.yaml"
    config.write_text(
        f"trust_domain: example.org\n"
        f"data_dir: {tmp_path / 'data'}\n"
        f"admin_socket: {blocker}\n"
        "attestation_address: 127.0.0.1:0\n"
        "agent_address: 127.0.0.1:0\n"
        "health_address: 127.0.0.1:0\n"
    )
    return config


async def run_with_blocked_admin_socket(tmp_path: Path, blocker: Path) -> tuple[int, str, str]:
    config = blocked_config(tmp_path, blocker)
    return await asyncio.wait_for(run_script("run", "-config", str(config)), 60)


async def test_run_reports_a_blocked_admin_socket(tmp_path: Path, short_dir: Path) -> None:
    blocker = short_dir / "admin.sock"
    code, out, err = await run_with_blocked_admin_socket(tmp_path, blocker)
    assert (code, out) == (1, "")
    assert (
        f"Error: admin socket path {blocker} exists and is not a socket; refusing to replace it"
        in err.splitlines()
    ), err
    assert blocker.read_text() == "not a socket"


async def test_run_fails_cleanly_when_startup_fails(tmp_path: Path, short_dir: Path) -> None:
    blocker = short_dir / "admin.sock"
    _, _, err = await run_with_blocked_admin_socket(tmp_path, blocker)
    assert err.endswith(
        f"Error: admin socket path {blocker} exists and is not a socket; refusing to replace it\n"
    ), err
    assert "Traceback" not in err


def test_the_client_commands_load_without_the_server() -> None:
    # `entry create` in a script or an exec probe's `healthcheck` must not pay for the server.
    probe = (
        "import sys, herald_server.cli; "
        "print(sorted(m for m in ('aiohttp', 'kubernetes', 'herald_server.server', "
        "'herald_server.ca', 'herald_server.admin_api', 'herald_server.config') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
