"""Fixtures every test package shares: the Kubernetes API emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube_emulator import KubeCluster


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
