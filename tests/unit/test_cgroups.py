"""/proc/<pid>/cgroup → (pod UID, container ID): a table of the path shapes real nodes produce."""

from __future__ import annotations

import os

import pytest

from herald_agent.attestors.cgroups import PodContainer, parse_cgroup_file, read_pod_container

UID = "1234abcd-5678-90ab-cdef-1234567890ab"
UID_ = UID.replace("-", "_")
STATIC_UID = "3f1c2a7b9e0d4c5f8a6b7c8d9e0f1a2b"
CID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_CID = "a" * 64
OTHER_UID = "99999999-8888-7777-6666-555555555555"
FOUND = PodContainer(UID, CID)

V2_SYSTEMD_BESTEFFORT = (
    f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
    f"cri-containerd-{CID}.scope"
)
V1_LINES_ROOT = "\n".join(
    f"{n}:{c}:/" for n, c in [(9, "name=systemd"), (8, "pids"), (4, "memory"), (1, "cpu")]
)

CASES: list[tuple[str, str, PodContainer | None]] = [
    ("containerd systemd v2 besteffort", V2_SYSTEMD_BESTEFFORT, FOUND),
    (
        "containerd systemd v2 burstable",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        FOUND,
    ),
    (
        "containerd systemd v2 guaranteed",
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        FOUND,
    ),
    ("cgroupfs v2 burstable", f"0::/kubepods/burstable/pod{UID}/{CID}", FOUND),
    ("cgroupfs v2 guaranteed", f"0::/kubepods/pod{UID}/{CID}", FOUND),
    (
        "cgroupfs v1 all controllers",
        "\n".join(
            f"{n}:{c}:/kubepods/besteffort/pod{UID}/{CID}"
            for n, c in [(12, "pids"), (11, "cpu,cpuacct"), (3, "memory"), (1, "name=systemd")]
        ),
        FOUND,
    ),
    (
        "cri-o systemd v2",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-{CID}.scope",
        FOUND,
    ),
    (
        "cri-o systemd v2, process in the container's own sub-cgroup",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-{CID}.scope/container",
        FOUND,
    ),
    ("cri-o cgroupfs", f"0::/kubepods/besteffort/pod{UID}/crio-{CID}", FOUND),
    (
        "cri-o conmon is not a container",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope",
        None,
    ),
    (
        "docker systemd v1",
        f"4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"docker-{CID}.scope",
        FOUND,
    ),
    ("docker cgroupfs v1", f"4:memory:/kubepods/burstable/pod{UID}/{CID}", FOUND),
    ("podman cgroupfs parent", f"0::/kubepods/besteffort/pod{UID}/libpod-{CID}", FOUND),
    (
        "kind (systemd in a node container)",
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        FOUND,
    ),
    (
        "k3s / kind cgroupfs nested under the node container",
        f"0::/docker/{OTHER_CID}/kubepods/besteffort/pod{UID}/{CID}",
        FOUND,
    ),
    (
        "seen from a private cgroup namespace",
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        FOUND,
    ),
    (
        "static pod (32-hex UID), cgroupfs",
        f"0::/kubepods/burstable/pod{STATIC_UID}/{CID}",
        PodContainer(STATIC_UID, CID),
    ),
    (
        "static pod (32-hex UID), systemd",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
        f"cri-containerd-{CID}.scope",
        PodContainer(STATIC_UID, CID),
    ),
    (
        "a .mount unit under a pod",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        "var-lib-kubelet-pods.mount",
        None,
    ),
    ("the pod cgroup itself", f"0::/kubepods/besteffort/pod{UID}", None),
    ("a short container ID", f"0::/kubepods/besteffort/pod{UID}/{CID[:12]}", None),
    ("an upper-case container ID", f"0::/kubepods/besteffort/pod{UID}/{CID.upper()}", None),
    ("pod segment outside kubepods", f"0::/system.slice/pod{UID}/{CID}", None),
    ("cgroupfs UID with underscores", f"0::/kubepods/besteffort/pod{UID_}/{CID}", None),
    (
        "systemd UID with dashes",
        f"0::/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope",
        None,
    ),
    ("host process, v2", "0::/system.slice/sshd.service", None),
    ("host process, root", "0::/", None),
    ("host process, hybrid", V1_LINES_ROOT + "\n0::/user.slice/user-0.slice/session-1.scope", None),
    (
        "a container runtime's own service",
        f"0::/system.slice/containerd.service\n4:memory:/system.slice/docker-{CID}.scope",
        None,
    ),
    ("empty file", "", None),
    ("garbage lines", "nonsense\n::\n", None),
    (
        "hybrid: v2 in the pod, v1 controllers at the root",
        f"{V1_LINES_ROOT}\n{V2_SYSTEMD_BESTEFFORT}",
        FOUND,
    ),
    (
        "hybrid: v1 and v2 agree",
        f"8:pids:/kubepods/besteffort/pod{UID}/{CID}\n0::/kubepods/besteffort/pod{UID}/{CID}",
        FOUND,
    ),
    (
        "hybrid: v1 and v2 name different pods",
        f"8:pids:/kubepods/besteffort/pod{OTHER_UID}/{CID}\n{V2_SYSTEMD_BESTEFFORT}",
        None,
    ),
    (
        "hybrid: v1 and v2 name different containers",
        f"8:pids:/kubepods/besteffort/pod{UID}/{OTHER_CID}\n{V2_SYSTEMD_BESTEFFORT}",
        None,
    ),
    (
        "hybrid: one line names the pod with an unknown leaf",
        f"8:pids:/kubepods/besteffort/pod{UID}/something\n{V2_SYSTEMD_BESTEFFORT}",
        None,
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_path_shapes(text: str, expected: PodContainer | None) -> None:
    assert parse_cgroup_file(text + "\n") == expected


def test_this_process_is_not_in_a_pod() -> None:
    assert read_pod_container(os.getpid()) is None


def test_a_gone_process_raises() -> None:
    with pytest.raises(FileNotFoundError):
        read_pod_container(2**22 + 1)
