"""Command-line face of herald-server: parses arguments and hands off to the component."""

from __future__ import annotations

import click

from herald_core import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="herald-server")
def main() -> None:
    """herald-server: the only process that holds CA and JWT signing keys; attests agents,
    streams each agent its node's entries and signs SVIDs for them."""
