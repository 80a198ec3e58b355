"""Node attestation: proving which node an agent runs on, and the agent SPIFFE ID that follows.

Two methods, as in SPIRE: ``join_token`` (one-time tokens from ``herald-server token generate``,
standalone mode) and ``k8s_psat`` (a projected service-account token reviewed by the Kubernetes
API; the token must belong to an agent pod, and the pod's node gives the agent its ID).
Refusals carry a message safe to return to the caller; the detailed reason goes to the log only,
so a prober learns nothing about which tokens exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from kubernetes import client as k8s

from herald_core.proto.herald.agent.v1 import agent_pb2
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_server.agents import JoinTokenError, TokenStore, agent_id
from herald_server.kube import ApiClientFactory, api_session
from herald_server.metrics import AttestationMethod

log = logging.getLogger(__name__)

_SA_PREFIX = "system:serviceaccount:"
_POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
_POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class AttestationError(Exception):
    """A refused attestation: ``code`` and ``public`` go to the caller, ``reason`` to the log."""

    def __init__(self, code: grpc.StatusCode, public: str, reason: str = "") -> None:
        super().__init__(public)
        self.code = code
        self.public = public
        self.reason = reason or public


@dataclass(frozen=True)
class AttestedNode:
    agent_id: SpiffeId
    method: str
    aliases: frozenset[SpiffeId] = frozenset()
    node_name: str = ""
    node_uid: str = ""


class NodeAttestor(Protocol):
    method: AttestationMethod

    async def attest(self, request: agent_pb2.AttestAgentRequest) -> AttestedNode: ...


def agent_id_for(trust_domain: TrustDomain, method: str, *parts: str) -> SpiffeId:
    """``spiffe://<td>/herald/agent/<method>/<parts…>`` — the reserved agent ID namespace."""
    try:
        return agent_id(trust_domain, method, *parts)
    except SpiffeIdError as exc:
        raise AttestationError(
            grpc.StatusCode.PERMISSION_DENIED, "cannot derive an agent ID", str(exc)
        ) from exc


class JoinTokenAttestor:
    method: AttestationMethod = "join_token"

    def __init__(self, tokens: TokenStore, trust_domain: TrustDomain) -> None:
        self._tokens = tokens
        self._trust_domain = trust_domain

    async def attest(self, request: agent_pb2.AttestAgentRequest) -> AttestedNode:
        value = request.join_token.token
        if not value:
            raise AttestationError(grpc.StatusCode.INVALID_ARGUMENT, "join_token.token is empty")
        try:
            record = await self._tokens.consume_token(value)
        except JoinTokenError as exc:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED, "join token is not valid", str(exc)
            ) from exc
        aliases = frozenset({record.alias}) if record.alias is not None else frozenset()
        return AttestedNode(
            agent_id=agent_id_for(self._trust_domain, self.method, record.token_id),
            method=self.method,
            aliases=aliases,
        )


class K8sPsatAttestor:
    """Projected service-account token → TokenReview → agent pod → its node → agent ID."""

    method: AttestationMethod = "k8s_psat"

    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        *,
        trust_domain: TrustDomain,
        cluster_name: str,
        audience: str,
        agent_namespace: str,
        agent_service_accounts: Collection[str],
    ) -> None:
        self._api = api_client_factory
        self._trust_domain = trust_domain
        self._cluster = cluster_name
        self._audience = audience
        self._namespace = agent_namespace
        self._service_accounts = frozenset(agent_service_accounts)

    async def attest(self, request: agent_pb2.AttestAgentRequest) -> AttestedNode:
        params = request.k8s_psat
        if not params.token:
            raise AttestationError(grpc.StatusCode.INVALID_ARGUMENT, "k8s_psat.token is empty")
        if params.cluster != self._cluster:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this server does not attest nodes of cluster {params.cluster!r}",
            )
        return await asyncio.to_thread(self._attest_blocking, params.token)

    def _attest_blocking(self, token: str) -> AttestedNode:
        with api_session(self._api) as api_client:
            user = self._review(api_client, token)
            pod_name, pod_uid = self._check_user(user)
            node_name = self._check_pod(api_client, pod_name, pod_uid)
            node_uid = self._node_uid(api_client, node_name)
        return AttestedNode(
            agent_id=agent_id_for(self._trust_domain, self.method, self._cluster, node_uid),
            method=self.method,
            node_name=node_name,
            node_uid=node_uid,
        )

    def _review(self, api_client: k8s.ApiClient, token: str) -> Any:
        review = k8s.V1TokenReview(
            spec=k8s.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        try:
            result = k8s.AuthenticationV1Api(api_client).create_token_review(review)
        except k8s.ApiException as exc:
            raise AttestationError(
                grpc.StatusCode.UNAVAILABLE,
                "cannot review the token with the Kubernetes API",
                f"TokenReview failed: {exc.status} {exc.reason}",
            ) from exc
        status = result.status
        if not status or not status.authenticated:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                "service account token is not valid",
                f"TokenReview: not authenticated: {getattr(status, 'error', '') or 'no reason'}",
            )
        if self._audience not in (status.audiences or [self._audience]):
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                "service account token is not valid",
                f"TokenReview: audience {self._audience!r} not granted",
            )
        return status.user

    def _check_user(self, user: Any) -> tuple[str, str]:
        username = (user.username or "") if user else ""
        namespace, _, account = username.removeprefix(_SA_PREFIX).partition(":")
        if not username.startswith(_SA_PREFIX) or not account:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                "token does not belong to a service account",
                f"TokenReview user {username!r}",
            )
        if namespace != self._namespace or account not in self._service_accounts:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"service account {namespace}/{account} may not attest as a herald agent",
            )
        extra = user.extra or {}
        pod_name = (extra.get(_POD_NAME_EXTRA) or [""])[0]
        pod_uid = (extra.get(_POD_UID_EXTRA) or [""])[0]
        if not pod_name or not pod_uid:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                "token is not bound to a pod; use a projected service account token",
            )
        return pod_name, pod_uid

    def _check_pod(self, api_client: k8s.ApiClient, pod_name: str, pod_uid: str) -> str:
        try:
            pod = k8s.CoreV1Api(api_client).read_namespaced_pod(pod_name, self._namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                raise AttestationError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the token's pod no longer exists",
                    f"pod {self._namespace}/{pod_name} not found",
                ) from exc
            raise AttestationError(
                grpc.StatusCode.UNAVAILABLE,
                "cannot read the agent pod",
                f"{exc.status} {exc.reason}",
            ) from exc
        found_uid = pod.metadata.uid if pod.metadata else None
        if found_uid != pod_uid:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED,
                "the token's pod no longer exists",
                f"pod {pod_name} has uid {found_uid}, token names {pod_uid}",
            )
        node_name = str(pod.spec.node_name or "") if pod.spec else ""
        if not node_name:
            raise AttestationError(
                grpc.StatusCode.PERMISSION_DENIED, "the agent pod is not scheduled on a node"
            )
        return node_name

    def _node_uid(self, api_client: k8s.ApiClient, node_name: str) -> str:
        try:
            node = k8s.CoreV1Api(api_client).read_node(node_name)
        except k8s.ApiException as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.status == 404
                else grpc.StatusCode.UNAVAILABLE
            )
            raise AttestationError(
                code, f"cannot confirm node {node_name}", f"{exc.status} {exc.reason}"
            ) from exc
        uid = node.metadata.uid if node.metadata else None
        if not uid:
            raise AttestationError(
                grpc.StatusCode.UNAVAILABLE, f"node {node_name} has no uid", "node without uid"
            )
        return str(uid)
