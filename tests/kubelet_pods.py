"""Realistic kubelet ``/pods`` answers for tests and benchmarks.

A node's worth of pods (110 is the kubelet's default maximum) shaped like what a kubelet
really returns: Deployment pods owned by ReplicaSets with ``pod-template-hash`` labels,
DaemonSet and StatefulSet pods, sidecars, init containers, runtime-prefixed container IDs,
digest image IDs, conditions and volumes, so the body is as large as a real one (~3 KB a pod).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

NODE = "node-a"
_NAMESPACES = ["payments", "checkout", "web", "search", "monitoring", "kube-system", "data"]
_IMAGES = [
    "registry.example.com/payments/api:1.42.0",
    "registry.example.com/web/frontend:2024.11.3",
    "docker.io/library/nginx:1.27",
    "quay.io/prometheus/node-exporter:v1.8.2",
    "registry.k8s.io/kube-proxy:v1.31.2",
    "ghcr.io/example/search-indexer:0.9.1",
]
_SIDECARS = ["docker.io/envoyproxy/envoy:v1.32.1", "ghcr.io/spiffe/spiffe-helper:0.8.0"]


def hex64(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def image_id(image: str) -> str:
    repository = image.rsplit(":", 1)[0]
    return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


@dataclass
class Container:
    name: str
    image: str
    container_id: str
    runtime: str = "containerd"
    status_image: str | None = None
    """What the runtime reports, when it differs from the spec (a resolved tag)."""

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [
                {
                    "name": "kube-api-access",
                    "readOnly": True,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }
            ],
            "terminationMessagePath": "/dev/termination-log",
            "imagePullPolicy": "IfNotPresent",
        }

    def status(self, *, init: bool = False) -> dict[str, Any]:
        image = self.status_image or self.image
        state = (
            {"terminated": {"exitCode": 0, "reason": "Completed"}}
            if init
            else {"running": {"startedAt": "2026-11-27T08:00:00Z"}}
        )
        return {
            "name": self.name,
            "state": state,
            "ready": not init,
            "restartCount": 0,
            "image": image,
            "imageID": image_id(image),
            "containerID": f"{self.runtime}://{self.container_id}",
            "started": not init,
        }


@dataclass
class Pod:
    name: str
    namespace: str
    uid: str
    service_account: str
    containers: list[Container]
    init_containers: list[Container] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    owners: list[dict[str, Any]] = field(default_factory=list)
    node: str = NODE
    listed_containers: set[str] | None = None
    """Names of the containers whose status the kubelet reports yet (None: all)."""

    def manifest(self) -> dict[str, Any]:
        def listed(c: Container) -> bool:
            return self.listed_containers is None or c.name in self.listed_containers

        return {
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "123456",
                "creationTimestamp": "2026-11-27T07:59:50Z",
                "labels": self.labels,
                "annotations": {"kubernetes.io/config.seen": "2026-11-27T07:59:51Z"},
                "ownerReferences": self.owners,
            },
            "spec": {
                "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
                "initContainers": [c.spec() for c in self.init_containers],
                "containers": [c.spec() for c in self.containers],
                "restartPolicy": "Always",
                "serviceAccountName": self.service_account,
                "serviceAccount": self.service_account,
                "nodeName": self.node,
                "securityContext": {},
                "schedulerName": "default-scheduler",
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
                "priority": 0,
            },
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": "2026-11-27T08:00:00Z"}
                    for t in ("PodReadyToStartContainers", "Initialized", "Ready", "PodScheduled")
                ],
                "hostIP": "10.0.0.12",
                "podIP": "10.244.1.17",
                "startTime": "2026-11-27T07:59:51Z",
                "initContainerStatuses": [
                    c.status(init=True) for c in self.init_containers if listed(c)
                ],
                "containerStatuses": [c.status() for c in self.containers if listed(c)],
                "qosClass": "BestEffort",
            },
        }


def owner(kind: str, name: str, rng: random.Random) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def random_pod(index: int, rng: random.Random) -> Pod:
    namespace = rng.choice(_NAMESPACES)
    app = f"app{index % 23}"
    kind = rng.choice(["ReplicaSet", "ReplicaSet", "DaemonSet", "StatefulSet"])
    template_hash = f"{rng.getrandbits(40):010x}"[:10]
    owner_name = f"{app}-{template_hash}" if kind == "ReplicaSet" else app
    containers = [Container(app, rng.choice(_IMAGES), hex64(rng))]
    if rng.random() < 0.4:
        containers.append(Container("proxy", rng.choice(_SIDECARS), hex64(rng)))
    init = [Container("migrate", rng.choice(_IMAGES), hex64(rng))] if rng.random() < 0.2 else []
    return Pod(
        name=f"{owner_name}-{rng.getrandbits(24):06x}",
        namespace=namespace,
        uid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        service_account=f"{app}-sa",
        containers=containers,
        init_containers=init,
        labels={
            "app.kubernetes.io/name": app,
            "app.kubernetes.io/part-of": namespace,
            "pod-template-hash": template_hash,
            "team": rng.choice(["core", "edge", "data"]),
        },
        owners=[owner(kind, owner_name, rng)],
    )


def pod_list(pods: list[Pod], *, filler: int = 110, seed: int = 7) -> bytes:
    """The kubelet's JSON for ``pods`` plus random ones, ``filler`` pods in all."""
    rng = random.Random(seed)
    everything = list(pods) + [random_pod(i, rng) for i in range(max(0, filler - len(pods)))]
    rng.shuffle(everything)
    document = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [pod.manifest() for pod in everything],
    }
    return json.dumps(document).encode()
