"""A local HTTPS kubelet stand-in for the k8s attestor's tests and benchmark.

`make_tls` makes a throw-away CA and a serving certificate for the node name and 127.0.0.1;
`FakeKubelet` answers ``/pods`` to one bearer token only and counts its requests, or, given a
`KubeletWebhook`, to whoever the real API server says may read this node's pods, as a kubelet
with webhook authentication and authorization does (TokenReview, then SubjectAccessReview).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web

from tests.k8s.api import Kube
from tests.k8s.pki import TestCa
from tests.kubelet_pods import NODE

TOKEN = "kubelet-test-token"


@dataclass
class Tls:
    ca_file: Path
    server: ssl.SSLContext


def make_tls(directory: Path, name: str = "kubelet-ca") -> Tls:
    ca = TestCa.create(directory, name)
    pair = ca.issue(directory, f"{name}-{NODE}", dns_names=[NODE], ip_addresses=["127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pair.cert_file, pair.key_file)
    return Tls(ca.ca_file, server)


@dataclass
class KubeletWebhook:
    """A kubelet's webhook authn/authz: the API server (``kube``, as this node's identity)
    reviews the caller's token and decides whether that user may ``get nodes/pods``."""

    kube: Kube
    node: str

    async def check(self, header: str | None) -> tuple[int, str]:
        if not header or not header.startswith("Bearer "):
            return 401, "Unauthorized"
        return await asyncio.to_thread(self._check, header.removeprefix("Bearer "))

    def _check(self, token: str) -> tuple[int, str]:
        review = self.kube.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )["status"]
        if not review.get("authenticated"):
            return 401, "Unauthorized"
        user = review["user"]
        access = self.kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user["username"],
                    "uid": user.get("uid", ""),
                    "groups": user.get("groups", []),
                    "extra": user.get("extra", {}),
                    "resourceAttributes": {
                        "verb": "get",
                        "resource": "nodes",
                        "subresource": "pods",
                        "name": self.node,
                    },
                },
            },
        )["status"]
        if not access.get("allowed"):
            return 403, (
                f"Forbidden (user={user['username']}, verb=get, resource=nodes, subresource=pods)"
            )
        return 200, ""


@dataclass
class FakeKubelet:
    """Serves ``body`` on /pods to ``Bearer <token>`` (or to whom ``webhook`` admits); 401
    otherwise, or ``status`` if set."""

    body: bytes
    token: str | None = TOKEN
    status: int | None = None
    delay: float = 0.0
    requests: int = 0
    url_port: int = 0
    webhook: KubeletWebhook | None = None

    async def pods(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        if self.webhook is not None:
            code, text = await self.webhook.check(request.headers.get("Authorization"))
            if code != 200:
                return aiohttp.web.Response(status=code, text=text)
        elif (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            return aiohttp.web.Response(status=401, text="Unauthorized")
        if self.status is not None:
            return aiohttp.web.Response(
                status=self.status,
                text="Forbidden (user=system:serviceaccount:herald:herald-agent, verb=get, "
                "resource=nodes, subresource=proxy)",
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        return aiohttp.web.Response(body=self.body, content_type="application/json")


def site_port(site: aiohttp.web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound port only through the asyncio server.
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])
