"""deploy/image/requirements.lock pins every runtime dependency at a version pyproject allows.

That the lock is closed (nothing missing) is proven where it matters, by ``pip check`` in the
image build (tests/image/); this keeps it in step with pyproject.toml without a network.
"""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.k8s.binaries import ROOT

IMAGE = ROOT / "deploy" / "image"


def _pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (IMAGE / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: {line} is not pinned with =="
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_every_dependency_is_pinned_within_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _pins("requirements.lock")
    for text in project["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock (scripts/image_lock.py)"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} outside {text}"
    assert "herald" not in pins
    build = _pins("build-requirements.lock")
    for text in project["build-system"]["requires"]:
        requirement = Requirement(text)
        assert build[canonicalize_name(requirement.name)] in requirement.specifier, text
