"""The test control plane itself: the pinned release, a cluster's security posture, its faults.

The session's control plane must answer as the pinned Kubernetes release, authorize with Node and
RBAC, admit with NodeRestriction and ServiceAccount admission, and issue and review tokens. A
control plane that cannot start says why with the processes' logs; one that stops leaves nothing
running; a missing Go skips locally and fails under CI=true; a failed build prints go's error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from tests.k8s.api import Kube, refusal, wait_for
from tests.k8s.binaries import BUILD_SCRIPT, ROOT, versions
from tests.k8s.controlplane import ISSUER, ControlPlane, ControlPlaneError
from tests.k8s.fixtures import missing
from tests.k8s.processes import ManagedProcess

pytestmark = pytest.mark.timeout(120)


def test_answers_as_the_pinned_release(own_control_plane: ControlPlane) -> None:
    pinned = versions()["KUBERNETES_VERSION"]
    version = own_control_plane.version()
    assert version["gitVersion"] == pinned
    assert (version["major"], version["minor"]) == tuple(pinned.lstrip("v").split(".")[:2])
    assert version["gitTreeState"] == "clean"


def _pod(name: str, namespace: str, node: str | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _namespace(kube: Kube, name: str) -> str:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_pods_get_a_projected_token_volume(kube: Kube) -> None:
    namespace = _namespace(kube, "cp-admission")
    pod = kube.create(_pod("p", namespace), track=False)
    volumes = pod["spec"]["volumes"]
    projected = [v for v in volumes if v["name"].startswith("kube-api-access-")]
    assert projected, f"ServiceAccount admission added no token volume: {volumes}"
    sources = projected[0]["projected"]["sources"]
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert token["path"] == "token"
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)


def test_token_request_and_review_name_the_pod_and_its_node(kube: Kube) -> None:
    namespace = _namespace(kube, "cp-tokens")
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "cp-node"}})
    pod = kube.create(_pod("bound", namespace, node="cp-node"), track=False)
    token = kube.token(namespace, "default", audiences=["herald-server"], bound_pod=pod)
    review = kube.request(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["herald-server"]},
        },
    )["status"]
    assert review["authenticated"] is True
    assert review["audiences"] == ["herald-server"]
    user = review["user"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    extra = user["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["bound"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
    assert extra["authentication.kubernetes.io/node-name"] == ["cp-node"]
    wrong_audience = kube.request(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [ISSUER]},
        },
    )["status"]
    assert wrong_audience.get("authenticated") is not True


def test_node_authorizer_and_node_restriction(
    own_control_plane: ControlPlane, kube: Kube, tmp_path: Path
) -> None:
    for name in ("node-a", "node-b"):
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    user = own_control_plane.users["system:node:node-a"]
    node_a = Kube(own_control_plane.kubeconfig_for("node-a", user.token))
    try:
        node_a.patch("v1", "Node", "node-a", None, {"metadata": {"labels": {"seen": "yes"}}})
        with pytest.raises(ApiException) as refused:
            node_a.patch("v1", "Node", "node-b", None, {"metadata": {"labels": {"seen": "no"}}})
        assert refused.value.status == 403
        assert 'node "node-a" is not allowed to modify node "node-b"' in refusal(refused.value)
        with pytest.raises(ApiException) as unrelated:
            node_a.get("v1", "Secret", "anything", "default")
        assert unrelated.value.status == 403
        assert "no relationship found between node 'node-a' and this object" in refusal(
            unrelated.value
        )
    finally:
        node_a.close()


def test_garbage_collector_deletes_dependents(kube: Kube) -> None:
    namespace = _namespace(kube, "cp-gc")
    owner = kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": namespace},
        },
        track=False,
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [ref]},
        },
        track=False,
    )
    kube.delete("v1", "ConfigMap", "owner", namespace)
    wait_for(
        lambda: kube.get("v1", "ConfigMap", "dependent", namespace) is None,
        what="the garbage collector to delete the dependent",
        timeout=30,
    )


# --- a control plane that cannot start, or stops ----------------------------------------------


def test_port_clash_fails_with_the_cause_and_the_logs(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = ControlPlane(tmp_path, own_control_plane.bin_dir, port=port)
        with pytest.raises(ControlPlaneError) as failed:
            plane.start()
    message = str(failed.value)
    assert "kube-apiserver exited before kube-apiserver /readyz was ready" in message
    assert f"127.0.0.1:{port}" in message
    assert "address already in use" in message
    assert "--- etcd (" in message, "the logs of every process are shown"
    assert not any(p.alive() for p in plane.processes.values()), "a failed start stops the rest"


def test_not_ready_in_time_fails_and_stops_everything(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    plane = ControlPlane(tmp_path, own_control_plane.bin_dir, ready_timeout=0.3)
    with pytest.raises(ControlPlaneError, match=r"not ready after 0 s") as failed:
        plane.start()
    assert "--- " in str(failed.value)
    pids = [p.pid for p in plane.processes.values()]
    assert pids
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} left running"


def test_stop_leaves_no_process_behind(own_control_plane: ControlPlane, tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, own_control_plane.bin_dir).start()
    pids = {name: p.pid for name, p in plane.processes.items()}
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    plane.stop()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} (pid {pid}) left"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = ManagedProcess(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('up', flush=True)\nwhile True: time.sleep(1)",
        ],
        tmp_path / "stubborn.log",
    ).start()
    wait_for(lambda: "up" in stubborn.log.read_text(), what="the process to start")
    stubborn.stop(grace=0.5)
    assert not stubborn.alive()
    assert stubborn.exit_code() == -9


# --- the build script ----------------------------------------------------------------------


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HERALD_K8S_CACHE": str(tmp_path / "cache"), **extra}


def test_without_go_the_script_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        env=_script_env(tmp_path, PATH="/usr/bin:/bin"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert "go is not on PATH; Go >= 1.26 is needed" in done.stderr


def _copy_build_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(BUILD_SCRIPT, tree / "scripts")
    shutil.copytree(ROOT / "tests" / "k8s" / "go", tree / "tests" / "k8s" / "go")
    shutil.copy(ROOT / "tests" / "k8s" / "versions.env", tree / "tests" / "k8s")
    return tree


def test_a_pin_that_disagrees_with_versions_env_is_refused(tmp_path: Path) -> None:
    tree = _copy_build_tree(tmp_path)
    env_file = tree / "tests" / "k8s" / "versions.env"
    env_file.write_text(env_file.read_text().replace("ETCD_VERSION=v3.7.3", "ETCD_VERSION=v3.6.9"))
    done = subprocess.run(
        ["bash", str(tree / "scripts" / "k8s_binaries.sh")],
        env=_script_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "pins go.etcd.io/etcd/server/v3 v3.7.3 but versions.env says v3.6.9" in done.stderr


def test_a_failed_build_prints_the_go_error(tmp_path: Path) -> None:
    if shutil.which("go") is None:
        missing("building needs Go")
    tree = _copy_build_tree(tmp_path)
    main = tree / "tests" / "k8s" / "go" / "etcd" / "main.go"
    main.write_text(
        main.read_text().replace("etcdmain.Main(os.Args)", "etcdmain.Main(os.Args, 42)")
    )
    done = subprocess.run(
        ["bash", str(tree / "scripts" / "k8s_binaries.sh")],
        env=_script_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )
    assert done.returncode == 1
    assert "build failed in tests/k8s/go/etcd" in done.stderr
    assert "too many arguments in call to etcdmain.Main" in done.stderr
    assert not (tmp_path / "cache" / versions()["KUBERNETES_VERSION"] / "bin").exists()


def test_missing_go_skips_locally_and_fails_under_ci(tmp_path: Path) -> None:
    """A fresh cache and no Go on PATH: the fixture's verdict in a real pytest run."""
    target = "tests/integration/test_control_plane.py::test_answers_as_the_pinned_release"
    base = {"HERALD_K8S_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    base.pop("HERALD_TEST_KUBECONFIG", None)
    outcomes = {}
    for ci in ("", "true"):
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "HERALD_TEST_KUBECONFIG")}
        env.update(base, CI=ci)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", target],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=100,
        )
        outcomes[ci] = (done.returncode, done.stdout)
    skipped_code, skipped_out = outcomes[""]
    assert skipped_code == 0, skipped_out
    assert "1 skipped" in skipped_out
    assert "go is not on PATH" in skipped_out
    failed_code, failed_out = outcomes["true"]
    assert failed_code == 1, failed_out
    assert "CI=true and a Kubernetes test prerequisite is missing" in failed_out
