"""herald's footprint on a test control plane: CRDs once, then one release per test.

`install_crds` applies the chart's CRDs (``files/crds/`` and ``crds/``) through the API and
waits until each is Established.
`install_herald` makes what the chart makes for the components to run against the API: the
namespace, one ServiceAccount per component, the RBAC rendered from files/rbac.yaml, and the Kopf
peering object; then it requests a token for each ServiceAccount (TokenRequest, as a projected
volume would) and writes a kubeconfig per component. Tests run herald's code with those
kubeconfigs, so what the server, operator and agent may do is what the chart grants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.k8s.api import Kube, wait_for
from tests.k8s.binaries import ROOT
from tests.k8s.rbac import COMPONENTS, Release, render_rbac

CHART_DIR = ROOT / "deploy" / "helm" / "herald"
CRD_FILES = (
    *sorted((CHART_DIR / "files" / "crds").glob("*.yaml")),
    *(CHART_DIR / "crds").glob("*.yaml"),
)
"""herald's CRDs (files/crds/, rendered by templates/crds.yaml) and Kopf's (crds/)."""
TOKEN_SECONDS = 6 * 3600


class Plane(Protocol):
    """What an install needs of a cluster: an admin kubeconfig, and kubeconfigs for tokens."""

    admin_kubeconfig: Path

    def kubeconfig_for(self, name: str, token: str) -> Path: ...


def release_names(release: str) -> dict[str, str]:
    """The objects a release's RBAC names, as the chart names them by default."""
    return {
        "caSecret": f"{release}-ca",
        "bundleConfigMap": f"{release}-bundle",
        "leaderLease": f"{release}-server-leader",
        "peering": f"{release}-operator",
        "upstreamSecret": "",
    }


def install_crds(plane: Plane) -> list[str]:
    """Create or replace every CRD in the chart; the names, once all are Established."""
    kube = Kube(plane.admin_kubeconfig)
    try:
        names = []
        for path in CRD_FILES:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    kube.apply(doc)
                    names.append(doc["metadata"]["name"])
        for name in names:
            wait_for(lambda name=name: _established(kube, name), what=f"CRD {name} Established")
        return names
    finally:
        kube.close()


def _established(kube: Kube, name: str) -> bool:
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    conditions = (crd or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@dataclass
class HeraldRelease:
    """One install: its namespace, names, and a kubeconfig per component's ServiceAccount."""

    release: Release
    kubeconfigs: dict[str, Path]
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.release.namespace

    @property
    def names(self) -> dict[str, str]:
        return dict(self.release.names)

    def service_account(self, component: str) -> str:
        return self.release.service_account(component)

    def kube(self, component: str) -> Kube:
        """A client acting as ``component``'s ServiceAccount."""
        return Kube(self.kubeconfigs[component])


def install_herald(
    plane: Plane,
    *,
    namespace: str,
    release: str = "herald",
    kube_version: tuple[int, int, int] | None = None,
    names: dict[str, str] | None = None,
) -> HeraldRelease:
    """Namespace, ServiceAccounts, RBAC, peering, a kubeconfig per component (module docstring)."""
    admin = Kube(plane.admin_kubeconfig)
    try:
        version = kube_version or _server_version(admin)
        spec = Release(release, namespace, {**release_names(release), **(names or {})}, version)
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        ]
        objects += [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": spec.service_account(c), "namespace": namespace},
            }
            for c in COMPONENTS
        ]
        objects += render_rbac(spec)
        objects.append(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": spec.names["peering"]},
            }
        )
        for obj in objects:
            admin.create(obj, track=False)
        # Pods in the namespace (agent pods in the tests) need its default ServiceAccount.
        wait_for(
            lambda: admin.get("v1", "ServiceAccount", "default", namespace) is not None,
            what=f"the default ServiceAccount of {namespace}",
        )
        kubeconfigs = {
            c: plane.kubeconfig_for(
                f"{release}-{c}",
                admin.token(namespace, spec.service_account(c), seconds=TOKEN_SECONDS),
            )
            for c in COMPONENTS
        }
        return HeraldRelease(spec, kubeconfigs, objects)
    finally:
        admin.close()


def uninstall_herald(plane: Plane, installed: HeraldRelease) -> None:
    """Delete what `install_herald` made (the namespace takes its contents with it)."""
    admin = Kube(plane.admin_kubeconfig)
    try:
        for pod in admin.list("v1", "Pod", installed.namespace):
            admin.delete("v1", "Pod", pod["metadata"]["name"], installed.namespace)
        for obj in reversed(installed.objects):
            meta = obj["metadata"]
            if meta.get("namespace") is None:
                admin.delete(obj["apiVersion"], obj["kind"], meta["name"])
    finally:
        admin.close()


def _server_version(kube: Kube) -> tuple[int, int, int]:
    git = str(kube.request("GET", "/version")["gitVersion"]).lstrip("v")
    major, minor, patch = (
        int("".join(c for c in part if c.isdigit()) or 0) for part in git.split("-")[0].split(".")
    )
    return major, minor, patch
