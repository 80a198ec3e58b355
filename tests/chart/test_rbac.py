"""The chart's RBAC is exactly files/rbac.yaml, as tests/k8s/rbac.py renders it for the tests.

tests/integration/test_rbac.py proves on the real API server that what `render_rbac` grants is
enough and no more; this proves helm renders the same objects from the same source, for API
server versions on both sides of the source's kubeVersion condition and with and without the
optional upstream Secret, with helm 3 and helm 4.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import NAMESPACE, render
from tests.k8s.helm import Helm
from tests.k8s.install import release_names
from tests.k8s.rbac import Release, load_source, render_rbac

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
Obj = dict[str, Any]


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _comparable(obj: Obj) -> Obj:
    """The object without the labels the chart adds beyond the two the renderer sets."""
    meta = dict(obj["metadata"])
    meta.pop("labels")
    return {**obj, "metadata": meta}


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.32.9", "1.33.0", "1.37.0"])
@pytest.mark.parametrize("upstream", ["", "corp-intermediate"], ids=["self-signed", "upstream"])
@pytest.mark.parametrize("release", ["herald", "prod-identity"])
def test_rendered_rbac_equals_the_source(
    helm: Helm, kube_version: str, upstream: str, release: str
) -> None:
    values = {"server": {"upstream": {"secretName": upstream}}}
    rendered = render(helm, values, kube_version=kube_version, release=release)
    chart = {_key(d): d for d in rendered if d["kind"] in RBAC_KINDS}
    # The chart's full name is the release name when it contains "herald", else <release>-herald.
    fullname = release if "herald" in release else f"{release}-herald"
    names = {**release_names(fullname), "upstreamSecret": upstream}
    major, minor, patch = (int(part) for part in kube_version.split("."))
    spec = Release(fullname, NAMESPACE, names, (major, minor, patch), instance=release)
    expected = {_key(d): d for d in render_rbac(spec)}
    assert set(chart) == set(expected)
    for key, want in expected.items():
        got = chart[key]
        assert want["metadata"]["labels"].items() <= got["metadata"]["labels"].items(), key
        assert _comparable(got) == _comparable(want), key


def test_version_condition_and_placeholders_take_effect(helm: Helm) -> None:
    old = render(helm, kube_version="1.32.0").get("ClusterRole", "herald-agent")["rules"]
    new = render(helm, kube_version="1.33.0").get("ClusterRole", "herald-agent")["rules"]
    assert [r["resources"] for r in old] == [["nodes/pods"], ["nodes/proxy"]]
    assert [r["resources"] for r in new] == [["nodes/pods"]]
    role = render(helm, {"server": {"caSecretName": "my-ca"}}).get("Role", "herald-server")
    named = {name for rule in role["rules"] for name in rule.get("resourceNames", [])}
    assert named == {"my-ca", "herald-bundle", "herald-server-leader"}
    assert load_source()["server"]["namespace"], "the source lost the server's Role"


def test_disabled_components_get_no_rbac(helm: Helm) -> None:
    rendered = render(helm, {"agent": {"enabled": False}})
    names = {d["metadata"]["name"] for d in rendered if d["kind"] in RBAC_KINDS}
    assert names == {"herald-server", "herald-operator"}
    accounts = {d["metadata"]["name"] for d in rendered.kinds("ServiceAccount")}
    assert accounts == {"herald-server", "herald-operator"}
