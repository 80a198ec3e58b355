"""herald-server's configuration: a YAML file plus command-line overrides, checked field by field.

Every problem is a ConfigError naming the field's path and why (``ca.ttl: cannot read duration
'soon'; ...``); unknown fields are errors with a suggestion, so a typo never silently leaves a
default in place. Relative paths in the file are relative to the file's directory. The generic
field reading is `herald_core.configfile`'s, shared with the agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

# Address and ConfigError are part of this module's interface, re-exported.
from herald_core.configfile import Address as Address
from herald_core.configfile import ConfigError as ConfigError
from herald_core.configfile import (
    Section,
    check_socket_path,
    load_document,
)
from herald_core.durations import format_duration
from herald_core.entry import EntryError, check_dns_name
from herald_core.keys import KeyType
from herald_core.logs import LOG_FORMATS, LOG_LEVELS, LogFormat
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_server.admin_client import ADMIN_SOCKET_NAME, DEFAULT_ADMIN_SOCKET, DEFAULT_DATA_DIR
from herald_server.ca import CASettings
from herald_server.upstream import UpstreamAuthority

Mode = Literal["standalone", "kubernetes"]
MODES: Final[tuple[Mode, ...]] = ("standalone", "kubernetes")

NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE: Final = "herald"
MAX_MESSAGE_BYTES: Final = 2**31 - 1
DEFAULT_ATTESTATION_ADDRESS: Final = Address("0.0.0.0", 8442)  # noqa: S104 - a server listens
DEFAULT_AGENT_ADDRESS: Final = Address("0.0.0.0", 8443)  # noqa: S104
DEFAULT_HEALTH_ADDRESS: Final = Address("0.0.0.0", 8080)  # noqa: S104

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\Z")


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the upstream CA that signs herald's intermediate lives: exactly one of the two."""

    dir: Path | None = None
    secret: str | None = None


@dataclass(frozen=True)
class CAConfig:
    key_type: KeyType = KeyType.EC_P256
    ttl: timedelta = timedelta(hours=24)
    x509_svid_ttl: timedelta = timedelta(hours=1)
    jwt_svid_ttl: timedelta = timedelta(minutes=5)
    jwt_key_type: KeyType = KeyType.EC_P256
    agent_svid_ttl: timedelta = timedelta(hours=1)
    refresh_hint: timedelta = timedelta(minutes=5)
    upstream: UpstreamConfig | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_batch: int = 500
    max_message_bytes: int = 4 * 1024 * 1024
    sign_rate_per_agent: float = 200.0
    sign_burst_per_agent: int = 1000
    signing_workers: int = 0


@dataclass(frozen=True)
class KubernetesConfig:
    """Kubernetes-mode settings; present with defaults in standalone mode, where none is used."""

    namespace: str = DEFAULT_NAMESPACE
    cluster_name: str = ""
    ca_secret: str = "herald-ca"  # noqa: S105 - the Secret's name, not a secret
    bundle_configmap: str = "herald-bundle"
    lease_name: str = "herald-server-leader"
    agent_namespace: str = DEFAULT_NAMESPACE
    agent_service_accounts: tuple[str, ...] = ("herald-agent",)
    audience: str = "herald-server"
    kubeconfig: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    trust_domain: TrustDomain
    mode: Mode = "standalone"
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "info"
    log_format: LogFormat = "text"
    attestation_address: Address = DEFAULT_ATTESTATION_ADDRESS
    agent_address: Address = DEFAULT_AGENT_ADDRESS
    admin_socket: Path = DEFAULT_ADMIN_SOCKET
    health_address: Address = DEFAULT_HEALTH_ADDRESS
    server_dns_names: tuple[str, ...] = ()
    ca: CAConfig = field(default_factory=CAConfig)
    join_token_ttl: timedelta = timedelta(minutes=10)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def to_ca_settings(self, upstream: UpstreamAuthority | None = None) -> CASettings:
        """The CA manager's settings; ``upstream`` is the CA that ``ca.upstream`` names, loaded.

        Loading it is the caller's job (``load_upstream_files(ca.upstream.dir)`` or
        ``upstream_from_secret_data``), because a Secret is read through the Kubernetes API.
        """
        if (self.ca.upstream is None) != (upstream is None):
            raise ConfigError(
                "ca.upstream: configured but not loaded"
                if upstream is None
                else "ca.upstream: an upstream CA was given but none is configured"
            )
        return CASettings(
            trust_domain=self.trust_domain,
            key_type=self.ca.key_type,
            ca_ttl=self.ca.ttl,
            x509_svid_ttl=self.ca.x509_svid_ttl,
            jwt_svid_ttl=self.ca.jwt_svid_ttl,
            jwt_key_type=self.ca.jwt_key_type,
            agent_svid_ttl=self.ca.agent_svid_ttl,
            refresh_hint=self.ca.refresh_hint,
            server_dns_names=self.server_dns_names,
            upstream=upstream,
        )


def _check_name(where: str, value: str, pattern: re.Pattern[str], kind: str) -> str:
    if not pattern.match(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid Kubernetes {kind} (lowercase letters, digits "
            "and '-', starting and ending with a letter or digit)"
        )
    return value


def _read_namespace(namespace_file: Path) -> str:
    """The pod's own namespace when running in one, else herald's default."""
    try:
        found = namespace_file.read_text().strip()
    except OSError:
        return DEFAULT_NAMESPACE
    return found or DEFAULT_NAMESPACE


def _read_ca(section: Section, mode: Mode) -> CAConfig:
    key_types = tuple(KeyType)
    defaults = CAConfig()
    ca = CAConfig(
        key_type=section.choice("key_type", key_types, defaults.key_type),
        ttl=section.duration("ttl", defaults.ttl),
        x509_svid_ttl=section.duration("x509_svid_ttl", defaults.x509_svid_ttl),
        jwt_svid_ttl=section.duration("jwt_svid_ttl", defaults.jwt_svid_ttl),
        jwt_key_type=section.choice("jwt_key_type", key_types, defaults.jwt_key_type),
        agent_svid_ttl=section.duration("agent_svid_ttl", defaults.agent_svid_ttl),
        refresh_hint=section.duration("refresh_hint", defaults.refresh_hint),
        upstream=_read_upstream(section, mode),
    )
    for name in ("x509_svid_ttl", "jwt_svid_ttl", "agent_svid_ttl"):
        ttl: timedelta = getattr(ca, name)
        if ttl * 2 >= ca.ttl:
            raise section.error(
                name,
                f"{format_duration(ttl.total_seconds())} must be less than half of "
                f"{section.where('ttl')} ({format_duration(ca.ttl.total_seconds())}), so that "
                "every SVID a CA signs expires well before the CA; lower it or raise ca.ttl",
            )
    if ca.refresh_hint >= ca.ttl:
        raise section.error(
            "refresh_hint",
            f"must be less than {section.where('ttl')} "
            f"({format_duration(ca.ttl.total_seconds())}), or agents would miss a CA rotation",
        )
    return ca


def _read_upstream(ca: Section, mode: Mode) -> UpstreamConfig | None:
    section = ca.section("upstream", UpstreamConfig)
    if not ca.has("upstream"):
        return None
    upstream = UpstreamConfig(
        dir=section.path("dir"),
        secret=section.string("secret", "") or None,
    )
    if upstream.dir is not None and upstream.secret is not None:
        raise ca.error("upstream", "give either 'dir' or 'secret', not both")
    if upstream.dir is None and upstream.secret is None:
        raise ca.error(
            "upstream",
            "give 'dir' (a directory holding tls.crt, tls.key and ca.crt) or 'secret' "
            "(the name of a Kubernetes Secret with those keys)",
        )
    if upstream.secret is not None:
        if mode != "kubernetes":
            raise section.error(
                "secret", "only in kubernetes mode; in standalone mode use ca.upstream.dir"
            )
        _check_name(section.where("secret"), upstream.secret, _DNS_SUBDOMAIN, "object name")
    return upstream


def _read_limits(section: Section) -> LimitsConfig:
    defaults = LimitsConfig()
    limits = LimitsConfig(
        max_batch=section.integer("max_batch", defaults.max_batch, 1, 100_000),
        max_message_bytes=section.integer(
            "max_message_bytes", defaults.max_message_bytes, 64 * 1024, MAX_MESSAGE_BYTES
        ),
        sign_rate_per_agent=section.number(
            "sign_rate_per_agent", defaults.sign_rate_per_agent, 0.001, 10_000_000
        ),
        sign_burst_per_agent=section.integer(
            "sign_burst_per_agent", defaults.sign_burst_per_agent, 1, 10_000_000
        ),
        signing_workers=section.integer("signing_workers", defaults.signing_workers, 0, 64),
    )
    if limits.sign_burst_per_agent < limits.max_batch:
        raise section.error(
            "sign_burst_per_agent",
            f"{limits.sign_burst_per_agent} is less than {section.where('max_batch')} "
            f"({limits.max_batch}); a full batch could never be signed",
        )
    return limits


def _read_kubernetes(
    section: Section, mode: Mode, trust_domain: TrustDomain, namespace_file: Path
) -> KubernetesConfig:
    defaults = KubernetesConfig()
    namespace = _check_name(
        section.where("namespace"),
        section.string("namespace", _read_namespace(namespace_file)),
        _DNS_LABEL,
        "namespace",
    )
    config = KubernetesConfig(
        namespace=namespace,
        cluster_name=section.string("cluster_name", ""),
        ca_secret=section.string("ca_secret", defaults.ca_secret),
        bundle_configmap=section.string("bundle_configmap", defaults.bundle_configmap),
        lease_name=section.string("lease_name", defaults.lease_name),
        agent_namespace=section.string("agent_namespace", namespace),
        agent_service_accounts=section.strings(
            "agent_service_accounts", defaults.agent_service_accounts
        ),
        audience=section.string("audience", defaults.audience),
        kubeconfig=section.path("kubeconfig"),
    )
    for name in ("ca_secret", "bundle_configmap", "lease_name"):
        _check_name(section.where(name), getattr(config, name), _DNS_SUBDOMAIN, "object name")
    _check_name(section.where("agent_namespace"), config.agent_namespace, _DNS_LABEL, "namespace")
    if not config.agent_service_accounts:
        raise section.error("agent_service_accounts", "needs at least one service account")
    for index, account in enumerate(config.agent_service_accounts):
        where = section.where(f"agent_service_accounts[{index}]")
        _check_name(where, account, _DNS_SUBDOMAIN, "service account name")
    if mode == "kubernetes":
        _check_cluster_name(section, config.cluster_name, trust_domain)
    return config


def _check_cluster_name(section: Section, cluster_name: str, trust_domain: TrustDomain) -> None:
    if not cluster_name:
        raise section.error(
            "cluster_name",
            "required in kubernetes mode; agent IDs carry it "
            "(spiffe://<trust domain>/herald/agent/k8s_psat/<cluster_name>/<node uid>)",
        )
    try:
        SpiffeId.from_segments(trust_domain, "herald", "agent", "k8s_psat", cluster_name)
    except SpiffeIdError as exc:
        raise section.error("cluster_name", f"cannot be part of an agent ID: {exc}") from exc


def _check_listeners(config: ServerConfig) -> None:
    seen: dict[Address, str] = {}
    for name in ("attestation_address", "agent_address", "health_address"):
        address: Address = getattr(config, name)
        if address.port != 0 and address in seen:
            raise ConfigError(
                f"{name}: same as {seen[address]} ({address}); each listener needs its own port"
            )
        seen[address] = name
    check_socket_path("admin_socket", config.admin_socket)


def _read_dns_names(section: Section) -> tuple[str, ...]:
    names = section.strings("server_dns_names", ())
    for index, name in enumerate(names):
        try:
            check_dns_name(name)
        except EntryError as exc:
            why = str(exc).removeprefix("dnsNames: ")
            raise section.error(f"server_dns_names[{index}]", why) from exc
    return names


def _read_trust_domain(section: Section) -> TrustDomain:
    if not section.has("trust_domain"):
        raise section.error("trust_domain", "required (e.g. 'example.org')")
    text = section.string("trust_domain", "")
    try:
        return TrustDomain.parse(text.strip())
    except SpiffeIdError as exc:
        raise section.error("trust_domain", str(exc)) from exc


def config_from_mapping(
    raw: Mapping[str, Any], *, base_dir: Path, namespace_file: Path = NAMESPACE_FILE
) -> ServerConfig:
    """Check and build a ServerConfig from a parsed document; relative paths join ``base_dir``."""
    top = Section(raw, "", base_dir, ServerConfig)
    trust_domain = _read_trust_domain(top)
    mode = top.choice("mode", MODES, "standalone")
    log_level = top.choice("log_level", tuple(LOG_LEVELS), "info")
    log_format = top.choice("log_format", LOG_FORMATS, "text")
    data_dir = top.path("data_dir") or DEFAULT_DATA_DIR
    defaults = ServerConfig(trust_domain)
    addresses = {
        name: top.address(name, getattr(defaults, name))
        for name in ("attestation_address", "agent_address", "health_address")
    }
    admin_socket = top.path("admin_socket") or data_dir / ADMIN_SOCKET_NAME
    server_dns_names = _read_dns_names(top)
    ca = _read_ca(top.section("ca", CAConfig), mode)
    join_token_ttl = top.duration("join_token_ttl", defaults.join_token_ttl)
    limits = _read_limits(top.section("limits", LimitsConfig))
    if mode == "standalone" and top.has("kubernetes"):
        raise top.error("kubernetes", "set, but mode is standalone; set mode: kubernetes")
    kubernetes = _read_kubernetes(
        top.section("kubernetes", KubernetesConfig), mode, trust_domain, namespace_file
    )
    config = ServerConfig(
        trust_domain=trust_domain,
        mode=mode,
        data_dir=data_dir,
        log_level=log_level,
        log_format=log_format,
        admin_socket=admin_socket,
        server_dns_names=server_dns_names,
        ca=ca,
        join_token_ttl=join_token_ttl,
        limits=limits,
        kubernetes=kubernetes,
        **addresses,
    )
    _check_listeners(config)
    return config


def load_config(
    path: Path | None,
    overrides: Mapping[str, object] | None = None,
    *,
    namespace_file: Path = NAMESPACE_FILE,
) -> ServerConfig:
    """Read ``path`` (or start empty), apply ``overrides`` keyed by field path, and check it.

    Override values are used as given (a relative path in one is relative to the current
    directory); None values are skipped, so unset command-line flags can be passed straight in.
    """
    doc, base_dir = load_document(path, overrides)
    return config_from_mapping(doc, base_dir=base_dir, namespace_file=namespace_file)
