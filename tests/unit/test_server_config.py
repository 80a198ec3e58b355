"""Server configuration: defaults, overrides, and one precise message per mistake."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from herald_core.keys import KeyType, generate_key
from herald_core.spiffeid import TrustDomain
from herald_core.x509svid import make_ca_certificate
from herald_server.ca import CASettings
from herald_server.config import (
    Address,
    ConfigError,
    ServerConfig,
    UpstreamConfig,
    config_from_mapping,
    load_config,
)
from herald_server.upstream import UpstreamAuthority


@pytest.fixture
def no_pod(tmp_path: Path) -> Path:
    """A service-account namespace file that does not exist: not running in a pod."""
    return tmp_path / "no-such-namespace-file"


def write(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def build(raw: dict[str, Any], namespace_file: Path) -> ServerConfig:
    return config_from_mapping(
        {"trust_domain": "example.org", **raw},
        base_dir=Path("/etc/herald"),
        namespace_file=namespace_file,
    )


def test_defaults(no_pod: Path) -> None:
    config = build({}, no_pod)
    assert config.trust_domain == TrustDomain("example.org")
    assert config.mode == "standalone"
    assert config.data_dir == Path("/var/lib/herald/server")
    assert config.admin_socket == Path("/var/lib/herald/server/admin.sock")
    assert (config.log_level, config.log_format) == ("info", "text")
    assert str(config.attestation_address) == "0.0.0.0:8442"
    assert str(config.agent_address) == "0.0.0.0:8443"
    assert str(config.health_address) == "0.0.0.0:8080"
    assert config.server_dns_names == ()
    assert config.ca.key_type is KeyType.EC_P256
    assert config.ca.jwt_key_type is KeyType.EC_P256
    assert (config.ca.ttl, config.ca.x509_svid_ttl) == (timedelta(hours=24), timedelta(hours=1))
    assert (config.ca.jwt_svid_ttl, config.ca.agent_svid_ttl) == (
        timedelta(minutes=5),
        timedelta(hours=1),
    )
    assert config.ca.refresh_hint == timedelta(minutes=5)
    assert config.ca.upstream is None
    assert config.join_token_ttl == timedelta(minutes=10)
    assert config.limits.max_batch == 500
    assert config.limits.max_message_bytes == 4194304
    assert (config.limits.sign_rate_per_agent, config.limits.sign_burst_per_agent) == (200, 1000)
    k8s = config.kubernetes
    assert (k8s.namespace, k8s.agent_namespace, k8s.cluster_name) == ("herald", "herald", "")
    assert (k8s.ca_secret, k8s.bundle_configmap) == ("herald-ca", "herald-bundle")
    assert k8s.lease_name == "herald-server-leader"
    assert k8s.agent_service_accounts == ("herald-agent",)
    assert (k8s.audience, k8s.kubeconfig) == ("herald-server", None)


def test_full_kubernetes_file(tmp_path: Path, no_pod: Path) -> None:
    path = write(
        tmp_path,
        """
        trust_domain: prod.example.org
        mode: kubernetes
        data_dir: data
        log_level: DEBUG
        log_format: json
        attestation_address: "[::]:9442"
        agent_address: 127.0.0.1:9443
        admin_socket: /run/herald/admin.sock
        health_address: 0.0.0.0:0
        server_dns_names: [herald-server.herald.svc, herald-server]
        ca:
          key_type: ec-p384
          ttl: 48h
          x509_svid_ttl: 2h
          jwt_svid_ttl: 300
          jwt_key_type: rsa-2048
          agent_svid_ttl: 1h30m
          refresh_hint: 1m
          upstream: {secret: corp-ca}
        join_token_ttl: 1h
        limits: {max_batch: 100, max_message_bytes: 1048576, sign_rate_per_agent: 50.5,
                 sign_burst_per_agent: 200}
        kubernetes:
          namespace: identity
          cluster_name: prod-eu
          ca_secret: ca
          bundle_configmap: bundle
          lease_name: lease
          agent_service_accounts: [agent-a, agent-b]
          audience: aud
          kubeconfig: kube/config
        """,
    )
    config = load_config(path, namespace_file=no_pod)
    assert config.trust_domain == TrustDomain("prod.example.org")
    assert config.mode == "kubernetes"
    assert config.data_dir == tmp_path / "data"
    assert (config.log_level, config.log_format) == ("debug", "json")
    assert config.attestation_address == Address("::", 9442)
    assert str(config.attestation_address) == "[::]:9442"
    assert config.agent_address == Address("127.0.0.1", 9443)
    assert config.admin_socket == Path("/run/herald/admin.sock")
    assert config.health_address.port == 0
    assert config.server_dns_names == ("herald-server.herald.svc", "herald-server")
    ca = config.ca
    assert (ca.key_type, ca.jwt_key_type) == (KeyType.EC_P384, KeyType.RSA_2048)
    assert (ca.ttl, ca.x509_svid_ttl, ca.jwt_svid_ttl) == (
        timedelta(hours=48),
        timedelta(hours=2),
        timedelta(minutes=5),
    )
    assert (ca.agent_svid_ttl, ca.refresh_hint) == (timedelta(minutes=90), timedelta(minutes=1))
    assert ca.upstream == UpstreamConfig(secret="corp-ca")
    assert config.join_token_ttl == timedelta(hours=1)
    assert config.limits.sign_rate_per_agent == 50.5
    k8s = config.kubernetes
    assert (k8s.namespace, k8s.agent_namespace, k8s.cluster_name) == (
        "identity",
        "identity",
        "prod-eu",
    )
    assert k8s.agent_service_accounts == ("agent-a", "agent-b")
    assert k8s.kubeconfig == tmp_path / "kube" / "config"


def test_admin_socket_follows_data_dir(no_pod: Path) -> None:
    config = build({"data_dir": "/srv/herald"}, no_pod)
    assert config.admin_socket == Path("/srv/herald/admin.sock")


def test_upstream_dir_is_relative_to_the_file(tmp_path: Path, no_pod: Path) -> None:
    path = write(tmp_path, "trust_domain: example.org\nca: {upstream: {dir: upstream}}\n")
    config = load_config(path, namespace_file=no_pod)
    assert config.ca.upstream == UpstreamConfig(dir=tmp_path / "upstream")


def test_namespace_comes_from_the_pod(tmp_path: Path) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("spire-system\n")
    config = build({"mode": "kubernetes", "kubernetes": {"cluster_name": "c"}}, namespace_file)
    assert config.kubernetes.namespace == "spire-system"
    assert config.kubernetes.agent_namespace == "spire-system"


def test_overrides_win_over_the_file_and_skip_none(
    tmp_path: Path, no_pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "trust_domain: file.org\nlog_level: warn\ndata_dir: /from/file\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(
        path,
        {"trust_domain": "flag.org", "log_level": None, "data_dir": Path("rel"), "ca.ttl": "48h"},
        namespace_file=no_pod,
    )
    assert config.trust_domain == TrustDomain("flag.org")
    assert config.log_level == "warn"
    assert config.data_dir == tmp_path / "rel"
    assert config.ca.ttl == timedelta(hours=48)


def test_no_file_at_all(no_pod: Path) -> None:
    config = load_config(None, {"trust_domain": "example.org"}, namespace_file=no_pod)
    assert config.trust_domain == TrustDomain("example.org")


def test_empty_file_needs_a_trust_domain(tmp_path: Path, no_pod: Path) -> None:
    with pytest.raises(ConfigError, match=r"^trust_domain: required \(e.g. 'example.org'\)$"):
        load_config(write(tmp_path, ""), namespace_file=no_pod)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ca": {"tll": "1h"}}, "unknown field 'ca.tll'; did you mean 'ca.ttl'?"),
        ({"trust_domian": "x.org"}, "unknown field 'trust_domian'; did you mean 'trust_domain'?"),
        ({"limits": {"zzz": 1}}, "unknown field 'limits.zzz'"),
        (
            {"ca": {"upstream": {"dirr": "/x"}}},
            "unknown field 'ca.upstream.dirr'; did you mean 'ca.upstream.dir'?",
        ),
        (
            {"ca": {"ttl": "soon"}},
            "ca.ttl: cannot read duration 'soon'; write e.g. '30s', '5m', '1h30m'",
        ),
        ({"ca": {"ttl": True}}, "ca.ttl: expected a duration such as '1h', got a boolean (true)"),
        (
            {"ca": {"x509_svid_ttl": "0s"}},
            "ca.x509_svid_ttl: must be a whole number of seconds, at least 1s; got '0s'",
        ),
        ({"ca": {"jwt_svid_ttl": "1.5s"}}, "ca.jwt_svid_ttl: must be a whole number of seconds"),
        ({"join_token_ttl": "400d"}, "join_token_ttl: must be at most 366d"),
        (
            {"trust_domain": "Prod.Example.ORG"},
            "trust_domain: trust domain must be lowercase; found 'P' at position 0 "
            "(write 'prod.example.org')",
        ),
        # 20 digits overflowed timedelta: a traceback instead of the field's name.
        (
            {"join_token_ttl": 99999999999999999999},
            "join_token_ttl: duration '99999999999999999999' is longer than 3650d",
        ),
        ({"ca": {"ttl": "99999999999999999999s"}}, "ca.ttl: duration '99999999999999999999s' is"),
        ({"ca": {"x509_svid_ttl": "9" * 400 + "h"}}, "ca.x509_svid_ttl: duration '99999"),
        ({"ca": {"jwt_svid_ttl": "99999999999999999999"}}, "ca.jwt_svid_ttl: duration"),
        ({"ca": {"agent_svid_ttl": "99999999999999999999m"}}, "ca.agent_svid_ttl: duration"),
        ({"ca": {"refresh_hint": "99999999999999999999d"}}, "ca.refresh_hint: duration"),
        (
            {"limits": {"sign_rate_per_agent": 10**400}},
            "limits.sign_rate_per_agent: must be between 0.001 and 1e+07, got 100000000000… "
            "(401 digits)",
        ),
        ({"limits": {"sign_rate_per_agent": float("nan")}}, "limits.sign_rate_per_agent: must be"),
        ({"limits": {"max_batch": 10**400}}, "limits.max_batch: must be between 1 and 100000, got"),
        (
            {"ca": {"key_type": "ed25519"}},
            "ca.key_type: 'ed25519' is not one of 'ec-p256', 'ec-p384', 'rsa-2048', 'rsa-4096'",
        ),
        ({"ca": "big"}, "ca: expected a mapping of fields, got 'big'"),
        (
            {"ca": {"x509_svid_ttl": "12h"}},
            "ca.x509_svid_ttl: 12h must be less than half of ca.ttl (1d)",
        ),
        (
            {
                "ca": {
                    "ttl": "1h",
                    "x509_svid_ttl": "10m",
                    "jwt_svid_ttl": "5m",
                    "agent_svid_ttl": "30m",
                }
            },
            "ca.agent_svid_ttl: 30m must be less than half of ca.ttl (1h)",
        ),
        (
            {
                "ca": {
                    "ttl": "1h",
                    "x509_svid_ttl": "10m",
                    "agent_svid_ttl": "10m",
                    "refresh_hint": "2h",
                }
            },
            "ca.refresh_hint: must be less than ca.ttl (1h)",
        ),
        (
            {"ca": {"upstream": {"dir": "/a", "secret": "b"}}},
            "ca.upstream: give either 'dir' or 'secret', not both",
        ),
        ({"ca": {"upstream": {}}}, "ca.upstream: give 'dir' (a directory holding tls.crt"),
        (
            {"ca": {"upstream": {"secret": "corp-ca"}}},
            "ca.upstream.secret: only in kubernetes mode; in standalone mode use ca.upstream.dir",
        ),
        ({"trust_domain": "spiffe://example.org/path"}, "trust_domain: a trust domain cannot"),
        ({"trust_domain": "exa mple.org"}, "trust_domain: trust domain characters are limited"),
        ({"trust_domain": 42}, "trust_domain: expected a string, got a number (42)"),
        ({"mode": "cluster"}, "mode: 'cluster' is not one of 'standalone', 'kubernetes'"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of 'debug', 'info', 'warn'"),
        ({"log_format": "xml"}, "log_format: 'xml' is not one of 'text', 'json'"),
        (
            {"agent_address": "8443"},
            "agent_address: expected host:port, e.g. '0.0.0.0:8443', got '8443'",
        ),
        (
            {"agent_address": 8443},
            "agent_address: expected host:port, e.g. '0.0.0.0:8443', got a number (8443)",
        ),
        ({"attestation_address": "::1:80"}, "attestation_address: expected host:port"),
        ({"health_address": "localhost:http"}, "health_address: expected host:port"),
        ({"health_address": "localhost:70000"}, "health_address: port 70000 is out of range"),
        (
            {"agent_address": "0.0.0.0:8442"},
            "agent_address: same as attestation_address (0.0.0.0:8442); each listener needs its "
            "own port",
        ),
        ({"admin_socket": "/" + "s" * 120}, "admin_socket: /sss"),
        ({"data_dir": ""}, "data_dir: expected a path, got ''"),
        ({"server_dns_names": "herald"}, "server_dns_names: expected a list of strings"),
        (
            {"server_dns_names": ["ok.svc", "Bad_Name"]},
            "server_dns_names[1]: 'Bad_Name' is not a valid DNS name",
        ),
        ({"server_dns_names": ["a", "a"]}, "server_dns_names: lists a value twice"),
        ({"limits": {"max_batch": 0}}, "limits.max_batch: must be between 1 and 100000, got 0"),
        ({"limits": {"max_batch": "10"}}, "limits.max_batch: expected a whole number, got '10'"),
        (
            {"limits": {"max_message_bytes": 1000}},
            "limits.max_message_bytes: must be between 65536 and",
        ),
        (
            {"limits": {"sign_rate_per_agent": 0}},
            "limits.sign_rate_per_agent: must be between 0.001 and 1e+07, got 0",
        ),
        (
            {"limits": {"sign_burst_per_agent": 100}},
            "limits.sign_burst_per_agent: 100 is less than limits.max_batch (500); a full batch "
            "could never be signed",
        ),
        (
            {"kubernetes": {"cluster_name": "c"}},
            "kubernetes: set, but mode is standalone; set mode: kubernetes",
        ),
        (
            {"mode": "kubernetes"},
            "kubernetes.cluster_name: required in kubernetes mode; agent IDs carry it",
        ),
        (
            {"mode": "kubernetes", "kubernetes": {"cluster_name": "a/b"}},
            "kubernetes.cluster_name: cannot be part of an agent ID: a path segment cannot "
            "contain '/'",
        ),
        (
            {"mode": "kubernetes", "kubernetes": {"cluster_name": "c", "namespace": "Herald"}},
            "kubernetes.namespace: 'Herald' is not a valid Kubernetes namespace",
        ),
        (
            {"mode": "kubernetes", "kubernetes": {"cluster_name": "c", "ca_secret": "a_b"}},
            "kubernetes.ca_secret: 'a_b' is not a valid Kubernetes object name",
        ),
        (
            {
                "mode": "kubernetes",
                "kubernetes": {"cluster_name": "c", "agent_service_accounts": []},
            },
            "kubernetes.agent_service_accounts: needs at least one service account",
        ),
        (
            {
                "mode": "kubernetes",
                "kubernetes": {"cluster_name": "c", "agent_service_accounts": ["ok", 7]},
            },
            "kubernetes.agent_service_accounts[1]: expected a string, got a number (7)",
        ),
        (
            {"mode": "kubernetes", "kubernetes": {"cluster_name": "c", "audience": ""}},
            "kubernetes.audience: cannot be empty",
        ),
        (
            {"mode": "kubernetes", "ca": {"upstream": {"secret": "Corp"}}},
            "ca.upstream.secret: 'Corp' is not a valid Kubernetes object name",
        ),
    ],
)
def test_errors_name_the_field_and_why(raw: dict[str, Any], message: str, no_pod: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(raw, no_pod)
    assert str(caught.value).startswith(message), str(caught.value)


def test_unreadable_file(tmp_path: Path, no_pod: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read config file .*/absent.yaml: No such file"):
        load_config(tmp_path / "absent.yaml", namespace_file=no_pod)


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path, no_pod: Path) -> None:
    path = write(tmp_path, "trust_domain: example.org\nca:\n  ttl: [1h\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, namespace_file=no_pod)
    assert str(caught.value).startswith(f"{path}:4:1: not valid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path: Path, no_pod: Path) -> None:
    path = write(tmp_path, "- trust_domain\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of fields at the top, got a list"):
        load_config(path, namespace_file=no_pod)


def test_config_is_frozen(no_pod: Path) -> None:
    config = build({}, no_pod)
    with pytest.raises(AttributeError):
        config.mode = "kubernetes"  # type: ignore[misc]


def test_to_ca_settings_carries_every_ca_field(no_pod: Path) -> None:
    config = build(
        {
            "server_dns_names": ["herald-server.herald.svc"],
            "ca": {
                "key_type": "ec-p384",
                "ttl": "48h",
                "x509_svid_ttl": "2h",
                "jwt_svid_ttl": "10m",
                "jwt_key_type": "rsa-2048",
                "agent_svid_ttl": "3h",
                "refresh_hint": "1m",
            },
        },
        no_pod,
    )
    settings = config.to_ca_settings()
    assert settings == CASettings(
        trust_domain=TrustDomain("example.org"),
        key_type=KeyType.EC_P384,
        ca_ttl=timedelta(hours=48),
        x509_svid_ttl=timedelta(hours=2),
        jwt_svid_ttl=timedelta(minutes=10),
        jwt_key_type=KeyType.RSA_2048,
        agent_svid_ttl=timedelta(hours=3),
        refresh_hint=timedelta(minutes=1),
        server_dns_names=("herald-server.herald.svc",),
        upstream=None,
    )


def upstream_authority() -> UpstreamAuthority:
    key = generate_key()
    now = datetime.now(UTC)
    root = make_ca_certificate(
        key, TrustDomain("corp.example"), not_before=now, not_after=now + timedelta(days=30)
    )
    return UpstreamAuthority(cert_chain=(root,), key=key, roots=(root,))


def test_to_ca_settings_takes_the_loaded_upstream(no_pod: Path) -> None:
    config = build({"ca": {"upstream": {"dir": "/etc/herald/upstream"}}}, no_pod)
    upstream = upstream_authority()
    assert config.to_ca_settings(upstream).upstream is upstream
    with pytest.raises(ConfigError, match=r"^ca.upstream: configured but not loaded$"):
        config.to_ca_settings()
    with pytest.raises(ConfigError, match="an upstream CA was given but none is configured"):
        build({}, no_pod).to_ca_settings(upstream)


def test_a_key_written_twice_names_the_key_and_both_lines(tmp_path: Path, no_pod: Path) -> None:
    path = write(
        tmp_path, "trust_domain: example.org\nca:\n  ttl: 1h\n  key_type: ec-p256\n  ttl: 2h\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, namespace_file=no_pod)
    assert str(caught.value) == (
        f"{path}:5:3: not valid YAML: duplicate key 'ttl': set on line 3 and again on line 5"
    )


def test_a_top_level_key_written_twice_is_refused(tmp_path: Path, no_pod: Path) -> None:
    path = write(tmp_path, "trust_domain: example.org\ntrust_domain: other.org\n")
    with pytest.raises(ConfigError, match="duplicate key 'trust_domain': set on line 1 and again"):
        load_config(path, namespace_file=no_pod)


def test_yaml_merge_keys_may_still_override(tmp_path: Path, no_pod: Path) -> None:
    path = write(tmp_path, "trust_domain: example.org\nca:\n  <<: {ttl: 2h}\n  ttl: 4h\n")
    assert load_config(path, namespace_file=no_pod).ca.ttl == timedelta(hours=4)
