"""The pinned control-plane binaries: the release they come from, and building them when missing.

``scripts/k8s_binaries.sh`` does the building (once per pinned version, into a cache); this module
runs it and turns "no Go" or a failed build into a `Prerequisite` that says why, which the test
fixtures skip on locally and fail on under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = Path(__file__).with_name("versions.env")
BUILD_SCRIPT = ROOT / "scripts" / "k8s_binaries.sh"
_NO_GO = 3


class Prerequisite(Exception):
    """Something the Kubernetes tests need is missing; the message says what and why."""


def versions() -> dict[str, str]:
    """The pinned versions, as ``versions.env`` names them (``KUBERNETES_VERSION``, ...)."""
    pairs = (
        line.split("=", 1)
        for line in VERSIONS_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@cache
def ensure_binaries() -> Path:
    """The bin directory holding etcd, kube-apiserver and friends, built first if need be.

    A first build prints the script's progress on stderr (pytest shows it with ``-s``; it lands
    in the captured output otherwise) and takes minutes; later calls take milliseconds.
    """
    if shutil.which("go") is None:
        raise Prerequisite("go is not on PATH: Go >= 1.26 builds the Kubernetes control plane")
    done = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode == _NO_GO:
        raise Prerequisite("no usable Go: Go >= 1.26 builds the Kubernetes control plane")
    if done.returncode != 0:
        raise RuntimeError(f"scripts/k8s_binaries.sh failed (exit {done.returncode}); see above")
    return Path(done.stdout.strip().splitlines()[-1])
