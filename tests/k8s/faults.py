"""Faults on cue in front of the real API server: an HTTPS proxy that fails chosen requests.

A real kube-apiserver cannot be told to answer 503 to the next read of one Secret, or to drop
every open watch now. `FaultProxy` sits between a component and the API server: it forwards
every request unchanged (the component's token, so RBAC still decides), streams answers (watches
included), and on cue answers a chosen request with an error Status, cuts the open watches, or
refuses everything for an outage. Point a component at it with `kubeconfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import yaml

from tests.k8s.controlplane import ControlPlane, free_port

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)


def _is_watch(request: aiohttp.web.BaseRequest) -> bool:
    return request.query.get("watch") in ("1", "true")


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int | None
    watch: bool | None

    def matches(self, request: aiohttp.web.BaseRequest) -> bool:
        return (
            request.method == self.method
            and self.path.fullmatch(request.path) is not None
            and (self.watch is None or self.watch == _is_watch(request))
        )


def _status(code: int) -> dict[str, Any]:
    reason = {
        404: "NotFound",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
    }
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"injected by the test's fault proxy ({code})",
        "reason": reason.get(code, "InternalError"),
        "code": code,
    }


class FaultProxy:
    """See the module docstring. Runs its own event loop in a thread; methods are thread-safe."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self._rules: list[_Rule] = []
        self._down = False
        self._lock = threading.Lock()
        self._open = asyncio.Event()
        # Open watches by id of their request (requests are not hashable).
        self._watches: dict[int, tuple[aiohttp.web.BaseRequest, aiohttp.ClientResponse]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faults")
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._serve())
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _serve(self) -> None:
        self._open.set()
        pki = self.plane.workdir / "pki"
        assert self.plane.ca is not None
        pair = self.plane.ca.issue(pki, f"fault-proxy-{self.port}", ip_addresses=("127.0.0.1",))
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(pair.cert_file, pair.key_file)
        upstream = ssl.create_default_context(cafile=str(self.plane.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        server = aiohttp.web.Server(self._handle)
        self._runner = aiohttp.web.ServerRunner(server)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=serving).start()

    async def _shutdown(self) -> None:
        await self._cut()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- on cue -----------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        status: int = 503,
        *,
        times: int | None = None,
        watch: bool | None = None,
    ) -> None:
        """Answer ``method`` requests to ``path`` (a regular expression over the whole path,
        query excluded) with ``status``, ``times`` times (every time if None); with ``watch``,
        only watches (True) or only other requests (False)."""
        with self._lock:
            self._rules.append(_Rule(method.upper(), re.compile(path), status, times, watch))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._down = False

    def outage(self, down: bool = True) -> None:
        """While down, every request (watches included) fails with 503 and open watches end."""
        with self._lock:
            self._down = down
        if down:
            self.cut_watches()

    def cut_watches(self) -> None:
        """Drop every open watch's connection now, as a network fault would."""
        self._call(self._cut())

    def end_watches(self) -> None:
        """End every open watch cleanly, as the API server does when a watch times out: the
        client resumes from the last resourceVersion it saw."""
        self._call(self._cut(abrupt=False))

    async def _cut(self, abrupt: bool = True) -> None:
        for request, upstream in list(self._watches.values()):
            upstream.close()
            if abrupt and request.transport is not None:
                request.transport.close()
        self._watches.clear()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """New requests wait in the proxy while the block runs, then go on as they are."""
        self._loop.call_soon_threadsafe(self._open.clear)
        try:
            yield
        finally:
            self._loop.call_soon_threadsafe(self._open.set)

    def expire_watches(self) -> None:
        """A real ``410 Gone`` for every watch through this proxy: the watches end cleanly and
        their clients' resumptions wait here while etcd is compacted and the API server
        restarts; then they reach a server to which their resourceVersion is too old."""
        with self.held():
            self.end_watches()
            self.plane.expire_watches()

    def count(self, method: str, path: str) -> int:
        pattern = re.compile(path)
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and pattern.fullmatch(p))

    def kubeconfig(self, source: Path) -> Path:
        """A copy of ``source`` that reaches the API server through this proxy."""
        doc = yaml.safe_load(source.read_text())
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = self.url
        target = source.with_name(f"{source.stem}-via-{self.port}.kubeconfig")
        target.write_text(yaml.safe_dump(doc))
        target.chmod(0o600)
        return target

    # --- forwarding -------------------------------------------------------------------------

    def _injected(self, request: aiohttp.web.BaseRequest) -> int | None:
        with self._lock:
            self.requests.append((request.method, request.path))
            if self._down:
                return 503
            for rule in self._rules:
                if rule.matches(request) and rule.remaining != 0:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.status
        return None

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await self._open.wait()
        status = self._injected(request)
        if status is not None:
            return aiohttp.web.json_response(_status(status), status=status)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        try:
            return await self._forward(request, headers, body)
        except aiohttp.ClientConnectorError:
            # No API server behind the proxy: answer as a load balancer without backends would.
            return aiohttp.web.json_response(_status(503), status=503)

    async def _forward(
        self, request: aiohttp.web.BaseRequest, headers: dict[str, str], body: bytes
    ) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.plane.url + request.rel_url.raw_path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
            # Forward the client's headers as they are: aiohttp must not add a content type.
            skip_auto_headers=("Content-Type",),
        ) as upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers[key] = value
            await response.prepare(request)
            if _is_watch(request):
                self._watches[id(request)] = (request, upstream)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError):
                pass  # the test cut it, or the API server went away: the client sees it end
            finally:
                self._watches.pop(id(request), None)
            return response
