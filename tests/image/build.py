"""Building herald's image with podman here, where no container registry can be reached.

- `ensure_tools` installs podman, runc and mmdebstrap from Debian's packages when they are
  missing (as root; CI runs as root), else raises `Prerequisite`.
- `ensure_base` makes the base image itself: ``mmdebstrap --variant=minbase`` of Debian bookworm
  with python3 and python3-venv, from the mirror this machine's apt uses, imported with
  ``podman import``; cached in podman's storage under a tag keyed by those inputs.
- `build_context` lays out the build context (the sources the Containerfile copies, plus a
  wheelhouse of requirements.lock downloaded with pip, cached by the locks' content), and
  `build_image` runs ``podman build --network=none`` on it with the base as ``BASE``.

podman runs with runc (crun refuses these hybrid cgroups), cgroupfs, file events and the vfs
storage driver, its storage in ``${HERALD_IMAGE_CACHE:-~/.cache/herald/image}``, so nothing of the
host's container setup is used or changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.binaries import ROOT, Prerequisite

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}
IMAGE_DIR = ROOT / "deploy" / "image"
CONTEXT_PATHS = ("pyproject.toml", "README.md", "core", "server", "agent", "operator")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "wheels")


def cache_root() -> Path:
    return Path(os.environ.get("HERALD_IMAGE_CACHE", Path.home() / ".cache" / "herald" / "image"))


def _say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr)


def ensure_tools() -> None:
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Prerequisite(f"{', '.join(missing)} missing, and installing them needs root and apt")
    _say(f"installing {' '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, "uidmap"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise Prerequisite(f"apt-get install {' '.join(missing)} failed: {done.stderr[-600:]}")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt is configured with (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.MULTILINE))
            if SUITE in fields.get("Suites", "").split() and "security" not in fields.get(
                "URIs", ""
            ):
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise Prerequisite(f"no apt source for Debian {SUITE} to build the image's base from")


@dataclass(frozen=True)
class Podman:
    """podman with this module's settings (module docstring)."""

    root: Path

    def argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0


def ensure_base(podman: Podman) -> str:
    """The base image's tag, made first if this cache has none for the current inputs."""
    mirror = debian_mirror()
    key = hashlib.sha256(
        f"{SUITE} minbase {' '.join(BASE_PACKAGES)} {mirror}".encode()
    ).hexdigest()[:12]
    tag = f"localhost/herald-base:{SUITE}-{key}"
    if podman.exists(tag):
        return tag
    tarball = podman.root / f"base-{key}.tar"
    _say(f"making the base: mmdebstrap {SUITE} minbase + {', '.join(BASE_PACKAGES)}")
    done = subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--quiet",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(tarball),
            mirror,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"mmdebstrap failed:\n{done.stderr[-3000:]}")
    podman.run("import", str(tarball), tag)
    tarball.unlink()
    return tag


def _wheelhouse(root: Path) -> Path:
    locks = [IMAGE_DIR / "requirements.lock", IMAGE_DIR / "build-requirements.lock"]
    key = hashlib.sha256(b"".join(path.read_bytes() for path in locks)).hexdigest()[:12]
    wheels = root / f"wheels-{key}"
    if wheels.is_dir():
        return wheels
    partial = root / f"wheels-{key}.new"
    shutil.rmtree(partial, ignore_errors=True)
    _say("downloading the locked wheels")
    for lock in locks:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(partial),
                "-r",
                str(lock),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise Prerequisite(f"cannot download the wheels of {lock.name}: {done.stderr[-800:]}")
    partial.rename(wheels)
    return wheels


def build_context(dest: Path, root: Path) -> Path:
    """The build context: the sources the Containerfile copies, and the wheelhouse."""
    for name in CONTEXT_PATHS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=_IGNORED)
        else:
            shutil.copy2(source, dest / name)
    shutil.copytree(IMAGE_DIR, dest / "deploy" / "image", ignore=_IGNORED)
    shutil.copytree(_wheelhouse(root), dest / "deploy" / "image" / "wheels")
    return dest


def build_image(
    podman: Podman, base: str, context: Path, tag: str
) -> subprocess.CompletedProcess[str]:
    # --layers=false: vfs stores every layer as a full copy, so intermediate images are not kept
    # (the whole build from cached wheels takes well under a minute).
    done = podman.run(
        "build",
        "--layers=false",
        "--network=none",
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        "PIP_OPTIONS=--no-index --find-links /wheels",
        "-f",
        str(context / "deploy" / "image" / "Containerfile"),
        "-t",
        tag,
        str(context),
    )
    podman.run("image", "prune", "--force")  # the previous build's image, now untagged
    return done
