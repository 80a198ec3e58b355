"""Command-line face of herald-agent: parses arguments and hands off to the component."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from herald_agent.client_cli import api, healthcheck
from herald_core import __version__
from herald_core.logs import setup_logging
from herald_core.spirecli import SpireCommand, flag, run_flags


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="herald-agent")
def main() -> None:
    """herald-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket,
    attests callers by kernel credentials and keeps their SVIDs rotated."""


main.add_command(api)
main.add_command(healthcheck)


class _ConfigProblem(click.ClickException):
    """A configuration the agent will not run with: exit code 2, like a bad flag."""

    exit_code = 2


@main.command(cls=SpireCommand)
@run_flags("docs/agent.md")
@flag(
    "serverAddress",
    "server_address",
    help="Server's agent API host:port; overrides server_address.",
)
@flag(
    "trustBundle",
    "trust_bundle_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM file of the server's CA; overrides trust_bundle_path.",
)
@flag("joinToken", "join_token", help="Join token; overrides node_attestor.join_token.token.")
@flag(
    "socketPath",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Workload API socket; overrides socket_path.",
)
@flag(
    "kubeletHost",
    "kubelet_host",
    help="The kubelet's address (k8s attestor); overrides workload_attestors.k8s.kubelet_host.",
)
@flag(
    "nodeName",
    "node_name",
    help="Name in the kubelet's certificate; overrides workload_attestors.k8s.node_name.",
)
def run(
    config_path: Path | None,
    join_token: str | None,
    kubelet_host: str | None,
    node_name: str | None,
    **overrides: object,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C.

    ``-kubeletHost`` and ``-nodeName`` differ per node, so a DaemonSet passes them from the
    downward API (``$(HOST_IP)``, ``$(NODE_NAME)``) while every node shares one config file.
    """
    # Imported here so that the client commands start without loading the agent's engine.
    from herald_agent.agent import AgentError
    from herald_agent.agent import run as run_agent
    from herald_agent.config import ConfigError, load_config
    from herald_agent.endpoint import EndpointError
    from herald_core.health import HealthServerError

    overrides["node_attestor.join_token.token"] = join_token
    overrides["workload_attestors.k8s.kubelet_host"] = kubelet_host
    overrides["workload_attestors.k8s.node_name"] = node_name
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        raise _ConfigProblem(str(exc)) from None
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(run_agent(config))
    except ConfigError as exc:
        raise _ConfigProblem(str(exc)) from None
    except (AgentError, EndpointError, HealthServerError) as exc:
        # Startup failures the operator can fix; anything else is a bug and keeps its traceback.
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
