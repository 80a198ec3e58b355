"""Persistence of the CA state: every X.509 CA and JWT signing key, with their rotation state.

``CAState`` is the one document the CA manager saves and loads, as JSON with PEM certificates
and keys. Two stores keep it: ``DirKeyStore`` (standalone: a 0700 directory holding one 0600 file
written atomically) and ``SecretKeyStore`` (Kubernetes: one Secret, updated with its
resourceVersion so two writers can never silently overwrite each other). Both give every saved
state an opaque version; ``save`` takes the version the caller last saw and raises
``KeyStoreConflict`` when the stored state has moved on since.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import kubernetes.client
import kubernetes.watch
from cryptography import x509
from kubernetes.client.exceptions import ApiException

from herald_core.keys import (
    PrivateKey,
    UnsupportedKeyError,
    load_private_key,
    private_key_to_pem,
    public_key_to_der,
)
from herald_core.spiffeid import TrustDomain
from herald_core.x509svid import X509SvidError, certs_to_pem, load_pem_certs, spiffe_id_of

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
STATE_FILE: Final = "ca-state.json"
"""The file name in the data directory, and the data key in the Secret."""

SECRET_LABELS: Final = {
    "app.kubernetes.io/name": "herald",
    "app.kubernetes.io/component": "ca",
}

# Bits that let anyone but the owner reach a key: ssh refuses keys with any of them, so do we.
_NOT_OWNER_ONLY: Final = 0o077
_HTTP_NOT_FOUND: Final = 404
_HTTP_CONFLICT: Final = 409
_HTTP_GONE: Final = 410
# A watch request ends server-side after this long; the thread then re-watches. It also bounds
# how long the thread can outlive a cancelled watch() if closing the socket did not wake it.
_WATCH_TIMEOUT_SECONDS: Final = 60
_RELIST_BACKOFF_START: Final = 0.5
_RELIST_BACKOFF_MAX: Final = 30.0


class KeyStoreError(Exception):
    """The stored CA state cannot be read or written; the message names where and why."""


class CAStateError(KeyStoreError):
    """A CA state document that is malformed or inconsistent; the message names the field."""


class KeyStoreConflict(KeyStoreError):
    """Someone else saved the state after the version the caller based its change on."""


class SlotStatus(StrEnum):
    """Where a CA or JWT key is in its life: in the bundle only, signing, or in the bundle only
    until everything it signed has expired."""

    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class X509Slot:
    """One X.509 CA.

    ``chain`` is herald's CA certificate followed by any upstream intermediates (never a root);
    ``roots`` is what the bundle publishes for this CA: the CA itself when self-signed, the
    upstream roots otherwise. ``activate_at`` is when it starts (or started) signing.
    """

    status: SlotStatus
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    roots: tuple[x509.Certificate, ...]
    issued_at: datetime
    activate_at: datetime

    def __post_init__(self) -> None:
        if not self.chain:
            raise CAStateError("an X.509 CA slot needs its certificate")
        if not self.roots:
            raise CAStateError("an X.509 CA slot needs the roots that anchor it")
        _check_aware(self.issued_at, "issued_at")
        _check_aware(self.activate_at, "activate_at")
        if public_key_to_der(self.key.public_key()) != public_key_to_der(
            self.chain[0].public_key()
        ):
            raise CAStateError(
                f"the key does not match the CA certificate (serial {self.serial_hex})"
            )

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What SVID chains carry after the leaf: the chain minus roots (none when self-signed)."""
        return tuple(cert for cert in self.chain if cert not in self.roots)

    @property
    def serial_hex(self) -> str:
        return f"{self.cert.serial_number:x}"


@dataclass(frozen=True)
class JwtSlot:
    """One JWT-SVID signing key; ``not_after`` caps the ``exp`` of every token it signs."""

    status: SlotStatus
    kid: str
    key: PrivateKey
    issued_at: datetime
    not_after: datetime
    activate_at: datetime

    def __post_init__(self) -> None:
        if not self.kid:
            raise CAStateError("a JWT key slot needs a non-empty kid")
        _check_aware(self.issued_at, "issued_at")
        _check_aware(self.not_after, "not_after")
        _check_aware(self.activate_at, "activate_at")
        if self.not_after <= self.issued_at:
            raise CAStateError(f"JWT key {self.kid!r} expires before it was issued")


@dataclass(frozen=True)
class CAState:
    """Everything the CA manager persists. ``sequence`` is the bundle's ``spiffe_sequence``;
    ``refresh_hint`` (seconds) is stored so every replica publishes identical bundle content
    under one sequence number; ``revision`` grows with every save so a replica can tell a newer
    state from a stale one without comparing opaque store versions.
    """

    trust_domain: TrustDomain
    x509_slots: tuple[X509Slot, ...]
    jwt_slots: tuple[JwtSlot, ...]
    sequence: int
    refresh_hint: int
    revision: int

    def __post_init__(self) -> None:
        for name in ("sequence", "refresh_hint", "revision"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CAStateError(f"{name} must be a non-negative integer, not {value!r}")
        for kind, slots in (("x509_slots", self.x509_slots), ("jwt_slots", self.jwt_slots)):
            for status in (SlotStatus.ACTIVE, SlotStatus.PREPARED):
                count = sum(1 for slot in slots if slot.status is status)
                if count > 1:
                    raise CAStateError(f"{kind} has {count} {status} slots; at most one is allowed")
        for index, slot in enumerate(self.x509_slots):
            _check_ca_trust_domain(slot, self.trust_domain, f"x509_slots[{index}]")
        kids = [slot.kid for slot in self.jwt_slots]
        duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
        if duplicates:
            raise CAStateError(f"jwt_slots repeat kid {duplicates[0]!r}")

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "trust_domain": self.trust_domain.name,
            "sequence": self.sequence,
            "refresh_hint": self.refresh_hint,
            "revision": self.revision,
            "x509_slots": [_x509_slot_doc(slot) for slot in self.x509_slots],
            "jwt_slots": [_jwt_slot_doc(slot) for slot in self.jwt_slots],
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> CAState:
        """Parse a saved state; CAStateError names the first field that is missing or wrong."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CAStateError(f"not valid JSON: {exc}") from exc
        root = _Fields(doc, "state")
        found = root.integer("format")
        if found != FORMAT_VERSION:
            raise CAStateError(
                f"unknown format version {found}; this herald reads version {FORMAT_VERSION}"
            )
        try:
            trust_domain = TrustDomain(root.string("trust_domain"))
        except ValueError as exc:
            raise CAStateError(f"state.trust_domain: {exc}") from exc
        return cls(
            trust_domain=trust_domain,
            x509_slots=tuple(_x509_slot(item) for item in root.objects("x509_slots")),
            jwt_slots=tuple(_jwt_slot(item) for item in root.objects("jwt_slots")),
            sequence=root.integer("sequence"),
            refresh_hint=root.integer("refresh_hint"),
            revision=root.integer("revision"),
        )


def _check_aware(when: datetime, name: str) -> None:
    if when.utcoffset() is None:
        raise CAStateError(f"{name} must be a timezone-aware datetime")


def _check_ca_trust_domain(slot: X509Slot, trust_domain: TrustDomain, where: str) -> None:
    try:
        ca_td = spiffe_id_of(slot.cert).trust_domain
    except X509SvidError as exc:
        raise CAStateError(f"{where}: the CA certificate has no SPIFFE ID: {exc}") from exc
    if ca_td != trust_domain:
        raise CAStateError(
            f"{where}: the CA belongs to trust domain {ca_td}, not the state's {trust_domain}"
        )


def _time(when: datetime) -> str:
    return when.isoformat()


def _key_pem(key: PrivateKey) -> str:
    return private_key_to_pem(key).decode("ascii")


def _x509_slot_doc(slot: X509Slot) -> dict[str, Any]:
    return {
        "status": slot.status.value,
        "issued_at": _time(slot.issued_at),
        "activate_at": _time(slot.activate_at),
        "chain_pem": certs_to_pem(slot.chain).decode("ascii"),
        "key_pem": _key_pem(slot.key),
        "roots_pem": certs_to_pem(slot.roots).decode("ascii"),
    }


def _jwt_slot_doc(slot: JwtSlot) -> dict[str, Any]:
    return {
        "status": slot.status.value,
        "kid": slot.kid,
        "issued_at": _time(slot.issued_at),
        "not_after": _time(slot.not_after),
        "activate_at": _time(slot.activate_at),
        "key_pem": _key_pem(slot.key),
    }


class _Fields:
    """Typed reads of one JSON object's members, each error naming the member's full path."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise CAStateError(f"{where} must be a JSON object")
        self._doc = doc
        self.where = where

    def _get(self, name: str) -> object:
        if name not in self._doc:
            raise CAStateError(f"{self.where}.{name} is missing")
        return self._doc[name]

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CAStateError(f"{self.where}.{name} must be an integer")
        return value

    def string(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise CAStateError(f"{self.where}.{name} must be a string")
        return value

    def objects(self, name: str) -> Iterator[_Fields]:
        value = self._get(name)
        if not isinstance(value, list):
            raise CAStateError(f"{self.where}.{name} must be an array")
        for index, item in enumerate(value):
            yield _Fields(item, f"{self.where}.{name}[{index}]")

    def status(self) -> SlotStatus:
        value = self.string("status")
        try:
            return SlotStatus(value)
        except ValueError:
            allowed = ", ".join(s.value for s in SlotStatus)
            raise CAStateError(f"{self.where}.status is {value!r}; use one of {allowed}") from None

    def time(self, name: str) -> datetime:
        value = self.string(name)
        try:
            when = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CAStateError(f"{self.where}.{name} is not an ISO 8601 time: {exc}") from exc
        if when.utcoffset() is None:
            raise CAStateError(f"{self.where}.{name} has no time zone")
        return when

    def certs(self, name: str) -> tuple[x509.Certificate, ...]:
        try:
            return tuple(load_pem_certs(self.string(name).encode("ascii")))
        except (UnicodeEncodeError, X509SvidError) as exc:
            raise CAStateError(f"{self.where}.{name}: {exc}") from exc

    def key(self, name: str) -> PrivateKey:
        text = self.string(name)
        if not text.lstrip().startswith("-----BEGIN"):
            raise CAStateError(f"{self.where}.{name} is not a PEM private key")
        try:
            return load_private_key(text.encode("ascii"))
        except (UnicodeEncodeError, UnsupportedKeyError) as exc:
            raise CAStateError(f"{self.where}.{name}: {exc}") from exc

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Prefix this object's path to a CAStateError raised while building from it."""
        try:
            yield
        except CAStateError as exc:
            raise CAStateError(f"{self.where}: {exc}") from exc


def _x509_slot(item: _Fields) -> X509Slot:
    status, chain, key = item.status(), item.certs("chain_pem"), item.key("key_pem")
    roots, issued_at, activate_at = (
        item.certs("roots_pem"),
        item.time("issued_at"),
        item.time("activate_at"),
    )
    with item.context():
        return X509Slot(status, chain, key, roots, issued_at, activate_at)


def _jwt_slot(item: _Fields) -> JwtSlot:
    status, kid, key = item.status(), item.string("kid"), item.key("key_pem")
    issued_at, not_after, activate_at = (
        item.time("issued_at"),
        item.time("not_after"),
        item.time("activate_at"),
    )
    with item.context():
        return JwtSlot(status, kid, key, issued_at, not_after, activate_at)


class KeyStore(Protocol):
    """Where the CA state lives. Versions are opaque strings owned by the store."""

    async def load(self) -> tuple[CAState, str] | None:
        """The stored state and its version; None when nothing has been stored yet."""
        ...

    async def save(self, state: CAState, *, version: str | None) -> str:
        """Store ``state`` if the stored version is still ``version`` (None: nothing stored);
        return the new version. KeyStoreConflict when someone else saved in between."""
        ...

    def watch(self) -> AsyncGenerator[tuple[CAState, str], None]:
        """The current state (if any), then every newly saved one, for as long as it is iterated.

        A version may repeat after the store reconnects; consumers compare ``revision``.
        """
        ...


class DirKeyStore:
    """The CA state in ``<path>/ca-state.json`` (standalone mode: one process owns the dir).

    The directory is created 0700 and the file 0600; like ssh with a private key, the store
    refuses to read or write either when group or others have any access to it. The version is
    the SHA-256 of the file's bytes.
    """

    def __init__(self, path: Path, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self.state_file = path / STATE_FILE
        self._poll_interval = poll_interval
        self._write_lock = threading.Lock()

    async def load(self) -> tuple[CAState, str] | None:
        return await asyncio.to_thread(self._load)

    async def save(self, state: CAState, *, version: str | None) -> str:
        return await asyncio.to_thread(self._save, state, version)

    async def watch(self) -> AsyncGenerator[tuple[CAState, str], None]:
        """Poll the file's identity (inode, size, mtime); yield each new version once."""
        seen: tuple[int, int, int] | None = None
        last_version: str | None = None
        while True:
            try:
                found = os.stat(self.state_file)
                identity: tuple[int, int, int] | None = (
                    found.st_ino,
                    found.st_size,
                    found.st_mtime_ns,
                )
            except FileNotFoundError:
                identity = None
            if identity is not None and identity != seen:
                seen = identity
                try:
                    loaded = await self.load()
                except KeyStoreError as exc:
                    # Keep serving the last good state; the operator sees why in the log.
                    log.error("cannot read the CA state: %s", exc)
                    loaded = None
                if loaded is not None and loaded[1] != last_version:
                    last_version = loaded[1]
                    yield loaded
            await asyncio.sleep(self._poll_interval)

    def _load(self) -> tuple[CAState, str] | None:
        if not self.path.exists():
            return None
        self._check_dir()
        try:
            fd = os.open(self.state_file, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot open {self.state_file}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            _check_owner_only(os.fstat(handle.fileno()), self.state_file, "600")
            data = handle.read()
        try:
            state = CAState.from_json(data)
        except CAStateError as exc:
            raise KeyStoreError(f"{self.state_file}: {exc}") from exc
        return state, _content_version(data)

    def _save(self, state: CAState, version: str | None) -> str:
        data = state.to_json()
        with self._write_lock:
            self._ensure_dir()
            current = self._current_version()
            if current != version:
                raise KeyStoreConflict(
                    f"{self.state_file} changed since version {version or '(none)'} was read"
                )
            self._write_atomically(data)
        return _content_version(data)

    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            self._check_dir()
        except OSError as exc:
            raise KeyStoreError(f"cannot create {self.path}: {exc.strerror}") from exc
        else:
            # mkdir's mode is filtered by the umask; the key directory must be exactly 0700.
            os.chmod(self.path, 0o700)

    def _check_dir(self) -> None:
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(found.st_mode):
            raise KeyStoreError(f"{self.path} is not a directory")
        _check_owner_only(found, self.path, "700")

    def _current_version(self) -> str | None:
        try:
            return _content_version(self.state_file.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.state_file}: {exc.strerror}") from exc

    def _write_atomically(self, data: bytes) -> None:
        temp = self.path / f".{STATE_FILE}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.state_file)
            # The rename is durable only once the directory entry itself is on disk.
            dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise KeyStoreError(f"cannot write {self.state_file}: {exc.strerror}") from exc


def _check_owner_only(found: os.stat_result, path: Path, wanted: str) -> None:
    mode = stat.S_IMODE(found.st_mode)
    if mode & _NOT_OWNER_ONLY:
        raise KeyStoreError(
            f"permissions {mode:04o} for {str(path)!r} are too open: it holds CA private keys, "
            f"so group and others must have no access (run: chmod {wanted} {path})"
        )


def _content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ApiClientFactory = Callable[[], kubernetes.client.ApiClient]


class SecretKeyStore:
    """The CA state in one Kubernetes Secret (type Opaque, data key ``ca-state.json``).

    The version is the Secret's resourceVersion, and every update sends it back, so the API
    server refuses (409) a write based on a state someone else has replaced. Every call of the
    blocking client runs in a thread, each with its own ApiClient from ``api_client_factory``.
    """

    def __init__(
        self, api_client_factory: ApiClientFactory, namespace: str, name: str = "herald-ca"
    ) -> None:
        self._factory = api_client_factory
        self.namespace = namespace
        self.name = name

    @property
    def _where(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    async def load(self) -> tuple[CAState, str] | None:
        return await asyncio.to_thread(self._load)

    async def save(self, state: CAState, *, version: str | None) -> str:
        return await asyncio.to_thread(self._save, state, version)

    async def watch(self) -> AsyncGenerator[tuple[CAState, str], None]:
        """List, then watch from the list's resourceVersion; relist after any error."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[CAState, str]] = asyncio.Queue()
        stop = threading.Event()
        watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]

        def deliver(item: tuple[CAState, str]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        thread = threading.Thread(
            target=self._watch_forever,
            args=(watcher, stop, deliver),
            name=f"watch-{self.name}",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            watcher.stop()  # type: ignore[no-untyped-call]

    def _load(self) -> tuple[CAState, str] | None:
        with self._factory() as api_client:
            api = kubernetes.client.CoreV1Api(api_client)
            try:
                secret = api.read_namespaced_secret(self.name, self.namespace)
            except ApiException as exc:
                if exc.status == _HTTP_NOT_FOUND:
                    return None
                raise KeyStoreError(f"cannot read {self._where}: {_api_reason(exc)}") from exc
        return self._parse(secret)

    def _parse(self, secret: kubernetes.client.V1Secret) -> tuple[CAState, str]:
        data: Mapping[str, bytes | str] = secret.data or {}
        if STATE_FILE not in data:
            raise KeyStoreError(f"{self._where} has no data key {STATE_FILE!r}")
        try:
            raw = base64.b64decode(data[STATE_FILE], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyStoreError(
                f"{self._where} data key {STATE_FILE!r} is not base64: {exc}"
            ) from exc
        try:
            state = CAState.from_json(raw)
        except CAStateError as exc:
            raise KeyStoreError(f"{self._where} data key {STATE_FILE!r}: {exc}") from exc
        version = secret.metadata.resource_version if secret.metadata else None
        if not version:
            raise KeyStoreError(f"{self._where} has no metadata.resourceVersion")
        return state, str(version)

    def _save(self, state: CAState, version: str | None) -> str:
        body = kubernetes.client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=kubernetes.client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels=dict(SECRET_LABELS),
                resource_version=version,
            ),
            data={STATE_FILE: base64.b64encode(state.to_json()).decode("ascii")},
        )
        with self._factory() as api_client:
            api = kubernetes.client.CoreV1Api(api_client)
            try:
                if version is None:
                    saved = api.create_namespaced_secret(self.namespace, body)
                else:
                    saved = api.replace_namespaced_secret(self.name, self.namespace, body)
            except ApiException as exc:
                if exc.status in (_HTTP_CONFLICT, _HTTP_NOT_FOUND):
                    raise KeyStoreConflict(
                        f"{self._where} changed since version {version or '(none)'} was read: "
                        f"{_api_reason(exc)}"
                    ) from exc
                raise KeyStoreError(f"cannot write {self._where}: {_api_reason(exc)}") from exc
        if saved.metadata is None or not saved.metadata.resource_version:
            raise KeyStoreError(f"the API server saved {self._where} without a resourceVersion")
        return saved.metadata.resource_version

    def _watch_forever(
        self,
        watcher: kubernetes.watch.Watch,
        stop: threading.Event,
        deliver: Callable[[tuple[CAState, str]], None],
    ) -> None:
        backoff = _RELIST_BACKOFF_START
        while not stop.is_set():
            try:
                self._list_and_watch(watcher, stop, deliver)
            except ApiException as exc:
                if exc.status == _HTTP_GONE:
                    # Our resourceVersion is too old to resume from; a fresh list is the cure.
                    log.info("watch of %s expired, relisting", self._where)
                    continue
                failure: Exception = exc
            except Exception as exc:  # any failure means relist, never a dead watch
                failure = exc
            else:
                return
            if stop.is_set():
                return
            log.warning("watch of %s failed, relisting in %.1fs: %s", self._where, backoff, failure)
            stop.wait(backoff)
            backoff = min(backoff * 2, _RELIST_BACKOFF_MAX)

    def _list_and_watch(
        self,
        watcher: kubernetes.watch.Watch,
        stop: threading.Event,
        deliver: Callable[[tuple[CAState, str]], None],
    ) -> None:
        selector = f"metadata.name={self.name}"
        with self._factory() as api_client:
            api = kubernetes.client.CoreV1Api(api_client)
            listed = api.list_namespaced_secret(self.namespace, field_selector=selector)
            for secret in listed.items:
                self._deliver_parsed(secret, deliver)
            resource_version = listed.metadata.resource_version if listed.metadata else None
            while not stop.is_set():
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    api.list_namespaced_secret,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version,
                    timeout_seconds=_WATCH_TIMEOUT_SECONDS,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._deliver_parsed(event["object"], deliver)
                    elif event["type"] == "DELETED":
                        log.warning("%s was deleted; keeping the CA state in memory", self._where)
                if watcher.resource_version is not None:
                    resource_version = watcher.resource_version

    def _deliver_parsed(
        self,
        secret: kubernetes.client.V1Secret,
        deliver: Callable[[tuple[CAState, str]], None],
    ) -> None:
        try:
            deliver(self._parse(secret))
        except KeyStoreError as exc:
            # A bad write must not stop the watch: the next good one is still delivered.
            log.error("ignoring unreadable CA state: %s", exc)


def _api_reason(exc: ApiException) -> str:
    return f"HTTP {exc.status} {exc.reason or ''}".strip()
