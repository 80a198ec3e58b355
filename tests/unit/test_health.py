"""Health and metrics endpoint: real HTTP over loopback, probes and Prometheus scrapes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from herald_core.health import HealthServer, HealthServerError


class Readiness:
    """What a process's readiness check returns, changed by the test."""

    def __init__(self) -> None:
        self.state: tuple[bool, str] = (False, "CA not loaded yet")
        self.error: Exception | None = None

    def __call__(self) -> tuple[bool, str]:
        if self.error is not None:
            raise self.error
        return self.state


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def server(readiness: Readiness, registry: CollectorRegistry) -> AsyncIterator[HealthServer]:
    health = HealthServer("127.0.0.1", 0, readiness, registry)
    await health.start()
    yield health
    await health.stop()


async def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_live_is_always_200(server: HealthServer) -> None:
    status, _, body = await get(server, "/live")
    assert (status, body) == (200, "live\n")


async def test_ready_follows_the_callable_and_says_why(
    server: HealthServer, readiness: Readiness
) -> None:
    assert await get(server, "/ready") == (
        503,
        "text/plain; charset=utf-8",
        "not ready: CA not loaded yet\n",
    )
    readiness.state = (True, "")
    status, _, body = await get(server, "/ready")
    assert (status, body) == (200, "ready\n")


async def test_a_failing_readiness_check_is_503_with_the_error(
    server: HealthServer, readiness: Readiness
) -> None:
    readiness.error = RuntimeError("store closed")
    status, _, body = await get(server, "/ready")
    assert (status, body) == (503, "not ready: readiness check failed: store closed\n")


async def test_metrics_expose_the_given_registry(
    server: HealthServer, registry: CollectorRegistry
) -> None:
    signed = Counter("herald_test_signed", "SVIDs signed", ["kind"], registry=registry)
    signed.labels(kind="x509").inc(3)
    status, content_type, body = await get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    [sample] = [s for s in families["herald_test_signed"].samples if s.name.endswith("_total")]
    assert sample.labels == {"kind": "x509"}
    assert sample.value == 3
    # Only the given registry: the process-wide default collectors are not in it.
    assert "python_gc_objects_collected" not in families


async def test_unknown_path_is_404(server: HealthServer) -> None:
    status, _, _ = await get(server, "/debug")
    assert status == 404


async def test_stop_closes_the_port(readiness: Readiness, registry: CollectorRegistry) -> None:
    health = HealthServer("127.0.0.1", 0, readiness, registry)
    await health.start()
    port = health.port
    await health.stop()
    await health.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


async def test_port_in_use_is_a_clear_error(
    server: HealthServer, readiness: Readiness, registry: CollectorRegistry
) -> None:
    other = HealthServer("127.0.0.1", server.port, readiness, registry)
    with pytest.raises(HealthServerError, match=rf"cannot listen on 127.0.0.1:{server.port} "):
        await other.start()


async def test_port_is_unknown_before_start(
    readiness: Readiness, registry: CollectorRegistry
) -> None:
    with pytest.raises(HealthServerError, match="has not been started"):
        _ = HealthServer("127.0.0.1", 0, readiness, registry).port


async def test_starting_twice_is_refused(server: HealthServer) -> None:
    with pytest.raises(HealthServerError, match="already running"):
        await server.start()
