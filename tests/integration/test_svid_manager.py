"""The agent's SVID manager against a real herald-server over real TLS and mTLS.

Attest with a join token, sync entries, mint and rotate SVIDs, survive a server restart, and
cache JWT-SVIDs. Latencies are printed (run with -s) so docs/benchmarks.md can quote them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from herald_agent.server_client import (
    AgentSvid,
    Attested,
    ServerClient,
    ServerClientError,
    attest_join_token,
    attest_k8s_psat,
    load_trust_bundle,
)
from herald_agent.svid_manager import SvidManager, SvidManagerError
from herald_core.entry import Entry
from herald_core.keys import generate_key, private_key_to_pem
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.proto.herald.agent.v1 import agent_pb2
from herald_core.selector import parse_selectors
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.wire import entry_to_proto
from herald_core.x509svid import X509Svid, certs_to_pem, make_ca_certificate, verify_chain
from herald_server.server import HeraldServer
from tests.k8s.api import Kube
from tests.k8s.install import HeraldRelease
from tests.server_harness import (
    SERVER_NAME,
    add_agent_pod,
    add_node,
    admin_stub,
    agent_token,
    attested_manager,
    create_entry,
    fixed_ports,
    join_token,
    start_kubernetes_server,
    start_server,
    utcnow,
    workload_entry,
)

pytestmark = pytest.mark.timeout(90)
UID_1000 = parse_selectors(["unix:uid:1000"])
HOUR = dt.timedelta(hours=1)


@dataclass
class Node:
    server: HeraldServer
    manager: SvidManager
    ports: dict[str, Any]
    tmp: Path


async def restart(node: Node) -> None:
    node.server = await start_server(node.tmp, **node.ports)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> float:
    """Seconds until ``predicate`` held (polling every 5 ms); fails the test after ``within``."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > within:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    ports = fixed_ports()
    server = await start_server(tmp_path, **ports)
    manager = await attested_manager(server)
    client = manager.client
    node = Node(server, manager, ports, tmp_path)
    yield node
    await manager.stop()
    await client.close()
    await node.server.stop()


def agent_id(node: Node) -> Any:
    return node.manager.client.svid.spiffe_id


async def delete_entry(server: HeraldServer, entry_id: str) -> None:
    channel, admin = admin_stub(server)
    async with channel:
        await admin.DeleteEntry(admin_pb2.DeleteEntryRequest(id=entry_id))


async def test_entries_get_svids_that_verify_and_follow_changes(node: Node) -> None:
    web = await create_entry(node.server, "/web", agent_id(node), dns_names=("web.example",))
    await create_entry(node.server, "/db", agent_id(node), selectors=("unix:uid:0",))
    await node.manager.start()
    await wait_for(lambda: node.manager.svid_count == 2 and node.manager.ready)
    assert node.manager.bundle is not None
    roots = node.manager.bundle.x509_authorities
    (identity,) = node.manager.identities_for(UID_1000)
    assert identity.entry == web and identity.svid is not None
    assert verify_chain(identity.svid.cert_chain, roots, now=utcnow()) == web.spiffe_id

    with node.manager.subscribe() as subscription:
        created = time.perf_counter()
        api = await create_entry(node.server, "/api", agent_id(node))
        await wait_for(lambda: node.manager.svid("api") is not None, within=2.0)
        latency = time.perf_counter() - created
        print(f"\nnew entry -> SVID ready: {latency * 1000:.1f} ms")
        await asyncio.wait_for(subscription.wait(), 1.0)
    ids = [i.entry.id for i in node.manager.identities_for(UID_1000)]
    assert ids == ["api", "web"], "sorted by entry ID"

    await delete_entry(node.server, api.id)
    await wait_for(lambda: node.manager.svid("api") is None, within=2.0)
    assert [i.entry.id for i in node.manager.identities_for(UID_1000)] == ["web"]


async def test_mints_many_svids_in_batches(node: Node) -> None:
    count = 300
    node.manager.max_batch = 100
    for n in range(count):
        await create_entry(node.server, f"/w{n}", agent_id(node), id=f"w{n:03d}")
    started = time.perf_counter()
    await node.manager.start()
    await wait_for(lambda: node.manager.svid_count == count, within=30.0)
    elapsed = time.perf_counter() - started
    print(f"\n{count} SVIDs minted in {elapsed * 1000:.0f} ms (batches of 100)")
    assert node.manager.counters.batches >= 3
    serving = [i.svid for i in node.manager.identities_for(UID_1000) if i.svid is not None]
    keys = {svid.key_der() for svid in serving}
    assert len(keys) == count, "one fresh key per entry"


async def test_short_ttl_svid_rotates_before_expiry(node: Node) -> None:
    await create_entry(node.server, "/short", agent_id(node), x509_svid_ttl=4)
    await node.manager.start()
    await wait_for(lambda: node.manager.svid("short") is not None)
    first = node.manager.svid("short")
    assert first is not None
    await wait_for(lambda: node.manager.svid("short") is not first, within=4.0)
    second = node.manager.svid("short")
    assert second is not None and second.leaf.serial_number != first.leaf.serial_number
    assert utcnow() < first.expires_at, "rotated while the old SVID was still valid"
    assert second.private_key is not first.private_key
    assert node.manager.counters.svid_rotations >= 1


async def test_keeps_serving_while_the_server_is_away_and_resumes(node: Node) -> None:
    await create_entry(node.server, "/web", agent_id(node))
    await node.manager.start()
    await wait_for(lambda: node.manager.svid("web") is not None)
    held = node.manager.svid("web")
    await node.server.stop()
    await asyncio.sleep(1.0)
    assert node.manager.svid("web") is held, "a still-valid SVID keeps serving"
    assert node.manager.ready
    reconnects = node.manager.counters.sync_reconnects
    assert reconnects >= 1

    await restart(node)
    await create_entry(node.server, "/later", agent_id(node))
    took = await wait_for(lambda: node.manager.svid("later") is not None, within=10.0)
    print(f"\nafter restart: new entry served in {took * 1000:.0f} ms")
    assert node.manager.svid("web") is held, "the snapshot on reconnect did not re-mint"


async def test_a_new_channel_ends_the_sync_backoff_at_once(node: Node) -> None:
    # A long backoff, as after many failures: only the new channel can bring the sync back soon.
    client = node.manager.client
    manager = SvidManager(client, backoff_base=30.0, backoff_cap=30.0)
    await create_entry(node.server, "/web", agent_id(node))
    await manager.start()
    try:
        await wait_for(lambda: manager.svid("web") is not None)
        await node.server.stop()
        await wait_for(lambda: manager.counters.sync_reconnects >= 1)
        await restart(node)
        await create_entry(node.server, "/later", agent_id(node))
        client.adopt(Attested(client.svid, client.bundle))
        await wait_for(lambda: manager.svid("later") is not None, within=10.0)
    finally:
        await manager.stop()


async def test_the_sync_resumes_as_soon_as_the_restarted_server_answers(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    # A long backoff, as after many failures: the sync must follow the channel, not the clock.
    caplog.set_level(logging.INFO, logger="herald_agent.svid_manager")
    manager = SvidManager(node.manager.client, backoff_base=30.0, backoff_cap=30.0)
    await create_entry(node.server, "/web", agent_id(node))
    await manager.start()
    try:
        await wait_for(lambda: manager.svid("web") is not None)
        assert manager.sync_age() == 0.0
        await node.server.stop()
        await wait_for(lambda: manager.counters.sync_reconnects >= 1)
        await asyncio.sleep(2.0)  # long enough for grpc's own reconnect backoff to grow
        assert manager.sync_age() >= 2.0, "the age grows while the server is away"
        await restart(node)
        answered = time.perf_counter()
        await create_entry(node.server, "/later", agent_id(node))
        await wait_for(lambda: manager.svid("later") is not None, within=5.0)
        took = time.perf_counter() - answered
        print(f"\nrestarted server answered -> new entry's SVID held: {took * 1000:.0f} ms")
        assert manager.sync_age() == 0.0
        resumed = [r.getMessage() for r in caplog.records if "entry sync resumed" in r.getMessage()]
        assert len(resumed) == 1 and "out of sync for " in resumed[0], resumed
    finally:
        await manager.stop()


async def test_jwt_svids_are_cached_per_audience_set(node: Node) -> None:
    # A 6 s life: the first fetches must fall in its first half even on a loaded machine.
    await create_entry(node.server, "/web", agent_id(node), jwt_svid_ttl=6)
    await node.manager.start()
    await wait_for(lambda: node.manager.entry_count == 1)
    token = await node.manager.fetch_jwt("web", ["a", "b"])
    assert await node.manager.fetch_jwt("web", ["a", "b"]) == token
    assert await node.manager.fetch_jwt("web", ["b", "a"]) == token, "order does not matter"
    assert await node.manager.fetch_jwt("web", ["a"]) != token
    assert node.manager.counters.jwt_minted == 2
    await asyncio.sleep(3.4)  # past half of the 6 s life, even with +10% jitter
    assert await node.manager.fetch_jwt("web", ["a", "b"]) != token


async def test_stale_jwt_is_served_while_the_server_is_away(node: Node) -> None:
    await create_entry(node.server, "/web", agent_id(node), jwt_svid_ttl=6)
    await node.manager.start()
    await wait_for(lambda: node.manager.entry_count == 1)
    fetched = time.perf_counter()
    token = await node.manager.fetch_jwt("web", ["a"])
    await node.server.stop()
    # Past half life even with +10% jitter and whole-second iat; before exp (>= 5 s away).
    await asyncio.sleep(max(0.0, fetched + 3.5 - time.perf_counter()))
    assert await node.manager.fetch_jwt("web", ["a"]) == token
    assert node.manager.counters.jwt_stale_served == 1
    await restart(node)


async def test_one_unsignable_entry_does_not_block_its_batch(node: Node) -> None:
    await create_entry(node.server, "/a", agent_id(node))
    # Valid as an entry, but its first DNS name is too long to become the leaf's CN.
    long_name = "x" * 60 + ".example"
    await create_entry(node.server, "/bad", agent_id(node), dns_names=(long_name,))
    await create_entry(node.server, "/c", agent_id(node))
    await node.manager.start()
    await wait_for(lambda: None not in (node.manager.svid("a"), node.manager.svid("c")))
    assert node.manager.svid("bad") is None
    assert node.manager.counters.svid_failures >= 1
    retries = node.manager.counters.svid_failures
    await wait_for(lambda: node.manager.counters.svid_failures > retries, within=2.0)


async def update_entry(server: HeraldServer, entry: Entry) -> None:
    channel, admin = admin_stub(server)
    async with channel:
        await admin.UpdateEntry(admin_pb2.UpdateEntryRequest(entry=entry_to_proto(entry)))


def dns_names_of(svid: X509Svid) -> list[str]:
    sans = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names: list[str] = sans.get_values_for_type(x509.DNSName)
    return names


async def test_entry_changes_re_mint_and_a_new_spiffe_id_drops_the_old_svid(node: Node) -> None:
    web = await create_entry(node.server, "/web", agent_id(node), dns_names=("a.example",))
    await node.manager.start()
    await wait_for(lambda: node.manager.svid("web") is not None)
    first = node.manager.svid("web")
    assert first is not None

    await update_entry(node.server, replace(web, dns_names=("b.example",)))
    await wait_for(lambda: node.manager.svid("web") not in (None, first), within=2.0)
    second = node.manager.svid("web")
    assert second is not None and dns_names_of(second) == ["b.example"]

    moved = replace(web, spiffe_id=SpiffeId.parse("spiffe://example.org/moved"))
    with node.manager.subscribe() as subscription:
        await update_entry(node.server, moved)
        await asyncio.wait_for(subscription.wait(), 2.0)
        (identity,) = node.manager.identities_for(UID_1000)
        assert identity.svid is None or identity.svid.spiffe_id == moved.spiffe_id, (
            "the old identity is never served under the changed entry"
        )
    await wait_for(lambda: node.manager.svid("web") is not None, within=2.0)
    third = node.manager.svid("web")
    assert third is not None and third.spiffe_id == moved.spiffe_id


async def test_concurrent_jwt_fetches_share_one_signing_call(node: Node) -> None:
    await create_entry(node.server, "/web", agent_id(node))
    await node.manager.start()
    await wait_for(lambda: node.manager.entry_count == 1)
    tokens = await asyncio.gather(*(node.manager.fetch_jwt("web", ["x"]) for _ in range(50)))
    assert len(set(tokens)) == 1
    assert node.manager.counters.jwt_minted == 1
    with pytest.raises(SvidManagerError) as info:
        await node.manager.fetch_jwt("nope", ["x"])
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(SvidManagerError) as info:
        await node.manager.fetch_jwt("web", [])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_agent_svid_is_renewed_and_the_new_one_is_used(tmp_path: Path) -> None:
    server = await start_server(tmp_path, ca={"agent_svid_ttl": "4s"})
    manager = await attested_manager(server)
    client = manager.client
    await manager.start()
    try:
        first = client.svid
        await wait_for(lambda: client.renewals >= 3, within=10.0)
        assert utcnow() > first.expires_at, "the first agent SVID has expired by now"
        assert client.svid.key is not first.key and manager.ready
        await create_entry(server, "/late", client.svid.spiffe_id)
        await wait_for(lambda: manager.svid("late") is not None, within=3.0)
    finally:
        await manager.stop()
        await client.close()
        await server.stop()


async def test_a_renewed_svid_is_kept_before_any_call_uses_it(tmp_path: Path) -> None:
    # Once the server sees the new SVID it refuses the old one (standalone): it must be stored
    # (keep_renewal) before a call can present it, or a crash there would lock the agent out.
    server = await start_server(tmp_path)
    attested = await attest_join_token(
        f"127.0.0.1:{server.attestation_port}",
        await join_token(server),
        server.ca.bundle().x509_authorities,
        SERVER_NAME,
    )
    seen: list[tuple[int, int, int]] = []

    def serial(svid: AgentSvid) -> int:
        return svid.chain[0].serial_number

    async def keep(renewed: Attested) -> None:
        seen.append((client.channel_generation, serial(client.svid), serial(renewed.svid)))

    client = ServerClient(
        f"127.0.0.1:{server.agent_port}", attested, SERVER_NAME, keep_renewal=keep
    )
    try:
        old = serial(client.svid)
        new = serial(await client.renew())
        assert seen == [(0, old, new)], "kept while the old channel and SVID were still in use"
        assert (client.channel_generation, serial(client.svid)) == (1, new)
        await client.stub().GetBundle(agent_pb2.GetBundleRequest())
    finally:
        await client.close()
        await server.stop()


async def test_bootstrap_needs_the_servers_ca(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        bundle_file = tmp_path / "bundle.pem"
        bundle_file.write_bytes(certs_to_pem(server.ca.bundle().x509_authorities))
        roots = load_trust_bundle(bundle_file)
        address = f"127.0.0.1:{server.attestation_port}"
        now = utcnow()
        stranger = make_ca_certificate(
            generate_key(), TrustDomain("example.org"), not_before=now, not_after=now + HOUR
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await attest_join_token(address, await join_token(server), [stranger], SERVER_NAME)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        attested = await attest_join_token(address, await join_token(server), roots, SERVER_NAME)
        assert attested.svid.spiffe_id.path.startswith("/herald/agent/join_token/")
    finally:
        await server.stop()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_to_pem(generate_key()))
    with pytest.raises(ServerClientError, match="not a CERTIFICATE"):
        load_trust_bundle(key_file)
    with pytest.raises(ServerClientError, match=r"missing\.pem"):
        load_trust_bundle(tmp_path / "missing.pem")


async def test_k8s_psat_attestation_from_a_token_file(
    kube: Kube, release: HeraldRelease, tmp_path: Path
) -> None:
    server = await start_kubernetes_server(release, tmp_path)
    try:
        uid = add_node(kube, "node-a")
        token_file = tmp_path / "token"
        token_file.write_text(agent_token(kube, add_agent_pod(kube, release, "node-a")) + "\n")
        attested = await attest_k8s_psat(
            f"127.0.0.1:{server.attestation_port}",
            "test",
            token_file,
            server.ca.bundle().x509_authorities,
            SERVER_NAME,
        )
        assert attested.svid.spiffe_id.path == f"/herald/agent/k8s_psat/test/{uid}"
        client = ServerClient(f"127.0.0.1:{server.agent_port}", attested, SERVER_NAME)
        manager = SvidManager(client, backoff_base=0.05, backoff_cap=0.5)
        await manager.start()
        try:
            shop = kube.create_namespace(f"{release.namespace}-shop")
            kube.create(workload_entry("web", "node-a", "/ns/shop/sa/web", shop))
            await wait_for(lambda: manager.svid(f"{shop}.web") is not None)
        finally:
            await manager.stop()
            await client.close()
    finally:
        await server.stop()


async def test_jwt_cache_is_a_bounded_lru(node: Node) -> None:
    node.manager.jwt_cache_size = 2
    await create_entry(node.server, "/web", agent_id(node))
    await node.manager.start()
    await wait_for(lambda: node.manager.entry_count == 1)
    first = await node.manager.fetch_jwt("web", ["a"])
    await node.manager.fetch_jwt("web", ["b"])
    assert await node.manager.fetch_jwt("web", ["a"]) == first, "a hit refreshes 'a'"
    await node.manager.fetch_jwt("web", ["c"])  # evicts 'b', the least recently used
    assert node.manager.counters.jwt_minted == 3
    assert await node.manager.fetch_jwt("web", ["a"]) == first
    await node.manager.fetch_jwt("web", ["b"])
    assert node.manager.counters.jwt_minted == 4
