"""An existing cluster named by an admin kubeconfig, in place of the suite's own control plane.

``HERALD_TEST_KUBECONFIG=~/.kube/config make test`` runs the Kubernetes-mode tests against it.
It offers what `install_herald` needs: the admin kubeconfig, and kubeconfigs for ServiceAccount
tokens that reach the same server with the same CA. Tests that stop control-plane processes or
read etcd need the suite's own `ControlPlane` and skip here.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from tests.k8s.controlplane import write_kubeconfig


class ExistingCluster:
    def __init__(self, admin_kubeconfig: Path, workdir: Path) -> None:
        self.admin_kubeconfig = admin_kubeconfig.expanduser().resolve()
        self.workdir = workdir
        doc = yaml.safe_load(self.admin_kubeconfig.read_text())
        context_name = doc.get("current-context")
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        self.url = str(cluster["server"])
        if "certificate-authority-data" in cluster:
            self.ca_file = workdir / "cluster-ca.crt"
            self.ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        else:
            self.ca_file = (
                self.admin_kubeconfig.parent / cluster["certificate-authority"]
            ).resolve()

    def kubeconfig_for(self, name: str, token: str) -> Path:
        return write_kubeconfig(
            self.workdir / f"{name}.kubeconfig", self.url, self.ca_file, token, name
        )
