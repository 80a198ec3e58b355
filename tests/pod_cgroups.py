"""Kubelet-shaped pod cgroups with real processes in them, for the k8s attestor's tests.

Needs root and writable cgroup hierarchies (testenv §4): the cgroup2 tree at
/sys/fs/cgroup/unified and the v1 ``pids`` controller; without them a test skips saying which.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

V2_ROOT = Path("/sys/fs/cgroup/unified")
V1_PIDS = Path("/sys/fs/cgroup/pids")
SLEEP = "/bin/sleep"


def require_writable(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("placing processes in cgroups needs root")
    if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
        pytest.skip(f"{root} is not a writable cgroup hierarchy on this machine")


@dataclass
class CgroupMaker:
    """Creates cgroup directories and removes the ones it made, deepest first."""

    made: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def make(self, path: Path) -> Path:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir()
            self.made.append(directory)
        return path

    def start_in(self, cgroup: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([SLEEP, "60"])
        self.procs.append(proc)
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for directory in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                # Shared parents (kubepods.slice) may hold another test's cgroups: leave them.
                continue


def v2_pod_cgroup(cgroups: CgroupMaker, pod_uid: str, container_id: str) -> Path:
    require_writable(V2_ROOT)
    uid_ = pod_uid.replace("-", "_")
    return cgroups.make(
        V2_ROOT
        / "kubepods.slice"
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{uid_}.slice"
        / f"cri-containerd-{container_id}.scope"
    )


def v1_pod_cgroup(cgroups: CgroupMaker, pod_uid: str, container_id: str) -> Path:
    require_writable(V1_PIDS)
    return cgroups.make(V1_PIDS / "kubepods" / "besteffort" / f"pod{pod_uid}" / container_id)
