"""A standalone server under an upstream CA picks up a renewed upstream without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald_core.proto.herald.agent.v1 import agent_pb2
from herald_server.server import HeraldServer
from tests.server_harness import create_entry, csr_for, new_agent, start_server
from tests.unit.test_upstream import make_pki, write_files

pytestmark = pytest.mark.timeout(60)


async def test_a_renewed_upstream_is_picked_up_and_a_broken_one_ignored(tmp_path: Path) -> None:
    first = make_pki()
    upstream_dir = write_files(tmp_path / "upstream", first.secret_data())
    server: HeraldServer = await start_server(tmp_path, ca={"upstream": {"dir": str(upstream_dir)}})
    try:
        assert server.ca.bundle().x509_authorities == (first.root.cert,)
        assert not await server.refresh_upstream(), "nothing changed yet"

        write_files(upstream_dir, {"tls.crt": b"half-written"})
        assert not await server.refresh_upstream(), "a broken renewal keeps the current upstream"
        assert server.ca.settings.upstream is not None
        assert server.ca.settings.upstream.cert == first.upstream.cert

        renewed = make_pki()
        write_files(upstream_dir, renewed.secret_data())
        assert await server.refresh_upstream()
        assert not await server.refresh_upstream()
        assert server.ca.settings.upstream.cert == renewed.upstream.cert

        agent = await new_agent(server)
        entry = await create_entry(server, "/web", agent.spiffe_id)
        request = agent_pb2.BatchSignX509SVIDRequest(
            params=[agent_pb2.X509SVIDParams(entry_id=entry.id, csr=csr_for(entry)[1])]
        )
        (result,) = (await agent.stub(server).BatchSignX509SVID(request)).results
        assert result.status.code == 0, "the server keeps signing across the renewal"
        await agent.close()
    finally:
        await server.stop()
