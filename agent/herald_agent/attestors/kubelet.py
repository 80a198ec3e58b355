"""The kubelet's pod list, fetched once for many concurrent attestations.

The agent asks its own node's kubelet (``GET /pods``) which pods run here. One fetch serves every
attestation that needs it: a caller that finds a fetch in flight awaits that fetch, and a finished
list is reused for ``max_age`` seconds. When an attestation misses (its pod or container is not in
the list), it asks for a list *newer than the one that missed*; callers that missed the same list
share that one refetch. (SPIRE once fetched per attestation; at ~70 pods a node that cost its
users 400-630 millicores per agent.)

The secure port (10250) needs the agent's service-account token, re-read whenever the file
changes (projected tokens are rotated in place), and authorization: the kubelet asks the API
server whether the token's subject may ``get`` ``nodes/pods`` (Kubernetes 1.33 and newer, where
KubeletFineGrainedAuthz is on by default) or ``nodes/proxy`` (older kubelets). A 401 or 403 is
turned into an error that says exactly that. The read-only port (10255, plain HTTP, no auth)
is supported for clusters that still run it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
SECURE_PORT: Final = 10250
READ_ONLY_PORT: Final = 10255
_BODY_SNIPPET: Final = 300

JsonObject = dict[str, Any]


class KubeletError(Exception):
    """The pod list could not be had; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class KubeletConfig:
    """Where the kubelet is and how to trust and authenticate to it.

    ``read_only`` uses plain HTTP without a token (set ``port`` to 10255 with it). Without
    ``ca_path`` and ``skip_verify`` the system's trust store is used. ``tls_server_name`` is the
    name checked against the kubelet's certificate when it is not ``host`` (a kubelet serving
    certificate usually names the node, not 127.0.0.1).
    """

    host: str = "127.0.0.1"
    port: int = SECURE_PORT
    read_only: bool = False
    token_path: str = f"{SERVICE_ACCOUNT_DIR}/token"
    ca_path: str | None = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
    skip_verify: bool = False
    tls_server_name: str | None = None
    max_age: float = 1.0
    timeout: float = 10.0

    @property
    def url(self) -> str:
        scheme = "http" if self.read_only else "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/pods"


class PodList:
    """One fetched ``/pods`` answer, indexed by pod UID."""

    __slots__ = ("_by_uid", "fetched_at")

    def __init__(self, pods: dict[str, JsonObject], fetched_at: float) -> None:
        self._by_uid = pods
        # time.monotonic() when the request was sent: the list shows the node at or after it.
        self.fetched_at = fetched_at

    def pod(self, uid: str) -> JsonObject | None:
        return self._by_uid.get(uid)

    def __len__(self) -> int:
        return len(self._by_uid)


def parse_pod_list(body: bytes, fetched_at: float) -> PodList:
    """Decode a ``PodList`` and index its items by ``metadata.uid``; KubeletError if malformed."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise KubeletError(f"the kubelet's /pods answer is not JSON: {exc}") from exc
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise KubeletError("the kubelet's /pods answer is not a PodList (no 'items' list)")
    pods: dict[str, JsonObject] = {}
    for item in items:
        metadata = item.get("metadata") if isinstance(item, dict) else None
        uid = metadata.get("uid") if isinstance(metadata, dict) else None
        if isinstance(uid, str):
            pods[uid] = item
    return PodList(pods, fetched_at)


class _TokenFile:
    """The service-account token, re-read only when the file changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._identity: tuple[int, int, int, int] | None = None
        self._token = ""

    def read(self) -> str:
        try:
            stat = os.stat(self._path)
            identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if identity != self._identity:
                with open(self._path, encoding="utf-8") as token_file:
                    self._token = token_file.read().strip()
                self._identity = identity
        except OSError as exc:
            raise KubeletError(
                f"cannot read the service-account token {self._path}: {exc.strerror}"
            ) from exc
        if not self._token:
            raise KubeletError(f"the service-account token file {self._path} is empty")
        return self._token


class KubeletClient:
    """Fetches the kubelet's pod list, one fetch at a time, cached for ``config.max_age``."""

    def __init__(self, config: KubeletConfig) -> None:
        self._config = config
        self._ssl = None if config.read_only else _ssl_context(config)
        self._token = None if config.read_only else _TokenFile(config.token_path)
        self._session: aiohttp.ClientSession | None = None
        self._cached: PodList | None = None
        self._inflight: asyncio.Task[PodList] | None = None
        self._inflight_started = -math.inf
        self.fetches = 0
        """How many requests were sent to the kubelet (for metrics and tests)."""

    async def pods(self, newer_than: float = -math.inf) -> PodList:
        """A pod list fetched after ``newer_than`` (a PodList.fetched_at) and not too old."""
        while True:
            cached = self._cached
            if (
                cached is not None
                and cached.fetched_at > newer_than
                and time.monotonic() - cached.fetched_at <= self._config.max_age
            ):
                return cached
            task = self._inflight
            if task is not None and self._inflight_started > newer_than:
                # shield: one caller giving up must not cancel the fetch the others await.
                return await asyncio.shield(task)
            if task is not None:
                # A fetch older than the caller's miss is running: let it land, then decide.
                await asyncio.wait({task})
                continue
            return await asyncio.shield(self._start_fetch())

    async def close(self) -> None:
        if self._inflight is not None:
            await asyncio.wait({self._inflight})
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _start_fetch(self) -> asyncio.Task[PodList]:
        self._inflight_started = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._fetch(self._inflight_started))
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[PodList]) -> None:
        self._inflight = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._cached = task.result()
        else:
            log.warning("event=kubelet_fetch_failed error=%r", str(error))

    async def _fetch(self, started: float) -> PodList:
        self.fetches += 1
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.read()}"
        session = self._session_for_loop()
        config = self._config
        try:
            async with session.get(
                config.url,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                server_hostname=config.tls_server_name,
            ) as response:
                body = await response.read()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise KubeletError(_tls_failure(config, exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeletError(f"cannot reach the kubelet at {config.url}: {exc!r}") from exc
        if status != 200:
            raise KubeletError(_status_failure(config, status, body))
        return await asyncio.to_thread(parse_pod_list, body, started)

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
                # The kubelet is always the one host: keep its connection open between fetches.
                connector=aiohttp.TCPConnector(limit=1),
            )
        return self._session


def _ssl_context(config: KubeletConfig) -> ssl.SSLContext:
    if config.skip_verify:
        log.warning(
            "event=kubelet_tls_unverified url=%s detail=%r",
            config.url,
            "the kubelet's certificate is not verified: anyone who can answer on that address "
            "decides which pods run here",
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=config.ca_path)
    except OSError as exc:
        raise KubeletError(f"cannot read the kubelet CA file {config.ca_path}: {exc}") from exc


def _tls_failure(config: KubeletConfig, exc: Exception) -> str:
    trusted = config.ca_path or "the system trust store"
    return (
        f"the kubelet at {config.url} presented a certificate that {trusted} does not verify "
        f"({exc}); point the kubelet CA setting at the CA that signed the kubelet's serving "
        "certificate, set the TLS server name the certificate carries, or (insecure) skip "
        "verification"
    )


def _status_failure(config: KubeletConfig, status: int, body: bytes) -> str:
    said = body[:_BODY_SNIPPET].decode("utf-8", "replace").strip()
    if status == 401:
        return (
            f"the kubelet at {config.url} refused the agent's token (HTTP 401): check that "
            f"{config.token_path} holds a current service-account token and that the kubelet "
            f"authenticates tokens (--authentication-token-webhook=true); kubelet said: {said!r}"
        )
    if status == 403:
        return (
            f"the kubelet at {config.url} forbade GET /pods (HTTP 403): the agent's service "
            "account needs RBAC 'get' on 'nodes/pods' (Kubernetes 1.33 and newer, where "
            "KubeletFineGrainedAuthz is on by default; the herald chart grants it) or on "
            "'nodes/proxy' (older kubelets), e.g. a ClusterRole rule {apiGroups: [''], "
            "resources: ['nodes/pods'], verbs: ['get']} bound to it; "
            f"kubelet said: {said!r}"
        )
    return f"the kubelet at {config.url} answered HTTP {status} to GET /pods: {said!r}"
