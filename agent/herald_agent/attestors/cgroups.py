"""Pod UID and container ID of a process, from ``/proc/<pid>/cgroup``.

Only ``/proc/<pid>/cgroup`` is read, never ``mountinfo``: the cgroup file is written by the kernel
from the process's cgroup membership, which a container cannot change to another pod's, while
``mountinfo`` lists mounts the workload itself may have made.

Each line is ``hierarchy:controllers:path``. The kubelet names a pod's cgroup and the runtime names
the container's below it; the shapes recognised are:

- cgroupfs driver (v1 or v2): ``…/kubepods[/besteffort|/burstable]/pod<uid>/<container>``
- systemd driver: ``…/kubepods[-<qos>]-pod<uid with _ for ->.slice/<container>``, the slice name
  optionally prefixed (kind and k3s nest it as ``kubelet-kubepods-…``)
- container segments: ``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope``,
  ``libpod-<id>[.scope]`` or a bare ``<id>`` (cgroupfs), ``<id>`` being 64 lowercase hex digits;
  ``crio-conmon-<id>.scope`` is CRI-O's monitor process, not a container, and matches nothing.

Segments above the pod may be anything, including the ``/..`` that a private cgroup namespace
shows for paths outside it. Segments below the container (cgroups the workload made inside its
own) are allowed: they cannot leave that container's cgroup.

A hybrid host shows one line per v1 hierarchy plus the ``0::`` v2 line. The kubelet puts a
container at the same place in every hierarchy, so every line that names a pod must name the same
(pod, container); lines naming no pod (a controller the runtime does not manage) are ignored. Any
disagreement, or a pod segment with an unrecognised container below it, gives ``None``: the
process is then not attested as a pod at all rather than possibly as the wrong one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from herald_agent.attestors.proc import PROC_ROOT

_UID: Final = (
    r"[0-9a-f]{8}(?P<sep>[-_])[0-9a-f]{4}(?P=sep)[0-9a-f]{4}(?P=sep)[0-9a-f]{4}(?P=sep)[0-9a-f]{12}"
)
# Static pods carry a 32-hex UID (a hash of their manifest) instead of a UUID.
_POD_UID: Final = rf"(?P<uid>{_UID}|[0-9a-f]{{32}})"
_CGROUPFS_POD: Final = re.compile(rf"pod{_POD_UID}\Z")
_SYSTEMD_POD: Final = re.compile(
    rf"(?:[a-z0-9_.]+-)?kubepods(?:-besteffort|-burstable)?-pod{_POD_UID}\.slice\Z"
)
_CGROUPFS_QOS: Final = ("besteffort", "burstable")
_CONTAINER: Final = re.compile(
    r"(?:(?:cri-containerd|crio|docker|libpod)-(?P<scoped>[0-9a-f]{64})\.scope"
    r"|libpod-(?P<libpod>[0-9a-f]{64})"
    r"|crio-(?P<crio>[0-9a-f]{64})"
    r"|(?P<bare>[0-9a-f]{64}))\Z"
)


@dataclass(frozen=True, slots=True)
class PodContainer:
    """Where a process runs: the pod's UID (with dashes) and the runtime's container ID."""

    pod_uid: str
    container_id: str


class _Unrecognised:
    """A path with a pod segment but no container herald recognises below it."""


_UNRECOGNISED: Final = _Unrecognised()


def read_pod_container(pid: int, proc_root: str = PROC_ROOT) -> PodContainer | None:
    """Parse ``/proc/<pid>/cgroup``; FileNotFoundError or ProcessLookupError if it is gone."""
    with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as cgroup_file:
        return parse_cgroup_file(cgroup_file.read())


def parse_cgroup_file(text: str) -> PodContainer | None:
    """The (pod, container) every pod-naming line agrees on, or None (see the module docstring)."""
    found: set[PodContainer | _Unrecognised] = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        result = parse_cgroup_path(parts[2])
        if result is not None:
            found.add(result)
    if len(found) != 1:
        return None
    (only,) = found
    return only if isinstance(only, PodContainer) else None


def parse_cgroup_path(path: str) -> PodContainer | _Unrecognised | None:
    """One cgroup path: None if it names no pod, a marker if it names one but no container."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        uid = _pod_uid(segments, index, segment)
        if uid is None:
            continue
        if index + 1 >= len(segments):
            return _UNRECOGNISED
        container_id = _container_id(segments[index + 1])
        if container_id is None:
            return _UNRECOGNISED
        return PodContainer(uid, container_id)
    return None


def _pod_uid(segments: list[str], index: int, segment: str) -> str | None:
    # systemd escapes '-' (its slice separator) as '_'; the cgroupfs driver never rewrites it.
    systemd = _SYSTEMD_POD.match(segment)
    if systemd is not None:
        return systemd["uid"].replace("_", "-") if systemd["sep"] != "-" else None
    cgroupfs = _CGROUPFS_POD.match(segment)
    if cgroupfs is None or cgroupfs["sep"] == "_" or not _under_kubepods(segments, index):
        return None
    return cgroupfs["uid"]


def _under_kubepods(segments: list[str], index: int) -> bool:
    """A bare ``pod<uid>`` counts only as ``kubepods/pod<uid>`` or ``kubepods/<qos>/pod<uid>``."""
    parent = segments[index - 1] if index >= 1 else ""
    if parent == "kubepods":
        return True
    return parent in _CGROUPFS_QOS and index >= 2 and segments[index - 2] == "kubepods"


def _container_id(segment: str) -> str | None:
    match = _CONTAINER.match(segment)
    if match is None:
        return None
    return match["scoped"] or match["libpod"] or match["crio"] or match["bare"]
