"""herald's RBAC as the tests apply it: rendered from the chart's one source, files/rbac.yaml.

`render_rbac` turns the source into the ClusterRoles, Roles and bindings for one release, exactly
as the chart's templates/rbac.yaml does (the chart tests compare the two), so a component the tests
run under its ServiceAccount has the access the chart grants, no more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.binaries import ROOT

RBAC_SOURCE = ROOT / "deploy" / "helm" / "herald" / "files" / "rbac.yaml"
COMPONENTS = ("server", "operator", "agent")
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")
_UPPER_BOUND = re.compile(r"^<(\d+)\.(\d+)\.(\d+)(?:-0)?$")


@dataclass(frozen=True)
class Release:
    """What the RBAC of one herald install depends on.

    ``name`` is the chart's full name, which prefixes every object's name; ``instance`` the Helm
    release's name for the ``app.kubernetes.io/instance`` label, when it differs (a release
    ``prod`` has the full name ``prod-herald``, a release ``herald-x`` keeps its name).
    """

    name: str
    namespace: str
    names: Mapping[str, str]
    kube_version: tuple[int, int, int]
    instance: str = ""

    def service_account(self, component: str) -> str:
        return f"{self.name}-{component}"


def load_source(path: Path = RBAC_SOURCE) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def _applies(rule: Mapping[str, Any], release: Release) -> bool:
    condition = rule.get("if")
    if condition is not None and not release.names.get(condition):
        return False
    constraint = rule.get("kubeVersion")
    if constraint is None:
        return True
    # Only the form the source uses: an exclusive upper bound "<X.Y.Z-0".
    match = _UPPER_BOUND.match(constraint)
    if match is None:
        raise ValueError(f"{RBAC_SOURCE.name}: unsupported kubeVersion constraint {constraint!r}")
    return release.kube_version < tuple(int(part) for part in match.groups())


def _policy_rule(rule: Mapping[str, Any], release: Release) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiGroups": list(rule["apiGroups"]),
        "resources": list(rule["resources"]),
    }
    if "resourceNames" in rule:
        names = []
        for name in rule["resourceNames"]:
            match = _PLACEHOLDER.match(name)
            names.append(release.names[match.group(1)] if match else name)
        out["resourceNames"] = names
    out["verbs"] = list(rule["verbs"])
    return out


def _rules(source: Mapping[str, Any], component: str, scope: str, release: Release) -> list[Any]:
    return [
        _policy_rule(rule, release)
        for rule in source[component].get(scope) or []
        if _applies(rule, release)
    ]


def render_rbac(release: Release, source: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """A ClusterRole and a Role, each with its binding, per component (empty ones left out)."""
    source = source if source is not None else load_source()
    objects: list[dict[str, Any]] = []
    for component in COMPONENTS:
        name = f"{release.name}-{component}"
        subject = {
            "kind": "ServiceAccount",
            "name": release.service_account(component),
            "namespace": release.namespace,
        }
        labels = {
            "app.kubernetes.io/instance": release.instance or release.name,
            "app.kubernetes.io/component": component,
        }
        for scope, role_kind in (("cluster", "ClusterRole"), ("namespace", "Role")):
            rules = _rules(source, component, scope, release)
            if not rules:
                continue
            meta: dict[str, Any] = {"name": name, "labels": labels}
            if role_kind == "Role":
                meta["namespace"] = release.namespace
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": role_kind,
                    "metadata": meta,
                    "rules": rules,
                }
            )
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": f"{role_kind}Binding",
                    "metadata": dict(meta),
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": role_kind,
                        "name": name,
                    },
                    "subjects": [subject],
                }
            )
    return objects
