"""Publishes the trust bundle to a ConfigMap for consumers that are not workloads.

`herald-bundle` holds `bundle.pem` (the X.509 authorities, for anything that takes a CA file)
and `bundle.spiffe` (the SPIFFE bundle JSON, with JWT keys and `spiffe_sequence`). Only the
leader writes, and only when the content differs, so replicas never fight over it.
"""

from __future__ import annotations

import asyncio
import logging

from kubernetes import client as k8s

from herald_core.bundle import Bundle
from herald_server.kube import ApiClientFactory, api_session

log = logging.getLogger(__name__)

PEM_KEY = "bundle.pem"
SPIFFE_KEY = "bundle.spiffe"


def bundle_configmap_data(bundle: Bundle) -> dict[str, str]:
    return {
        PEM_KEY: bundle.x509_pem().decode(),
        SPIFFE_KEY: bundle.to_spiffe_jwks().decode(),
    }


class BundlePublisher:
    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        *,
        namespace: str,
        name: str = "herald-bundle",
    ) -> None:
        self._api = api_client_factory
        self._namespace = namespace
        self._name = name

    async def publish(self, bundle: Bundle) -> bool:
        """Write the bundle if the ConfigMap differs; True when something was written."""
        try:
            return await asyncio.to_thread(self._publish, bundle_configmap_data(bundle))
        except k8s.ApiException as exc:
            log.warning(
                "could not publish bundle to configmap %s/%s: %s %s",
                self._namespace,
                self._name,
                exc.status,
                exc.reason,
            )
            return False

    def _publish(self, data: dict[str, str]) -> bool:
        with api_session(self._api) as api_client:
            api = k8s.CoreV1Api(api_client)
            try:
                current = api.read_namespaced_config_map(self._name, self._namespace)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
                api.create_namespaced_config_map(self._namespace, self._configmap(data))
                return True
            if (current.data or {}) == data:
                return False
            current.data = data
            api.replace_namespaced_config_map(self._name, self._namespace, current)
            return True

    def _configmap(self, data: dict[str, str]) -> k8s.V1ConfigMap:
        return k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=self._name,
                namespace=self._namespace,
                labels={
                    "app.kubernetes.io/name": "herald",
                    "app.kubernetes.io/component": "bundle",
                },
            ),
            data=data,
        )
