"""A small client of a real API server for tests: objects by apiVersion and kind, as dicts.

`Kube` speaks plain REST through the official client's connection handling, resolving a kind to
its path by the server's own discovery (so custom resources work as soon as their CRD is
established), and remembers what it created so `cleanup` can remove it. Pods are deleted with a
zero grace period: without a kubelet to confirm termination a graceful delete would never finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]
_T = TypeVar("_T")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return k8s.ApiClient(configuration)


def wait_for(check: Callable[[], _T], *, what: str, timeout: float = 15.0) -> _T:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Resource:
    """Where one kind lives in the API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base if name is None else f"{base}/{name}"


class Kube:
    """REST calls as one identity (``kubeconfig``); see the module docstring."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.client = api_client(kubeconfig)
        self._resources: dict[tuple[str, str], Resource] = {}
        self._created: list[tuple[Resource, str | None, str]] = []

    def close(self) -> None:
        self.client.close()

    # --- raw calls --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Iterable[tuple[str, Any]] = (),
    ) -> Any:
        """One call; the decoded answer, or ApiException for any status >= 400."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(method, url, header_params=headers, body=body)
        data = response.read()
        if response.status >= 400:
            raise ApiException(http_resp=response)
        return json.loads(data) if data else None

    def resource(self, api_version: str, kind: str) -> Resource:
        key = (api_version, kind)
        if key not in self._resources:
            self._discover(api_version)
        if key not in self._resources:
            raise LookupError(f"the API server serves no {kind} in {api_version}")
        return self._resources[key]

    def _discover(self, api_version: str) -> None:
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        for item in self.request("GET", path)["resources"]:
            if "/" in item["name"]:
                continue  # subresources
            self._resources[(api_version, item["kind"])] = Resource(
                api_version, item["kind"], item["name"], bool(item["namespaced"])
            )

    # --- objects ----------------------------------------------------------------------------

    def create(self, obj: Obj, *, track: bool = True) -> Obj:
        res = self.resource(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace")
        # Strict, as kubectl is: an unknown field is an error, not silently dropped.
        created: Obj = self.request(
            "POST", res.path(namespace), obj, query=[("fieldValidation", "Strict")]
        )
        if track:
            self._created.append((res, namespace, created["metadata"]["name"]))
        return created

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """A namespace (deleted by `cleanup`), once its ``default`` ServiceAccount exists: pods
        cannot be admitted before the controller has made it."""
        meta: Obj = {"name": name, "labels": labels or {}}
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        wait_for(
            lambda: self.get("v1", "ServiceAccount", "default", name) is not None,
            what=f"the default ServiceAccount of {name}",
        )
        return name

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        try:
            found: Obj = self.request("GET", self.resource(api_version, kind).path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        listing = self.request("GET", self.resource(api_version, kind).path(namespace), query=query)
        return list(listing["items"])

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
    ) -> Obj:
        path = self.resource(api_version, kind).path(namespace, name)
        if subresource:
            path += f"/{subresource}"
        patched: Obj = self.request("PATCH", path, patch, content_type=content_type)
        return patched

    def apply(self, obj: Obj, *, manager: str = "herald-tests") -> Obj:
        """Server-side apply of ``obj`` (created if missing)."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace")
        applied: Obj = self.request(
            "PATCH",
            res.path(namespace, obj["metadata"]["name"]),
            obj,
            content_type=APPLY_PATCH,
            query=[("fieldManager", manager), ("force", "true")],
        )
        return applied

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        """Delete (pods at once, see the module docstring); None if it was already gone."""
        res = self.resource(api_version, kind)
        options = {"gracePeriodSeconds": 0} if kind == "Pod" else {}
        try:
            deleted: Obj = self.request("DELETE", res.path(namespace, name), options)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return deleted

    def cleanup(self) -> None:
        """Delete what `create` made, newest first, pods of tracked namespaces included."""
        while self._created:
            res, namespace, name = self._created.pop()
            if res.kind == "Namespace":
                for pod in self.list("v1", "Pod", name):
                    self.delete("v1", "Pod", pod["metadata"]["name"], name)
            self.delete(res.api_version, res.kind, name, namespace)

    # --- ServiceAccount tokens ------------------------------------------------------------

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        audiences: Iterable[str] = (),
        seconds: int = 3600,
        bound_pod: Obj | None = None,
    ) -> str:
        """A TokenRequest token for ``service_account``, optionally bound to a pod."""
        spec: Obj = {"audiences": list(audiences), "expirationSeconds": seconds}
        if bound_pod is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": bound_pod["metadata"]["name"],
                "uid": bound_pod["metadata"]["uid"],
            }
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def can_i(
        self,
        verb: str,
        resource: str,
        *,
        namespace: str = "",
        name: str = "",
        group: str = "",
        subresource: str = "",
    ) -> bool:
        """SelfSubjectAccessReview: may this identity do it?"""
        attributes = {
            "verb": verb,
            "resource": resource,
            "group": group,
            "namespace": namespace,
            "name": name,
            "subresource": subresource,
        }
        review = self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {k: v for k, v in attributes.items() if v}},
            },
        )
        return bool(review["status"]["allowed"])


def refusal(exc: ApiException) -> str:
    """The message of the Status an API error carries (the raw body if it is not one)."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def kubeconfig_parts(path: Path) -> tuple[str, Path, str]:
    """The server URL, CA file and bearer token of a kubeconfig written by tests/k8s."""
    doc = yaml.safe_load(path.read_text())
    cluster = doc["clusters"][0]["cluster"]
    return (
        str(cluster["server"]),
        Path(cluster["certificate-authority"]),
        str(doc["users"][0]["user"]["token"]),
    )
