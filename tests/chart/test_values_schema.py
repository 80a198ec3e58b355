"""Bad values are refused by helm itself, naming the value, with helm 3 and helm 4 alike.

values.schema.json is strict (no unknown key anywhere, types, enums, patterns): a mistake fails
``helm install``/``template`` before anything reaches the cluster, never as a crash-looping pod.
Keys another chart used (SPIRE's ``global.spire.*``) pass the schema only to be refused by
templates/validate.yaml with herald's key for them.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.render import CHART, refusal, render
from tests.k8s.helm import Helm

REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("bad-trust-domain", {"trustDomain": "Prod.Example.org"}, ["trustDomain", "pattern"]),
    ("trust-domain-with-scheme", {"trustDomain": "spiffe://x.org"}, ["trustDomain"]),
    ("empty-trust-domain", {"trustDomain": ""}, ["trustDomain"]),
    ("replicas-as-text", {"server": {"replicaCount": "two"}}, ["replicaCount", "integer"]),
    ("unknown-top-level-key", {"trustdomain": "x.org"}, ["trustdomain"]),
    ("unknown-nested-key", {"server": {"replicas": 3}}, ["server", "replicas"]),
    ("unknown-deep-key", {"agent": {"kubelet": {"host": "x"}}}, ["kubelet", "host"]),
    ("bad-enum", {"server": {"ca": {"keyType": "ed25519"}}}, ["keyType"]),
    ("bad-duration", {"server": {"ca": {"ttl": "one day"}}}, ["ttl"]),
    ("bad-port", {"server": {"ports": {"agent": 70000}}}, ["agent"]),
    ("bad-log-level", {"operator": {"logLevel": "verbose"}}, ["logLevel"]),
    ("bad-digest", {"image": {"digest": "latest"}}, ["digest"]),
    ("relative-socket-dir", {"agent": {"socketDir": "run/herald"}}, ["socketDir"]),
    ("root-agent-uid", {"agent": {"runAsUser": 0}}, ["runAsUser"]),
    ("bool-as-text", {"crds": {"keep": "yes"}}, ["keep", "boolean"]),
    ("bad-upstream-secret", {"server": {"upstream": {"secretName": "Corp_CA"}}}, ["secretName"]),
]


@pytest.mark.parametrize(
    ("values", "words"), [(v, w) for _, v, w in REFUSED], ids=[name for name, _, _ in REFUSED]
)
def test_bad_values_fail_naming_the_field(
    helm: Helm, values: dict[str, Any], words: list[str]
) -> None:
    message = refusal(helm, values)
    assert "values don't meet the specifications of the schema" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("key", "new"),
    [
        ("trustDomain", "trustDomain"),
        ("clusterName", "clusterName"),
        ("bundleConfigMap", "server.bundleConfigMapName"),
    ],
)
def test_renamed_key_fails_naming_the_new_key(helm: Helm, key: str, new: str) -> None:
    message = refusal(helm, {"global": {"spire": {key: "x"}}})
    assert f"global.spire.{key} was renamed; set {new} instead" in message


def test_removed_key_from_an_older_values_file_fails_naming_it(helm: Helm, tmp_path: Any) -> None:
    # An older (or another chart's) values file: every key the chart no longer has is named.
    old = tmp_path / "old-values.yaml"
    old.write_text(
        yaml.safe_dump({"trustDomain": "prod.example.org", "agent": {"socketPath": "/run/x.sock"}})
    )
    done = helm.run(["template", "r", str(CHART), "-f", str(old)], check=False)
    assert done.returncode != 0
    assert "socketPath" in done.stderr


def test_strict_mode_refuses_example_values(helm: Helm) -> None:
    message = refusal(helm, {"strictMode": True})
    assert (
        "strictMode: trustDomain and clusterName still hold the chart's example values" in message
    )
    render(helm, {"strictMode": True, "trustDomain": "prod.example.org", "clusterName": "eu-1"})


def test_impossible_combinations_fail_naming_the_value(helm: Helm) -> None:
    assert "agent.enabled: the agents need the server" in refusal(
        helm, {"server": {"enabled": False}}
    )
    message = refusal(helm, {"server": {"resources": {"limits": {"cpu": "2 cores"}}}})
    assert "server.resources.limits.cpu" in message


def test_schema_is_strict_everywhere() -> None:
    """Every object in the schema closes its keys (or says what its values are)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    open_objects = {"affinity", "namespaceSelector", "spire", "items"}

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and path.rsplit(".", 1)[-1] not in open_objects:
            assert "additionalProperties" in node, f"{path}: additionalProperties unset"
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")

    walk(schema, "values")
    assert schema["properties"]["trustDomain"]["pattern"] == "^[a-z0-9._-]+$"
