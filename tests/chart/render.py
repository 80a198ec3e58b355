"""Rendering the chart with a real helm binary, and picking objects out of what it renders.

`render` runs ``helm template`` with values given as a mapping (``--set-json``, so types reach
the schema exactly as written) and returns the parsed documents; `Rendered` finds objects by kind
and name and reads the component configs out of their ConfigMaps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.binaries import ROOT, Prerequisite
from tests.k8s.fixtures import missing
from tests.k8s.helm import Helm, ensure_helm, set_flags

CHART = ROOT / "deploy" / "helm" / "herald"
KUBE_VERSIONS = tuple(f"1.{minor}.0" for minor in range(30, 38))
"""Every Kubernetes minor the chart supports (kubeVersion >=1.30) up to the newest schemas."""
RELEASE = "herald"
CLUSTER_API_VERSIONS = ("herald.dev/v1alpha1/ClusterSPIFFEID",)
"""What ``helm template`` is told the cluster serves: herald's CRDs, as after a first install."""
NAMESPACE = "herald-system"
Obj = dict[str, Any]


def helm_binary(major: int, home: Path) -> Helm:
    try:
        return Helm(ensure_helm(major), home)
    except Prerequisite as exc:
        missing(str(exc))
        raise  # missing() skips or fails; this keeps type checkers content


@pytest.fixture(scope="session", params=[3, 4], ids=["helm3", "helm4"])
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Each pinned helm major in turn."""
    return helm_binary(request.param, tmp_path_factory.mktemp(f"helm{request.param}"))


@pytest.fixture(scope="session")
def helm3(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm 3, to compare with helm 4."""
    return helm_binary(3, tmp_path_factory.mktemp("helm3-only"))


@pytest.fixture(scope="session")
def helm4(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm 4, for tests that need one helm only."""
    return helm_binary(4, tmp_path_factory.mktemp("helm4-only"))


@dataclass(frozen=True)
class Rendered:
    docs: list[Obj]

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.docs)

    def kinds(self, kind: str) -> list[Obj]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [d for d in self.kinds(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.kinds(kind))

    def config(self, component: str, fullname: str = RELEASE) -> Obj:
        """The YAML configuration the chart gives ``component`` (its ConfigMap's one file)."""
        data = self.get("ConfigMap", f"{fullname}-{component}")["data"]
        (text,) = data.values()
        parsed: Obj = yaml.safe_load(text)
        return parsed

    def pod_spec(self, component: str, fullname: str = RELEASE) -> Obj:
        kind = "DaemonSet" if component == "agent" else "Deployment"
        spec: Obj = self.get(kind, f"{fullname}-{component}")["spec"]["template"]["spec"]
        return spec


def helm_args(
    values: Mapping[str, object] | None = None,
    *,
    kube_version: str = KUBE_VERSIONS[-1],
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: tuple[str, ...] = CLUSTER_API_VERSIONS,
) -> list[str]:
    return [
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
        *(f"--api-versions={api_version}" for api_version in api_versions),
        *set_flags(values or {}),
    ]


def render(
    helm: Helm,
    values: Mapping[str, object] | None = None,
    *,
    kube_version: str = KUBE_VERSIONS[-1],
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    done = helm.run(
        helm_args(values, kube_version=kube_version, release=release, namespace=namespace)
    )
    return Rendered([doc for doc in yaml.safe_load_all(done.stdout) if doc])


def refusal(helm: Helm, values: Mapping[str, object]) -> str:
    """What ``helm template`` says when it refuses ``values`` (it must refuse them)."""
    done = helm.run(helm_args(values), check=False)
    assert done.returncode != 0, f"helm accepted {dict(values)}:\n{done.stdout[:400]}"
    return done.stderr
