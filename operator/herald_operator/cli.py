"""Command-line face of herald-operator: parses arguments and hands off to the component."""

from __future__ import annotations

import click

from herald_core import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="herald-operator")
def main() -> None:
    """herald-operator: the Kopf operator that turns identity custom resources and pods into
    registration entries."""
