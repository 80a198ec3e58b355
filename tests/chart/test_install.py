"""The chart on a real control plane: helm install, upgrade, rollback, uninstall, and the
components started from what was installed reaching Ready against that API.

A fresh control plane of its own (etcd, kube-apiserver, kube-controller-manager; no CRDs
applied beforehand): the first install is a fresh-cluster install, and the CRD upgrade cannot
leak into the suite's shared control plane. There is no scheduler or kubelet yet, so pods stay
Pending; the Deployment, ReplicaSet and DaemonSet controllers do run, so owners are real. The
server, operator and agent are then run by tests/chart/pods.py from the installed manifests, under
the chart's ServiceAccounts.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.pods import Container, Pod, can_run_containers, start_container
from tests.chart.render import CHART
from tests.k8s.api import Kube, wait_for
from tests.k8s.binaries import Prerequisite, ensure_binaries
from tests.k8s.controlplane import ControlPlane
from tests.k8s.fixtures import NODES, missing
from tests.k8s.helm import Helm, set_flags
from tests.k8s.install import release_names
from tests.k8s.rbac import Release, render_rbac

Obj = dict[str, Any]
HERALD_CRDS = (
    "clusterfederatedtrustdomains.herald.dev",
    "clusterspiffeids.herald.dev",
    "clusterstaticentries.herald.dev",
    "spiffeids.herald.dev",
    "workloadentries.herald.dev",
    "clusterkopfpeerings.kopf.dev",
)
BASE_VALUES = {"trustDomain": "chart.test", "clusterName": "plane"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        bin_dir = ensure_binaries()
    except Prerequisite as exc:
        missing(str(exc))
    started = ControlPlane(tmp_path_factory.mktemp("chart-plane"), bin_dir, nodes=NODES).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Iterator[Kube]:
    client = Kube(plane.admin_kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster_helm(helm4: Helm, plane: ControlPlane) -> Helm:
    return helm4.with_kubeconfig(plane.admin_kubeconfig)


def _owner(obj: Obj) -> tuple[str, str] | None:
    refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")]
    return (refs[0]["kind"], refs[0]["name"]) if refs else None


def _owned(
    kube: Kube, api_version: str, kind: str, namespace: str, owner: tuple[str, str]
) -> list[Obj]:
    return [o for o in kube.list(api_version, kind, namespace) if _owner(o) == owner]


def _server_config(kube: Kube, namespace: str, release: str) -> Obj:
    configmap = kube.get("v1", "ConfigMap", f"{release}-server", namespace)
    assert configmap is not None
    parsed: Obj = yaml.safe_load(configmap["data"]["server.yaml"])
    return parsed


def _established(kube: Kube, name: str) -> Obj | None:
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    conditions = (crd or {}).get("status", {}).get("conditions") or []
    ok = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
    return crd if ok else None


def _history(helm: Helm, release: str, namespace: str) -> list[Obj]:
    done = helm.run(["history", release, "-n", namespace, "-o", "yaml"])
    history: list[Obj] = yaml.safe_load(done.stdout)
    return history


def _printer_columns(kube: Kube) -> list[str]:
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", HERALD_CRDS[4])
    assert crd is not None
    return [c["name"] for c in crd["spec"]["versions"][0].get("additionalPrinterColumns", [])]


def _chart_with_changed_crd(workdir: Path) -> Path:
    """A copy of the chart whose WorkloadEntry CRD has one more printer column."""
    copy = workdir / "herald"
    shutil.copytree(CHART, copy)
    path = copy / "files" / "crds" / "herald.dev_workloadentries.yaml"
    crd = yaml.safe_load(path.read_text())
    columns = crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", [])
    columns.append({"name": "Upgraded", "type": "string", "jsonPath": ".spec.hint"})
    path.write_text(yaml.safe_dump(crd))
    return copy


def test_install_upgrade_rollback_uninstall(
    cluster_helm: Helm, admin: Kube, plane: ControlPlane, tmp_path: Path
) -> None:
    helm, release, namespace = cluster_helm, "herald", "herald-chart"
    done = helm.run(
        [
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--create-namespace",
            *set_flags(BASE_VALUES),
        ]
    )
    # NOTES.txt: how to see the first WorkloadEntry and fetch an SVID.
    assert "kubectl -n demo get workloadentries" in done.stdout
    assert "herald-agent api fetch x509" in done.stdout
    assert "SPIFFE_ENDPOINT_SOCKET" in done.stdout

    for name in HERALD_CRDS:
        crd = wait_for(lambda name=name: _established(admin, name), what=f"CRD {name}")
        if name.endswith(".kopf.dev"):
            continue  # from crds/: Helm installs it first and never owns it
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    server = admin.get("apps/v1", "Deployment", f"{release}-server", namespace)
    assert server is not None and server["spec"]["replicas"] == 2
    assert server["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for api_version, kind, name, ns in [
        ("apps/v1", "Deployment", f"{release}-operator", namespace),
        ("apps/v1", "DaemonSet", f"{release}-agent", namespace),
        ("v1", "Service", f"{release}-server", namespace),
        ("policy/v1", "PodDisruptionBudget", f"{release}-server", namespace),
        ("kopf.dev/v1", "ClusterKopfPeering", f"{release}-operator", None),
    ] + [
        ("v1", "ServiceAccount", f"{release}-{c}", namespace)
        for c in ("server", "operator", "agent")
    ]:
        assert admin.get(api_version, kind, name, ns) is not None, f"{kind} {name}"

    # The RBAC on the API is exactly the source's, as the least-privilege tests apply it.
    version = tuple(int(p) for p in plane.version()["gitVersion"].lstrip("v").split(".")[:3])
    spec = Release(release, namespace, release_names(release), version)  # type: ignore[arg-type]
    for want in render_rbac(spec):
        meta = want["metadata"]
        got = admin.get(want["apiVersion"], want["kind"], meta["name"], meta.get("namespace"))
        assert got is not None, f"{want['kind']} {meta['name']}"
        for key in ("rules", "roleRef", "subjects"):
            assert got.get(key) == want.get(key), f"{want['kind']} {meta['name']} {key}"

    # Owners: Deployment → ReplicaSet → Pods (Pending: no scheduler), PDBs tracking them.
    server_rs = wait_for(
        lambda: _owned(
            admin, "apps/v1", "ReplicaSet", namespace, ("Deployment", f"{release}-server")
        ),
        what="the server's ReplicaSet",
    )
    rs_name = server_rs[0]["metadata"]["name"]
    pods = wait_for(
        lambda: len(_owned(admin, "v1", "Pod", namespace, ("ReplicaSet", rs_name))) == 2,
        what="two server pods owned by the ReplicaSet",
    )
    assert pods
    wait_for(
        lambda: (
            (admin.get("policy/v1", "PodDisruptionBudget", f"{release}-server", namespace) or {})
            .get("status", {})
            .get("expectedPods")
            == 2
        ),
        what="the server PDB counting its pods",
    )
    kept = {
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": "survives-uninstall"},
        "spec": {"spiffeIDTemplate": "spiffe://chart.test/ns/{{ .PodMeta.Namespace }}"},
    }
    admin.create(kept, track=False)

    # Upgrade with changed values: more replicas, a new TTL; the pods roll on the checksum.
    helm.run(
        [
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            *set_flags({"server.replicaCount": 3, "server.ca.x509SvidTtl": "30m"}),
        ]
    )
    server = admin.get("apps/v1", "Deployment", f"{release}-server", namespace)
    assert server is not None and server["spec"]["replicas"] == 3
    assert _server_config(admin, namespace, release)["ca"]["x509_svid_ttl"] == "30m"
    wait_for(
        lambda: (
            len(
                _owned(
                    admin, "apps/v1", "ReplicaSet", namespace, ("Deployment", f"{release}-server")
                )
            )
            == 2
        ),
        what="a second server ReplicaSet (the config checksum changed)",
    )

    # A CRD upgrade: a chart whose CRD changed; helm upgrade applies it (crds/ would not be).
    assert "Upgraded" not in _printer_columns(admin)
    changed = _chart_with_changed_crd(tmp_path)
    helm.run(["upgrade", release, str(changed), "-n", namespace, "--reuse-values"])
    wait_for(lambda: "Upgraded" in _printer_columns(admin), what="the upgraded CRD")

    # Rollback to the first revision: values and CRDs as installed.
    helm.run(["rollback", release, "1", "-n", namespace])
    server = admin.get("apps/v1", "Deployment", f"{release}-server", namespace)
    assert server is not None and server["spec"]["replicas"] == 2
    assert _server_config(admin, namespace, release)["ca"]["x509_svid_ttl"] == "1h"
    assert "Upgraded" not in _printer_columns(admin)
    revisions = _history(helm, release, namespace)
    assert [r["revision"] for r in revisions] == [1, 2, 3, 4]
    assert revisions[-1]["description"] == "Rollback to 1"

    # Uninstall: the release's objects go; CRDs and custom resources stay (crds.keep).
    helm.run(["uninstall", release, "-n", namespace])
    for api_version, kind, name, ns in [
        ("apps/v1", "Deployment", f"{release}-server", namespace),
        ("apps/v1", "DaemonSet", f"{release}-agent", namespace),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", f"{release}-server", None),
        ("rbac.authorization.k8s.io/v1", "Role", f"{release}-server", namespace),
        ("v1", "ServiceAccount", f"{release}-agent", namespace),
        ("kopf.dev/v1", "ClusterKopfPeering", f"{release}-operator", None),
    ]:
        wait_for(
            lambda a=api_version, k=kind, n=name, s=ns: admin.get(a, k, n, s) is None,
            what=f"{kind} {name} gone",
        )
    wait_for(
        lambda: not admin.list("apps/v1", "ReplicaSet", namespace),
        what="the ReplicaSets garbage-collected with their Deployments",
    )
    for name in HERALD_CRDS:
        assert admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name) is not None
    assert admin.get("herald.dev/v1alpha1", "ClusterSPIFFEID", "survives-uninstall") is not None
    admin.delete("herald.dev/v1alpha1", "ClusterSPIFFEID", "survives-uninstall")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(container: Container, port: int, what: str) -> None:
    try:
        wait_for(
            lambda: _ready(port) or not container.process.alive(), what=f"{what} /ready", timeout=60
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.process.tail(40)}") from None
    assert container.process.alive(), f"{what} exited\n{container.process.tail(40)}"


def test_installed_components_reach_ready(
    cluster_helm: Helm, admin: Kube, plane: ControlPlane
) -> None:
    why = can_run_containers()
    if why:
        missing(why)
    helm, release, namespace = cluster_helm, "herald-run", "herald-run"
    ports = {
        name: _free_port()
        for name in ("attestation", "agent", "health", "operator", "agent_health")
    }
    values = {
        **BASE_VALUES,
        "server": {"ports": {k: ports[k] for k in ("attestation", "agent", "health")}},
        "operator": {"healthPort": ports["operator"]},
        "agent": {"healthPort": ports["agent_health"]},
    }
    # --take-ownership: the CRDs may be kept from an uninstalled release (docs/install.md).
    helm.run(
        [
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--create-namespace",
            "--take-ownership",
            *set_flags(values),
        ]
    )
    api_port = int(plane.url.rsplit(":", 1)[1])
    workdir = Path(tempfile.mkdtemp(prefix="hc-"))
    started: list[Container] = []
    try:
        server_template = admin.get("apps/v1", "Deployment", f"{release}-server", namespace)[
            "spec"
        ]["template"]
        server_pod = Pod(f"{release}-server-7d4b9-abcde", namespace, f"{release}-server")
        server = start_container(
            admin, server_template, "server", server_pod, workdir / "server", api_port=api_port
        )
        started.append(server)
        _wait_ready(server, ports["health"], "herald-server")
        # It did its job under the chart's ServiceAccount: the CA Secret, bundle and Lease named
        # by the chart.
        names = release_names(release)
        assert admin.get("v1", "Secret", names["caSecret"], namespace) is not None
        bundle = wait_for(
            lambda: admin.get("v1", "ConfigMap", names["bundleConfigMap"], namespace),
            what="the bundle ConfigMap",
        )
        assert "BEGIN CERTIFICATE" in bundle["data"]["bundle.pem"]
        lease = wait_for(
            lambda: (
                (
                    admin.get("coordination.k8s.io/v1", "Lease", names["leaderLease"], namespace)
                    or {}
                )
                .get("spec", {})
                .get("holderIdentity")
            ),
            what="the server holding the Lease",
        )
        assert str(lease).startswith(server_pod.name)

        operator_template = admin.get("apps/v1", "Deployment", f"{release}-operator", namespace)[
            "spec"
        ]["template"]
        operator_pod = Pod(f"{release}-operator-5f6c7-fghij", namespace, f"{release}-operator")
        operator = start_container(
            admin,
            operator_template,
            "operator",
            operator_pod,
            workdir / "operator",
            api_port=api_port,
        )
        started.append(operator)
        _wait_ready(operator, ports["operator"], "herald-operator")
        # A pod and a ClusterSPIFFEID become a WorkloadEntry.
        admin.create(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODES[0]}}, track=False
        )
        admin.create_namespace("apps")
        admin.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": "apps"},
                "spec": {"nodeName": NODES[0], "containers": [{"name": "web", "image": "web"}]},
            }
        )
        admin.create(
            {
                "apiVersion": "herald.dev/v1alpha1",
                "kind": "ClusterSPIFFEID",
                "metadata": {"name": "apps"},
                "spec": {
                    "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
                    "/sa/{{ .PodSpec.ServiceAccountName }}",
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}},
                },
            }
        )
        try:
            entries = wait_for(
                lambda: admin.list("herald.dev/v1alpha1", "WorkloadEntry", "apps"),
                what="the operator's WorkloadEntry",
                timeout=30,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{operator.process.tail(40)}") from None
        assert entries[0]["spec"]["spiffeID"] == "spiffe://chart.test/ns/apps/sa/default"
        assert entries[0]["spec"]["nodeName"] == NODES[0]

        # The agent: k8s_psat with the projected token of a pod on that node, the bundle from the
        # ConfigMap the server wrote, the server reached by its Service name.
        agent_template = admin.get("apps/v1", "DaemonSet", f"{release}-agent", namespace)["spec"][
            "template"
        ]
        agent_obj = admin.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{release}-agent-x1y2z", "namespace": namespace},
                "spec": {
                    "nodeName": NODES[0],
                    "serviceAccountName": f"{release}-agent",
                    "containers": [{"name": "agent", "image": "herald"}],
                },
            }
        )
        agent_pod = Pod(
            agent_obj["metadata"]["name"],
            namespace,
            f"{release}-agent",
            node_name=NODES[0],
            bound=agent_obj,
            hosts={f"{release}-server.{namespace}.svc": "127.0.0.1"},
        )
        agent = start_container(
            admin, agent_template, "agent", agent_pod, workdir / "agent", api_port=api_port
        )
        started.append(agent)
        _wait_ready(agent, ports["agent_health"], "herald-agent")
        assert agent.argv[-2:] == ["-kubeletHost", "127.0.0.1"]
    finally:
        for container in reversed(started):
            container.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
