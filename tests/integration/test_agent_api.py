"""The agent API of a real standalone server, over real TLS and mTLS: what an agent may get.

The central invariant: a node can get SVIDs only for entries parented to it (or to its alias),
whatever certificate, CSR or entry ID it presents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from herald_core.csr import make_csr
from herald_core.jwtsvid import validate_jwt_svid
from herald_core.keys import generate_key
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.proto.herald.agent.v1 import agent_pb2, agent_pb2_grpc
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import certs_to_pem, parse_der_chain, verify_chain
from herald_server.server import HeraldServer
from tests.agent_harness import wait_for
from tests.server_harness import (
    AgentCredentials,
    admin_stub,
    attest,
    create_entry,
    csr_for,
    join_token,
    leaf_of,
    new_agent,
    start_server,
    tls_channel,
    utcnow,
)

pytestmark = pytest.mark.timeout(60)
TD = TrustDomain("example.org")
OK = grpc.StatusCode.OK.value[0]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[HeraldServer]:
    server = await start_server(tmp_path, limits={"max_batch": 5})
    yield server
    await server.stop()


async def sign(
    agent: AgentCredentials, server: HeraldServer, *items: tuple[str, bytes]
) -> list[agent_pb2.X509SVIDResult]:
    stub = agent.stub(server)
    request = agent_pb2.BatchSignX509SVIDRequest(
        params=[agent_pb2.X509SVIDParams(entry_id=i, csr=c) for i, c in items]
    )
    return list((await stub.BatchSignX509SVID(request)).results)


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_attested_agent_gets_svids_for_its_entries(server: HeraldServer) -> None:
    agent = await new_agent(server)
    assert agent.spiffe_id.path.startswith("/herald/agent/join_token/")
    assert verify_chain(agent.chain, agent.bundle.x509_authorities, now=utcnow()) == agent.spiffe_id
    entry = await create_entry(
        server, "/web", agent.spiffe_id, x509_svid_ttl=600, dns_names=("web.example",)
    )
    _, csr = csr_for(entry)
    (result,) = await sign(agent, server, (entry.id, csr))
    assert result.status.code == OK, result.status.message
    leaf = leaf_of(result)
    assert verify_chain([leaf], agent.bundle.x509_authorities, now=utcnow()) == entry.spiffe_id
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(seconds=610), "entry TTL plus the 10 s NotBefore cushion"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.example"]
    await agent.close()


async def test_node_cannot_get_another_nodes_entry(server: HeraldServer) -> None:
    node_a = await new_agent(server)
    node_b = await new_agent(server)
    entry_a = await create_entry(server, "/payments", node_a.spiffe_id)
    _, csr = csr_for(entry_a)
    (result,) = await sign(node_b, server, (entry_a.id, csr))
    assert result.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "not served by this agent" in result.status.message
    assert not result.cert_chain
    unknown = await sign(node_b, server, ("no-such-entry", csr))
    assert unknown[0].status.message == result.status.message.replace(
        entry_a.id, "no-such-entry"
    ), "an unknown entry and another node's entry look the same to the caller"
    error = await rpc_error(
        node_b.stub(server).SignJWTSVID(
            agent_pb2.SignJWTSVIDRequest(entry_id=entry_a.id, audience=["x"])
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await node_a.close()
    await node_b.close()


async def test_forged_csr_spiffe_id_is_refused(server: HeraldServer) -> None:
    agent = await new_agent(server)
    entry = await create_entry(server, "/web", agent.spiffe_id)
    other = await create_entry(server, "/admin", agent.spiffe_id, selectors=("unix:uid:0",))
    _, forged = csr_for(other)
    (result,) = await sign(agent, server, (entry.id, forged))
    assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "spiffe://example.org/admin" in result.status.message
    assert not result.cert_chain
    await agent.close()


async def test_workload_svid_is_not_an_agent_credential(server: HeraldServer) -> None:
    agent = await new_agent(server)
    entry = await create_entry(server, "/web", agent.spiffe_id)
    key, csr = csr_for(entry)
    (result,) = await sign(agent, server, (entry.id, csr))
    workload = AgentCredentials(entry.spiffe_id, key, [leaf_of(result)], agent.bundle)
    error = await rpc_error(workload.stub(server).GetBundle(agent_pb2.GetBundleRequest()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is not an agent ID" in (error.details() or "")
    await agent.close()
    await workload.close()


async def test_reserved_ids_are_never_signed_for_workloads(server: HeraldServer) -> None:
    agent = await new_agent(server)
    channel, admin = admin_stub(server)
    async with channel:
        for path in ("/herald/server", f"{agent.spiffe_id.path}"):
            entry_msg = admin_pb2.CreateEntryRequest()
            entry_msg.entry.spiffe_id = f"spiffe://example.org{path}"
            entry_msg.entry.parent_id = str(agent.spiffe_id)
            entry_msg.entry.selectors.add(type="unix", value="uid:0")
            error = await rpc_error(admin.CreateEntry(entry_msg))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "reserved" in (error.details() or "")
    await agent.close()


async def test_agent_port_requires_a_client_certificate(server: HeraldServer) -> None:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{server.agent_port}",
        grpc.ssl_channel_credentials(
            root_certificates=certs_to_pem(server.ca.bundle().x509_authorities),
        ),
        options=[("grpc.ssl_target_name_override", "herald-server.test")],
    )
    stub: Any = agent_pb2_grpc.AgentAPIStub(channel)
    error = await rpc_error(stub.GetBundle(agent_pb2.GetBundleRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_expired_agent_svid_is_refused(server: HeraldServer) -> None:
    agent = await new_agent(server)
    key = generate_key()
    short = server.ca.sign_agent_svid(
        key.public_key(), agent.spiffe_id, ttl=dt.timedelta(seconds=1)
    )
    expired = AgentCredentials(agent.spiffe_id, key, short, agent.bundle)
    await asyncio.sleep(1.5)
    error = await rpc_error(expired.stub(server).GetBundle(agent_pb2.GetBundleRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, "the TLS handshake refuses it"
    await agent.close()
    await expired.close()


async def test_evicted_agent_is_refused(server: HeraldServer) -> None:
    agent = await new_agent(server)
    stub = agent.stub(server)
    await stub.GetBundle(agent_pb2.GetBundleRequest())
    await server.store.evict_agent(agent.spiffe_id)  # type: ignore[attr-defined]
    error = await rpc_error(stub.GetBundle(agent_pb2.GetBundleRequest()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "evicted" in (error.details() or "")
    await agent.close()


async def test_join_token_is_one_time_and_bad_csr_does_not_burn_it(
    server: HeraldServer,
) -> None:
    token = await join_token(server)
    async with tls_channel(server) as channel:
        stub: Any = agent_pb2_grpc.NodeAttestationStub(channel)
        bad = agent_pb2.AttestAgentRequest(
            join_token=agent_pb2.JoinTokenParams(token=token), csr=b"garbage"
        )
        error = await rpc_error(stub.AttestAgent(bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        for request, code in [
            (agent_pb2.AttestAgentRequest(), grpc.StatusCode.INVALID_ARGUMENT),
            (
                agent_pb2.AttestAgentRequest(k8s_psat=agent_pb2.K8sPsatParams(token="t")),
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
        ]:
            assert (await rpc_error(stub.AttestAgent(request))).code() == code
    first = await attest(server, token)
    assert first.spiffe_id.path.startswith("/herald/agent/join_token/")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await attest(server, token)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "join token is not valid"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await attest(server, "made-up-token")
    assert info.value.details() == "join token is not valid", "no hint which tokens exist"


def _csr(key: Any, spiffe_id: str, algorithm: Any = None) -> bytes:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
    )
    return builder.sign(key, algorithm or hashes.SHA256()).public_bytes(Encoding.DER)


async def test_bad_batches(server: HeraldServer) -> None:
    agent = await new_agent(server)
    entry = await create_entry(server, "/web", agent.spiffe_id)
    stub = agent.stub(server)
    error = await rpc_error(stub.BatchSignX509SVID(agent_pb2.BatchSignX509SVIDRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, csr = csr_for(entry)
    too_many = agent_pb2.BatchSignX509SVIDRequest(
        params=[agent_pb2.X509SVIDParams(entry_id=entry.id, csr=csr)] * 6
    )
    error = await rpc_error(stub.BatchSignX509SVID(too_many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit of 5" in (error.details() or "")
    ident = str(entry.spiffe_id)
    second = await create_entry(server, "/second", agent.spiffe_id, selectors=("unix:uid:7",))
    _, second_csr = csr_for(second)
    results = await sign(
        agent,
        server,
        (entry.id, b"\x30\x03garbage"),
        (second.id, second_csr),
        (second.id, second_csr),
    )
    codes = [r.status.code for r in results]
    assert codes == [
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        OK,
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]
    assert "appears twice" in results[2].status.message
    weak = [
        _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), ident),  # noqa: S505
        _csr(ec.generate_private_key(ec.SECP521R1()), ident, hashes.SHA512()),
    ]
    for csr_bytes in weak:
        (result,) = await sign(agent, server, (entry.id, csr_bytes))
        assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "csr:" in result.status.message
    huge = agent_pb2.BatchSignX509SVIDRequest(
        params=[agent_pb2.X509SVIDParams(entry_id=entry.id, csr=b"x" * (5 * 1024 * 1024))]
    )
    error = await rpc_error(stub.BatchSignX509SVID(huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await agent.close()


async def test_jwt_svids(server: HeraldServer) -> None:
    agent = await new_agent(server)
    entry = await create_entry(server, "/web", agent.spiffe_id, jwt_svid_ttl=120)
    stub = agent.stub(server)
    response = await stub.SignJWTSVID(
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=["db", "cache"])
    )
    assert response.spiffe_id == str(entry.spiffe_id)
    assert response.expires_at - response.issued_at == 120
    bundle = server.ca.bundle()
    svid = validate_jwt_svid(response.token, {TD: bundle}, ["db", "cache"], now=utcnow())
    assert svid.spiffe_id == entry.spiffe_id
    shorter = await stub.SignJWTSVID(
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=["db"], ttl_seconds=30)
    )
    assert shorter.expires_at - shorter.issued_at == 30
    longer = await stub.SignJWTSVID(
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=["db"], ttl_seconds=9999)
    )
    assert longer.expires_at - longer.issued_at == 120, "never longer than the entry allows"
    for request in [
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id),
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=[""]),
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=["a"], ttl_seconds=-1),
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=["x" * 1025]),
        agent_pb2.SignJWTSVIDRequest(entry_id=entry.id, audience=[str(i) for i in range(33)]),
    ]:
        assert (await rpc_error(stub.SignJWTSVID(request))).code() == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    await agent.close()


async def test_sync_streams_only_own_entries_then_changes(server: HeraldServer) -> None:
    alias = "spiffe://example.org/host/web1"
    agent = await new_agent(server, alias=alias)
    other = await new_agent(server)
    mine = await create_entry(server, "/mine", agent.spiffe_id)
    via_alias = await create_entry(server, "/via-alias", SpiffeId.parse(alias))
    await create_entry(server, "/theirs", other.spiffe_id)
    stream = agent.stub(server).SyncEntries(agent_pb2.SyncEntriesRequest())
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.full
    assert sorted(e.id for e in first.entries) == sorted([mine.id, via_alias.id])
    assert first.bundle.sequence_number == server.ca.bundle().sequence_number

    added = await create_entry(server, "/added", agent.spiffe_id)
    await create_entry(server, "/not-for-me", other.spiffe_id)
    delta = await asyncio.wait_for(stream.read(), 5)
    assert not delta.full
    assert [e.id for e in delta.entries] == [added.id]

    channel, admin = admin_stub(server)
    async with channel:
        await admin.DeleteEntry(admin_pb2.DeleteEntryRequest(id=mine.id))
    delta = await asyncio.wait_for(stream.read(), 5)
    assert list(delta.removed_entry_ids) == [mine.id]
    stream.cancel()
    await agent.close()
    await other.close()


async def test_a_cancelled_sync_stream_leaves_no_waiter_behind(server: HeraldServer) -> None:
    agent = await new_agent(server)
    stream = agent.stub(server).SyncEntries(agent_pb2.SyncEntriesRequest())
    await asyncio.wait_for(stream.read(), 5)

    def waiters() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "EntrySubscription.wait" in repr(t.get_coro())]

    assert len(waiters()) == 1
    stream.cancel()
    await agent.close()
    await wait_for(lambda: not waiters(), within=5)


async def test_renewal_keeps_the_id_and_refuses_a_foreign_one(server: HeraldServer) -> None:
    agent = await new_agent(server)
    stub = agent.stub(server)
    key = generate_key()
    renewed = await stub.RenewAgent(agent_pb2.RenewAgentRequest(csr=make_csr(key, agent.spiffe_id)))
    assert renewed.svid.spiffe_id == str(agent.spiffe_id)
    other_id = SpiffeId.parse("spiffe://example.org/herald/agent/join_token/someone-else")
    error = await rpc_error(
        stub.RenewAgent(agent_pb2.RenewAgentRequest(csr=make_csr(key, other_id)))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await agent.close()


async def test_a_renewed_agent_svid_retires_the_old_one_once_used(server: HeraldServer) -> None:
    agent = await new_agent(server)
    old_stub = agent.stub(server)
    key = generate_key()
    renewed = await old_stub.RenewAgent(
        agent_pb2.RenewAgentRequest(csr=make_csr(key, agent.spiffe_id))
    )
    chain = [c for der in renewed.svid.cert_chain for c in parse_der_chain(der)]
    new = AgentCredentials(agent.spiffe_id, key, chain, agent.bundle)
    get_bundle = agent_pb2.GetBundleRequest()

    # Until the agent uses the new SVID, the old one still works (the answer may have been lost).
    await old_stub.GetBundle(get_bundle)
    await new.stub(server).GetBundle(get_bundle)
    # Now a copy of the old one is worthless, on a fresh connection too.
    old_again = AgentCredentials(agent.spiffe_id, agent.key, agent.chain, agent.bundle)
    for stub in (old_stub, old_again.stub(server)):
        error = await rpc_error(stub.GetBundle(get_bundle))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "superseded by a renewal" in (error.details() or "")
    await new.stub(server).GetBundle(get_bundle)
    for credentials in (agent, new, old_again):
        await credentials.close()


async def test_rate_limit(tmp_path: Path) -> None:
    server = await start_server(
        tmp_path, limits={"max_batch": 3, "sign_rate_per_agent": 1, "sign_burst_per_agent": 3}
    )
    try:
        agent = await new_agent(server)
        entry = await create_entry(server, "/web", agent.spiffe_id)
        _, csr = csr_for(entry)
        (ok,) = await sign(agent, server, (entry.id, csr))
        assert ok.status.code == OK
        error = await rpc_error(
            agent.stub(server).BatchSignX509SVID(
                agent_pb2.BatchSignX509SVIDRequest(
                    params=[agent_pb2.X509SVIDParams(entry_id=entry.id, csr=csr)] * 3
                )
            )
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.metrics.rate_limited._value.get() >= 1  # type: ignore[attr-defined]
        await agent.close()
    finally:
        await server.stop()


async def test_restart_keeps_ca_entries_and_agents(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    agent = await new_agent(server)
    entry = await create_entry(server, "/web", agent.spiffe_id)
    _, csr = csr_for(entry)
    (before,) = await sign(agent, server, (entry.id, csr))
    roots = server.ca.bundle().x509_authorities
    await agent.close()
    await server.stop()

    again = await start_server(tmp_path)
    try:
        assert again.ca.bundle().x509_authorities == roots
        assert verify_chain([leaf_of(before)], roots, now=utcnow()) == entry.spiffe_id
        (after,) = await sign(agent, again, (entry.id, csr))
        assert after.status.code == OK, "the agent and its entry survived the restart"
        await agent.close()
    finally:
        await again.stop()


async def test_signing_worker_processes_give_the_same_answers(tmp_path: Path) -> None:
    server = await start_server(tmp_path, limits={"signing_workers": 2})
    try:
        agent = await new_agent(server)
        entries = [
            await create_entry(server, f"/w{i}", agent.spiffe_id, selectors=(f"unix:uid:{i}",))
            for i in range(5)
        ]
        items = [(e.id, csr_for(e)[1]) for e in entries]
        items[2] = (entries[2].id, csr_for(entries[3])[1])  # names another entry's ID
        results = await sign(agent, server, *items)
        codes = [r.status.code for r in results]
        assert codes == [OK, OK, grpc.StatusCode.INVALID_ARGUMENT.value[0], OK, OK]
        for entry, result in zip(entries, results, strict=True):
            if result.status.code == OK:
                leaf = leaf_of(result)
                roots = server.ca.bundle().x509_authorities
                assert verify_chain([leaf], roots, now=utcnow()) == entry.spiffe_id
                assert result.expires_at == int(leaf.not_valid_after_utc.timestamp())
        await agent.close()
    finally:
        await server.stop()
