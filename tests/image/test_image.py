"""herald's image, built with podman from deploy/image/Containerfile on a base made here.

One build per session (cached layers make a rebuild of unchanged sources fast); then each entry
point runs ``--version`` in it as the image's non-root user on a read-only root, the final layer
is checked for compilers, pip and caches, and the image is exported as an OCI archive (into the
image cache) for the cluster tests to load. Build time and image size are printed (-s shows them).
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from tests.image.build import (
    Podman,
    build_context,
    build_image,
    cache_root,
    ensure_base,
    ensure_tools,
)
from tests.k8s.binaries import ROOT, Prerequisite
from tests.k8s.fixtures import missing

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
TAG = f"localhost/herald:{VERSION}"
ENTRY_POINTS = ("herald-server", "herald-agent", "herald-operator")


@pytest.fixture(scope="session")
def image() -> tuple[Podman, str]:
    try:
        ensure_tools()
    except Prerequisite as exc:
        missing(str(exc))
    podman = Podman(cache_root())
    podman.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = ensure_base(podman)
    based = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="herald-image-") as scratch:
        build_image(podman, base, build_context(Path(scratch), podman.root), TAG)
    print(
        f"image: base {based - started:.1f} s, build {time.monotonic() - based:.1f} s",
        file=sys.stderr,
    )
    return podman, TAG


def _run(podman: Podman, tag: str, *argv: str, check: bool = True) -> str:
    done = podman.run(
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        tag,
        *argv,
        check=check,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_each_entry_point_runs(image: tuple[Podman, str], entry_point: str) -> None:
    podman, tag = image
    assert f"{entry_point}, version {VERSION}" in _run(podman, tag, entry_point, "--version")


def test_runs_as_non_root_without_compilers_pip_or_caches(image: tuple[Podman, str]) -> None:
    podman, tag = image
    config = json.loads(podman.run("image", "inspect", tag).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert _run(podman, tag, "id", "-u").strip() == "65532"
    probe = (
        "for tool in gcc cc c++ make pip pip3; do command -v $tool; done; "
        "ls -d /root/.cache /wheels /src /opt/herald/bin/pip* 2>/dev/null; "
        "find / -xdev -name '*.whl' 2>/dev/null | grep -v ^/usr/share/python-wheels; true"
    )
    assert _run(podman, tag, "sh", "-c", probe).strip() == ""


def test_size_and_oci_archive(image: tuple[Podman, str]) -> None:
    podman, tag = image
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"image: {tag} is {size / 2**20:.0f} MiB", file=sys.stderr)
    assert size < 450 * 2**20
    archive = podman.root / f"herald-{VERSION}.oci.tar"
    archive.unlink(missing_ok=True)
    podman.run("save", "--format", "oci-archive", "-o", str(archive), tag)
    with tarfile.open(archive) as oci:
        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == tag
