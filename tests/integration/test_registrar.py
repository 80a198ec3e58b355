"""The registrar, run by Kopf against the real API as the operator's ServiceAccount: pods and
identities become entries; `herald-operator run` and its peering as processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest

from herald_operator.kubeapi import KubeApi
from herald_operator.metrics import RegistrarMetrics
from herald_operator.registrar import Registrar, RegistrarConfig, build_registry
from tests.k8s.api import Kube, api_client, kubeconfig_parts, wait_for
from tests.k8s.controlplane import ControlPlane
from tests.k8s.install import HeraldRelease
from tests.server_harness import free_port

HERALD = "herald.dev/v1alpha1"
WRITE_VERBS = ("create", "patch", "delete")
TD = "example.org"
_T = TypeVar("_T")
DEFAULT_TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)


class Operator:
    """Kopf running the registrar in its own thread and event loop, as ``kubeconfig``'s identity."""

    def __init__(self, kubeconfig: Path, config: RegistrarConfig) -> None:
        self.kubeconfig = kubeconfig
        self.metrics = RegistrarMetrics()
        self.registrar = Registrar(config, KubeApi(api_client(kubeconfig)), self.metrics)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)

    def _run(self) -> None:
        server, ca_file, token = kubeconfig_parts(self.kubeconfig)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, ca_path=str(ca_file), token=token)

        registry = build_registry(self.registrar, login=login)
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False
        settings.watching.server_timeout = 60
        try:
            self.loop.run_until_complete(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=True,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as exc:
            self._failure = exc
        finally:
            self.loop.close()

    def start(self) -> Operator:
        self._thread.start()
        wait_for(lambda: self.registrar.synced or self._failure is not None, what="operator sync")
        assert self._failure is None, self._failure
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "Kopf did not stop"

    def resync(self) -> None:
        """Run one resync in Kopf's loop, as the timer would."""
        asyncio.run_coroutine_threadsafe(self.registrar.resync(), self.loop).result(10)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.registrar.readiness()[0]


def settle(check: Callable[[], bool], *, seconds: float = 0.5) -> None:
    """Assert ``check`` holds for ``seconds`` (nothing changes behind our back)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.05)


@dataclass
class Cluster:
    """The real API as an admin, the test's two workload namespaces, and the herald release."""

    kube: Kube
    web: str
    other: str
    release: HeraldRelease

    def entries(self) -> list[dict[str, Any]]:
        """The WorkloadEntries of this test's namespaces."""
        return [
            e for ns in (self.web, self.other) for e in self.kube.list(HERALD, "WorkloadEntry", ns)
        ]

    def entries_of(self, pod_name: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["metadata"]["labels"]["herald.dev/pod"] == pod_name]

    def ids_of(self, pod_name: str) -> set[str]:
        return {e["spec"]["spiffeID"] for e in self.entries_of(pod_name)}

    def ready(self, kind: str, name: str, namespace: str | None = None) -> Any:
        obj = self.kube.get(HERALD, kind, name, namespace)
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return conditions[0] if conditions else None

    def events_for(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """Events about ``obj`` (this very object: its UID, not its reused name)."""
        uid = obj["metadata"]["uid"]
        return [e for e in self.kube.list("v1", "Event") if e["involvedObject"].get("uid") == uid]

    def stray_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``entry`` named "stray" whose pod is gone (an owner UID nobody has)."""
        meta = entry["metadata"]
        gone = dict(meta["ownerReferences"][0], uid=str(uuid.uuid4()))
        return {
            "apiVersion": HERALD,
            "kind": "WorkloadEntry",
            "metadata": {
                "name": "stray",
                "namespace": meta["namespace"],
                "labels": meta["labels"],
                "ownerReferences": [gone],
            },
            "spec": entry["spec"],
        }

    def set_phase(self, pod_name: str, namespace: str, phase: str) -> None:
        """What a kubelet reports: the pod's phase, through the status subresource."""
        self.kube.patch(
            "v1", "Pod", pod_name, namespace, {"status": {"phase": phase}}, subresource="status"
        )

    def bind(self, pod_name: str, namespace: str, node: str) -> None:
        """What the scheduler does: bind an unscheduled pod to ``node``."""
        self.kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods/{pod_name}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": pod_name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            },
        )


@pytest.fixture
def cluster(kube: Kube, release: HeraldRelease) -> Cluster:
    web = kube.create_namespace(f"{release.namespace}-web", labels={"team": "shop"})
    other = kube.create_namespace(f"{release.namespace}-other")
    for name in ("node-1", "node-2"):
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return Cluster(kube, web, other, release)


@pytest.fixture
def make_operator(cluster: Cluster) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def make(**overrides: Any) -> Operator:
        config = RegistrarConfig(
            trust_domain=TD,
            cluster_name="test",
            resync_seconds=0,
            status_delay_seconds=0.05,
            **overrides,
        )
        operator = Operator(cluster.release.kubeconfigs["operator"], config).start()
        started.append(operator)
        return operator

    yield make
    for operator in started:
        operator.stop()


def pod(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
    sa: str = "default",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "containers": [{"name": "app", "image": "app:1"}],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }


def cluster_identity(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("spiffeIDTemplate", DEFAULT_TEMPLATE)
    return {
        "apiVersion": HERALD,
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": name},
        "spec": spec,
    }


def tenant_identity(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": HERALD,
        "kind": "SPIFFEID",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# --- the tests ---------------------------------------------------------------------------------


def test_pod_gets_its_entry_and_loses_it(
    cluster: Cluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.kube.create(
        cluster_identity(
            "web",
            podSelector={"matchLabels": {"app": "web"}},
            workloadSelectorTemplates=["k8s:ns:{{ .PodMeta.Namespace }}"],
        )
    )
    make_operator()
    created = cluster.kube.create(pod("web-1", cluster.web, labels={"app": "web"}))
    uid = created["metadata"]["uid"]

    [entry] = wait_for(lambda: cluster.entries_of("web-1"), what="the entry")
    assert entry["metadata"]["namespace"] == cluster.web
    assert entry["spec"]["spiffeID"] == f"spiffe://{TD}/ns/{cluster.web}/sa/default"
    assert sorted(entry["spec"]["selectors"]) == sorted(
        [f"k8s:pod-uid:{uid}", f"k8s:ns:{cluster.web}"]
    )
    assert entry["spec"]["nodeName"] == "node-1"
    [owner] = entry["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "web-1", uid)
    labels = entry["metadata"]["labels"]
    assert labels["herald.dev/node"] == "node-1"
    assert labels["herald.dev/source-name"] == "web"

    # Relabelled out of the selector: the entry goes.
    cluster.kube.patch("v1", "Pod", "web-1", cluster.web, {"metadata": {"labels": {"app": "db"}}})
    wait_for(lambda: not cluster.entries_of("web-1"), what="the entry to go")
    # Back in, then deleted.
    cluster.kube.patch("v1", "Pod", "web-1", cluster.web, {"metadata": {"labels": {"app": "web"}}})
    wait_for(lambda: cluster.entries_of("web-1"), what="the entry to come back")
    cluster.kube.delete("v1", "Pod", "web-1", cluster.web)
    wait_for(lambda: not cluster.entries_of("web-1"), what="the entry of a deleted pod to go")


def test_pods_without_entries(cluster: Cluster, make_operator: Callable[..., Operator]) -> None:
    cluster.kube.create(cluster_identity("all"))
    operator = make_operator()
    cluster.kube.create(pod("unscheduled", cluster.web, node=""))
    cluster.kube.create(pod("system", "kube-system"))
    cluster.kube.create(pod("done", cluster.web))
    cluster.set_phase("done", cluster.web, "Succeeded")
    cluster.kube.create(pod("marker", cluster.web))
    wait_for(lambda: cluster.entries_of("marker"), what="the marker pod's entry")
    settle(
        lambda: {e["metadata"]["labels"]["herald.dev/pod"] for e in cluster.entries()} == {"marker"}
    )
    # Scheduling the pod gives it its entry; finishing takes it away.
    cluster.bind("unscheduled", cluster.web, "node-2")
    [entry] = wait_for(lambda: cluster.entries_of("unscheduled"), what="scheduled pod's entry")
    assert entry["spec"]["nodeName"] == "node-2"
    cluster.set_phase("marker", cluster.web, "Failed")
    wait_for(lambda: not cluster.entries_of("marker"), what="finished pod's entry to go")
    assert operator.healthy
    # Per-pod locks live only while a reconcile holds or awaits them (pod names churn).
    wait_for(lambda: not operator.registrar._locks, what="the per-pod locks to go")


def test_identity_edit_changes_only_affected_entries(
    cluster: Cluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.kube.create(cluster_identity("api", podSelector={"matchLabels": {"app": "api"}}))
    cluster.kube.create(cluster_identity("db", podSelector={"matchLabels": {"app": "db"}}))
    operator = make_operator()
    cluster.kube.create(pod("api-1", cluster.web, labels={"app": "api"}))
    cluster.kube.create(pod("db-1", cluster.web, labels={"app": "db"}))
    wait_for(lambda: cluster.entries_of("api-1") and cluster.entries_of("db-1"), what="entries")
    [db_before] = cluster.entries_of("db-1")

    cluster.kube.patch(
        HERALD,
        "ClusterSPIFFEID",
        "api",
        None,
        {"spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/api/{{ .PodMeta.Name }}"}},
    )
    wait_for(lambda: cluster.ids_of("api-1") == {f"spiffe://{TD}/api/api-1"}, what="new ID")
    [db_after] = cluster.entries_of("db-1")
    assert db_after["metadata"]["resourceVersion"] == db_before["metadata"]["resourceVersion"]

    # Narrowing a selector drops exactly the pods it no longer covers.
    cluster.kube.patch(
        HERALD,
        "ClusterSPIFFEID",
        "db",
        None,
        {"spec": {"podSelector": {"matchLabels": {"app": "x"}}}},
    )
    wait_for(lambda: not cluster.entries_of("db-1"), what="db entry to go")
    assert cluster.ids_of("api-1") == {f"spiffe://{TD}/api/api-1"}

    # Deleting an identity removes its entries.
    cluster.kube.delete(HERALD, "ClusterSPIFFEID", "api")
    wait_for(lambda: not cluster.entries(), what="every entry to go")
    wait_for(
        lambda: (
            (cluster.kube.get(HERALD, "ClusterSPIFFEID", "db").get("status") or {}).get(
                "podsSelected"
            )
            == 0
        ),
        what="the narrowed identity's status",
    )
    assert operator.healthy


def test_namespace_selector_follows_namespace_labels(
    cluster: Cluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.kube.create(
        cluster_identity("shop", namespaceSelector={"matchLabels": {"team": "shop"}})
    )
    make_operator()
    cluster.kube.create(pod("a", cluster.web))
    cluster.kube.create(pod("b", cluster.other))
    wait_for(lambda: cluster.entries_of("a"), what="entry in the selected namespace")
    assert not cluster.entries_of("b")
    cluster.kube.patch(
        "v1", "Namespace", cluster.other, None, {"metadata": {"labels": {"team": "shop"}}}
    )
    wait_for(lambda: cluster.entries_of("b"), what="entry once the namespace is labelled")
    cluster.kube.patch(
        "v1", "Namespace", cluster.web, None, {"metadata": {"labels": {"team": None}}}
    )
    wait_for(lambda: not cluster.entries_of("a"), what="entry to go with the label")


def test_status_counts_and_ready(cluster: Cluster, make_operator: Callable[..., Operator]) -> None:
    cluster.kube.create(cluster_identity("web", podSelector={"matchLabels": {"app": "web"}}))
    make_operator()
    for index in range(3):
        cluster.kube.create(pod(f"web-{index}", cluster.web, labels={"app": "web"}))

    def counted() -> Any:
        status = (cluster.kube.get(HERALD, "ClusterSPIFFEID", "web") or {}).get("status") or {}
        return status if status.get("entriesCreated") == 3 else None

    status = wait_for(counted, what="the status counters")
    assert status["podsSelected"] == 3
    assert status["renderFailures"] == 0
    assert status["entriesMasked"] == 0
    assert status["observedGeneration"] == 1
    condition = status["conditions"][0]
    assert (condition["type"], condition["status"]) == ("Ready", "True")
    assert condition["lastTransitionTime"]


# Identities the CRD's schema admits but the operator must refuse (what the schema refuses is
# the API server's to reject: tests/integration/test_crds_api.py).
BAD_IDENTITIES: dict[str, tuple[Callable[[Cluster], dict[str, Any]], str, str]] = {
    "unknown-template-field": (
        lambda c: cluster_identity(
            "bad", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/{{ .Nope }}"
        ),
        "InvalidSpec",
        ".Nope",
    ),
    "outside-td": (
        lambda c: cluster_identity(
            "bad", spiffeIDTemplate="spiffe://elsewhere.org/{{ .PodMeta.Name }}"
        ),
        "RenderFailed",
        "outside trust domain",
    ),
    "tenant": (
        lambda c: tenant_identity(
            "bad", c.web, spiffeIDTemplate="spiffe://{{ .TrustDomain }}/ns/other/x"
        ),
        "OutsideNamespace",
        "ns/{namespace}",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_IDENTITIES))
def test_bad_identity_is_refused_and_reported(
    cluster: Cluster, make_operator: Callable[..., Operator], case: str
) -> None:
    build, reason, fragment = BAD_IDENTITIES[case]
    obj = build(cluster)
    operator = make_operator()
    cluster.kube.create(pod("web-1", cluster.web))
    namespace = obj["metadata"].get("namespace")
    created = cluster.kube.create(obj)
    # Ready may be True for a moment, before the operator has seen the pod the identity selects.
    condition = wait_for(
        lambda: (
            (c := cluster.ready(obj["kind"], "bad", namespace)) and c["status"] == "False" and c
        ),
        what="the Ready=False condition",
    )
    assert condition["reason"] == reason
    assert fragment.format(namespace=namespace) in condition["message"]
    [event] = wait_for(lambda: cluster.events_for(created), what="the event")
    assert (event["type"], event["reason"]) == ("Warning", reason)
    assert event["involvedObject"]["kind"] == obj["kind"]
    assert not cluster.entries()
    assert operator.healthy
    # A valid identity still works.
    cluster.kube.create(cluster_identity("good"))
    wait_for(lambda: cluster.entries_of("web-1"), what="the valid identity's entry")
    assert cluster.ready(obj["kind"], "bad", namespace)["status"] == "False"


def test_fixing_an_identity_makes_it_ready(
    cluster: Cluster, make_operator: Callable[..., Operator]
) -> None:
    make_operator()
    cluster.kube.create(pod("web-1", cluster.web))
    cluster.kube.create(
        cluster_identity("fix", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/{{ .X }}")
    )
    wait_for(lambda: cluster.ready("ClusterSPIFFEID", "fix"), what="the condition")
    cluster.kube.patch(
        HERALD,
        "ClusterSPIFFEID",
        "fix",
        None,
        {"spec": {"spiffeIDTemplate": "spiffe://example.org/x"}},
    )
    wait_for(
        lambda: (cluster.ready("ClusterSPIFFEID", "fix") or {}).get("status") == "True",
        what="Ready=True",
    )
    assert cluster.ids_of("web-1") == {f"spiffe://{TD}/x"}


def test_masking_and_fallback(cluster: Cluster, make_operator: Callable[..., Operator]) -> None:
    same = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/app"
    cluster.kube.create(cluster_identity("fallback", fallback=True))
    cluster.kube.create(
        cluster_identity("first", spiffeIDTemplate=same, podSelector={"matchLabels": {"app": "a"}})
    )
    make_operator()
    cluster.kube.create(pod("plain", cluster.web))
    cluster.kube.create(pod("app-1", cluster.web, labels={"app": "a"}))
    wait_for(lambda: cluster.entries_of("plain") and cluster.entries_of("app-1"), what="entries")
    web = cluster.web
    assert cluster.ids_of("plain") == {f"spiffe://{TD}/ns/{web}/sa/default"}  # the fallback
    assert cluster.ids_of("app-1") == {f"spiffe://{TD}/ns/{web}/app"}  # no fallback beside it

    # A tenant declaring the same entry is masked by the ClusterSPIFFEID, and counted.
    cluster.kube.create(
        tenant_identity(
            "dup", cluster.web, spiffeIDTemplate=same, podSelector={"matchLabels": {"app": "a"}}
        )
    )

    def masked() -> Any:
        found = cluster.kube.get(HERALD, "SPIFFEID", "dup", cluster.web) or {}
        status = found.get("status") or {}
        return status if status.get("entriesMasked") == 1 else None

    status = wait_for(masked, what="the masked counter")
    assert status["entriesCreated"] == 0
    [entry] = cluster.entries_of("app-1")
    assert entry["metadata"]["labels"]["herald.dev/source-kind"] == "ClusterSPIFFEID"

    # The winner goes: the tenant's entry takes over.
    cluster.kube.delete(HERALD, "ClusterSPIFFEID", "first")
    wait_for(
        lambda: (
            [e["metadata"]["labels"]["herald.dev/source-kind"] for e in cluster.entries_of("app-1")]
            == ["SPIFFEID"]
        ),
        what="the tenant's entry",
    )


def test_class_name_filtering(cluster: Cluster, make_operator: Callable[..., Operator]) -> None:
    cluster.kube.create(
        cluster_identity("mine", className="blue", spiffeIDTemplate="spiffe://example.org/mine")
    )
    cluster.kube.create(
        cluster_identity(
            "theirs", className="green", spiffeIDTemplate="spiffe://example.org/theirs"
        )
    )
    cluster.kube.create(cluster_identity("classless", spiffeIDTemplate="spiffe://example.org/none"))
    make_operator(class_name="blue")
    cluster.kube.create(pod("web-1", cluster.web))
    wait_for(lambda: cluster.entries_of("web-1"), what="entries")
    settle(lambda: cluster.ids_of("web-1") == {"spiffe://example.org/mine"})
    assert cluster.kube.get(HERALD, "ClusterSPIFFEID", "theirs").get("status") in (None, {})


def test_dns_names_from_services(cluster: Cluster, make_operator: Callable[..., Operator]) -> None:
    cluster.kube.create(cluster_identity("web", autoPopulateDNSNames=True))
    make_operator()
    cluster.kube.create(pod("web-1", cluster.web, labels={"app": "web"}))
    wait_for(lambda: cluster.entries_of("web-1"), what="the entry")
    cluster.kube.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "front", "namespace": cluster.web},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 443}]},
        }
    )

    def names() -> Any:
        [entry] = cluster.entries_of("web-1")
        return entry["spec"].get("dnsNames")

    assert f"front.{cluster.web}.svc.cluster.local" in wait_for(names, what="the DNS names")
    cluster.kube.delete("v1", "Service", "front", cluster.web)
    wait_for(lambda: not names(), what="the DNS names to go")


def test_resync_repairs_drift(
    cluster: Cluster, make_operator: Callable[..., Operator], own_control_plane: ControlPlane
) -> None:
    cluster.kube.create(cluster_identity("web"))
    operator = make_operator()
    cluster.kube.create(pod("web-1", cluster.web))
    [entry] = wait_for(lambda: cluster.entries_of("web-1"), what="the entry")
    name = entry["metadata"]["name"]
    # Edited by hand: the watch event brings it back.
    evil = {"spec": {"spiffeID": "spiffe://example.org/evil"}}
    cluster.kube.patch(HERALD, "WorkloadEntry", name, cluster.web, evil)
    wait_for(
        lambda: cluster.ids_of("web-1") == {f"spiffe://{TD}/ns/{cluster.web}/sa/default"},
        what="repair",
    )
    # Deleted by hand: put back.
    cluster.kube.delete(HERALD, "WorkloadEntry", name, cluster.web)
    wait_for(lambda: cluster.entries_of("web-1"), what="the entry to be recreated")
    # An entry of a pod nobody knows (the operator missed the deletion) goes. The garbage
    # collector would delete it too, so it is paused: this is the operator's own doing.
    deletes = operator.metrics.writes.labels("delete")._value.get()
    with own_control_plane.paused("kube-controller-manager"):
        cluster.kube.create(cluster.stray_entry(entry))
        wait_for(
            lambda: not cluster.kube.get(HERALD, "WorkloadEntry", "stray", cluster.web),
            what="stray gone",
        )
    assert operator.metrics.writes.labels("delete")._value.get() == deletes + 1
    # A resync of a cluster in step writes nothing.
    [entry] = cluster.entries_of("web-1")
    before = {verb: operator.metrics.writes.labels(verb)._value.get() for verb in WRITE_VERBS}
    operator.resync()
    after = {verb: operator.metrics.writes.labels(verb)._value.get() for verb in WRITE_VERBS}
    assert before == after
    assert cluster.entries_of("web-1") == [entry]
    assert operator.healthy


def test_cold_start_keeps_existing_entries(
    cluster: Cluster, make_operator: Callable[..., Operator], own_control_plane: ControlPlane
) -> None:
    cluster.kube.create(cluster_identity("web"))
    cluster.kube.create(pod("web-1", cluster.web))
    first = make_operator()
    [entry] = wait_for(lambda: cluster.entries_of("web-1"), what="the entry")
    first.stop()
    # While no operator runs, an entry's pod goes and the garbage collector misses it (paused
    # here, or it would delete it): the next start removes it.
    with own_control_plane.paused("kube-controller-manager"):
        cluster.kube.create(cluster.stray_entry(entry))
        second = make_operator()
        wait_for(
            lambda: not cluster.kube.get(HERALD, "WorkloadEntry", "stray", cluster.web),
            what="stray gone",
        )
    assert second.metrics.writes.labels("delete")._value.get() == 1
    settle(lambda: cluster.entries_of("web-1") == [entry])
    assert second.metrics.writes.labels("create")._value.get() == 0
    assert second.metrics.writes.labels("patch")._value.get() == 0


# --- herald-operator run -------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _start_operator(
    release: HeraldRelease, port: int, *args: str, kubeconfig: Path | None = None
) -> subprocess.Popen[bytes]:
    """`herald-operator run` as the operator's ServiceAccount, in the release's namespace."""
    kubeconfig = kubeconfig or release.kubeconfigs["operator"]
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "herald-operator"),
            "run",
            "--health-address",
            f"127.0.0.1:{port}",
            *args,
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": release.namespace},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _writes(port: int, verb: str) -> float:
    _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
    for line in metrics.splitlines():
        if line.startswith(f'herald_operator_entry_writes_total{{verb="{verb}"}}'):
            return float(line.split()[-1])
    return -1.0


def test_run_command_serves_health_metrics_and_entries(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text(
        f"trust_domain: {TD}\ncluster_name: test\nignore_namespace: [{cluster.other}]\n"
    )
    port = free_port()
    cluster.kube.create(cluster_identity("web"))
    cluster.kube.create(pod("web-1", cluster.web))
    cluster.kube.create(pod("o-1", cluster.other))
    process = _start_operator(cluster.release, port, "--config", str(config), "--standalone")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/ready")[0] == 200, what="/ready", timeout=20)
        assert _get(f"{base}/live")[0] == 200
        wait_for(lambda: cluster.entries_of("web-1"), what="the entry")
        settle(lambda: not cluster.entries_of("o-1"))  # an ignored namespace
        wait_for(
            lambda: (
                'herald_operator_entries{identity="ClusterSPIFFEID/web"} 1.0'
                in _get(f"{base}/metrics")[1]
            ),
            what="the entries gauge",
        )
        _, metrics = _get(f"{base}/metrics")
        assert "herald_operator_pod_event_to_entry_seconds_bucket" in metrics
        assert 'herald_operator_reconciles_total{kind="pod"}' in metrics
    except AssertionError as exc:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
        raise AssertionError(f"{exc}\n--- herald-operator output:\n{output[-5000:]}") from None
    process.terminate()
    output = process.communicate(timeout=20)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert "heap settled" in output  # the first listing reconciled, the heap frozen
    assert "Handler 'herald-pods' succeeded" not in output  # Kopf's per-event log is off


def test_run_command_checks_its_flags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from herald_operator.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["run", "--cluster-name", "c"])
    assert result.exit_code == 2 and "--trust-domain" in result.output
    result = runner.invoke(main, ["run", "--cluster-name", "c", "--trust-domain", "spiffe://a/b"])
    assert result.exit_code == 2 and "--trust-domain" in result.output
    result = runner.invoke(
        main, ["run", "--cluster-name", "c", "--trust-domain", "a", "--log-level", "x"]
    )
    assert result.exit_code == 2 and "--log-level" in result.output
    for resync in ("1e400", "nan", "-1", "99999999999999999999"):
        result = runner.invoke(
            main, ["run", "--cluster-name", "c", "--trust-domain", "a", "--resync-seconds", resync]
        )
        assert result.exit_code == 2, (resync, result.output)
        assert "--resync-seconds" in result.output and "366 days" in result.output
    config = tmp_path / "c.yaml"
    config.write_text("trust_domain: a\nsurprise: 1\n")
    result = runner.invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2 and "surprise" in result.output
    config.write_text("trust_domain: a\ncluster_name: c\ntrust_domain: b\n")
    result = runner.invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "duplicate key 'trust_domain': set on line 1 and again on line 3" in result.output


def test_peering_lets_one_replica_act(cluster: Cluster, tmp_path: Path) -> None:
    # The release made the peering object, and its RBAC lets the operator patch that one only.
    peering = cluster.release.names["peering"]
    cluster.kube.create(cluster_identity("web"))
    flags = ("--trust-domain", TD, "--cluster-name", "c", "--peering-name", peering)
    ports = {"leader": free_port(), "standby": free_port()}
    # The leader first: a replica starts paused until it has read the peering object, so the
    # standby never acts while the leader lives.
    leader = _start_operator(cluster.release, ports["leader"], *flags, "--priority", "20")
    processes = [leader]
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['leader']}/ready")[0] == 200, what="ready")
        wait_for(
            lambda: (cluster.kube.get("kopf.dev/v1", "ClusterKopfPeering", peering) or {}).get(
                "status"
            ),
            what="the leader in the peering object",
        )
        standby = _start_operator(cluster.release, ports["standby"], *flags, "--priority", "10")
        processes.append(standby)
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['standby']}/ready")[0] == 200, what="ready")
        cluster.kube.create(pod("web-1", cluster.web))
        wait_for(lambda: cluster.entries_of("web-1"), what="the entry", timeout=20)
        assert _writes(ports["leader"], "create") == 1
        assert _writes(ports["standby"], "create") == 0
        assert _writes(ports["standby"], "patch") == 0
        # The leader goes; the standby takes over.
        leader.terminate()
        leader.communicate(timeout=20)
        cluster.kube.create(pod("web-2", cluster.web))
        wait_for(lambda: cluster.entries_of("web-2"), what="the standby's entry", timeout=30)
        assert _writes(ports["standby"], "create") == 1
    except AssertionError as exc:
        outputs = []
        for process in processes:
            process.terminate()
            outputs.append(process.communicate(timeout=20)[0].decode()[-3000:])
        raise AssertionError(f"{exc}\n--- outputs:\n" + "\n---\n".join(outputs)) from None
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.communicate(timeout=20)


def test_identity_change_recomputes_only_the_pods_it_covers(
    cluster: Cluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.kube.create(cluster_identity("a", podSelector={"matchLabels": {"app": "a"}}))
    operator = make_operator()
    for index in range(4):
        cluster.kube.create(pod(f"a-{index}", cluster.web, labels={"app": "a"}))
    for index in range(12):
        cluster.kube.create(pod(f"b-{index}", cluster.other, labels={"app": "b"}))
    wait_for(lambda: len(cluster.entries()) == 4, what="four entries")
    reconciles = operator.metrics.reconciles.labels("pod")
    settle(lambda: True, seconds=0.3)
    before = reconciles._value.get()
    # A pod event recomputes that pod alone.
    cluster.kube.create(pod("c-1", cluster.other, labels={"app": "c"}))
    wait_for(lambda: reconciles._value.get() == before + 1, what="the new pod's reconcile")
    # Widening the selector to one more pod recomputes the four it covered and that one, not
    # the twelve others.
    cluster.kube.patch(
        HERALD,
        "ClusterSPIFFEID",
        "a",
        None,
        {
            "spec": {
                "podSelector": {
                    "matchLabels": None,
                    "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}],
                }
            }
        },
    )
    wait_for(lambda: cluster.entries_of("c-1"), what="the newly covered pod's entry")
    settle(lambda: reconciles._value.get() == before + 1 + 5)
