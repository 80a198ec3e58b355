"""The registrar, run by Kopf against the API emulator: pods and identities become entries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kopf
import pytest

from herald_operator.kubeapi import KubeApi
from herald_operator.metrics import RegistrarMetrics
from herald_operator.registrar import Registrar, RegistrarConfig, build_registry
from tests.kube_emulator import KubeCluster
from tests.server_harness import free_port

HERALD = "herald.dev/v1alpha1"
WRITE_VERBS = ("create", "patch", "delete")
TD = "example.org"
_T = TypeVar("_T")
DEFAULT_TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)


class Operator:
    """Kopf running the registrar in its own thread and event loop."""

    def __init__(self, kube: KubeCluster, config: RegistrarConfig) -> None:
        self.kube = kube
        self.metrics = RegistrarMetrics()
        self.registrar = Registrar(config, KubeApi(kube.api_client()), self.metrics)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)

    def _run(self) -> None:
        url = self.kube.url

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

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


def wait_for(check: Callable[[], _T], *, what: str, timeout: float = 10.0) -> _T:
    """Poll ``check`` until it returns something truthy (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def settle(check: Callable[[], bool], *, seconds: float = 0.5) -> None:
    """Assert ``check`` holds for ``seconds`` (nothing changes behind our back)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.05)


@pytest.fixture
def cluster(kube: KubeCluster) -> KubeCluster:
    for name, labels in (("web", {"team": "shop"}), ("other", {}), ("kube-system", {})):
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            }
        )
    for name in ("node-1", "node-2"):
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return kube


@pytest.fixture
def make_operator(cluster: KubeCluster) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def make(**overrides: Any) -> Operator:
        config = RegistrarConfig(
            trust_domain=TD,
            cluster_name="test",
            resync_seconds=0,
            status_delay_seconds=0.05,
            **overrides,
        )
        operator = Operator(cluster, config).start()
        started.append(operator)
        return operator

    yield make
    for operator in started:
        operator.stop()


def pod(
    name: str,
    namespace: str = "web",
    *,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
    sa: str = "default",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "nodeName": node or None,
            "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "app:1"}],
        },
        "status": {"phase": "Running"},
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


def entries(kube: KubeCluster, namespace: str | None = None) -> list[dict[str, Any]]:
    return kube.list(HERALD, "WorkloadEntry", namespace)


def entries_of(kube: KubeCluster, pod_name: str) -> list[dict[str, Any]]:
    return [e for e in entries(kube) if e["metadata"]["labels"]["herald.dev/pod"] == pod_name]


def ids_of(kube: KubeCluster, pod_name: str) -> set[str]:
    return {e["spec"]["spiffeID"] for e in entries_of(kube, pod_name)}


def ready(kube: KubeCluster, kind: str, name: str, namespace: str | None = None) -> Any:
    obj = kube.get(HERALD, kind, name, namespace)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return conditions[0] if conditions else None


def events_for(kube: KubeCluster, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("v1", "Event") if e["involvedObject"]["name"] == name]


# --- the tests ---------------------------------------------------------------------------------


def test_pod_gets_its_entry_and_loses_it(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(
        cluster_identity(
            "web",
            podSelector={"matchLabels": {"app": "web"}},
            workloadSelectorTemplates=["k8s:ns:{{ .PodMeta.Namespace }}"],
        )
    )
    make_operator()
    created = cluster.create(pod("web-1", labels={"app": "web"}))
    uid = created["metadata"]["uid"]

    [entry] = wait_for(lambda: entries_of(cluster, "web-1"), what="the entry")
    assert entry["metadata"]["namespace"] == "web"
    assert entry["spec"]["spiffeID"] == f"spiffe://{TD}/ns/web/sa/default"
    assert sorted(entry["spec"]["selectors"]) == sorted([f"k8s:pod-uid:{uid}", "k8s:ns:web"])
    assert entry["spec"]["nodeName"] == "node-1"
    [owner] = entry["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "web-1", uid)
    labels = entry["metadata"]["labels"]
    assert labels["herald.dev/node"] == "node-1"
    assert labels["herald.dev/source-name"] == "web"

    # Relabelled out of the selector: the entry goes.
    cluster.patch("v1", "Pod", "web-1", {"metadata": {"labels": {"app": "db"}}}, "web")
    wait_for(lambda: not entries_of(cluster, "web-1"), what="the entry to go")
    # Back in, then deleted.
    cluster.patch("v1", "Pod", "web-1", {"metadata": {"labels": {"app": "web"}}}, "web")
    wait_for(lambda: entries_of(cluster, "web-1"), what="the entry to come back")
    cluster.delete("v1", "Pod", "web-1", "web")
    wait_for(lambda: not entries_of(cluster, "web-1"), what="the entry of a deleted pod to go")


def test_pods_without_entries(cluster: KubeCluster, make_operator: Callable[..., Operator]) -> None:
    cluster.create(cluster_identity("all"))
    operator = make_operator()
    cluster.create(pod("unscheduled", node=""))
    cluster.create(pod("system", "kube-system"))
    done = pod("done")
    done["status"]["phase"] = "Succeeded"
    cluster.create(done)
    cluster.create(pod("marker"))
    wait_for(lambda: entries_of(cluster, "marker"), what="the marker pod's entry")
    settle(
        lambda: {e["metadata"]["labels"]["herald.dev/pod"] for e in entries(cluster)} == {"marker"}
    )
    # Scheduling the pod gives it its entry; finishing takes it away.
    cluster.patch("v1", "Pod", "unscheduled", {"spec": {"nodeName": "node-2"}}, "web")
    [entry] = wait_for(lambda: entries_of(cluster, "unscheduled"), what="scheduled pod's entry")
    assert entry["spec"]["nodeName"] == "node-2"
    cluster.patch("v1", "Pod", "marker", {"status": {"phase": "Failed"}}, "web")
    wait_for(lambda: not entries_of(cluster, "marker"), what="finished pod's entry to go")
    assert operator.healthy
    # Per-pod locks live only while a reconcile holds or awaits them (pod names churn).
    wait_for(lambda: not operator.registrar._locks, what="the per-pod locks to go")


def test_identity_edit_changes_only_affected_entries(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("api", podSelector={"matchLabels": {"app": "api"}}))
    cluster.create(cluster_identity("db", podSelector={"matchLabels": {"app": "db"}}))
    operator = make_operator()
    cluster.create(pod("api-1", labels={"app": "api"}))
    cluster.create(pod("db-1", labels={"app": "db"}))
    wait_for(lambda: entries_of(cluster, "api-1") and entries_of(cluster, "db-1"), what="entries")
    [db_before] = entries_of(cluster, "db-1")

    cluster.patch(
        HERALD,
        "ClusterSPIFFEID",
        "api",
        {"spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/api/{{ .PodMeta.Name }}"}},
    )
    wait_for(lambda: ids_of(cluster, "api-1") == {f"spiffe://{TD}/api/api-1"}, what="new ID")
    [db_after] = entries_of(cluster, "db-1")
    assert db_after["metadata"]["resourceVersion"] == db_before["metadata"]["resourceVersion"]

    # Narrowing a selector drops exactly the pods it no longer covers.
    cluster.patch(
        HERALD, "ClusterSPIFFEID", "db", {"spec": {"podSelector": {"matchLabels": {"app": "x"}}}}
    )
    wait_for(lambda: not entries_of(cluster, "db-1"), what="db entry to go")
    assert ids_of(cluster, "api-1") == {f"spiffe://{TD}/api/api-1"}

    # Deleting an identity removes its entries.
    cluster.delete(HERALD, "ClusterSPIFFEID", "api")
    wait_for(lambda: not entries(cluster), what="every entry to go")
    wait_for(
        lambda: (
            (cluster.get(HERALD, "ClusterSPIFFEID", "db").get("status") or {}).get("podsSelected")
            == 0
        ),
        what="the narrowed identity's status",
    )
    assert operator.healthy


def test_namespace_selector_follows_namespace_labels(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("shop", namespaceSelector={"matchLabels": {"team": "shop"}}))
    make_operator()
    cluster.create(pod("a", "web"))
    cluster.create(pod("b", "other"))
    wait_for(lambda: entries_of(cluster, "a"), what="entry in the selected namespace")
    assert not entries_of(cluster, "b")
    cluster.patch("v1", "Namespace", "other", {"metadata": {"labels": {"team": "shop"}}})
    wait_for(lambda: entries_of(cluster, "b"), what="entry once the namespace is labelled")
    cluster.patch("v1", "Namespace", "web", {"metadata": {"labels": {"team": None}}})
    wait_for(lambda: not entries_of(cluster, "a"), what="entry to go with the label")


def test_status_counts_and_ready(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("web", podSelector={"matchLabels": {"app": "web"}}))
    make_operator()
    for index in range(3):
        cluster.create(pod(f"web-{index}", labels={"app": "web"}))

    def counted() -> Any:
        status = (cluster.get(HERALD, "ClusterSPIFFEID", "web") or {}).get("status") or {}
        return status if status.get("entriesCreated") == 3 else None

    status = wait_for(counted, what="the status counters")
    assert status["podsSelected"] == 3
    assert status["renderFailures"] == 0
    assert status["entriesMasked"] == 0
    assert status["observedGeneration"] == 1
    condition = status["conditions"][0]
    assert (condition["type"], condition["status"]) == ("Ready", "True")
    assert condition["lastTransitionTime"]


@pytest.mark.parametrize(
    ("obj", "reason", "fragment"),
    [
        (
            cluster_identity("bad", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/{{ .Nope }}"),
            "InvalidSpec",
            ".Nope",
        ),
        (
            cluster_identity("bad", podSelector={"matchExpressions": [{"key": "a"}]}),
            "InvalidSpec",
            "podSelector",
        ),
        (cluster_identity("bad", surprise=True), "InvalidSpec", "surprise"),
        (
            cluster_identity("bad", spiffeIDTemplate="spiffe://elsewhere.org/{{ .PodMeta.Name }}"),
            "RenderFailed",
            "outside trust domain",
        ),
        (
            tenant_identity(
                "bad", "web", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/ns/other/x"
            ),
            "OutsideNamespace",
            "ns/web",
        ),
    ],
    ids=["unknown-template-field", "malformed-selector", "unknown-field", "outside-td", "tenant"],
)
def test_bad_identity_is_refused_and_reported(
    cluster: KubeCluster,
    make_operator: Callable[..., Operator],
    obj: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    operator = make_operator()
    cluster.create(pod("web-1"))
    namespace = obj["metadata"].get("namespace")
    cluster.create(obj)
    condition = wait_for(
        lambda: ready(cluster, obj["kind"], "bad", namespace), what="the Ready condition"
    )
    assert (condition["status"], condition["reason"]) == ("False", reason)
    assert fragment in condition["message"]
    [event] = wait_for(lambda: events_for(cluster, "bad"), what="the event")
    assert (event["type"], event["reason"]) == ("Warning", reason)
    assert event["involvedObject"]["kind"] == obj["kind"]
    assert not entries(cluster)
    assert operator.healthy
    # A valid identity still works.
    cluster.create(cluster_identity("good"))
    wait_for(lambda: entries_of(cluster, "web-1"), what="the valid identity's entry")
    assert ready(cluster, obj["kind"], "bad", namespace)["status"] == "False"


def test_fixing_an_identity_makes_it_ready(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    make_operator()
    cluster.create(pod("web-1"))
    cluster.create(cluster_identity("fix", spiffeIDTemplate="spiffe://{{ .TrustDomain }}/{{ .X }}"))
    wait_for(lambda: ready(cluster, "ClusterSPIFFEID", "fix"), what="the condition")
    cluster.patch(
        HERALD, "ClusterSPIFFEID", "fix", {"spec": {"spiffeIDTemplate": "spiffe://example.org/x"}}
    )
    wait_for(
        lambda: (ready(cluster, "ClusterSPIFFEID", "fix") or {}).get("status") == "True",
        what="Ready=True",
    )
    assert ids_of(cluster, "web-1") == {f"spiffe://{TD}/x"}


def test_masking_and_fallback(cluster: KubeCluster, make_operator: Callable[..., Operator]) -> None:
    same = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/app"
    cluster.create(cluster_identity("fallback", fallback=True))
    cluster.create(
        cluster_identity("first", spiffeIDTemplate=same, podSelector={"matchLabels": {"app": "a"}})
    )
    make_operator()
    cluster.create(pod("plain"))
    cluster.create(pod("app-1", labels={"app": "a"}))
    wait_for(lambda: entries_of(cluster, "plain") and entries_of(cluster, "app-1"), what="entries")
    assert ids_of(cluster, "plain") == {f"spiffe://{TD}/ns/web/sa/default"}  # the fallback
    assert ids_of(cluster, "app-1") == {f"spiffe://{TD}/ns/web/app"}  # no fallback beside it

    # A tenant declaring the same entry is masked by the ClusterSPIFFEID, and counted.
    cluster.create(
        tenant_identity(
            "dup", "web", spiffeIDTemplate=same, podSelector={"matchLabels": {"app": "a"}}
        )
    )

    def masked() -> Any:
        status = (cluster.get(HERALD, "SPIFFEID", "dup", "web") or {}).get("status") or {}
        return status if status.get("entriesMasked") == 1 else None

    status = wait_for(masked, what="the masked counter")
    assert status["entriesCreated"] == 0
    [entry] = entries_of(cluster, "app-1")
    assert entry["metadata"]["labels"]["herald.dev/source-kind"] == "ClusterSPIFFEID"

    # The winner goes: the tenant's entry takes over.
    cluster.delete(HERALD, "ClusterSPIFFEID", "first")
    wait_for(
        lambda: (
            [
                e["metadata"]["labels"]["herald.dev/source-kind"]
                for e in entries_of(cluster, "app-1")
            ]
            == ["SPIFFEID"]
        ),
        what="the tenant's entry",
    )


def test_class_name_filtering(cluster: KubeCluster, make_operator: Callable[..., Operator]) -> None:
    cluster.create(
        cluster_identity("mine", className="blue", spiffeIDTemplate="spiffe://example.org/mine")
    )
    cluster.create(
        cluster_identity(
            "theirs", className="green", spiffeIDTemplate="spiffe://example.org/theirs"
        )
    )
    cluster.create(cluster_identity("classless", spiffeIDTemplate="spiffe://example.org/none"))
    make_operator(class_name="blue")
    cluster.create(pod("web-1"))
    wait_for(lambda: entries_of(cluster, "web-1"), what="entries")
    settle(lambda: ids_of(cluster, "web-1") == {"spiffe://example.org/mine"})
    assert cluster.get(HERALD, "ClusterSPIFFEID", "theirs").get("status") in (None, {})


def test_dns_names_from_services(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("web", autoPopulateDNSNames=True))
    make_operator()
    cluster.create(pod("web-1", labels={"app": "web"}))
    wait_for(lambda: entries_of(cluster, "web-1"), what="the entry")
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "front", "namespace": "web"},
            "spec": {"selector": {"app": "web"}},
        }
    )

    def names() -> Any:
        [entry] = entries_of(cluster, "web-1")
        return entry["spec"].get("dnsNames")

    assert "front.web.svc.cluster.local" in wait_for(names, what="the DNS names")
    cluster.delete("v1", "Service", "front", "web")
    wait_for(lambda: not names(), what="the DNS names to go")


def test_resync_repairs_drift(cluster: KubeCluster, make_operator: Callable[..., Operator]) -> None:
    cluster.create(cluster_identity("web"))
    operator = make_operator()
    cluster.create(pod("web-1"))
    [entry] = wait_for(lambda: entries_of(cluster, "web-1"), what="the entry")
    name = entry["metadata"]["name"]
    # Edited by hand: the watch event brings it back.
    cluster.patch(
        HERALD, "WorkloadEntry", name, {"spec": {"spiffeID": "spiffe://example.org/evil"}}, "web"
    )
    wait_for(
        lambda: ids_of(cluster, "web-1") == {f"spiffe://{TD}/ns/web/sa/default"}, what="repair"
    )
    # Deleted by hand: put back.
    cluster.delete(HERALD, "WorkloadEntry", name, "web")
    wait_for(lambda: entries_of(cluster, "web-1"), what="the entry to be recreated")
    # An entry of a pod nobody knows (the operator missed the deletion) goes.
    stray = dict(entry, metadata={**entry["metadata"], "name": "stray", "resourceVersion": None})
    stray["metadata"]["ownerReferences"] = [
        dict(entry["metadata"]["ownerReferences"][0], uid="gone")
    ]
    cluster.create(stray)
    wait_for(lambda: not cluster.get(HERALD, "WorkloadEntry", "stray", "web"), what="stray gone")
    # A resync of a cluster in step writes nothing.
    [entry] = entries_of(cluster, "web-1")
    before = {verb: operator.metrics.writes.labels(verb)._value.get() for verb in WRITE_VERBS}
    operator.resync()
    after = {verb: operator.metrics.writes.labels(verb)._value.get() for verb in WRITE_VERBS}
    assert before == after
    assert entries_of(cluster, "web-1") == [entry]
    assert operator.healthy


def test_cold_start_keeps_existing_entries(
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("web"))
    cluster.create(pod("web-1"))
    first = make_operator()
    [entry] = wait_for(lambda: entries_of(cluster, "web-1"), what="the entry")
    first.stop()
    # While no operator runs, an entry's pod goes (GC missed it): the next start removes it.
    stray = dict(entry, metadata={**entry["metadata"], "name": "stray", "resourceVersion": None})
    owner = dict(entry["metadata"]["ownerReferences"][0], uid="gone")
    stray["metadata"]["ownerReferences"] = [owner]
    cluster.create(stray)
    second = make_operator()
    wait_for(lambda: not cluster.get(HERALD, "WorkloadEntry", "stray", "web"), what="stray gone")
    settle(lambda: entries_of(cluster, "web-1") == [entry])
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


def _kubeconfig(cluster: KubeCluster, tmp_path: Path) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": cluster.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}],
                "current-context": "emu",
            }
        )
    )
    return kubeconfig


def _start_operator(kubeconfig: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "herald-operator"),
            "run",
            "--health-address",
            f"127.0.0.1:{port}",
            *args,
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": "herald"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _writes(port: int, verb: str) -> float:
    _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
    for line in metrics.splitlines():
        if line.startswith(f'herald_operator_entry_writes_total{{verb="{verb}"}}'):
            return float(line.split()[-1])
    return -1.0


def test_run_command_serves_health_metrics_and_entries(
    cluster: KubeCluster, tmp_path: Path
) -> None:
    kubeconfig = _kubeconfig(cluster, tmp_path)
    config = tmp_path / "operator.yaml"
    config.write_text(f"trust_domain: {TD}\ncluster_name: test\nignore_namespace: [other]\n")
    port = free_port()
    cluster.create(cluster_identity("web"))
    cluster.create(pod("web-1"))
    cluster.create(pod("o-1", "other"))
    process = _start_operator(kubeconfig, port, "--config", str(config), "--standalone")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/ready")[0] == 200, what="/ready", timeout=20)
        assert _get(f"{base}/live")[0] == 200
        wait_for(lambda: entries_of(cluster, "web-1"), what="the entry")
        settle(lambda: not entries_of(cluster, "o-1"))  # an ignored namespace
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


def test_peering_lets_one_replica_act(cluster: KubeCluster, tmp_path: Path) -> None:
    cluster.emulator.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering",
        singular="clusterkopfpeering",
        namespaced=False,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    )
    cluster.create(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "p"}}
    )
    kubeconfig = _kubeconfig(cluster, tmp_path)
    cluster.create(cluster_identity("web"))
    flags = ("--trust-domain", TD, "--cluster-name", "c", "--peering-name", "p")
    ports = {"leader": free_port(), "standby": free_port()}
    # The leader first: a replica starts paused until it has read the peering object, so the
    # standby never acts while the leader lives.
    leader = _start_operator(kubeconfig, ports["leader"], *flags, "--priority", "20")
    processes = [leader]
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['leader']}/ready")[0] == 200, what="ready")
        wait_for(
            lambda: (cluster.get("kopf.dev/v1", "ClusterKopfPeering", "p") or {}).get("status"),
            what="the leader in the peering object",
        )
        standby = _start_operator(kubeconfig, ports["standby"], *flags, "--priority", "10")
        processes.append(standby)
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['standby']}/ready")[0] == 200, what="ready")
        cluster.create(pod("web-1"))
        wait_for(lambda: entries_of(cluster, "web-1"), what="the entry", timeout=20)
        assert _writes(ports["leader"], "create") == 1
        assert _writes(ports["standby"], "create") == 0
        assert _writes(ports["standby"], "patch") == 0
        # The leader goes; the standby takes over.
        leader.terminate()
        leader.communicate(timeout=20)
        cluster.create(pod("web-2"))
        wait_for(lambda: entries_of(cluster, "web-2"), what="the standby's entry", timeout=30)
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
    cluster: KubeCluster, make_operator: Callable[..., Operator]
) -> None:
    cluster.create(cluster_identity("a", podSelector={"matchLabels": {"app": "a"}}))
    operator = make_operator()
    for index in range(4):
        cluster.create(pod(f"a-{index}", labels={"app": "a"}))
    for index in range(12):
        cluster.create(pod(f"b-{index}", "other", labels={"app": "b"}))
    wait_for(lambda: len(entries(cluster)) == 4, what="four entries")
    reconciles = operator.metrics.reconciles.labels("pod")
    settle(lambda: True, seconds=0.3)
    before = reconciles._value.get()
    # A pod event recomputes that pod alone.
    cluster.create(pod("c-1", "other", labels={"app": "c"}))
    wait_for(lambda: reconciles._value.get() == before + 1, what="the new pod's reconcile")
    # Widening the selector to one more pod recomputes the four it covered and that one, not
    # the twelve others.
    cluster.patch(
        HERALD,
        "ClusterSPIFFEID",
        "a",
        {
            "spec": {
                "podSelector": {
                    "matchLabels": None,
                    "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}],
                }
            }
        },
    )
    wait_for(lambda: entries_of(cluster, "c-1"), what="the newly covered pod's entry")
    settle(lambda: reconciles._value.get() == before + 1 + 5)
