"""Workload attestors: turn a caller's pid into the selectors the kernel and the kubelet vouch for.

Each attestor answers ``attest(pid)`` with a frozenset of selectors, or raises
:class:`AttestationError` when it cannot vouch for the process at all (the Workload API then
answers UNAVAILABLE with the message). An attestor that simply has nothing to say about a
process (the ``k8s`` attestor and a process outside any pod) returns an empty set.
"""

from __future__ import annotations

from typing import Protocol

from herald_core.selector import Selector


class AttestationError(Exception):
    """The attestor could not vouch for the process; the message tells the operator why."""


class WorkloadAttestor(Protocol):
    """What the Workload API needs from an attestor."""

    name: str

    async def attest(self, pid: int) -> frozenset[Selector]:
        """The selectors that hold for ``pid``; raises :class:`AttestationError` on failure."""
        ...
