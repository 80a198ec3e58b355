"""Selectors: the ``type:value`` facts an attestor proves about a workload or node.

An entry matches a workload when every selector of the entry is among the workload's
selectors. herald's attestors produce the ``unix`` and ``k8s`` types; their keys, and the
values of keys with a fixed form (ids, counts, digests, paths), are checked here so that a typo
in an entry (``k8s:namespace:x``, ``unix:uid:-1``) is refused instead of silently never matching.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

MAX_SELECTOR_LENGTH: Final = 1024

KNOWN_KEYS: Final[dict[str, frozenset[str]]] = {
    "unix": frozenset({"uid", "gid", "user", "group", "supplementary_gid", "path", "sha256"}),
    "k8s": frozenset(
        {
            "ns",
            "sa",
            "pod-name",
            "pod-uid",
            "pod-label",
            "pod-owner",
            "pod-owner-uid",
            "pod-image",
            "pod-image-count",
            "pod-init-image",
            "pod-init-image-count",
            "node-name",
            "container-name",
            "container-image",
        }
    ),
}
# Keys whose value is itself ``<a>:<b>`` (label key and value; owner kind and name).
_PAIR_KEYS: Final = {("k8s", "pod-label"), ("k8s", "pod-owner")}
_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
# The kernel's ids are 32-bit; (uid_t)-1 = 4294967295 means "no id" and is never a process's.
_MAX_ID: Final = 4294967294
# Decimal as the attestors write it: no sign, no leading zeros, so that it can match.
_DECIMAL: Final = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_SHA256: Final = re.compile(r"[0-9a-f]{64}\Z")
_ID_KEYS: Final = {("unix", "uid"), ("unix", "gid"), ("unix", "supplementary_gid")}
_COUNT_KEYS: Final = {("k8s", "pod-image-count"), ("k8s", "pod-init-image-count")}
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


class SelectorError(ValueError):
    """A selector that is malformed or names a key no herald attestor produces."""


@dataclass(frozen=True, order=True, slots=True)
class Selector:
    """One selector; ``value`` may itself contain ':' (``k8s`` + ``pod-label:app:web``)."""

    type: str
    value: str

    def __post_init__(self) -> None:
        _check(self.type, self.value)

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``type:value``, e.g. ``k8s:ns:payments`` or ``unix:uid:1000``."""
        kind, sep, value = text.partition(":")
        if not sep:
            raise SelectorError(f"selector {text!r} must have the form 'type:value'")
        return cls(kind, value)

    @property
    def key(self) -> str:
        """The attestor-specific key, e.g. ``ns`` for ``k8s:ns:payments``."""
        return self.value.partition(":")[0]

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def _check(kind: str, value: str) -> None:
    text = f"{kind}:{value}"
    if len(text.encode()) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"selector is longer than {MAX_SELECTOR_LENGTH} bytes")
    if not _TYPE_RE.match(kind):
        raise SelectorError(
            f"selector type {kind!r} must be lowercase letters, digits and '_' "
            "starting with a letter"
        )
    if not value:
        raise SelectorError(f"selector {text!r} has an empty value")
    if _CONTROL_RE.search(value):
        raise SelectorError(f"selector {kind}:… contains a control character")
    keys = KNOWN_KEYS.get(kind)
    if keys is None:
        raise SelectorError(
            f"unknown selector type {kind!r}; herald's attestors produce: "
            + ", ".join(sorted(KNOWN_KEYS))
        )
    key, sep, rest = value.partition(":")
    if key not in keys:
        raise SelectorError(
            f"unknown {kind} selector key {key!r} in {text!r}; known keys: "
            + ", ".join(sorted(keys))
        )
    if not sep or not rest:
        raise SelectorError(f"selector {text!r} has no value after '{kind}:{key}:'")
    if (kind, key) in _PAIR_KEYS:
        # The second half may be empty: an empty label value is legal in Kubernetes.
        first, sep2, _ = rest.partition(":")
        if not first or not sep2:
            raise SelectorError(f"selector {text!r} must be '{kind}:{key}:<a>:<b>'")
    elif kind == "unix" or (kind, key) in _COUNT_KEYS:
        _check_value(text, kind, key, rest)


def _check_value(text: str, kind: str, key: str, rest: str) -> None:
    """The keys whose values the attestors write in one fixed form."""
    if (kind, key) in _ID_KEYS:
        if not _DECIMAL.match(rest) or len(rest) > 10 or int(rest) > _MAX_ID:
            raise SelectorError(
                f"selector {text!r}: a {key} is a whole number from 0 to {_MAX_ID}, written "
                "without sign or leading zeros"
            )
    elif (kind, key) in _COUNT_KEYS:
        if not _DECIMAL.match(rest) or len(rest) > 10:
            raise SelectorError(
                f"selector {text!r}: a count is a whole number, written without sign or "
                "leading zeros"
            )
    elif key == "sha256":
        if not _SHA256.match(rest):
            raise SelectorError(f"selector {text!r}: a sha256 is 64 lowercase hexadecimal digits")
    elif key == "path" and not rest.startswith("/"):
        raise SelectorError(f"selector {text!r}: a path is absolute (starts with '/')")


def parse_selectors(texts: Iterable[str]) -> frozenset[Selector]:
    """Parse several selectors; the first bad one raises with its text in the message."""
    return frozenset(Selector.parse(text) for text in texts)


def matches(entry_selectors: frozenset[Selector], workload_selectors: frozenset[Selector]) -> bool:
    """The matching rule: every entry selector is among the workload's; an empty set never."""
    return bool(entry_selectors) and entry_selectors <= workload_selectors
