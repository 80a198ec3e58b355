"""The ``k8s`` workload attestor: which pod and container a process runs in, per the kubelet.

pid → ``/proc/<pid>/cgroup`` → (pod UID, container ID) → that pod in the kubelet's pod list →
that container among its container, init-container and ephemeral-container statuses (matched on
the ID after the runtime's ``<runtime>://`` prefix) → selectors.

A process in no pod cgroup gets no ``k8s`` selectors and no error: it is not a Kubernetes
workload (the ``unix`` attestor still vouches for it). A container that has just started may not
be in the kubelet's list yet, so a miss is retried (``attempts`` times, ``interval`` apart;
SPIRE's 60 and 0.5 s by default), each retry asking for a list newer than the one that missed.
A miss against a list cached before the attestation began is refetched at once. The process is
checked to be alive and the same one at every retry and at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from herald_agent.attestors import AttestationError
from herald_agent.attestors.cgroups import PodContainer, read_pod_container
from herald_agent.attestors.kubelet import JsonObject, KubeletClient, KubeletError, PodList
from herald_agent.attestors.proc import PROC_ROOT, check_same_process, start_time
from herald_core.selector import Selector, SelectorError

log = logging.getLogger(__name__)

_STATUS_KINDS: Final = (
    ("containerStatuses", "containers"),
    ("initContainerStatuses", "initContainers"),
    ("ephemeralContainerStatuses", "ephemeralContainers"),
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait for a starting container to show up in the kubelet's list."""

    attempts: int = 60
    interval: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.interval < 0:
            raise ValueError(
                f"k8s attestor retries need attempts >= 1 and interval >= 0, "
                f"not {self.attempts} and {self.interval}"
            )


class K8sAttestor:
    """Selectors from the pod and container a process runs in."""

    name = "k8s"

    def __init__(
        self,
        kubelet: KubeletClient,
        retry: RetryPolicy | None = None,
        proc_root: str = PROC_ROOT,
    ) -> None:
        self._kubelet = kubelet
        self._retry = retry or RetryPolicy()
        self._proc_root = proc_root

    async def attest(self, pid: int) -> frozenset[Selector]:
        started = start_time(pid, self._proc_root)
        where = self._where(pid, started)
        if where is None:
            return frozenset()
        pod, status = await self._find(pid, started, where)
        check_same_process(pid, started, self._proc_root)
        return pod_selectors(pod, status)

    def _where(self, pid: int, started: int) -> PodContainer | None:
        try:
            where = read_pod_container(pid, self._proc_root)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise AttestationError(f"process {pid} exited during attestation") from exc
        except OSError as exc:
            raise AttestationError(f"cannot read /proc/{pid}/cgroup: {exc.strerror}") from exc
        # The cgroup file must belong to the process we started with, not a reused pid.
        check_same_process(pid, started, self._proc_root)
        return where

    async def _find(
        self, pid: int, started: int, where: PodContainer
    ) -> tuple[JsonObject, JsonObject]:
        began = time.monotonic()
        pods: PodList | None = None
        pod: JsonObject | None = None
        for _ in range(self._retry.attempts):
            if pods is not None:
                if pods.fetched_at >= began:
                    await asyncio.sleep(self._retry.interval)
                check_same_process(pid, started, self._proc_root)
            pods = await self._pod_list(pods)
            pod = pods.pod(where.pod_uid)
            status = find_container_status(pod, where.container_id) if pod else None
            if pod is not None and status is not None:
                return pod, status
        if pod is None:
            raise AttestationError(
                f"pod {where.pod_uid} (process {pid}) is not in the kubelet's pod list"
            )
        raise AttestationError(
            f"container {where.container_id} of pod {where.pod_uid} (process {pid}) is not in "
            "the kubelet's pod status"
        )

    async def _pod_list(self, missed: PodList | None) -> PodList:
        try:
            if missed is None:
                return await self._kubelet.pods()
            return await self._kubelet.pods(newer_than=missed.fetched_at)
        except KubeletError as exc:
            raise AttestationError(str(exc)) from exc


def find_container_status(pod: JsonObject, container_id: str) -> JsonObject | None:
    """The status (of any container kind) whose ``containerID`` is ``<runtime>://<id>``."""
    suffix = f"://{container_id}"
    for status, _ in _statuses(pod):
        if str(status.get("containerID", "")).endswith(suffix):
            return status
    return None


def pod_selectors(pod: JsonObject, status: JsonObject) -> frozenset[Selector]:
    """The ``k8s`` selectors of one container of one pod."""
    metadata = _obj(pod.get("metadata"))
    spec = _obj(pod.get("spec"))
    values: list[tuple[str, Any]] = [
        ("ns", metadata.get("namespace")),
        ("sa", spec.get("serviceAccountName") or spec.get("serviceAccount")),
        ("pod-name", metadata.get("name")),
        ("pod-uid", metadata.get("uid")),
        ("node-name", spec.get("nodeName")),
        ("container-name", status.get("name")),
        ("pod-image-count", len(_list(spec.get("containers")))),
        ("pod-init-image-count", len(_list(spec.get("initContainers")))),
    ]
    values += [("pod-label", f"{k}:{v}") for k, v in _obj(metadata.get("labels")).items()]
    for owner in map(_obj, _list(metadata.get("ownerReferences"))):
        values.append(("pod-owner", f"{owner.get('kind')}:{owner.get('name')}"))
        values.append(("pod-owner-uid", owner.get("uid")))
    values += [("container-image", image) for image in _container_images(pod, status)]
    values += [("pod-image", image) for image in _pod_images(pod, "containers")]
    values += [("pod-init-image", image) for image in _pod_images(pod, "initContainers")]
    return frozenset(_selectors(values))


def _selectors(values: list[tuple[str, Any]]) -> Iterator[Selector]:
    for key, value in values:
        # A missing field (a pod not yet scheduled has no nodeName) gives no selector.
        if value is None or value == "":
            continue
        try:
            yield Selector("k8s", f"{key}:{value}")
        except SelectorError as exc:
            # Leaving one selector out only makes fewer entries match; failing the whole
            # attestation would take every identity from the workload.
            log.warning("event=k8s_selector_skipped key=%s error=%r", key, str(exc))


def _container_images(pod: JsonObject, status: JsonObject) -> set[str]:
    """The image as the runtime reports it, its digest form, and the spec's if it differs."""
    images = {str(status.get("image") or ""), str(status.get("imageID") or "")}
    for candidate, spec_field in _statuses(pod):
        if candidate is status:
            images.update(
                str(container.get("image") or "")
                for container in map(_obj, _list(_obj(pod.get("spec")).get(spec_field)))
                if container.get("name") == status.get("name")
            )
    images.discard("")
    return images


def _pod_images(pod: JsonObject, spec_field: str) -> set[str]:
    """Every image (spec, status and digest forms) of one kind of container in the pod."""
    spec = _obj(pod.get("spec"))
    images = {str(_obj(c).get("image") or "") for c in _list(spec.get(spec_field))}
    status_field = next(s for s, f in _STATUS_KINDS if f == spec_field)
    for status in map(_obj, _list(_obj(pod.get("status")).get(status_field))):
        images.add(str(status.get("image") or ""))
        images.add(str(status.get("imageID") or ""))
    images.discard("")
    return images


def _statuses(pod: JsonObject) -> Iterator[tuple[JsonObject, str]]:
    pod_status = _obj(pod.get("status"))
    for status_field, spec_field in _STATUS_KINDS:
        for status in _list(pod_status.get(status_field)):
            if isinstance(status, dict):
                yield status, spec_field


def _obj(value: Any) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
