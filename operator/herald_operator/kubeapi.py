"""The registrar's calls to the Kubernetes API, through the official client (synchronous).

The registrar runs these in threads (``asyncio.to_thread``) so Kopf's event loop never blocks.
Objects travel as plain dicts, as the API returns them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

import kubernetes.client
from kubernetes.client import ApiException

from herald_operator.crds import API_VERSION

GROUP, VERSION = API_VERSION.split("/")
PLURALS: Final = {
    "ClusterSPIFFEID": "clusterspiffeids",
    "SPIFFEID": "spiffeids",
    "WorkloadEntry": "workloadentries",
}
_CORE_LISTS: Final = {
    "Pod": "list_pod_for_all_namespaces",
    "Namespace": "list_namespace",
    "Node": "list_node",
    "Service": "list_service_for_all_namespaces",
}
COMPONENT: Final = "herald-operator"


class KubeApi:
    """The few API calls the registrar makes."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        # Untyped: the calls pass _preload_content and plain dicts, which the stubs do not know.
        self._custom: Any = kubernetes.client.CustomObjectsApi(client)
        self._core: Any = kubernetes.client.CoreV1Api(client)

    def list(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        """Every object of ``kind`` in the cluster and the list's resourceVersion."""
        if kind in PLURALS:
            answer = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind])
        else:
            response = getattr(self._core, _CORE_LISTS[kind])(_preload_content=False)
            answer = json.loads(response.data)
        items = [dict(item, kind=kind) for item in answer.get("items") or []]
        return items, str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def pod_uid(self, namespace: str, name: str) -> str | None:
        """The UID of the pod ``namespace/name``, None if there is none."""
        try:
            pod = self._core.read_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        meta = json.loads(pod.data).get("metadata") or {}
        return str(meta.get("uid") or "")

    def create_entry(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the entry: (the stored object, True), or (the existing one, False) on 409."""
        meta = obj["metadata"]
        try:
            created: dict[str, Any] = self._custom.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURALS["WorkloadEntry"], dict(obj)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (another replica, a lost answer, an index not yet filled).
            existing: dict[str, Any] = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURALS["WorkloadEntry"], meta["name"]
            )
            return existing, False
        return created, True

    def patch_entry(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        patch = {
            "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
            # A merge patch merges maps: fields the new spec drops must be nulled explicitly.
            "spec": obj["spec"],
        }
        patched: dict[str, Any] = self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURALS["WorkloadEntry"], meta["name"], patch
        )
        return patched

    def replace_spec(self, obj: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        """Patch ``current`` into ``obj``: spec fields ``obj`` lacks are removed."""
        spec = dict(obj["spec"])
        for key in (current.get("spec") or {}).keys() - spec.keys():
            spec[key] = None
        return self.patch_entry({**obj, "spec": spec})

    def delete_entry(self, namespace: str, name: str) -> None:
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS["WorkloadEntry"], name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None:
        body = {"status": dict(status)}
        try:
            if namespace:
                self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURALS[kind], name, body
                )
            else:
                self._custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, PLURALS[kind], name, body
                )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def post_event(
        self, obj: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``obj`` (a cluster-scoped object's go to ``default``)."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._core.create_namespaced_event(namespace, event)
