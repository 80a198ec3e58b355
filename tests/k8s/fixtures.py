"""pytest fixtures for Kubernetes-mode tests: a real control plane per session, a release per test.

- ``control_plane`` (session): a `ControlPlane` with herald's CRDs installed; or, with
  ``HERALD_TEST_KUBECONFIG`` set, the cluster that admin kubeconfig names (`ExistingCluster`).
  Without Go the tests that use it skip with that reason, and under ``CI=true`` they fail instead.
- ``kube``: an admin `Kube` that deletes what the test created.
- ``release``: a fresh herald install (namespace, ServiceAccounts, RBAC, peering) for one test,
  uninstalled afterwards; its kubeconfigs run each component as its own ServiceAccount.
- ``own_control_plane``: the session's `ControlPlane` itself, for tests that stop its processes or
  talk to etcd (skipped against an existing cluster).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.api import Kube
from tests.k8s.binaries import Prerequisite, ensure_binaries, in_ci
from tests.k8s.controlplane import ControlPlane
from tests.k8s.existing import ExistingCluster
from tests.k8s.install import HeraldRelease, install_crds, install_herald, uninstall_herald

_releases = itertools.count(1)
NODES = ("node-a", "node-b")
"""Nodes whose kubelet identities (``system:node:<name>``) the session's control plane knows."""


def missing(reason: str) -> None:
    """Skip for a missing prerequisite, or fail under CI=true where nothing may be skipped."""
    if in_ci():
        pytest.fail(f"CI=true and a Kubernetes test prerequisite is missing: {reason}")
    pytest.skip(reason)


def require_binaries() -> None:
    """For tests that start a control plane of their own (benchmarks' smoke runs)."""
    try:
        ensure_binaries()
    except Prerequisite as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControlPlane | ExistingCluster]:
    existing = os.environ.get("HERALD_TEST_KUBECONFIG")
    if existing:
        cluster = ExistingCluster(Path(existing), tmp_path_factory.mktemp("kubeconfigs"))
        install_crds(cluster)
        yield cluster
        return
    try:
        bin_dir = ensure_binaries()
    except Prerequisite as exc:
        missing(str(exc))
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), bin_dir, nodes=NODES).start()
    try:
        install_crds(plane)
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def own_control_plane(control_plane: ControlPlane | ExistingCluster) -> ControlPlane:
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("needs the suite's own control plane (HERALD_TEST_KUBECONFIG is set)")
    return control_plane


@pytest.fixture
def kube(control_plane: ControlPlane | ExistingCluster) -> Iterator[Kube]:
    client = Kube(control_plane.admin_kubeconfig)
    try:
        yield client
    finally:
        client.cleanup()
        client.close()


@pytest.fixture
def release(control_plane: ControlPlane | ExistingCluster) -> Iterator[HeraldRelease]:
    # Unique across sessions too, for an existing cluster that keeps what a killed run left.
    name = f"herald-t{next(_releases)}-{secrets.token_hex(2)}"
    installed = install_herald(control_plane, namespace=name, release=name)
    try:
        yield installed
    finally:
        uninstall_herald(control_plane, installed)
