"""Fixtures every test package shares: the Kubernetes API emulator, pod cgroups."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube_emulator import KubeCluster
from tests.pod_cgroups import CgroupMaker


@pytest.fixture
def kube() -> Iterator[KubeCluster]:
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
