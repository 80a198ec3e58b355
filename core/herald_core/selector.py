"""Selectors: the ``type:value`` facts an attestor proves about a workload or node.

An entry matches a workload when every selector of the entry is among the workload's
selectors. herald's attestors produce the ``unix`` and ``k8s`` types; their keys are checked
here so that a typo in an entry (``k8s:namespace:x``) is refused instead of silently never
matching.
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


def parse_selectors(texts: Iterable[str]) -> frozenset[Selector]:
    """Parse several selectors; the first bad one raises with its text in the message."""
    return frozenset(Selector.parse(text) for text in texts)


def matches(entry_selectors: frozenset[Selector], workload_selectors: frozenset[Selector]) -> bool:
    """The matching rule: every entry selector is among the workload's; an empty set never."""
    return bool(entry_selectors) and entry_selectors <= workload_selectors
