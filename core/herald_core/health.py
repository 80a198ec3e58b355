"""The HTTP endpoint every herald process serves for its probes and Prometheus.

``/live`` answers 200 while the event loop runs; ``/ready`` asks the process's readiness
callable and answers 200, or 503 with the reason in the body; ``/metrics`` is the text
exposition of the process's CollectorRegistry. Requests are not access-logged: probes arrive
every few seconds and would drown the events that matter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from herald_core.logs import log_event

Readiness = Callable[[], tuple[bool, str]]

_log = logging.getLogger(__name__)


class HealthServerError(RuntimeError):
    """The server cannot start (address in use, bad host) or was used out of order."""


class HealthServer:
    """``/live``, ``/ready`` and ``/metrics`` on ``host:port`` (port 0: any free port)."""

    def __init__(self, host: str, port: int, ready: Readiness, registry: CollectorRegistry) -> None:
        self._host = host
        self._requested_port = port
        self._ready = ready
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port actually bound; only known after ``start``."""
        if self._port is None:
            raise HealthServerError("the health server has not been started")
        return self._port

    async def start(self) -> None:
        if self._runner is not None:
            raise HealthServerError("the health server is already running")
        app = web.Application()
        app.router.add_get("/live", self._live)
        app.router.add_get("/ready", self._readiness)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            # No SO_REUSEPORT: a second process must not take a share of this port.
            await web.TCPSite(runner, self._host, self._requested_port, reuse_port=False).start()
        except OSError as exc:
            await runner.cleanup()
            raise HealthServerError(
                f"cannot listen on {self._host}:{self._requested_port} for health and "
                f"metrics: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log_event(_log, "info", "health server listening", host=self._host, port=self._port)

    async def stop(self) -> None:
        """Stop listening; safe to call when not started or already stopped."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _live(self, _: web.Request) -> web.Response:
        return web.Response(text="live\n")

    async def _readiness(self, _: web.Request) -> web.Response:
        try:
            ready, reason = self._ready()
        except Exception as exc:
            # A failing check means "not ready", never a 500 that hides why.
            _log.exception("readiness check failed")
            ready, reason = False, f"readiness check failed: {exc}"
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
