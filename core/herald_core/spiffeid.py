"""SPIFFE IDs and trust domains, parsed and validated exactly per the SPIFFE ID standard.

One type for each, used everywhere in herald: nothing else splits or joins ID strings.
Parsing is strict (no query, fragment, port, userinfo, percent-encoding, empty or dot
segments) and, as go-spiffe's (and so SPIRE's), accepts only the form IDs are emitted in: the
scheme and trust domain in lowercase. An upper-case trust domain is refused with the lowercase
spelling to use, never lower-cased silently: what an operator wrote is what herald stores and
compares. The path is case-sensitive.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

SCHEME: Final = "spiffe"
_PREFIX: Final = "spiffe://"
MAX_ID_LENGTH: Final = 2048
MAX_TRUST_DOMAIN_LENGTH: Final = 255

_TD_CHARS: Final = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_CHARS: Final = frozenset(string.ascii_letters + string.digits + ".-_")
_UPPER: Final = frozenset(string.ascii_uppercase)


class SpiffeIdError(ValueError):
    """An ID or trust domain that the SPIFFE ID standard does not allow; the message says why."""


def _check_trust_domain_name(name: str) -> None:
    if not name:
        raise SpiffeIdError("trust domain is missing")
    if len(name.encode()) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError(
            f"trust domain is {len(name.encode())} bytes long; at most "
            f"{MAX_TRUST_DOMAIN_LENGTH} are allowed"
        )
    upper: int | None = None
    for pos, ch in enumerate(name):
        if ch in _TD_CHARS:
            continue
        if ch in _UPPER:
            # Reported after the loop: another bad character makes the lowercase spelling no help.
            upper = pos if upper is None else upper
            continue
        if ch == ":":
            raise SpiffeIdError(f"trust domain cannot have a port (':' at position {pos})")
        if ch == "@":
            raise SpiffeIdError(f"trust domain cannot have userinfo ('@' at position {pos})")
        if ch == "%":
            raise SpiffeIdError(f"percent-encoding is not allowed (at position {pos})")
        raise SpiffeIdError(
            f"trust domain characters are limited to lowercase letters, digits, '.', '-' and "
            f"'_'; found {ch!r} at position {pos}"
        )
    if upper is not None:
        raise SpiffeIdError(
            f"trust domain must be lowercase; found {name[upper]!r} at position {upper} "
            f"(write {name.lower()!r})"
        )


def _check_path(path: str) -> None:
    """Check a path that is either empty or starts with '/'."""
    if not path:
        return
    if path.endswith("/"):
        raise SpiffeIdError("path cannot have a trailing '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise SpiffeIdError("path cannot contain empty segments ('//')")
        if segment in (".", ".."):
            raise SpiffeIdError(f"path cannot contain dot segments ({segment!r})")
        for ch in segment:
            if ch in _PATH_CHARS:
                continue
            if ch == "%":
                raise SpiffeIdError("percent-encoding is not allowed in the path")
            raise SpiffeIdError(
                f"path segment characters are limited to letters, digits, '.', '-' and '_'; "
                f"found {ch!r} in segment {segment!r}"
            )


@dataclass(frozen=True, order=True, slots=True)
class TrustDomain:
    """A trust domain name such as ``example.org`` (lowercase, validated)."""

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain_name(self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept ``example.org`` or ``spiffe://example.org``, like py-spiffe (lowercase only)."""
        if "://" in text or text.lower().startswith(f"{SCHEME}:"):
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.path:
                raise SpiffeIdError(f"a trust domain cannot have a path: {text!r}")
            return spiffe_id.trust_domain
        return cls(text)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own ID, ``spiffe://<name>`` (used for CAs and bundle map keys)."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, order=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID: a trust domain and a (possibly empty) case-sensitive path."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if self.path and not self.path.startswith("/"):
            raise SpiffeIdError(f"path must start with '/': {self.path!r}")
        _check_path(self.path)
        if len(str(self)) > MAX_ID_LENGTH:
            raise SpiffeIdError(
                f"SPIFFE ID is {len(str(self))} bytes long; at most {MAX_ID_LENGTH} are allowed"
            )

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust domain><path>``; raise SpiffeIdError saying what is wrong."""
        if not text:
            raise SpiffeIdError("SPIFFE ID is empty")
        if len(text.encode()) > MAX_ID_LENGTH:
            raise SpiffeIdError(
                f"SPIFFE ID is {len(text.encode())} bytes long; at most {MAX_ID_LENGTH} are allowed"
            )
        if text[: len(_PREFIX)] != _PREFIX:
            if text[: len(_PREFIX)].lower() == _PREFIX:
                raise SpiffeIdError(f"scheme must be lowercase 'spiffe://': {text[:16]!r}")
            raise SpiffeIdError(f"scheme must be 'spiffe://': {text[:16]!r}")
        rest = text[len(_PREFIX) :]
        if "#" in rest:
            raise SpiffeIdError("a fragment ('#') is not allowed")
        if "?" in rest:
            raise SpiffeIdError("a query ('?') is not allowed")
        authority, slash, path = rest.partition("/")
        return cls(TrustDomain(authority), slash + path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain, *segments: str) -> SpiffeId:
        """Build an ID from path segments, each checked (no '/' inside a segment)."""
        for segment in segments:
            if "/" in segment:
                raise SpiffeIdError(f"a path segment cannot contain '/': {segment!r}")
        return cls(trust_domain, "".join(f"/{s}" for s in segments))

    @property
    def is_root(self) -> bool:
        """True for a trust domain's own ID (no path), which only signing authorities carry."""
        return not self.path

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def is_under(self, prefix: SpiffeId) -> bool:
        """True when this ID equals ``prefix`` or lies below it on a segment boundary."""
        if self.trust_domain != prefix.trust_domain:
            return False
        return self.path == prefix.path or self.path.startswith(prefix.path + "/")

    def __str__(self) -> str:
        return f"{_PREFIX}{self.trust_domain.name}{self.path}"
