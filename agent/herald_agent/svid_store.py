"""The agent's own SVID, key and trust bundle, kept in ``data_dir`` across restarts.

A restarted agent reuses its still-valid SVID instead of attesting again (SPIRE does the same):
a join token works only once, and re-attesting every node after a rollout would load the
server for nothing. Everything lives in one JSON file, written to a temporary file (0600, in the
0700 directory), synced and renamed over the old one, so a crash leaves the old state or the new
one, never a key from one and a certificate from the other. A file that is unreadable, expired,
of another trust domain, or whose key does not match its certificate is ignored with a log line;
the agent then attests afresh.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from herald_agent.server_client import AgentSvid, Attested
from herald_core.bundle import Bundle
from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.keys import load_private_key, private_key_to_pem, public_key_to_der
from herald_core.logs import log_event
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import certs_to_pem, load_pem_certs

STATE_FILE: Final = "agent-svid.json"
FORMAT_VERSION: Final = 1
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600

_log = logging.getLogger(__name__)


class SvidStoreError(Exception):
    """The stored state cannot be used; the message says why."""


class SvidStore:
    """Load and save the agent's attested state in ``data_dir``."""

    def __init__(
        self, data_dir: Path, trust_domain: TrustDomain, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.path = data_dir / STATE_FILE
        self._trust_domain = trust_domain
        self._clock = clock

    def load(self) -> Attested | None:
        """The stored SVID and bundle if still usable, else None (with the reason logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._ignored(f"cannot read it: {exc.strerror or exc}")
            return None
        try:
            attested = self._parse(raw)
        except SvidStoreError as exc:
            self._ignored(str(exc))
            return None
        log_event(
            _log,
            "info",
            "reusing the stored agent SVID",
            agent_id=str(attested.svid.spiffe_id),
            expires_at=attested.svid.expires_at.isoformat(),
        )
        return attested

    def save(self, attested: Attested) -> None:
        """Replace the stored state atomically; blocking file I/O (run it off the event loop)."""
        directory = self.path.parent
        # A directory the operator made is left as it is; the file itself is 0600 either way.
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        data = json.dumps(_document(attested)).encode()
        temporary = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _ignored(self, why: str) -> None:
        log_event(
            _log,
            "warning",
            "ignoring the stored agent SVID; attesting afresh",
            path=str(self.path),
            reason=why,
        )

    def _parse(self, raw: bytes) -> Attested:
        try:
            doc = json.loads(raw)
            if doc.get("version") != FORMAT_VERSION:
                raise SvidStoreError(f"unknown format version {doc.get('version')!r}")
            spiffe_id = SpiffeId.parse(doc["spiffe_id"])
            chain = tuple(load_pem_certs(doc["chain"].encode()))
            key = load_private_key(doc["key"].encode())
            received_at = dt.datetime.fromisoformat(doc["received_at"])
            jitter = float(doc["jitter"])
            bundle = Bundle.from_spiffe_jwks(spiffe_id.trust_domain, doc["bundle"])
        except SvidStoreError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SvidStoreError(f"cannot parse it: {exc!r}") from exc
        svid = AgentSvid(spiffe_id, key, chain, received_at, jitter)
        self._check(svid)
        return Attested(svid, bundle)

    def _check(self, svid: AgentSvid) -> None:
        if svid.spiffe_id.trust_domain != self._trust_domain:
            raise SvidStoreError(
                f"it is for trust domain {svid.spiffe_id.trust_domain}, not {self._trust_domain}"
            )
        if public_key_to_der(svid.key.public_key()) != public_key_to_der(
            svid.chain[0].public_key()
        ):
            raise SvidStoreError("its key does not match its certificate")
        if self._clock.now() >= svid.expires_at:
            raise SvidStoreError(f"it expired at {svid.expires_at.isoformat()}")


def _document(attested: Attested) -> dict[str, Any]:
    svid = attested.svid
    return {
        "version": FORMAT_VERSION,
        "spiffe_id": str(svid.spiffe_id),
        "chain": certs_to_pem(svid.chain).decode(),
        "key": private_key_to_pem(svid.key).decode(),
        "received_at": svid.received_at.isoformat(),
        "jitter": svid.jitter,
        "bundle": attested.bundle.to_spiffe_jwks().decode(),
    }
