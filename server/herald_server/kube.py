"""Kubernetes API clients for the server: how they are configured, and one per blocking call.

The official client is synchronous and not thread-safe to share across concurrent calls, so
each call made in a worker thread opens its own ApiClient and closes it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

ApiClientFactory = Callable[[], k8s.ApiClient]


def kube_client_factory(kubeconfig: Path | None) -> ApiClientFactory:
    """ApiClients for the in-cluster service account, or for ``kubeconfig`` when given."""
    configuration = k8s.Configuration()
    if kubeconfig is not None:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            str(kubeconfig), client_configuration=configuration
        )
    else:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    return lambda: k8s.ApiClient(configuration)


@contextmanager
def api_session(factory: ApiClientFactory) -> Iterator[k8s.ApiClient]:
    """A fresh ApiClient, closed (with its connection pool) when the block ends."""
    api_client = factory()
    try:
        yield api_client
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
