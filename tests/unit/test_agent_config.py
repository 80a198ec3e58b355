"""herald-agent's configuration: defaults, overrides, and a precise error for each bad field."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from herald_agent.cli import main
from herald_agent.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_HEALTH_ADDRESS,
    DEFAULT_SOCKET_PATH,
    Address,
    ConfigError,
    JoinTokenConfig,
    K8sPsatConfig,
    UnixAttestorConfig,
    config_from_mapping,
    load_config,
)
from herald_core.spiffeid import TrustDomain

BASE = Path("/etc/herald")


def minimal(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "trust_domain": "example.org",
        "server_address": "herald-server:8443",
        "trust_bundle_path": "bundle.pem",
        "node_attestor": {"join_token": {"token": "abc"}},
    }
    doc.update(extra)
    return {name: value for name, value in doc.items() if value is not None}


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        config_from_mapping(doc, base_dir=BASE)
    return str(raised.value)


def test_minimal_config_has_the_documented_defaults() -> None:
    config = config_from_mapping(minimal(), base_dir=BASE)
    assert config.trust_domain == TrustDomain.parse("example.org")
    assert config.server_address == Address("herald-server", 8443)
    assert config.attestation_address == Address("herald-server", 8442)
    assert config.trust_bundle_path == BASE / "bundle.pem"
    assert config.node_attestor == JoinTokenConfig("abc")
    assert config.server_name is None
    assert config.socket_path == DEFAULT_SOCKET_PATH
    assert config.data_dir == DEFAULT_DATA_DIR
    assert config.health_address == DEFAULT_HEALTH_ADDRESS
    assert config.workload_attestors.unix == UnixAttestorConfig()
    assert config.workload_attestors.k8s is None
    assert config.workload_api.max_connections_per_uid == 500
    assert config.workload_api.idle_timeout.total_seconds() == 300
    assert (config.log_level, config.log_format) == ("info", "text")


def test_k8s_psat_and_both_workload_attestors() -> None:
    config = config_from_mapping(
        minimal(
            node_attestor={"k8s_psat": {"cluster": "prod-1", "token_path": "tokens/agent"}},
            workload_attestors={
                "unix": None,
                "k8s": {
                    "kubelet_secure_port": 10251,
                    "skip_kubelet_verification": True,
                    "node_name": "node-a.example",
                },
            },
            server_name="herald-server.herald.svc",
        ),
        base_dir=BASE,
    )
    assert config.node_attestor == K8sPsatConfig("prod-1", BASE / "tokens/agent")
    assert config.workload_attestors.unix == UnixAttestorConfig()
    k8s = config.workload_attestors.k8s
    assert k8s is not None
    kubelet = k8s.kubelet()
    assert (kubelet.port, kubelet.read_only, kubelet.skip_verify) == (10251, False, True)
    assert kubelet.ca_path is None
    assert kubelet.tls_server_name == "node-a.example"
    assert config.server_name == "herald-server.herald.svc"


def test_read_only_kubelet_port_is_plain_http() -> None:
    config = config_from_mapping(
        minimal(workload_attestors={"k8s": {"kubelet_read_only_port": 10255}}), base_dir=BASE
    )
    assert config.workload_attestors.unix is None
    assert config.workload_attestors.k8s is not None
    kubelet = config.workload_attestors.k8s.kubelet()
    assert (kubelet.port, kubelet.read_only) == (10255, True)
    assert kubelet.url == "http://127.0.0.1:10255/pods"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (minimal(trust_domain=None), "trust_domain: required"),
        (minimal(trust_domain="spiffe://example.org/x"), "trust_domain: "),
        (minimal(trust_domain="Example.org"), "trust_domain: trust domain must be lowercase"),
        (
            minimal(workload_api={"max_connections_per_uid": 0}),
            "workload_api.max_connections_per_uid: must be between 1 and 1000000, got 0",
        ),
        (
            minimal(workload_api={"idle_timeout": "soon"}),
            "workload_api.idle_timeout: cannot read duration 'soon'",
        ),
        (minimal(workload_api={"idle_timout": "1m"}), "unknown field 'workload_api.idle_timout'"),
        (minimal(server_address=None), "server_address: required"),
        (minimal(server_address="herald-server"), "server_address: expected host:port"),
        (minimal(server_address="h:0"), "server_address: port 0 cannot be dialled"),
        (minimal(attestation_address="herald-server:8443"), "attestation_address: same as"),
        (minimal(trust_bundle_path=None), "trust_bundle_path: required"),
        (minimal(trust_bundle_path=5), "trust_bundle_path: expected a path"),
        (minimal(server_name="not a name"), "server_name: "),
        (minimal(node_attestor=None), "node_attestor: required: give one of"),
        (
            minimal(node_attestor={"join_token": {"token": "a"}, "k8s_psat": {"cluster": "c"}}),
            "node_attestor: give only one of",
        ),
        (minimal(node_attestor={"join_token": {}}), "node_attestor.join_token.token: required"),
        (minimal(node_attestor={"join_token": {"token": 7}}), "node_attestor.join_token.token:"),
        (minimal(node_attestor={"k8s_psat": {}}), "node_attestor.k8s_psat.cluster: required"),
        (
            minimal(node_attestor={"k8s_psat": {"cluster": "a b"}}),
            "node_attestor.k8s_psat.cluster: cannot be part of an agent ID",
        ),
        (
            minimal(node_attestor={"join_token": {"tokn": "a"}}),
            "unknown field 'node_attestor.join_token.tokn'; did you mean "
            "'node_attestor.join_token.token'?",
        ),
        (minimal(sever_address="x:1"), "unknown field 'sever_address'; did you mean"),
        (minimal(workload_attestors={}), "workload_attestors: needs at least one"),
        (minimal(workload_attestors={"docker": {}}), "unknown field 'workload_attestors.docker'"),
        (
            minimal(workload_attestors={"unix": {"workload_size_limit": -1}}),
            "workload_attestors.unix.workload_size_limit: must be between",
        ),
        (
            minimal(workload_attestors={"k8s": {"kubelet_secure_port": 70000}}),
            "workload_attestors.k8s.kubelet_secure_port: must be between 1 and 65535",
        ),
        (
            minimal(workload_attestors={"k8s": {"skip_kubelet_verification": "yes"}}),
            "workload_attestors.k8s.skip_kubelet_verification: expected true or false",
        ),
        (
            minimal(
                workload_attestors={
                    "k8s": {"skip_kubelet_verification": True, "kubelet_ca_path": "ca.crt"}
                }
            ),
            "workload_attestors.k8s.skip_kubelet_verification: set together with",
        ),
        (
            minimal(workload_attestors={"k8s": {"node_name": "Node_A"}}),
            "workload_attestors.k8s.node_name: ",
        ),
        (minimal(socket_path="/" + "s" * 120), "socket_path: "),
        (minimal(health_address="localhost"), "health_address: expected host:port"),
        (minimal(log_level="loud"), "log_level: 'loud' is not one of"),
        (minimal(log_format="xml"), "log_format: 'xml' is not one of"),
    ],
)
def test_each_bad_field_is_named_with_the_reason(doc: dict[str, Any], message: str) -> None:
    assert message in error_of(doc)


def test_file_paths_are_relative_to_the_file_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            trust_domain: example.org
            server_address: 10.0.0.1:8443
            attestation_address: 10.0.0.1:9442
            trust_bundle_path: bundle.pem
            data_dir: data
            node_attestor:
              join_token:
                token: from-file
            """
        )
    )
    config = load_config(
        path,
        {
            "node_attestor.join_token.token": "from-flag",
            "socket_path": Path("relative.sock"),
            "log_level": None,
        },
    )
    assert config.trust_bundle_path == tmp_path / "bundle.pem"
    assert config.data_dir == tmp_path / "data"
    assert config.attestation_address == Address("10.0.0.1", 9442)
    assert config.node_attestor == JoinTokenConfig("from-flag")
    assert config.socket_path == Path("relative.sock").absolute()
    assert config.log_level == "info"


def test_join_token_flag_with_a_k8s_psat_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "trust_domain: example.org\nserver_address: h:1\ntrust_bundle_path: b.pem\n"
        "node_attestor: {k8s_psat: {cluster: c}}\n"
    )
    with pytest.raises(ConfigError, match="node_attestor: give only one of"):
        load_config(path, {"node_attestor.join_token.token": "t"})


def test_run_exits_2_naming_the_field_or_flag(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("trust_domain: example.org\nserver_address: [1\n")
    runner = CliRunner()
    result = runner.invoke(main, ["run", "-config", str(path)])
    assert result.exit_code == 2
    assert "agent.yaml:3:1: not valid YAML" in result.output

    path.write_text("trust_domain: example.org\n")
    result = runner.invoke(main, ["run", "--config", str(path), "-trustBundle", "b.pem"])
    assert result.exit_code == 2
    assert "Error: server_address: required" in result.output

    path.write_text("trust_domain: example.org\nnode_attestor:\n  join_token: {token: a}\n" * 2)
    result = runner.invoke(main, ["run", "-config", str(path)])
    assert result.exit_code == 2
    assert (
        "agent.yaml:4:1: not valid YAML: duplicate key 'trust_domain': set on line 1 and again "
        "on line 4"
    ) in result.output

    result = runner.invoke(main, ["run", "-confg", str(path)])
    assert result.exit_code == 2
    assert "No such option '-confg'. Did you mean '-config'?" in result.output


def test_kubelet_host_and_node_name_flags_set_the_k8s_attestor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart's DaemonSet passes these from the downward API: one config file, per-node values.
    import herald_agent.agent

    path = tmp_path / "agent.yaml"
    path.write_text(
        "trust_domain: example.org\nserver_address: h:1\ntrust_bundle_path: b.pem\n"
        "node_attestor: {k8s_psat: {cluster: c}}\n"
        "workload_attestors: {k8s: {kubelet_secure_port: 10250}}\n"
    )
    seen: list[object] = []

    async def capture(config: object) -> None:
        seen.append(config)

    monkeypatch.setattr(herald_agent.agent, "run", capture)
    flags = ["-kubeletHost", "10.1.2.3", "-nodeName", "node-a"]
    result = CliRunner().invoke(main, ["run", "-config", str(path), *flags])
    assert result.exit_code == 0, result.output
    k8s = seen[0].workload_attestors.k8s  # type: ignore[attr-defined]
    assert (k8s.kubelet_host, k8s.node_name, k8s.kubelet_secure_port) == (
        "10.1.2.3",
        "node-a",
        10250,
    )

    result = CliRunner().invoke(main, ["run", "-config", str(path), "-nodeName", "Node_A"])
    assert result.exit_code == 2
    assert "workload_attestors.k8s.node_name" in result.output
