"""herald-agent's configuration: a YAML file plus command-line overrides, checked field by field.

Every problem is a ConfigError naming the field's path and why (``node_attestor.k8s_psat.cluster:
required ...``); unknown fields are errors with a suggestion. Relative paths in the file are
relative to the file's directory. The field reading itself is `herald_core.configfile`'s, shared
with herald-server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from herald_agent.attestors.kubelet import SERVICE_ACCOUNT_DIR, KubeletConfig
from herald_agent.endpoint import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_UID
from herald_agent.workload_names import DEFAULT_SOCKET_PATH
from herald_core.configfile import Address as Address
from herald_core.configfile import ConfigError as ConfigError
from herald_core.configfile import Section, check_socket_path, load_document
from herald_core.entry import EntryError, check_dns_name
from herald_core.logs import LOG_FORMATS, LOG_LEVELS, LogFormat
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

DEFAULT_DATA_DIR: Final = Path("/var/lib/herald/agent")
# Not the server's 8080: in standalone mode both may run on one host.
DEFAULT_HEALTH_ADDRESS: Final = Address("0.0.0.0", 8081)  # noqa: S104 - probes come from outside
DEFAULT_ATTESTATION_PORT: Final = 8442
DEFAULT_PSAT_TOKEN_PATH: Final = Path("/var/run/secrets/tokens/herald-agent")
DEFAULT_KUBELET_TOKEN_PATH: Final = Path(SERVICE_ACCOUNT_DIR) / "token"
DEFAULT_KUBELET_CA_PATH: Final = Path(SERVICE_ACCOUNT_DIR) / "ca.crt"
MAX_WORKLOAD_SIZE_LIMIT: Final = 1 << 40
_EXAMPLE_SERVER: Final = Address("herald-server", 8443)


@dataclass(frozen=True)
class JoinTokenConfig:
    """Attest once with a one-time token from ``herald-server token generate``."""

    token: str


@dataclass(frozen=True)
class K8sPsatConfig:
    """Attest with the projected service-account token the kubelet keeps at ``token_path``."""

    cluster: str
    token_path: Path = DEFAULT_PSAT_TOKEN_PATH


NodeAttestorConfig = JoinTokenConfig | K8sPsatConfig


@dataclass(frozen=True)
class _NodeAttestorFields:
    """The ``node_attestor`` mapping: exactly one of these."""

    join_token: JoinTokenConfig | None = None
    k8s_psat: K8sPsatConfig | None = None


@dataclass(frozen=True)
class UnixAttestorConfig:
    """``unix`` workload attestor: binaries larger than ``workload_size_limit`` are not hashed."""

    workload_size_limit: int = 1 << 30


@dataclass(frozen=True)
class K8sAttestorConfig:
    """``k8s`` workload attestor: how to reach and trust this node's kubelet (SPIRE's names).

    ``kubelet_read_only_port`` (plain HTTP, no token) is used instead of the secure port when
    set. ``node_name`` is the name the kubelet's serving certificate carries, checked in place
    of ``kubelet_host``.
    """

    kubelet_host: str = "127.0.0.1"
    kubelet_secure_port: int = 10250
    kubelet_read_only_port: int = 0
    kubelet_ca_path: Path | None = DEFAULT_KUBELET_CA_PATH
    skip_kubelet_verification: bool = False
    token_path: Path = DEFAULT_KUBELET_TOKEN_PATH
    node_name: str = ""

    def kubelet(self) -> KubeletConfig:
        read_only = self.kubelet_read_only_port != 0
        return KubeletConfig(
            host=self.kubelet_host,
            port=self.kubelet_read_only_port if read_only else self.kubelet_secure_port,
            read_only=read_only,
            token_path=str(self.token_path),
            ca_path=None if self.kubelet_ca_path is None else str(self.kubelet_ca_path),
            skip_verify=self.skip_kubelet_verification,
            tls_server_name=self.node_name or None,
        )


@dataclass(frozen=True)
class WorkloadAttestorsConfig:
    """The workload attestors to run; a caller's selectors are the union of theirs."""

    unix: UnixAttestorConfig | None = field(default_factory=UnixAttestorConfig)
    k8s: K8sAttestorConfig | None = None


@dataclass(frozen=True)
class WorkloadApiConfig:
    """Bounds on what callers of the Workload API socket may hold open."""

    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    idle_timeout: timedelta = timedelta(seconds=DEFAULT_IDLE_TIMEOUT)


@dataclass(frozen=True)
class AgentConfig:
    trust_domain: TrustDomain
    server_address: Address
    attestation_address: Address
    trust_bundle_path: Path
    node_attestor: NodeAttestorConfig
    server_name: str | None = None
    socket_path: Path = DEFAULT_SOCKET_PATH
    data_dir: Path = DEFAULT_DATA_DIR
    health_address: Address = DEFAULT_HEALTH_ADDRESS
    workload_attestors: WorkloadAttestorsConfig = field(default_factory=WorkloadAttestorsConfig)
    workload_api: WorkloadApiConfig = field(default_factory=WorkloadApiConfig)
    log_level: str = "info"
    log_format: LogFormat = "text"


def _read_trust_domain(top: Section) -> TrustDomain:
    if not top.has("trust_domain"):
        raise top.error("trust_domain", "required (e.g. 'example.org')")
    try:
        return TrustDomain.parse(top.string("trust_domain", "").strip())
    except SpiffeIdError as exc:
        raise top.error("trust_domain", str(exc)) from exc


def _required_address(top: Section, name: str, example: Address) -> Address:
    if not top.has(name):
        raise top.error(name, f"required: the server's host:port (e.g. '{example}')")
    address = top.address(name, example)
    if address.port == 0:
        raise top.error(name, "port 0 cannot be dialled; give the server's port")
    return address


def _read_attestation_address(top: Section, server: Address) -> Address:
    default = Address(server.host, DEFAULT_ATTESTATION_PORT)
    address = top.address("attestation_address", default)
    if address.port == 0:
        raise top.error("attestation_address", "port 0 cannot be dialled; give the server's port")
    if address == server:
        raise top.error(
            "attestation_address",
            f"same as server_address ({server}); the server attests nodes on its TLS port "
            "and serves attested agents on its mTLS port",
        )
    return address


def _read_server_name(top: Section) -> str | None:
    if not top.has("server_name"):
        return None
    name = top.string("server_name", "").strip()
    try:
        check_dns_name(name)
    except EntryError as exc:
        raise top.error("server_name", str(exc).removeprefix("dnsNames: ")) from exc
    return name


def _required_path(section: Section, name: str, why: str) -> Path:
    found = section.path(name)
    if found is None:
        raise section.error(name, f"required: {why}")
    return found


def _read_node_attestor(top: Section, trust_domain: TrustDomain) -> NodeAttestorConfig:
    section = top.section("node_attestor", _NodeAttestorFields)
    given = [name for name in ("join_token", "k8s_psat") if section.has(name)]
    if len(given) != 1:
        why = "give only one of" if given else "required: give one of"
        raise top.error(
            "node_attestor",
            f"{why} 'join_token' (with 'token') or 'k8s_psat' (with 'cluster')",
        )
    if given[0] == "join_token":
        join = section.section("join_token", JoinTokenConfig)
        if not join.has("token"):
            raise join.error("token", "required: a token from 'herald-server token generate'")
        return JoinTokenConfig(token=join.string("token", "").strip())
    psat = section.section("k8s_psat", K8sPsatConfig)
    if not psat.has("cluster"):
        raise psat.error("cluster", "required: the cluster name the server is configured with")
    cluster = psat.string("cluster", "").strip()
    try:
        SpiffeId.from_segments(trust_domain, "herald", "agent", "k8s_psat", cluster)
    except SpiffeIdError as exc:
        raise psat.error("cluster", f"cannot be part of an agent ID: {exc}") from exc
    return K8sPsatConfig(
        cluster=cluster, token_path=psat.path("token_path") or DEFAULT_PSAT_TOKEN_PATH
    )


def _read_unix(section: Section) -> UnixAttestorConfig:
    default = UnixAttestorConfig().workload_size_limit
    return UnixAttestorConfig(
        workload_size_limit=section.integer(
            "workload_size_limit", default, 0, MAX_WORKLOAD_SIZE_LIMIT
        )
    )


def _read_k8s(section: Section) -> K8sAttestorConfig:
    defaults = K8sAttestorConfig()
    skip = section.boolean("skip_kubelet_verification", defaults.skip_kubelet_verification)
    if skip and section.has("kubelet_ca_path"):
        raise section.error(
            "skip_kubelet_verification", "set together with kubelet_ca_path; give one of them"
        )
    ca_path = None if skip else (section.path("kubelet_ca_path") or defaults.kubelet_ca_path)
    config = K8sAttestorConfig(
        kubelet_host=section.string("kubelet_host", defaults.kubelet_host).strip(),
        kubelet_secure_port=section.integer(
            "kubelet_secure_port", defaults.kubelet_secure_port, 1, 65535
        ),
        kubelet_read_only_port=section.integer("kubelet_read_only_port", 0, 0, 65535),
        kubelet_ca_path=ca_path,
        skip_kubelet_verification=skip,
        token_path=section.path("token_path") or defaults.token_path,
        node_name=section.string("node_name", "").strip(),
    )
    if config.node_name:
        try:
            check_dns_name(config.node_name)
        except EntryError as exc:
            raise section.error("node_name", str(exc).removeprefix("dnsNames: ")) from exc
    return config


def _read_workload_attestors(top: Section) -> WorkloadAttestorsConfig:
    if not top.has("workload_attestors"):
        return WorkloadAttestorsConfig()
    section = top.section("workload_attestors", WorkloadAttestorsConfig)
    names = [name for name in ("unix", "k8s") if section.present(name)]
    if not names:
        raise top.error("workload_attestors", "needs at least one of 'unix' and 'k8s'")
    return WorkloadAttestorsConfig(
        unix=_read_unix(section.section("unix", UnixAttestorConfig)) if "unix" in names else None,
        k8s=_read_k8s(section.section("k8s", K8sAttestorConfig)) if "k8s" in names else None,
    )


def _read_workload_api(top: Section) -> WorkloadApiConfig:
    section = top.section("workload_api", WorkloadApiConfig)
    defaults = WorkloadApiConfig()
    return WorkloadApiConfig(
        max_connections_per_uid=section.integer(
            "max_connections_per_uid", defaults.max_connections_per_uid, 1, 1_000_000
        ),
        idle_timeout=section.duration("idle_timeout", defaults.idle_timeout),
    )


def config_from_mapping(raw: Mapping[str, Any], *, base_dir: Path) -> AgentConfig:
    """Check and build an AgentConfig from a parsed document; relative paths join ``base_dir``."""
    top = Section(raw, "", base_dir, AgentConfig)
    trust_domain = _read_trust_domain(top)
    server_address = _required_address(top, "server_address", _EXAMPLE_SERVER)
    config = AgentConfig(
        trust_domain=trust_domain,
        server_address=server_address,
        attestation_address=_read_attestation_address(top, server_address),
        trust_bundle_path=_required_path(
            top, "trust_bundle_path", "a PEM file of the server's CA certificates to trust at first"
        ),
        node_attestor=_read_node_attestor(top, trust_domain),
        server_name=_read_server_name(top),
        socket_path=top.path("socket_path") or DEFAULT_SOCKET_PATH,
        data_dir=top.path("data_dir") or DEFAULT_DATA_DIR,
        health_address=top.address("health_address", DEFAULT_HEALTH_ADDRESS),
        workload_attestors=_read_workload_attestors(top),
        workload_api=_read_workload_api(top),
        log_level=top.choice("log_level", tuple(LOG_LEVELS), "info"),
        log_format=top.choice("log_format", LOG_FORMATS, "text"),
    )
    check_socket_path("socket_path", config.socket_path)
    return config


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> AgentConfig:
    """Read ``path`` (or start empty), apply ``overrides`` keyed by field path, and check it.

    Override values are used as given (a relative path in one is relative to the current
    directory); None values are skipped, so unset command-line flags can be passed straight in.
    """
    doc, base_dir = load_document(path, overrides)
    return config_from_mapping(doc, base_dir=base_dir)
