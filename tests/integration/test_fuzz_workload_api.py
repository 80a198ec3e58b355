"""Fuzzing the Workload API request path: arbitrary bytes and arbitrary well-formed requests sent
over the real public socket, through the relay, to every RPC of a real agent stack.

Every answer must be one of the codes the Workload API gives (never UNKNOWN or INTERNAL, which
would mean a handler or grpc itself failed on the input) with a short message, and the agent
must go on serving. The fuzzing client is a blocking grpc channel in a worker thread, so the
agent keeps running on the test's event loop meanwhile. Bounded by ``tests/fuzzing.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message as protobuf_message
from hypothesis import given
from hypothesis import strategies as st

from herald_core.proto.spiffe.workload import workload_pb2
from tests.agent_harness import Agent, running_agent, socket_directory
from tests.fuzzing import FUZZ_EXAMPLES, fuzz

pytestmark = pytest.mark.timeout(120 + FUZZ_EXAMPLES)
HEADER = (("workload.spiffe.io", "true"),)
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
}
# RPC → (is a stream, request message).
RPCS: dict[str, tuple[bool, type[protobuf_message.Message]]] = {
    "FetchX509SVID": (True, workload_pb2.X509SVIDRequest),
    "FetchX509Bundles": (True, workload_pb2.X509BundlesRequest),
    "FetchJWTSVID": (False, workload_pb2.JWTSVIDRequest),
    "FetchJWTBundles": (True, workload_pb2.JWTBundlesRequest),
    "ValidateJWTSVID": (False, workload_pb2.ValidateJWTSVIDRequest),
    "FetchWITSVID": (True, workload_pb2.WITSVIDRequest),
    "FetchWITBundles": (True, workload_pb2.WITBundlesRequest),
}

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["spiffe://example.org/fuzz", "spiffe://Example.org/x", "a" * 2000, "x.y.z"]),
)
well_formed = st.one_of(
    st.builds(workload_pb2.JWTSVIDRequest, audience=st.lists(texts, max_size=40), spiffe_id=texts),
    st.builds(workload_pb2.ValidateJWTSVIDRequest, audience=texts, svid=texts),
    st.just(workload_pb2.X509SVIDRequest()),
).map(lambda request: request.SerializeToString())
bodies = st.one_of(st.binary(max_size=300), well_formed)


def call(
    channel: grpc.Channel, rpc: str, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    """``body`` as ``rpc``'s request; the final code and message (a stream's first message is
    an OK answer)."""
    stream, _ = RPCS[rpc]
    path = f"/SpiffeWorkloadAPI/{rpc}"
    try:
        if stream:
            responses = channel.unary_stream(path)(body, metadata=metadata, timeout=10)
            next(iter(responses))
            responses.cancel()
        else:
            channel.unary_unary(path)(body, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with socket_directory() as path:
        yield path


@pytest.fixture
async def agent(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path, socket_dir) as running:
        yield running


async def test_every_rpc_answers_any_request_with_a_workload_api_code(agent: Agent) -> None:
    await agent.entry("/fuzz")
    target = agent.target

    def fuzz_all() -> None:
        with grpc.insecure_channel(target) as channel:

            @fuzz
            @given(
                st.sampled_from(sorted(RPCS)),
                bodies,
                st.sampled_from([HEADER, (), (("workload.spiffe.io", "false"),)]),
            )
            def answers(rpc: str, body: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
                code, details = call(channel, rpc, body, metadata)
                assert code in ANSWERS, (rpc, body, code, details)
                assert len(details) < 2048, (rpc, details[:200])

            answers()

    await asyncio.to_thread(fuzz_all)
    # Still serving: a good request gets the caller's SVID.
    async with grpc.aio.insecure_channel(target) as channel:
        stream = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
            response_deserializer=workload_pb2.X509SVIDResponse.FromString,
        )(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        first = await stream.read()
        assert first.svids[0].spiffe_id == "spiffe://example.org/fuzz"
        stream.cancel()
    calls = agent.service.metrics.calls
    assert sum(calls.values()) >= FUZZ_EXAMPLES, "every input reached the service"
    assert not [key for key in calls if key[1] in ("UNKNOWN", "INTERNAL")], calls
