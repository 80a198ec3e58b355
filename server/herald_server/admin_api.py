"""The admin API (``herald.admin.v1.AdminAPI``) on the server's local Unix socket.

Whoever can open the socket is an administrator, so the socket is created 0600 in a directory
herald creates 0700. Every request is validated here, at the edge: a malformed entry or an ID
outside the server's trust domain is INVALID_ARGUMENT naming the field, and each store error
keeps its message under the status code that says what the caller can do about it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol

import grpc

from herald_core.bundle import Bundle
from herald_core.entry import MAX_TTL_SECONDS, RESERVED_PATH, Entry, EntryError, is_reserved_id
from herald_core.logs import log_event
from herald_core.proto.herald.admin.v1 import admin_pb2, admin_pb2_grpc
from herald_core.proto.herald.types.v1 import types_pb2
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_core.unixsocket import SocketPathError, prepare_socket_path
from herald_core.wire import WireError, bundle_to_proto, entry_from_proto, entry_to_proto
from herald_server.admin_client import CHANNEL_OPTIONS
from herald_server.agents import TokenStore
from herald_server.ca import CAError
from herald_server.entries import (
    EntryExistsError,
    EntryNotFoundError,
    EntryStore,
    EntryStoreError,
    ReadOnlyStoreError,
    reserved_id_problem,
)
from herald_server.node_attestation import JoinTokenAttestor, agent_id_for

JOIN_TOKENS_STANDALONE_ONLY: Final = (
    "join tokens are for standalone mode; Kubernetes agents attest with service account tokens"
)

_log = logging.getLogger(__name__)
_Context = grpc.aio.ServicerContext[Any, Any]


class AdminSocketError(RuntimeError):
    """The admin socket cannot be created; the message names the path and the reason."""


class BundleSource(Protocol):
    def bundle(self) -> Bundle: ...


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # grpc.aio raises; this keeps mypy honest


def _store_status(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, ReadOnlyStoreError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, EntryNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, EntryExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, EntryError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class AdminService(admin_pb2_grpc.AdminAPIServicer):
    """Entries, join tokens and the bundle, for ``herald-server entry|token|bundle``."""

    def __init__(
        self,
        *,
        entries: EntryStore,
        tokens: TokenStore | None,
        ca: BundleSource,
        trust_domain: TrustDomain,
        join_token_ttl: timedelta,
    ) -> None:
        self._entries = entries
        self._tokens = tokens
        self._ca = ca
        self._trust_domain = trust_domain
        self._join_token_ttl = join_token_ttl

    async def CreateEntry(
        self, request: admin_pb2.CreateEntryRequest, context: _Context
    ) -> types_pb2.Entry:
        message = types_pb2.Entry()
        message.CopyFrom(request.entry)
        if not message.id:
            message.id = str(uuid.uuid4())
        entry = await self._checked_entry(message, context)
        try:
            stored = await self._entries.create(entry)
        except (EntryStoreError, EntryError) as exc:
            await _abort(context, _store_status(exc), str(exc))
        self._log_entry("entry created", stored)
        return entry_to_proto(stored)

    async def UpdateEntry(
        self, request: admin_pb2.UpdateEntryRequest, context: _Context
    ) -> types_pb2.Entry:
        if not request.entry.id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "id: required to update")
        entry = await self._checked_entry(request.entry, context)
        try:
            stored = await self._entries.update(entry)
        except (EntryStoreError, EntryError) as exc:
            await _abort(context, _store_status(exc), str(exc))
        self._log_entry("entry updated", stored)
        return entry_to_proto(stored)

    async def GetEntry(
        self, request: admin_pb2.GetEntryRequest, context: _Context
    ) -> types_pb2.Entry:
        if not request.id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "id: required")
        entry = self._entries.cache.get(request.id)
        if entry is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no entry with id {request.id}")
        return entry_to_proto(entry)

    async def ListEntries(
        self, request: admin_pb2.ListEntriesRequest, context: _Context
    ) -> admin_pb2.ListEntriesResponse:
        try:
            spiffe_id = _optional_id("by_spiffe_id", request.by_spiffe_id)
            parent_id = _optional_id("by_parent_id", request.by_parent_id)
            selectors = _selectors("by_selectors", request.by_selectors)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cache = self._entries.cache
        candidates = cache.by_parents([parent_id]) if parent_id is not None else list(cache)
        found = [
            entry
            for entry in candidates
            if (spiffe_id is None or entry.spiffe_id == spiffe_id) and selectors <= entry.selectors
        ]
        return admin_pb2.ListEntriesResponse(entries=[entry_to_proto(e) for e in found])

    async def DeleteEntry(
        self, request: admin_pb2.DeleteEntryRequest, context: _Context
    ) -> admin_pb2.DeleteEntryResponse:
        if not request.id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "id: required")
        try:
            removed = await self._entries.delete(request.id)
        except EntryStoreError as exc:
            await _abort(context, _store_status(exc), str(exc))
        self._log_entry("entry deleted", removed)
        return admin_pb2.DeleteEntryResponse()

    async def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: _Context
    ) -> admin_pb2.JoinToken:
        if self._tokens is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, JOIN_TOKENS_STANDALONE_ONLY)
        if not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ttl_seconds: must be between 1 and {MAX_TTL_SECONDS} "
                f"(0: the server default), got {request.ttl_seconds}",
            )
        ttl = timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        try:
            alias = self._alias(request.spiffe_id)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            value, record = await self._tokens.create_token(
                ttl=ttl or self._join_token_ttl, alias=alias
            )
        except EntryStoreError as exc:
            await _abort(context, _store_status(exc), str(exc))
        agent_id = agent_id_for(self._trust_domain, JoinTokenAttestor.method, record.token_id)
        log_event(
            _log,
            "info",
            "join token created",
            token_id=record.token_id,
            alias=str(alias or ""),
            expires_at=record.expires_at.isoformat(),
        )
        return admin_pb2.JoinToken(
            value=value,
            expires_at=int(record.expires_at.timestamp()),
            agent_id=str(agent_id),
            alias_id=str(record.alias) if record.alias is not None else "",
        )

    async def GetBundle(
        self, request: admin_pb2.GetBundleRequest, context: _Context
    ) -> admin_pb2.GetBundleResponse:
        try:
            bundle = self._ca.bundle()
        except CAError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"no trust bundle yet: {exc}")
        return admin_pb2.GetBundleResponse(
            bundle=bundle_to_proto(bundle), spiffe_jwks=bundle.to_spiffe_jwks()
        )

    async def _checked_entry(self, message: types_pb2.Entry, context: _Context) -> Entry:
        """The request's entry, validated and inside this server's trust domain."""
        clean = types_pb2.Entry()
        clean.CopyFrom(message)
        # The server owns these two; whatever a client sends for them is ignored.
        clean.revision = 0
        clean.created_at = 0
        try:
            entry = entry_from_proto(clean)
        except WireError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not entry.parent_id.is_member_of(self._trust_domain):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parentID: {entry.parent_id} is not in the server's trust domain "
                f"{self._trust_domain}",
            )
        reserved = reserved_id_problem(entry)
        if reserved is not None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, reserved)
        return entry

    def _alias(self, text: str) -> SpiffeId | None:
        if not text:
            return None
        alias = _parse_id("spiffeID", text)
        if not alias.is_member_of(self._trust_domain):
            raise ValueError(
                f"spiffeID: {alias} is not in the server's trust domain {self._trust_domain}"
            )
        if alias.is_root:
            raise ValueError(f"spiffeID: {alias} has no path; an agent alias needs one")
        # An alias among herald's own IDs would let a join-token agent pass for another agent.
        if is_reserved_id(alias):
            raise ValueError(
                f"spiffeID: {alias} is under {self._trust_domain.id}{RESERVED_PATH}/, "
                "which is reserved for herald's own agents and server"
            )
        return alias

    def _log_entry(self, msg: str, entry: Entry) -> None:
        log_event(
            _log,
            "info",
            msg,
            entry_id=entry.id,
            spiffe_id=str(entry.spiffe_id),
            parent_id=str(entry.parent_id),
            revision=entry.revision,
        )


def _parse_id(field: str, text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise ValueError(f"{field}: {exc}") from exc


def _optional_id(field: str, text: str) -> SpiffeId | None:
    return _parse_id(field, text) if text else None


def _selectors(field: str, messages: Iterable[types_pb2.Selector]) -> frozenset[Selector]:
    try:
        return frozenset(Selector(m.type, m.value) for m in messages)
    except SelectorError as exc:
        raise ValueError(f"{field}: {exc}") from exc


def _prepare_socket_path(path: Path) -> None:
    """Make the directory (0700 when herald creates it) and clear a stale socket."""
    try:
        prepare_socket_path(path, what="admin socket", owner="herald-server", dir_mode=0o700)
    except SocketPathError as exc:
        raise AdminSocketError(str(exc)) from exc


def _listen(server: grpc.aio.Server, socket_path: Path) -> None:
    # The umask makes the socket 0600 from the moment it exists; chmod then makes sure.
    previous = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    except RuntimeError as exc:
        raise AdminSocketError(f"cannot listen on admin socket {socket_path}: {exc}") from exc
    finally:
        os.umask(previous)
    socket_path.chmod(0o600)


async def serve_admin(
    socket_path: Path, service: admin_pb2_grpc.AdminAPIServicer
) -> grpc.aio.Server:
    """Start a grpc.aio server for ``service`` on ``socket_path`` (mode 0600); caller stops it."""
    _prepare_socket_path(socket_path)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    admin_pb2_grpc.add_AdminAPIServicer_to_server(service, server)
    _listen(server, socket_path)
    await server.start()
    log_event(_log, "info", "admin API listening", socket=str(socket_path))
    return server
