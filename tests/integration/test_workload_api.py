"""The Workload API servicer end to end: a real herald-server, a real SvidManager attested to it,
the kernel-identifying WorkloadEndpoint with the unix attestor, and the real py-spiffe client.

py-spiffe runs in subprocesses only (its proto module and herald's cannot share a process; see
tests/pyspiffe_runner.py). Raw checks use herald's own stub in this process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from herald_agent import workload_api
from herald_agent.attestors import AttestationError
from herald_agent.rotation import Backoff
from herald_agent.workload_api import (
    AUDIENCE_REQUIRED,
    HEADER_MISSING,
    NO_IDENTITY,
    SVID_REQUIRED,
    WIT_UNIMPLEMENTED,
)
from herald_core.bundle import Bundle
from herald_core.jwtsvid import mint_jwt_svid
from herald_core.keys import PrivateKey, generate_key
from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc
from herald_core.selector import Selector, parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import make_ca_certificate, parse_der_chain, verify_chain
from tests.agent_harness import MY_UID, Agent, running_agent, socket_directory, wait_for
from tests.server_harness import (
    TRUST_DOMAIN,
    free_port,
    utcnow,
)

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
SETPRIV_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
HEADER = (("workload.spiffe.io", "true"),)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with socket_directory() as path:
        yield path


@pytest.fixture
async def agent(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path, socket_dir) as running:
        yield running


def stub(channel: grpc.aio.Channel) -> Any:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


async def _drain(call: Any) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a unary call (a coroutine) or a stream (its first message) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _drain(call)
    return raised.value


X509_SCRIPT = """
import json
from spiffe import WorkloadApiClient, TrustDomain
from cryptography.hazmat.primitives.serialization import Encoding
with WorkloadApiClient(default_timeout=10) as client:
    svid = client.fetch_x509_svid()
    ctx = client.fetch_x509_context()
    bundles = client.fetch_x509_bundles()
    td = TrustDomain("example.org")
    print(json.dumps({
        "spiffe_id": str(svid.spiffe_id),
        "chain": [c.public_bytes(Encoding.DER).hex() for c in svid.cert_chain],
        "context_ids": [str(s.spiffe_id) for s in ctx.x509_svids],
        "context_default": str(ctx.default_svid.spiffe_id),
        "context_roots": len(ctx.x509_bundle_set.get_bundle_for_trust_domain(td).x509_authorities),
        "bundle_tds": sorted(str(b.trust_domain) for b in bundles._bundles.values()),
        "bundle_roots": len(bundles.get_bundle_for_trust_domain(td).x509_authorities),
    }))
"""


async def test_pyspiffe_fetches_x509_svids_context_and_bundles(agent: Agent) -> None:
    await agent.entry("/web", hint="web")
    await agent.entry("/api")
    await agent.entry("/other", selector="unix:uid:4242")
    result = await agent.pyspiffe(X509_SCRIPT)
    web = f"spiffe://{TRUST_DOMAIN}/web"
    api = f"spiffe://{TRUST_DOMAIN}/api"
    # Sorted by entry ID: "api" < "web", so the default SVID is /api.
    assert result["spiffe_id"] == api
    assert result["context_ids"] == [api, web]
    assert result["context_default"] == api
    chain = [c for der in result["chain"] for c in parse_der_chain(bytes.fromhex(der))]
    assert agent.manager.bundle is not None
    roots = agent.manager.bundle.x509_authorities
    assert verify_chain(chain, roots, now=utcnow()) == SpiffeId.parse(api)
    assert result["context_roots"] == len(roots) == result["bundle_roots"]
    assert result["bundle_tds"] == [TRUST_DOMAIN]


JWT_SCRIPT = """
import json
from spiffe import WorkloadApiClient, JwtSvid, TrustDomain
with WorkloadApiClient(default_timeout=10) as client:
    jwt = client.fetch_jwt_svid(audience={"a", "b"})
    again = client.fetch_jwt_svid(audience={"b", "a"})
    bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain("example.org"))
    local = JwtSvid.parse_and_validate(jwt.token, bundle, {"a", "b"})
    remote = client.validate_jwt_svid(jwt.token, "a")
    print(json.dumps({
        "spiffe_id": str(jwt.spiffe_id),
        "audience": sorted(jwt.audience),
        "cached": again.token == jwt.token,
        "local": str(local.spiffe_id),
        "remote": str(remote.spiffe_id),
    }))
"""


async def test_pyspiffe_jwt_svid_bundles_and_validation(agent: Agent) -> None:
    await agent.entry("/web")
    result = await agent.pyspiffe(JWT_SCRIPT)
    web = f"spiffe://{TRUST_DOMAIN}/web"
    assert result == {
        "spiffe_id": web,
        "audience": ["a", "b"],
        "cached": True,
        "local": web,
        "remote": web,
    }


async def test_validate_returns_the_spiffe_id_and_claims(agent: Agent) -> None:
    await agent.entry("/web")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        fetched = await api.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=10
        )
        (svid,) = fetched.svids
        checked = await api.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="x", svid=svid.svid),
            metadata=HEADER,
            timeout=10,
        )
    assert checked.spiffe_id == svid.spiffe_id == f"spiffe://{TRUST_DOMAIN}/web"
    claims = json_format.MessageToDict(checked.claims)
    assert claims["sub"] == checked.spiffe_id
    assert claims["aud"] == ["x"]
    assert isinstance(claims["exp"], float)


async def test_the_security_header_is_checked_before_anything_else(agent: Agent) -> None:
    # No entry at all: a missing header must still be INVALID_ARGUMENT, not PERMISSION_DENIED.
    bad_headers: list[tuple[tuple[str, str], ...]] = [
        (),
        (("workload.spiffe.io", "True"),),
        (("workload.spiffe.io", "true"), ("workload.spiffe.io", "true")),
    ]
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        for metadata in bad_headers:
            calls = [
                api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata, timeout=10),
                api.FetchX509Bundles(
                    workload_pb2.X509BundlesRequest(), metadata=metadata, timeout=10
                ),
                api.FetchJWTBundles(
                    workload_pb2.JWTBundlesRequest(), metadata=metadata, timeout=10
                ),
                api.FetchJWTSVID(workload_pb2.JWTSVIDRequest(), metadata=metadata, timeout=10),
                api.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(), metadata=metadata, timeout=10
                ),
                api.FetchWITSVID(workload_pb2.WITSVIDRequest(), metadata=metadata, timeout=10),
            ]
            for call in calls:
                error = await rpc_error(call)
                assert (error.code(), error.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    HEADER_MISSING,
                ), metadata
    counted = agent.service.metrics.calls
    await wait_for(lambda: counted[("FetchX509SVID", "INVALID_ARGUMENT")] == len(bad_headers))
    await wait_for(lambda: counted[("ValidateJWTSVID", "INVALID_ARGUMENT")] == len(bad_headers))


MISSING_HEADER_SCRIPT = """
import grpc, json, sys
from spiffe._proto import workload_pb2, workload_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    api = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        next(api.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10))
    except grpc.RpcError as exc:
        print(json.dumps({"code": exc.code().name, "details": exc.details()}))
"""


async def test_a_raw_client_without_the_header_gets_invalid_argument(agent: Agent) -> None:
    await agent.entry("/web")
    result = await agent.pyspiffe(MISSING_HEADER_SCRIPT, agent.target)
    assert result == {"code": "INVALID_ARGUMENT", "details": HEADER_MISSING}


async def test_no_entry_is_permission_denied_on_every_identity_rpc(agent: Agent) -> None:
    await agent.entry("/other", selector="unix:uid:4242")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        calls = [
            api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10),
            api.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=10),
            api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=10),
            api.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10
            ),
        ]
        for call in calls:
            error = await rpc_error(call)
            assert (error.code(), error.details()) == (
                grpc.StatusCode.PERMISSION_DENIED,
                NO_IDENTITY,
            )


async def test_bad_jwt_inputs_are_invalid_argument(agent: Agent) -> None:
    await agent.entry("/web")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)

        async def fetch(**fields: Any) -> grpc.aio.AioRpcError:
            return await rpc_error(
                api.FetchJWTSVID(workload_pb2.JWTSVIDRequest(**fields), metadata=HEADER, timeout=10)
            )

        async def validate(**fields: Any) -> grpc.aio.AioRpcError:
            request = workload_pb2.ValidateJWTSVIDRequest(**fields)
            return await rpc_error(api.ValidateJWTSVID(request, metadata=HEADER, timeout=10))

        for error in [await fetch(), await fetch(audience=["", " "])]:
            assert (error.code(), error.details()) == (invalid, AUDIENCE_REQUIRED)
        # Bounded before anything is signed: a 3.9 MB audience used to be signed, then stuck.
        error = await fetch(audience=["x" * 3_900_000])
        assert (error.code(), error.details()) == (
            invalid,
            f"audience '{'x' * 76}... is 3900000 bytes long; at most 1024 are allowed",
        )
        error = await fetch(audience=[f"aud{i}" for i in range(33)])
        assert (error.code(), error.details()) == (
            invalid,
            "33 audiences requested; at most 32 are allowed",
        )
        assert agent.manager.counters.jwt_minted == 0
        error = await validate(audience="x" * 1025, svid="x.y.z")
        assert error.code() == invalid
        assert "is 1025 bytes long; at most 1024" in (error.details() or "")
        error = await fetch(audience=["a"], spiffe_id="not a spiffe id")
        assert error.code() == invalid
        assert (error.details() or "").startswith("invalid requested SPIFFE ID: ")
        error = await fetch(audience=["a"], spiffe_id=f"spiffe://{TRUST_DOMAIN}/not-mine")
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)

        error = await validate(svid="x.y.z")
        assert (error.code(), error.details()) == (invalid, AUDIENCE_REQUIRED)
        error = await validate(audience="a")
        assert (error.code(), error.details()) == (invalid, SVID_REQUIRED)
        for garbage in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 10_000]:
            error = await validate(audience="a", svid=garbage)
            assert error.code() == invalid, garbage
            assert error.details(), garbage
        # A good token for another audience is refused with the validator's reason.
        (svid,) = (
            await api.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10
            )
        ).svids
        error = await validate(audience="b", svid=svid.svid)
        assert error.code() == invalid
        assert "audience 'b' not in token audiences" in (error.details() or "")


async def test_validate_does_not_need_an_identity(agent: Agent) -> None:
    web = await agent.entry("/web")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        (svid,) = (
            await api.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10
            )
        ).svids
        await agent.delete(web.id)
        await wait_for(lambda: agent.manager.entry_count == 0)
        checked = await api.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="a", svid=svid.svid),
            metadata=HEADER,
            timeout=10,
        )
    assert checked.spiffe_id == f"spiffe://{TRUST_DOMAIN}/web"


async def test_wit_rpcs_are_unimplemented(agent: Agent) -> None:
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        for call in [
            api.FetchWITSVID(workload_pb2.WITSVIDRequest(), metadata=HEADER, timeout=10),
            api.FetchWITBundles(workload_pb2.WITBundlesRequest(), metadata=HEADER, timeout=10),
        ]:
            error = await rpc_error(call)
            assert (error.code(), error.details()) == (
                grpc.StatusCode.UNIMPLEMENTED,
                WIT_UNIMPLEMENTED,
            )


async def test_x509_stream_follows_entries_and_ends_when_the_last_goes(agent: Agent) -> None:
    web = await agent.entry("/web")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        stream = stub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30
        )
        first = await asyncio.wait_for(stream.read(), 5)
        assert [s.spiffe_id for s in first.svids] == [f"spiffe://{TRUST_DOMAIN}/web"]
        assert first.svids[0].bundle == agent.manager.bundle.x509_der()  # type: ignore[union-attr]

        api = await agent.entry("/api")
        second = await asyncio.wait_for(stream.read(), 5)
        assert [s.spiffe_id for s in second.svids] == [
            f"spiffe://{TRUST_DOMAIN}/api",
            f"spiffe://{TRUST_DOMAIN}/web",
        ]
        await agent.delete(api.id)
        third = await asyncio.wait_for(stream.read(), 5)
        assert [s.spiffe_id for s in third.svids] == [f"spiffe://{TRUST_DOMAIN}/web"]

        await agent.delete(web.id)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(_read_until_error(stream), 5)
        assert (ended.value.code(), ended.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            NO_IDENTITY,
        )
    metrics = agent.service.metrics
    await wait_for(lambda: metrics.calls[("FetchX509SVID", "PERMISSION_DENIED")] == 1)
    assert metrics.streams_open == 0


async def _read_until_error(stream: Any) -> None:
    while True:
        message = await stream.read()
        assert message is not grpc.aio.EOF, "the stream must end with an error, not OK"
        assert message.svids, "never an empty svids list"


async def test_bundle_streams_send_once_and_cancelled_streams_unsubscribe(agent: Agent) -> None:
    await agent.entry("/web")
    subscribers_before = len(agent.manager._subscribers)
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        x509 = api.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
        jwt = api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
        first_x509 = await asyncio.wait_for(x509.read(), 5)
        first_jwt = await asyncio.wait_for(jwt.read(), 5)
        key = f"spiffe://{TRUST_DOMAIN}"
        assert list(first_x509.bundles) == [key]
        assert list(first_jwt.bundles) == [key]
        assert json.loads(first_jwt.bundles[key])["keys"], "the JWT keys"
        assert len(agent.manager._subscribers) == subscribers_before + 2
        # An entry change that leaves the bundles as they were sends nothing new.
        await agent.entry("/api")
        for stream in (x509, jwt):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stream.read()), 0.5)
        x509.cancel()
        jwt.cancel()
    await wait_for(lambda: len(agent.manager._subscribers) == subscribers_before)


NOBODY_SCRIPT = """
import json, sys
from spiffe import WorkloadApiClient, X509Source
from spiffe.workloadapi.errors import FetchX509SvidError
with WorkloadApiClient(default_timeout=10) as client:
    try:
        client.fetch_x509_svid()
        denied = None
    except FetchX509SvidError as exc:
        denied = str(exc)
print("DENIED " + json.dumps(denied), flush=True)
with X509Source(timeout_in_seconds=40) as source:
    svid = source.get_x509_context().default_svid
    print(json.dumps({"denied": denied, "spiffe_id": str(svid.spiffe_id)}))
"""


async def test_an_unregistered_uid_is_denied_then_served_once_registered(agent: Agent) -> None:
    reason = await _can_run_as_nobody()
    if reason is not None:
        pytest.skip(reason)
    await agent.entry("/web")
    child = await asyncio.create_subprocess_exec(
        *SETPRIV_NOBODY,
        sys.executable,
        "-c",
        NOBODY_SCRIPT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **agent.env},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.startswith(b"DENIED "), line
        denied = json.loads(line.removeprefix(b"DENIED "))
        assert denied is not None and "no identity issued (StatusCode.PERMISSION_DENIED)" in denied
        # Registered while the workload waits, without restarting the agent or the workload.
        await agent.entry("/nobody", selector=f"unix:uid:{NOBODY}")
        out, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/nobody"


ROTATION_SCRIPT = """
import json, threading, time
from spiffe import X509Source
seen = []
rotated = threading.Event()
with X509Source(timeout_in_seconds=10) as source:
    first = source.get_x509_context().default_svid
    def on_update():
        serial = source.get_x509_context().default_svid.leaf.serial_number
        seen.append(serial)
        if serial != first.leaf.serial_number:
            rotated.set()
    source.subscribe_for_updates(on_update)
    started = time.monotonic()
    ok = rotated.wait(15)
    print(json.dumps({
        "rotated": ok,
        "after": time.monotonic() - started,
        "first_serial": first.leaf.serial_number,
        "serials": seen,
        "spiffe_id": str(first.spiffe_id),
    }))
"""


async def test_x509_source_sees_a_rotation_with_a_5s_ttl(agent: Agent) -> None:
    await agent.entry("/short", x509_svid_ttl=5)
    result = await agent.pyspiffe(ROTATION_SCRIPT)
    assert result["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/short"
    assert result["rotated"], result
    assert result["after"] < 6.0, result
    assert result["first_serial"] not in result["serials"][-1:], result


async def test_x509_stream_waits_for_a_pending_svid_instead_of_refusing(agent: Agent) -> None:
    entry = await agent.entry("/web")
    # Make the entry's SVID pending: forget it and hold its re-mint back for an hour.
    manager = agent.manager
    manager._held.pop(entry.id)
    manager._retry[entry.id] = (Backoff(), utcnow() + dt.timedelta(hours=1))
    assert manager.svid(entry.id) is None
    async with grpc.aio.insecure_channel(agent.target) as channel:
        stream = stub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30
        )
        first = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.5)
        assert not first.done(), "nothing is sent (not empty svids, no error) while pending"
        manager._retry.pop(entry.id)
        manager._wake.set()
        message = await asyncio.wait_for(first, 5)
        assert [s.spiffe_id for s in message.svids] == [f"spiffe://{TRUST_DOMAIN}/web"]
        stream.cancel()


DROPPED_STREAMS = 1000
DROP_BATCH = 100


async def test_clients_that_drop_open_streams_leave_nothing_behind(agent: Agent) -> None:
    await agent.entry("/web")
    baseline = len(agent.manager._subscribers)
    relays = agent.endpoint.open_connections

    async def open_and_drop() -> None:
        channel = grpc.aio.insecure_channel(agent.target)
        stream = stub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30
        )
        message = await stream.read()
        assert message.svids
        await channel.close(grace=None)

    started = time.perf_counter()
    for _ in range(DROPPED_STREAMS // DROP_BATCH):
        await asyncio.gather(*(open_and_drop() for _ in range(DROP_BATCH)))
    elapsed = time.perf_counter() - started
    print(f"\n{DROPPED_STREAMS} streams opened and dropped in {elapsed:.2f} s")
    await wait_for(lambda: len(agent.manager._subscribers) == baseline)
    await wait_for(lambda: agent.endpoint.open_connections == relays)
    await wait_for(lambda: agent.service.metrics.streams_open == 0)
    assert agent.service.metrics.calls[("FetchX509SVID", "CANCELLED")] == DROPPED_STREAMS
    # Still serving.
    result = await agent.pyspiffe(X509_SCRIPT)
    assert result["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/web"


JWT_SOURCE_SCRIPT = """
import json
from spiffe import JwtSource, JwtSvid, TrustDomain
with JwtSource(timeout_in_seconds=10) as source:
    svid = source.fetch_svid(audience={"svc-b"})
    bundle = source.get_bundle_for_trust_domain(TrustDomain("example.org"))
    checked = JwtSvid.parse_and_validate(svid.token, bundle, {"svc-b"})
    print(json.dumps({"spiffe_id": str(checked.spiffe_id), "aud": sorted(checked.audience)}))
"""


async def test_pyspiffe_jwt_source(agent: Agent) -> None:
    await agent.entry("/web")
    result = await agent.pyspiffe(JWT_SOURCE_SCRIPT)
    assert result == {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/web", "aud": ["svc-b"]}


TLS_SERVER_SCRIPT = """
import json, sys
from spiffe import SpiffeId, X509Source
from spiffetls import ListenOptions, listen
from spiffetls.mode import ServerTlsMode
from spiffetls.tlsconfig.authorize import authorize_id
with X509Source(timeout_in_seconds=20) as source:
    server = listen(
        "127.0.0.1:" + sys.argv[1],
        source,
        ListenOptions(
            tls_mode=ServerTlsMode.MTLS, authorize_fn=authorize_id(SpiffeId(sys.argv[2]))
        ),
    )
    print("READY", flush=True)
    conn, _ = server.accept()
    data = conn.recv(1024)
    conn.sendall(b"pong:" + data)
    conn.shutdown()
    conn.close()
    server.close()
    print(json.dumps({"got": data.decode()}))
"""

TLS_CLIENT_SCRIPT = """
import json, sys
from spiffe import SpiffeId, X509Source
from spiffetls import dial
from spiffetls.mode import ClientTlsMode
from spiffetls.tlsconfig.authorize import authorize_id
with X509Source(timeout_in_seconds=20) as source:
    me = str(source.get_x509_context().default_svid.spiffe_id)
    conn = dial(
        "127.0.0.1:" + sys.argv[1],
        source,
        tls_mode=ClientTlsMode.TLS,
        authorize_fn=authorize_id(SpiffeId(sys.argv[2])),
    )
    conn.sendall(b"ping")
    reply = conn.recv(1024)
    conn.close()
    print(json.dumps({"me": me, "reply": reply.decode()}))
"""


async def _can_run_as_nobody() -> str | None:
    """None when uid 65534 can run this interpreter with py-spiffe; else the reason."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "running a workload as uid 65534 needs root and setpriv"
    probe = await asyncio.create_subprocess_exec(
        *SETPRIV_NOBODY,
        sys.executable,
        "-c",
        "import spiffe, spiffetls",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(probe.communicate(), 30)
    if probe.returncode != 0:
        return f"uid {NOBODY} cannot run this interpreter with py-spiffe: {err!r}"
    return None


async def test_spiffe_tls_mtls_between_workloads_of_two_uids(agent: Agent) -> None:
    reason = await _can_run_as_nobody()
    if reason is not None:
        pytest.skip(reason)
    server_id = f"spiffe://{TRUST_DOMAIN}/tls-server"
    client_id = f"spiffe://{TRUST_DOMAIN}/tls-client"
    await agent.entry("/tls-server")
    await agent.entry("/tls-client", selector=f"unix:uid:{NOBODY}")
    port = str(free_port())
    env = {**os.environ, **agent.env}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TLS_SERVER_SCRIPT,
        port,
        client_id,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    client: asyncio.subprocess.Process | None = None
    try:
        assert server.stdout is not None
        ready = await asyncio.wait_for(server.stdout.readline(), 30)
        assert ready.strip() == b"READY", ready
        client = await asyncio.create_subprocess_exec(
            *SETPRIV_NOBODY,
            sys.executable,
            "-c",
            TLS_CLIENT_SCRIPT,
            port,
            server_id,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        client_out, client_err = await asyncio.wait_for(client.communicate(), 60)
        server_out, server_err = await asyncio.wait_for(server.communicate(), 30)
    finally:
        for process in (server, client):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    assert client.returncode == 0, client_err.decode()
    assert server.returncode == 0, server_err.decode()
    assert json.loads(client_out.decode().splitlines()[-1]) == {
        "me": client_id,
        "reply": "pong:ping",
    }
    assert json.loads(server_out.decode().splitlines()[-1]) == {"got": "ping"}


SERIAL_SCRIPT = """
import json
from spiffe import WorkloadApiClient
with WorkloadApiClient(default_timeout=10) as client:
    svid = client.fetch_x509_svid()
    print(json.dumps({"serial": str(svid.leaf.serial_number), "spiffe_id": str(svid.spiffe_id)}))
"""


async def test_workloads_keep_their_svids_while_the_server_is_away(agent: Agent) -> None:
    entry = await agent.entry("/web", x509_svid_ttl=10)
    before = await agent.pyspiffe(SERIAL_SCRIPT)
    await agent.server.stop()
    # Past the rotation time (half of 10 s, +10% at most): the manager cannot renew, but the
    # SVID is still valid, so workloads keep getting it.
    await asyncio.sleep(6)
    during = await agent.pyspiffe(SERIAL_SCRIPT)
    assert during == before
    await agent.restart_server()
    await wait_for(
        lambda: (
            (svid := agent.manager.svid(entry.id)) is not None
            and str(svid.leaf.serial_number) != before["serial"]
        ),
        within=10,
    )
    after = await agent.pyspiffe(SERIAL_SCRIPT)
    assert after["spiffe_id"] == before["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/web"
    assert after["serial"] != before["serial"]


def foreign_bundle(name: str) -> tuple[Bundle, PrivateKey]:
    """A bundle for another trust domain (X.509 root and one JWT key) and its JWT signing key."""
    td = TrustDomain(name)
    now = utcnow()
    ca_key = generate_key()
    root = make_ca_certificate(
        ca_key, td, not_before=now - dt.timedelta(minutes=1), not_after=now + HOUR
    )
    jwt_key = generate_key()
    return Bundle(td, (root,), {f"{name}-key": jwt_key.public_key()}), jwt_key


async def test_federated_bundles_follow_the_entries_federates_with(agent: Agent) -> None:
    other, other_jwt_key = foreign_bundle("other.org")
    third, _ = foreign_bundle("third.org")
    await agent.entry("/web", federates_with=(other.trust_domain,))
    # Bundles the server would sync; only other.org is federated with by the caller's entry.
    agent.manager._federated = {other.trust_domain: other, third.trust_domain: third}
    own_key = f"spiffe://{TRUST_DOMAIN}"
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        x509 = api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        response = await asyncio.wait_for(x509.read(), 5)
        assert dict(response.federated_bundles) == {"spiffe://other.org": other.x509_der()}
        # A federated bundle change reaches the open stream.
        renewed, _ = foreign_bundle("other.org")
        agent.manager._federated = {other.trust_domain: renewed, third.trust_domain: third}
        agent.manager._changed()
        response = await asyncio.wait_for(x509.read(), 5)
        assert dict(response.federated_bundles) == {"spiffe://other.org": renewed.x509_der()}
        agent.manager._federated = {other.trust_domain: other, third.trust_domain: third}
        agent.manager._changed()
        response = await asyncio.wait_for(x509.read(), 5)
        assert dict(response.federated_bundles) == {"spiffe://other.org": other.x509_der()}
        x509.cancel()
        bundles = api.FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=10
        )
        x509_bundles = await asyncio.wait_for(bundles.read(), 5)
        assert sorted(x509_bundles.bundles) == [own_key, "spiffe://other.org"]
        bundles.cancel()
        jwt_stream = api.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=10
        )
        jwt_bundles = await asyncio.wait_for(jwt_stream.read(), 5)
        assert jwt_bundles.bundles["spiffe://other.org"] == other.to_workload_jwt_jwks()
        assert sorted(jwt_bundles.bundles) == [own_key, "spiffe://other.org"]
        jwt_stream.cancel()

        # A token of the federated trust domain validates; its claims are cut to sub/aud/exp.
        now = utcnow()
        token = mint_jwt_svid(
            key=other_jwt_key,
            key_id="other.org-key",
            spiffe_id=SpiffeId.parse("spiffe://other.org/peer"),
            audiences=["a"],
            issued_at=now,
            expires_at=now + dt.timedelta(minutes=5),
            extra_claims={"team": "x"},
        )
        checked = await api.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="a", svid=token),
            metadata=HEADER,
            timeout=10,
        )
        assert checked.spiffe_id == "spiffe://other.org/peer"
        assert sorted(json_format.MessageToDict(checked.claims)) == ["aud", "exp", "sub"]
    result = await agent.pyspiffe(FEDERATED_SCRIPT)
    assert result == {"trust_domains": ["example.org", "other.org"]}


FEDERATED_SCRIPT = """
import json
from spiffe import WorkloadApiClient
with WorkloadApiClient(default_timeout=10) as client:
    ctx = client.fetch_x509_context()
    tds = sorted(str(b.trust_domain) for b in ctx.x509_bundle_set._bundles.values())
    print(json.dumps({"trust_domains": tds}))
"""


async def test_entries_sharing_a_hint_are_served_once(agent: Agent) -> None:
    await agent.entry("/b-first", id="b-first", hint="shared")
    await agent.entry("/a-second", id="a-second", hint="shared")
    await agent.entry("/c-other", id="c-other", hint="other")
    created = {
        i.entry.id: i.entry.created_at
        for i in agent.manager.identities_for(parse_selectors([MY_UID]))
    }
    kept = min(["a-second", "b-first"], key=lambda i: (created[i], i))
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        stream = api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        response = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
        jwt = await api.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10
        )
    expected = [
        (f"spiffe://{TRUST_DOMAIN}/{kept}", "shared"),
        (f"spiffe://{TRUST_DOMAIN}/c-other", "other"),
    ]
    assert [(s.spiffe_id, s.hint) for s in response.svids] == expected
    assert [(s.spiffe_id, s.hint) for s in jwt.svids] == expected


class FailingAttestor:
    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def attest(self, pid: int) -> frozenset[Selector]:
        raise self.error


@pytest.mark.parametrize(
    "error", [AttestationError("cannot look at it"), OSError("an attestor bug")]
)
async def test_an_attestation_failure_is_unavailable(agent: Agent, error: Exception) -> None:
    await agent.entry("/web")
    agent.service._attestors = (*agent.service._attestors, FailingAttestor(error))
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        for call in [
            api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10),
            api.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10
            ),
            api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=10),
        ]:
            refused = await rpc_error(call)
            assert (refused.code(), refused.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                "workload attestation failed",
            )


async def test_a_caller_that_is_no_longer_the_same_process_is_unauthenticated(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    await agent.entry("/web")
    # Stands in for a caller that exited, or whose pid was reused, during attestation.
    monkeypatch.setattr(workload_api, "still_same", lambda process: False)
    async with grpc.aio.insecure_channel(agent.target) as channel:
        error = await rpc_error(
            stub(channel).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (error.details() or "").startswith("could not verify existence of the original caller")


async def test_bundle_streams_end_when_the_caller_loses_its_last_entry(agent: Agent) -> None:
    web = await agent.entry("/web")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        api = stub(channel)
        streams = [
            api.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=30),
            api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=30),
        ]
        for stream in streams:
            assert (await asyncio.wait_for(stream.read(), 5)).bundles
        await agent.delete(web.id)
        for stream in streams:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(_read_bundles_until_error(stream), 5)
            assert (ended.value.code(), ended.value.details()) == (
                grpc.StatusCode.PERMISSION_DENIED,
                NO_IDENTITY,
            )


async def _read_bundles_until_error(stream: Any) -> None:
    while True:
        message = await stream.read()
        assert message is not grpc.aio.EOF, "the stream must end with an error, not OK"


FANOUT_STREAMS = 1000
FANOUT_CHANNELS = 10


async def test_one_change_reaches_a_thousand_open_streams(agent: Agent) -> None:
    other, _ = foreign_bundle("other.org")
    await agent.entry("/web", federates_with=(other.trust_domain,))
    channels = [grpc.aio.insecure_channel(agent.target) for _ in range(FANOUT_CHANNELS)]
    first_seen = 0
    all_open = asyncio.Event()
    arrivals: list[float] = []

    async def follow(channel: grpc.aio.Channel) -> None:
        nonlocal first_seen
        stream = stub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=60
        )
        first = await stream.read()
        assert not first.federated_bundles
        first_seen += 1
        if first_seen == FANOUT_STREAMS:
            all_open.set()
        second = await stream.read()
        arrivals.append(time.perf_counter())
        assert second.federated_bundles["spiffe://other.org"] == other.x509_der()
        stream.cancel()

    try:
        followers = [
            asyncio.ensure_future(follow(channels[n % FANOUT_CHANNELS]))
            for n in range(FANOUT_STREAMS)
        ]
        await asyncio.wait_for(all_open.wait(), 60)
        started = time.perf_counter()
        agent.manager._federated = {other.trust_domain: other}
        agent.manager._changed()
        await asyncio.wait_for(asyncio.gather(*followers), 60)
    finally:
        for channel in channels:
            await channel.close(grace=None)
    elapsed = max(arrivals) - started
    print(f"\none change reached {FANOUT_STREAMS} open streams in {elapsed * 1000:.0f} ms")
    assert len(arrivals) == FANOUT_STREAMS
    assert elapsed < 5.0


async def test_a_valid_token_with_claims_a_struct_cannot_carry_is_unavailable(
    agent: Agent,
) -> None:
    own, own_key = foreign_bundle(TRUST_DOMAIN)
    await agent.entry("/web")
    # The agent's own trust domain, re-keyed by the test so it can sign a token itself.
    agent.manager._bundle = own
    now = utcnow()
    token = mint_jwt_svid(
        key=own_key,
        key_id=f"{TRUST_DOMAIN}-key",
        spiffe_id=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/peer"),
        audiences=["a"],
        issued_at=now,
        expires_at=now + dt.timedelta(minutes=5),
        extra_claims={"huge": 10**400},
    )
    async with grpc.aio.insecure_channel(agent.target) as channel:
        error = await rpc_error(
            stub(channel).ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="a", svid=token),
                metadata=HEADER,
                timeout=10,
            )
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert (error.details() or "").startswith("could not serialize response: claims: ")


async def test_health_and_reflection_are_served_on_the_workload_socket(agent: Agent) -> None:
    async with grpc.aio.insecure_channel(agent.target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", workload_api.SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        missing = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND

        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request])):
            names = {s.name for s in answer.list_services_response.service}
            break
    assert names == {
        workload_api.SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
