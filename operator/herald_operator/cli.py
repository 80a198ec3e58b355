"""Command-line face of herald-operator: parses arguments and hands off to the component.

``herald-operator run`` starts the registrar under Kopf. Every flag can also come from the
environment (``HERALD_OPERATOR_TRUST_DOMAIN``, …) or from a YAML file given with ``--config``
whose keys are the flags' names with underscores (``trust_domain: example.org``); a flag on the
command line wins over the environment, which wins over the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Final

import click
import yaml

from herald_core import __version__
from herald_core.configfile import load_yaml
from herald_core.health import HealthServer, HealthServerError
from herald_core.logs import LogConfigError, parse_level, setup_logging
from herald_core.spiffeid import SpiffeIdError, TrustDomain

DEFAULT_IGNORED: Final = ("kube-system", "kube-public")
NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MAX_RESYNC_SECONDS: Final = 366 * 86400.0


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="herald-operator")
def main() -> None:
    """herald-operator: the Kopf operator that turns identity custom resources and pods into
    registration entries."""


def _load_config(ctx: click.Context, _: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        data = load_yaml(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: expected a mapping of flag names to values")
    # Keys are the flags' names (ignore_namespace, not the parameter's ignored_namespaces).
    known = {
        opt.lstrip("-").replace("-", "_"): param.name
        for param in ctx.command.params
        if isinstance(param, click.Option) and param.name
        for opt in param.opts
        if opt.startswith("--")
    }
    keys = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(k for k in keys if k not in known or k == "config")
    if unknown:
        raise click.BadParameter(f"{value}: unknown keys: {', '.join(unknown)}")
    ctx.default_map = {known[k]: v for k, v in keys.items()}
    return value


def _own_namespace() -> str:
    env = os.environ.get("POD_NAMESPACE", "")
    if env:
        return env
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return ""


def _resync_seconds(value: float) -> float:
    # Compared this way round so that nan is refused too; inf would never resync.
    if not 0 <= value <= MAX_RESYNC_SECONDS:
        raise click.BadParameter(
            f"must be between 0 and {MAX_RESYNC_SECONDS:g} (366 days), got {value}",
            param_hint="--resync-seconds",
        )
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)  # noqa: S104 - probes come from the kubelet
    except ValueError:
        raise click.BadParameter(
            f"expected host:port, got {text!r}", param_hint="--health-address"
        ) from None


@main.command(context_settings={"auto_envvar_prefix": "HERALD_OPERATOR"})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="YAML file of flag values (keys as flag names with underscores).",
)
@click.option("--trust-domain", required=True, help="The trust domain, e.g. example.org.")
@click.option("--cluster-name", required=True, help="This cluster's name (.ClusterName).")
@click.option("--cluster-domain", default="cluster.local", show_default=True)
@click.option(
    "--ignore-namespace",
    "ignored_namespaces",
    multiple=True,
    default=DEFAULT_IGNORED,
    show_default=True,
    help="Namespaces whose pods get no entries (repeat; the operator's own is always added).",
)
@click.option("--class-name", default="", help="Act only on identities of this className.")
@click.option(
    "--watch-classless/--no-watch-classless",
    default=False,
    help="With --class-name, also act on identities without a className.",
)
@click.option(
    "--resync-seconds",
    type=float,
    default=300.0,
    show_default=True,
    callback=lambda _ctx, _param, value: _resync_seconds(value),
)
@click.option("--health-address", default="0.0.0.0:8080", show_default=True)
@click.option(
    "--peering-name",
    default="herald-operator",
    show_default=True,
    help="Kopf ClusterKopfPeering object through which replicas elect the one that acts.",
)
@click.option("--priority", type=int, default=0, help="Kopf peering priority of this replica.")
@click.option(
    "--standalone", is_flag=True, help="No peering: this is the only replica (development)."
)
@click.option("--log-level", default="info", show_default=True)
def run(
    trust_domain: str,
    cluster_name: str,
    cluster_domain: str,
    ignored_namespaces: tuple[str, ...],
    class_name: str,
    watch_classless: bool,
    resync_seconds: float,
    health_address: str,
    peering_name: str,
    priority: int,
    standalone: bool,
    log_level: str,
) -> None:
    """Run the registrar: pods and identity objects become WorkloadEntry objects."""
    from herald_operator.registrar import RegistrarConfig

    try:
        TrustDomain.parse(trust_domain)
    except SpiffeIdError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-domain") from exc
    host, port = _host_port(health_address)
    own = _own_namespace()
    config = RegistrarConfig(
        trust_domain=trust_domain,
        cluster_name=cluster_name,
        cluster_domain=cluster_domain,
        ignored_namespaces=frozenset(ignored_namespaces) | ({own} if own else set()),
        class_name=class_name,
        watch_classless=watch_classless,
        resync_seconds=resync_seconds,
        tune_gc=True,
    )
    try:
        level = parse_level(log_level)
    except LogConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-level") from exc
    setup_logging(log_level)
    if level > logging.DEBUG:
        # Kopf logs "Handler ... succeeded" at info for every event: with 10,000 pods that is
        # most of the log and a measurable part of the CPU (docs/operator.md). Debug keeps them.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        asyncio.run(
            _serve(
                config,
                host,
                port,
                peering_name=peering_name,
                priority=priority,
                standalone=standalone,
            )
        )
    except HealthServerError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(
    config: Any, host: str, port: int, *, peering_name: str, priority: int, standalone: bool
) -> None:
    import kopf
    import kubernetes

    from herald_operator.kubeapi import KubeApi
    from herald_operator.metrics import RegistrarMetrics
    from herald_operator.registrar import NoDiffBase, Registrar, build_registry

    loader: Any = kubernetes.config  # untyped in the client's stubs
    try:
        loader.load_incluster_config()
    except loader.ConfigException:
        await asyncio.to_thread(loader.load_kube_config)
    metrics = RegistrarMetrics()
    registrar = Registrar(config, KubeApi(kubernetes.client.ApiClient()), metrics)
    health = HealthServer(host, port, registrar.readiness, metrics.registry)
    await health.start()
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # herald posts its own Events, about identities only
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.peering.name = peering_name
    settings.peering.priority = priority
    settings.peering.clusterwide = True
    settings.peering.mandatory = not standalone
    settings.peering.standalone = standalone
    registry = build_registry(registrar)

    # Kopf waits up to 5 s at exit for tasks started while it ran, such as the handler of a
    # scraper's keep-alive connection; closing the health server in its cleanup phase ends them.
    @kopf.on.cleanup(registry=registry)
    async def stop_health(**_: Any) -> None:
        await health.stop()

    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=True,
            standalone=standalone,
            # Naming a peering makes Kopf require it, even standalone.
            priority=None if standalone else priority,
            peering_name=None if standalone else peering_name,
        )
    finally:
        await health.stop()
