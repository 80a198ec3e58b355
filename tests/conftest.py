"""Fixtures every test package shares: the real control plane (tests/k8s/fixtures.py), the
Kubernetes API emulator (kept for faults a real API cannot produce on cue), pod cgroups."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.fixtures import control_plane, kube, own_control_plane, release
from tests.kube_emulator import KubeCluster
from tests.pod_cgroups import CgroupMaker

__all__ = ["control_plane", "kube", "own_control_plane", "release"]


@pytest.fixture
def kube_emulator() -> Iterator[KubeCluster]:
    """A fresh emulated Kubernetes API on a random localhost port (see tests/kube_emulator.py)."""
    cluster = KubeCluster().start()
    try:
        yield cluster
    finally:
        errors = cluster.stop()
    if errors:
        pytest.fail(f"the Kubernetes emulator failed while serving: {errors!r}")


@pytest.fixture
def cgroups() -> Iterator[CgroupMaker]:
    """Makes kubelet-shaped cgroups (tests/pod_cgroups.py) and removes them afterwards."""
    maker = CgroupMaker()
    try:
        yield maker
    finally:
        maker.cleanup()
