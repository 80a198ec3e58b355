"""Fixtures every test package shares: the real control plane (tests/k8s/fixtures.py) and pod
cgroups."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.fixtures import control_plane, kube, own_control_plane, release
from tests.pod_cgroups import CgroupMaker

__all__ = ["control_plane", "kube", "own_control_plane", "release"]


@pytest.fixture
def cgroups() -> Iterator[CgroupMaker]:
    """Makes kubelet-shaped cgroups (tests/pod_cgroups.py) and removes them afterwards."""
    maker = CgroupMaker()
    try:
        yield maker
    finally:
        maker.cleanup()
