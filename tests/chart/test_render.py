"""The chart as helm renders it: lint, a matrix of value sets on every supported Kubernetes minor,
hardening, the component configurations herald itself accepts, CRDs from their one source.

Everything here runs the real helm 3 and helm 4 binaries (tests/k8s/helm.py) and validates what
they render with kubernetes-validate's schemas of Kubernetes 1.30 to 1.37 in strict mode (unknown
fields, wrong types, missing required fields); herald's own custom resources are validated
against the chart's CRDs instead, which kubernetes-validate does not know.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from herald_agent.config import config_from_mapping as agent_config
from herald_operator import crds
from herald_server.config import config_from_mapping as server_config
from scripts import values_table
from tests.chart.render import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    Rendered,
    helm_args,
    render,
)
from tests.k8s.binaries import ROOT
from tests.k8s.helm import Helm

Obj = dict[str, Any]

VALUE_SETS: dict[str, Obj] = {
    "defaults": {},
    "everything-optional": {
        "trustDomain": "prod.example.org",
        "clusterName": "prod-eu-1",
        "strictMode": True,
        "image": {
            "registry": "registry.example.org",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "pull"}],
        "commonLabels": {"team": "identity"},
        "server": {
            "upstream": {"secretName": "corp-intermediate"},
            "signingWorkers": 4,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["system"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": "system-cluster-critical",
            "labels": {"tier": "ca"},
            "annotations": {"note": "server"},
            "podAnnotations": {"scrape": "yes"},
            "service": {"type": "LoadBalancer", "annotations": {"lb": "internal"}},
        },
        "operator": {"className": "prod", "watchClassless": True, "replicaCount": 3},
        "agent": {
            "unixAttestor": {"enabled": True},
            "kubelet": {"skipVerification": False},
            "socketDir": "/run/spire/agent-sockets",
            "socketName": "spire-agent.sock",
            "priorityClassName": "",
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {"enabled": True},
        "exampleClusterSPIFFEID": {"enabled": True},
    },
    "no-crds-no-tests-no-pdb": {
        "crds": {"enabled": False},
        "tests": {"enabled": False},
        "server": {
            "podDisruptionBudget": {"enabled": False},
            "topologySpread": {"enabled": False},
            "replicaCount": 1,
        },
        "operator": {"podDisruptionBudget": {"enabled": False}, "replicaCount": 1},
    },
    "server-and-operator-only": {"agent": {"enabled": False}},
    "operator-only": {"server": {"enabled": False}, "agent": {"enabled": False}},
}

CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "ClusterSPIFFEID",
    "Namespace",
}


def validate_all(rendered: Rendered, kube_version: str) -> None:
    crd_kinds = crds.load_crds()
    for doc in rendered:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(crds.GROUP):
            assert crds.validate(doc["kind"], doc) == [], where
            continue
        if doc["kind"] in ("ClusterKopfPeering", "ServiceMonitor"):
            continue  # no schema to hand; their few fields are checked by the tests below
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} on Kubernetes {kube_version}: {exc}")
        namespaced = doc["kind"] not in CLUSTER_SCOPED
        assert ("namespace" in doc["metadata"]) == namespaced, where
    assert crd_kinds


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert chart["appVersion"] == project["version"]
    # crds/ is never upgraded by Helm: only Kopf's CRD, which herald's objects need at mapping
    # time on a fresh cluster, lives there; herald's own are in files/crds/.
    assert [p.name for p in (CHART / "crds").iterdir()] == ["kopf.dev_clusterkopfpeerings.yaml"]


def test_lint_strict_passes_and_can_fail(helm: Helm, tmp_path: Path) -> None:
    done = helm.run(["lint", "--strict", str(CHART)])
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  replicaCount: many\n")
    refused = helm.run(["lint", "--strict", str(CHART), "-f", str(bad)], check=False)
    assert refused.returncode != 0
    assert "replicaCount" in refused.stdout + refused.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_value_set_renders_valid_manifests(helm4: Helm, value_set: str, kube_version: str) -> None:
    rendered = render(helm4, VALUE_SETS[value_set], kube_version=kube_version)
    assert rendered.docs
    validate_all(rendered, kube_version)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm3_and_helm4_render_the_same(helm3: Helm, helm4: Helm, value_set: str) -> None:
    assert helm3.version().startswith("v3.") and helm4.version().startswith("v4.")
    values = VALUE_SETS[value_set]
    assert render(helm3, values, kube_version="1.33.0").docs == (
        render(helm4, values, kube_version="1.33.0").docs
    )


def test_kube_version_below_1_30_is_refused(helm4: Helm) -> None:
    done = helm4.run(["template", RELEASE, str(CHART), "--kube-version", "1.29.9"], check=False)
    assert done.returncode != 0
    assert ">=1.30.0-0" in done.stderr


def test_components_switch_off(helm4: Helm) -> None:
    rendered = render(helm4, VALUE_SETS["operator-only"])
    components = {
        doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") for doc in rendered
    }
    assert "server" not in components and "agent" not in components
    assert rendered.has("Deployment", f"{RELEASE}-operator")
    assert not rendered.kinds("DaemonSet")
    assert "crds" in components  # the CRDs stay with any component


def _containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("component", ["server", "operator", "agent"])
def test_pods_are_hardened(helm4: Helm, component: str) -> None:
    spec = render(helm4).pod_spec(component)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["serviceAccountName"] == f"{RELEASE}-{component}"
    assert spec["automountServiceAccountToken"] is (component != "agent")
    assert not spec.get("hostNetwork") and not spec.get("hostIPC")
    assert spec.get("hostPID", False) is (component == "agent")
    for container in _containers(spec):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context.get("privileged") is False
        assert container["resources"]["requests"]
        if container["name"] == "socket-dir":
            # The one root step: chown of the socket hostPath, with CAP_CHOWN alone.
            assert context["capabilities"]["add"] == ["CHOWN"]
            assert context["runAsUser"] == 0
            continue
        assert "add" not in context["capabilities"]
        assert "runAsUser" not in context
        probes = {
            kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
            for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        }
        assert probes == {
            "livenessProbe": ("/live", "http-health"),
            "readinessProbe": ("/ready", "http-health"),
            "startupProbe": ("/live", "http-health"),
        }


def test_agent_mounts_exactly_what_attestation_needs(helm4: Helm) -> None:
    rendered = render(helm4)
    spec = rendered.pod_spec("agent")
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert set(volumes) == {"config", "bundle", "sockets", "psat", "kubelet-token", "data", "tmp"}
    assert volumes["sockets"]["hostPath"] == {
        "path": "/run/herald/sockets",
        "type": "DirectoryOrCreate",
    }
    (psat,) = volumes["psat"]["projected"]["sources"]
    assert psat["serviceAccountToken"] == {
        "audience": "herald-server",
        "expirationSeconds": 7200,
        "path": "herald-agent",
    }
    kubelet = volumes["kubelet-token"]["projected"]["sources"]
    assert "audience" not in kubelet[0]["serviceAccountToken"]  # the API's: the kubelet asks it
    assert kubelet[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert "optional" not in volumes["bundle"]["configMap"], "the agent must wait for the bundle"
    assert volumes["bundle"]["configMap"]["name"] == f"{RELEASE}-bundle"
    hostpaths = [name for name, volume in volumes.items() if "hostPath" in volume]
    assert hostpaths == ["sockets"]
    daemonset = rendered.get("DaemonSet", f"{RELEASE}-agent")
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"

    config = rendered.config("agent")
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert Path(config["node_attestor"]["k8s_psat"]["token_path"]).parent.as_posix() in mounts
    k8s = config["workload_attestors"]["k8s"]
    assert Path(k8s["token_path"]).parent.as_posix() in mounts
    assert Path(config["trust_bundle_path"]).parent.as_posix() in mounts
    assert config["socket_path"] == "/run/herald/sockets/agent.sock"
    assert "unix" not in config["workload_attestors"]


def test_unix_attestor_runs_the_agent_as_root_with_sys_ptrace_only(helm4: Helm) -> None:
    spec = render(helm4, {"agent": {"unixAttestor": {"enabled": True}}}).pod_spec("agent")
    assert spec["securityContext"]["runAsUser"] == 0
    assert "initContainers" not in spec
    (agent,) = spec["containers"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_socket_path_value_is_used_everywhere(helm4: Helm) -> None:
    # SPIRE's chart once ignored its socket path value; here one value moves every use of it.
    values = {
        "agent": {"socketDir": "/var/run/secrets/workload-spiffe-uds", "socketName": "socket"}
    }
    rendered = render(helm4, values)
    assert rendered.config("agent")["socket_path"] == "/var/run/secrets/workload-spiffe-uds/socket"
    spec = rendered.pod_spec("agent")
    (sockets,) = [v for v in spec["volumes"] if v["name"] == "sockets"]
    assert sockets["hostPath"]["path"] == "/var/run/secrets/workload-spiffe-uds"
    assert spec["initContainers"][0]["command"][-1] == "/var/run/secrets/workload-spiffe-uds"
    test_pod = rendered.get("Pod", f"{RELEASE}-test")
    env = {e["name"]: e["value"] for e in test_pod["spec"]["containers"][0]["env"]}
    assert env["SOCKET"] == "/var/run/secrets/workload-spiffe-uds/socket"


def test_component_configs_are_accepted_by_herald(helm4: Helm, tmp_path: Path) -> None:
    rendered = render(helm4, VALUE_SETS["everything-optional"])
    server = server_config(rendered.config("server"), base_dir=tmp_path)
    assert server.mode == "kubernetes"
    assert str(server.trust_domain) == "prod.example.org"
    assert server.kubernetes.namespace == NAMESPACE
    assert server.kubernetes.ca_secret == f"{RELEASE}-ca"
    assert server.kubernetes.agent_service_accounts == (f"{RELEASE}-agent",)
    assert server.ca.upstream is not None and server.ca.upstream.secret == "corp-intermediate"
    assert f"{RELEASE}-server.{NAMESPACE}.svc" in server.server_dns_names
    agent = agent_config(rendered.config("agent"), base_dir=tmp_path)
    assert agent.server_address.host == f"{RELEASE}-server.{NAMESPACE}.svc"
    assert agent.workload_attestors.unix is not None
    assert agent.workload_attestors.k8s is not None
    assert agent.workload_attestors.k8s.kubelet_ca_path is not None
    args = rendered.pod_spec("agent")["containers"][0]["args"]
    assert args[-4:] == ["-kubeletHost", "$(HOST_IP)", "-nodeName", "$(NODE_NAME)"]
    operator = rendered.config("operator")
    assert operator["peering_name"] == f"{RELEASE}-operator"
    assert operator["class_name"] == "prod"
    assert rendered.has("ClusterKopfPeering", f"{RELEASE}-operator")


@pytest.mark.parametrize(
    ("values", "workers"),
    [
        ({}, 2),
        ({"server": {"resources": {"limits": {"cpu": "1500m"}}}}, 2),
        ({"server": {"resources": {"limits": {"cpu": "250m"}}}}, 1),
        ({"server": {"resources": {"limits": {"cpu": 3}}}}, 3),
        ({"server": {"resources": {"limits": {"cpu": "3.5"}}}}, 4),
        ({"server": {"resources": {"limits": {"cpu": None}}}}, 0),
        ({"server": {"signingWorkers": 5}}, 5),
        ({"server": {"signingWorkers": 0, "resources": {"limits": {"cpu": "8"}}}}, 0),
    ],
)
def test_signing_workers_follow_the_cpu_limit_unless_set(
    helm4: Helm, values: Obj, workers: int
) -> None:
    assert render(helm4, values).config("server")["limits"]["signing_workers"] == workers


def test_config_change_rolls_the_pods(helm4: Helm) -> None:
    before = render(helm4)
    after = render(
        helm4, {"server": {"ca": {"x509SvidTtl": "30m"}}, "agent": {"logLevel": "debug"}}
    )

    def checksum(rendered: Rendered, component: str) -> str:
        kind = "DaemonSet" if component == "agent" else "Deployment"
        template = rendered.get(kind, f"{RELEASE}-{component}")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    assert checksum(before, "server") != checksum(after, "server")
    assert checksum(before, "agent") != checksum(after, "agent")
    assert checksum(before, "operator") == checksum(after, "operator")


def test_server_is_ha_by_default(helm4: Helm) -> None:
    rendered = render(helm4)
    deployment = rendered.get("Deployment", f"{RELEASE}-server")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    for component in ("server", "operator"):
        pdb = rendered.get("PodDisruptionBudget", f"{RELEASE}-{component}")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
    service = rendered.get("Service", f"{RELEASE}-server")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "attestation": 8442,
        "agent-api": 8443,
        "http-health": 8080,
    }


def test_crds_come_from_their_one_source_and_are_kept(helm4: Helm) -> None:
    rendered = render(helm4)
    sources = {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted((CHART / "files" / "crds").glob("*.yaml"))
    }
    crds_rendered = {
        doc["metadata"]["name"]: doc for doc in rendered.kinds("CustomResourceDefinition")
    }
    assert set(crds_rendered) == {doc["metadata"]["name"] for doc in sources.values()}
    for source in sources.values():
        doc = crds_rendered[source["metadata"]["name"]]
        assert doc["spec"] == source["spec"]
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "herald"
    with_kopf = helm4.run([*helm_args(), "--include-crds"]).stdout
    assert "name: clusterkopfpeerings.kopf.dev" in with_kopf
    unkept = render(helm4, {"crds": {"keep": False}}).kinds("CustomResourceDefinition")
    assert all(
        "helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {}) for d in unkept
    )
    assert not render(helm4, {"crds": {"enabled": False}}).kinds("CustomResourceDefinition")


def test_optional_pieces(helm4: Helm) -> None:
    rendered = render(helm4, VALUE_SETS["everything-optional"])
    (monitor,) = rendered.kinds("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"]["herald.dev/metrics"] == "true"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    metrics_services = [
        s for s in rendered.kinds("Service") if s["metadata"]["labels"].get("herald.dev/metrics")
    ]
    assert len(metrics_services) == 3
    policies = {p["metadata"]["name"]: p["spec"] for p in rendered.kinds("NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-server", f"{RELEASE}-operator", f"{RELEASE}-agent"}
    operator_egress = policies[f"{RELEASE}-operator"]["egress"]
    assert all("to" not in rule for rule in operator_egress)
    assert {p["port"] for rule in operator_egress for p in rule["ports"]} == {443, 6443, 53}
    server_ingress = policies[f"{RELEASE}-server"]["ingress"][0]
    assert (
        server_ingress["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "agent"
    )
    (example,) = [
        d for d in rendered.kinds("ClusterSPIFFEID") if d["metadata"]["name"].endswith("-example")
    ]
    assert example["spec"]["spiffeIDTemplate"] == (
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
        "/sa/{{ .PodSpec.ServiceAccountName }}"
    )
    image = rendered.pod_spec("server")["containers"][0]["image"]
    assert image == "registry.example.org/herald@sha256:" + "ab" * 32
    done = helm4.run(helm_args(VALUE_SETS["everything-optional"], api_versions=()), check=False)
    assert "exampleClusterSPIFFEID.enabled: the ClusterSPIFFEID CRD is not in the cluster" in (
        done.stderr
    )
    defaults = render(helm4)
    assert not defaults.kinds("ServiceMonitor") and not defaults.kinds("NetworkPolicy")
    assert not [
        d
        for d in defaults.kinds("ClusterSPIFFEID")
        if "helm.sh/hook" not in d["metadata"].get("annotations", {})
    ]
    assert defaults.pod_spec("server")["containers"][0]["image"] == "herald:0.1.0"


def test_helm_test_hook_fetches_an_svid(helm4: Helm) -> None:
    rendered = render(helm4)
    hooks = [
        d for d in rendered if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert {d["kind"] for d in hooks} == {"Namespace", "ClusterSPIFFEID", "Pod"}
    pod = rendered.get("Pod", f"{RELEASE}-test")
    namespace = pod["metadata"]["namespace"]
    assert namespace == f"{NAMESPACE}-herald-test"
    identity = rendered.get("ClusterSPIFFEID", f"{RELEASE}-test")
    expected = f"spiffe://example.org/ns/{namespace}/sa/default"
    assert identity["spec"]["spiffeIDTemplate"] == expected
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SPIFFE_ID"] == expected
    assert "herald-agent api fetch x509" in container["args"][0]
    assert not render(helm4, {"tests": {"enabled": False}}).kinds("Pod")


def test_values_docs_are_generated_from_values_yaml() -> None:
    values_text = (CHART / "values.yaml").read_text()
    doc = (ROOT / "docs" / "install.md").read_text()
    assert values_table.rendered_doc(doc, values_text) == doc, "run python scripts/values_table.py"
    documented = {row.path for row in values_table.rows(values_text)}
    assert {"trustDomain", "server.signingWorkers", "agent.socketDir", "crds.keep"} <= documented
    with pytest.raises(ValueError, match=r"values.yaml:2: server.undocumented has no"):
        values_table.rows("server:\n  undocumented: 1\n")
