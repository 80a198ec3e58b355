"""Command-line face of herald-agent: parses arguments and hands off to the component."""

from __future__ import annotations

import click

from herald_agent.client_cli import api, healthcheck
from herald_core import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="herald-agent")
def main() -> None:
    """herald-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket,
    attests callers by kernel credentials and keeps their SVIDs rotated."""


main.add_command(api)
main.add_command(healthcheck)
