"""Upstream CA: an existing PKI (cert-manager, a corporate CA) that signs herald's CA.

With an upstream, herald's CA is an intermediate, its NotAfter is capped at the upstream
certificate's, and the bundle publishes the upstream roots instead of herald's own CAs, so SVIDs
chain to roots the organisation already trusts. The inputs have the shape cert-manager writes:
``tls.crt`` (the upstream CA certificate, optionally followed by its chain), ``tls.key`` and
``ca.crt`` (the root or roots). Everything is checked when loaded, and every error names the
file or Secret key it is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from herald_core.clock import SYSTEM_CLOCK, Clock
from herald_core.keys import (
    PrivateKey,
    UnsupportedKeyError,
    key_type_of,
    load_private_key,
    public_key_to_der,
)
from herald_core.x509svid import (
    X509SvidError,
    check_signing_cert,
    describe_certificate,
    issuance_problem,
    load_pem_certs,
)

CERT_KEY: Final = "tls.crt"
KEY_KEY: Final = "tls.key"
ROOTS_KEY: Final = "ca.crt"


class UpstreamError(ValueError):
    """An upstream CA that herald cannot use; the message names the file or key and the problem."""


class UpstreamSources(NamedTuple):
    """How errors name the three inputs (file paths, Secret keys, or field names)."""

    cert_chain: str = "cert_chain"
    key: str = "key"
    roots: str = "roots"


class UpstreamFiles(NamedTuple):
    cert: Path
    key: Path
    roots: Path

    @classmethod
    def in_dir(cls, directory: Path) -> UpstreamFiles:
        """cert-manager's names: ``tls.crt``, ``tls.key``, ``ca.crt``."""
        return cls(directory / CERT_KEY, directory / KEY_KEY, directory / ROOTS_KEY)


@dataclass(frozen=True)
class UpstreamAuthority:
    """A CA that signs herald's CA: its certificate (then any intermediates), key, and roots.

    Construction checks the structure (key match, CA usage, chain to a self-signed root, path
    length room for herald's CA); ``check_valid_at`` checks the dates.
    """

    cert_chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    roots: tuple[x509.Certificate, ...]
    sources: UpstreamSources = field(default=UpstreamSources(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert_chain", tuple(self.cert_chain))
        object.__setattr__(self, "roots", tuple(self.roots))
        if not self.cert_chain:
            raise UpstreamError(f"{self.sources.cert_chain} holds no certificate")
        if not self.roots:
            raise UpstreamError(f"{self.sources.roots} holds no certificate")
        self._check_key()
        self._check_links()
        for position, cert in enumerate(self.cert_chain):
            _check_ca(cert, f"{self.sources.cert_chain} certificate {position}")
        for position, root in enumerate(self.roots):
            _check_root(root, f"{self.sources.roots} certificate {position}")
        _check_path_lengths(self.path, self._labels())

    @property
    def cert(self) -> x509.Certificate:
        """The certificate whose key signs herald's CA."""
        return self.cert_chain[0]

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What SVID chains carry after herald's CA: the upstream chain without any root."""
        return tuple(cert for cert in self.cert_chain if cert not in self.roots)

    @property
    def path(self) -> tuple[x509.Certificate, ...]:
        """The upstream certificate up to and including the root that anchors it."""
        last = self.cert_chain[-1]
        if last in self.roots:
            return self.cert_chain
        return (*self.cert_chain, self._anchor(last))

    def check_valid_at(self, now: datetime) -> None:
        """UpstreamError when any certificate on the path is expired or not yet valid at now."""
        for cert, label in zip(self.path, self._labels(), strict=True):
            if now < cert.not_valid_before_utc:
                raise UpstreamError(
                    f"{label} is not valid until {cert.not_valid_before_utc.isoformat()}"
                )
            if now >= cert.not_valid_after_utc:
                raise UpstreamError(f"{label} expired at {cert.not_valid_after_utc.isoformat()}")

    def _labels(self) -> list[str]:
        labels = [f"{self.sources.cert_chain} certificate {i}" for i in range(len(self.cert_chain))]
        if self.cert_chain[-1] not in self.roots:
            index = self.roots.index(self._anchor(self.cert_chain[-1]))
            labels.append(f"{self.sources.roots} certificate {index}")
        return labels

    def _check_key(self) -> None:
        try:
            key_type_of(self.key)
            key_type_of(self.cert.public_key())
        except (UnsupportedKeyError, UnsupportedAlgorithm, ValueError) as exc:
            raise UpstreamError(f"{self.sources.key}: {exc}") from exc
        if public_key_to_der(self.key.public_key()) != public_key_to_der(self.cert.public_key()):
            raise UpstreamError(
                f"{self.sources.key} does not match the certificate in {self.sources.cert_chain} "
                f"({describe_certificate(self.cert)})"
            )

    def _check_links(self) -> None:
        for position in range(len(self.cert_chain) - 1):
            problem = issuance_problem(self.cert_chain[position], self.cert_chain[position + 1])
            if problem is not None:
                raise UpstreamError(
                    f"{self.sources.cert_chain} certificate {position} is not signed by "
                    f"certificate {position + 1}: {problem}"
                )
        last = self.cert_chain[-1]
        if last not in self.roots:
            self._anchor(last)

    def _anchor(self, last: x509.Certificate) -> x509.Certificate:
        for root in self.roots:
            if issuance_problem(last, root) is None:
                return root
        raise UpstreamError(
            f"the chain in {self.sources.cert_chain} does not lead to a root in "
            f"{self.sources.roots}: no root signed {describe_certificate(last)}"
        )


def load_upstream_files(
    source: Path | UpstreamFiles, *, clock: Clock = SYSTEM_CLOCK
) -> UpstreamAuthority:
    """Load and check an upstream CA from a directory (``tls.crt``, ``tls.key``, ``ca.crt``,
    as a mounted cert-manager Secret has them) or from three explicit paths."""
    files = source if isinstance(source, UpstreamFiles) else UpstreamFiles.in_dir(source)
    sources = UpstreamSources(str(files.cert), str(files.key), str(files.roots))
    return _parse(_read(files.cert), _read(files.key), _read(files.roots), sources, clock.now())


def upstream_from_secret_data(
    data: Mapping[str, bytes], *, where: str = "upstream Secret", clock: Clock = SYSTEM_CLOCK
) -> UpstreamAuthority:
    """Load and check an upstream CA from a Secret's data, values already base64-decoded (as in
    a mounted volume; ``V1Secret.data`` values need ``base64.b64decode`` first)."""
    names = (CERT_KEY, KEY_KEY, ROOTS_KEY)
    missing = [name for name in names if name not in data]
    if missing:
        raise UpstreamError(f"{where} has no {' or '.join(repr(m) for m in missing)} key")
    sources = UpstreamSources(*(f"{where} key {name!r}" for name in names))
    return _parse(data[CERT_KEY], data[KEY_KEY], data[ROOTS_KEY], sources, clock.now())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UpstreamError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(
    cert_pem: bytes, key_pem: bytes, roots_pem: bytes, sources: UpstreamSources, now: datetime
) -> UpstreamAuthority:
    upstream = UpstreamAuthority(
        cert_chain=_certs(cert_pem, sources.cert_chain),
        key=_key(key_pem, sources.key),
        roots=_certs(roots_pem, sources.roots),
        sources=sources,
    )
    upstream.check_valid_at(now)
    return upstream


def _certs(data: bytes, source: str) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(load_pem_certs(data))
    except X509SvidError as exc:
        raise UpstreamError(f"{source}: {exc}") from exc


def _key(data: bytes, source: str) -> PrivateKey:
    try:
        return load_private_key(data)
    except UnsupportedKeyError as exc:
        raise UpstreamError(f"{source}: {exc}") from exc


def _check_ca(cert: x509.Certificate, label: str) -> None:
    try:
        check_signing_cert(cert)
    except X509SvidError as exc:
        raise UpstreamError(f"{label} cannot sign CAs: {exc}") from exc


def _check_root(root: x509.Certificate, label: str) -> None:
    _check_ca(root, label)
    # OpenSSL-based clients (spiffe-tls, Envoy) accept only a self-signed trust anchor.
    if issuance_problem(root, root) is not None:
        raise UpstreamError(
            f"{label} ({describe_certificate(root)}) is not self-signed; "
            "put the root CA certificate there"
        )


def _check_path_lengths(path: Sequence[x509.Certificate], labels: Sequence[str]) -> None:
    # An SVID chain is leaf, herald's CA, then ``path``: path[i] has i + 1 CAs below it.
    for position, (cert, label) in enumerate(zip(path, labels, strict=True)):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        below = position + 1
        if constraints.path_length is not None and constraints.path_length < below:
            raise UpstreamError(
                f"{label} has pathLenConstraint {constraints.path_length} but would have "
                f"{below} CA(s) below it once herald's CA is added"
            )
