"""FetchX509SVID streams of one caller share what is built for them: one lookup and one message
per manager change for every stream with the same selectors, not one per stream; a shared view
holding an SVID that has expired is not served again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from herald_agent.svid_manager import SvidManager
from herald_agent.workload_api import X509Views, dedupe_hints
from herald_core.clock import FakeClock
from herald_core.proto.herald.admin.v1 import admin_pb2
from herald_core.proto.spiffe.workload import workload_pb2, workload_pb2_grpc
from herald_core.selector import parse_selectors
from herald_core.wire import entry_to_proto
from tests.agent_harness import Agent, running_agent, socket_directory, wait_for
from tests.server_harness import (
    admin_stub,
    attested_manager,
    create_entry,
    start_server,
    utcnow,
)

pytestmark = pytest.mark.timeout(60)

HEADER = (("workload.spiffe.io", "true"),)
STREAMS = 50


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    with socket_directory() as sockets:
        async with running_agent(tmp_path, sockets) as running:
            yield running


async def test_streams_of_one_caller_get_each_change_built_once(agent: Agent) -> None:
    entry = await agent.entry("/web", hint="before")
    async with grpc.aio.insecure_channel(agent.target) as channel:
        stub: Any = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        streams = [
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            for _ in range(STREAMS)
        ]
        firsts = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 10)
        assert {m.svids[0].hint for m in firsts} == {"before"}
        views = agent.service._x509_views
        built, generation = views.built, agent.manager.generation

        admin_channel, admin = admin_stub(agent.server)
        async with admin_channel:
            changed = dataclasses.replace(entry, hint="after")
            await admin.UpdateEntry(admin_pb2.UpdateEntryRequest(entry=entry_to_proto(changed)))
        seconds = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 10)

        assert {m.svids[0].hint for m in seconds} == {"after"}
        assert {m.svids[0].x509_svid for m in seconds} == {firsts[0].svids[0].x509_svid}
        changes = agent.manager.generation - generation
        assert changes >= 1
        assert views.built - built == changes, "one build per change, not one per stream"
        for stream in streams:
            stream.cancel()


async def test_a_view_is_reused_until_a_change_or_until_an_svid_in_it_expires(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    attested = await attested_manager(server)
    clock = FakeClock(utcnow())
    manager = SvidManager(attested.client, clock=clock)
    entry = await create_entry(server, "/web", manager.client.svid.spiffe_id)
    await manager.start()
    try:
        await wait_for(lambda: manager.svid(entry.id) is not None)
        views = X509Views(manager, dedupe_hints)
        caller = frozenset(entry.selectors)
        first = views.get(caller)
        assert first.response is not None
        assert [s.spiffe_id for s in first.response.svids] == [str(entry.spiffe_id)]
        assert views.get(caller) is first
        assert views.get(parse_selectors(["unix:uid:4242"])).matched is False
        assert views.built == 2

        svid = manager.svid(entry.id)
        assert svid is not None
        clock.set(svid.expires_at)
        expired = views.get(caller)
        assert expired.matched and expired.response is None, "an expired SVID is never served"
        assert views.built == 3
    finally:
        await manager.stop()
        await attested.client.close()
        await server.stop()
