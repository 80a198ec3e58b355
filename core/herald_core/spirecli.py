"""The pieces herald's spire-shaped command lines share: SPIRE flag spelling and its errors,
checks of a local gRPC socket before dialling it, one bounded connection attempt, and the
output conventions (JSON documents, Go-style UTC timestamps).

Flags are spelt as SPIRE spells them (``-spiffeID``), with one dash or two, as Go's flag
package accepts; an unknown flag is reported as typed, with the nearest real one.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
from click.decorators import FC


class SpireCommand(click.Command):
    """A command whose unknown-flag error names the flag as typed and the nearest real one.

    click reads an unknown ``-spiffeId`` as the short flags ``-s -p …`` and would complain
    about ``-s``; SPIRE users deserve ``No such option: -spiffeId (Did you mean -spiffeID?)``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, list(args))
        except click.NoSuchOption:
            unknown = self._first_unknown_flag(ctx, args)
            if unknown is None:
                raise
            raise click.NoSuchOption(
                unknown, possibilities=self._suggest(ctx, unknown), ctx=ctx
            ) from None

    def _flags(self, ctx: click.Context) -> dict[str, bool]:
        """Every flag spelling, mapped to whether it takes a value."""
        flags: dict[str, bool] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    flags[opt] = not param.is_flag
        return flags

    def _first_unknown_flag(self, ctx: click.Context, args: Sequence[str]) -> str | None:
        flags = self._flags(ctx)
        skip_value = False
        for arg in args:
            if skip_value:
                skip_value = False
                continue
            if arg == "--":
                return None
            name, has_value, _ = arg.partition("=")
            if name in flags:
                skip_value = flags[name] and not has_value
            elif arg.startswith("-") and len(arg) > 1:
                return name
        return None

    def _suggest(self, ctx: click.Context, unknown: str) -> list[str]:
        by_lower: dict[str, str] = {}
        for spelling in self._flags(ctx):
            # The first spelling of each flag is the single-dash one SPIRE documents.
            by_lower.setdefault(spelling.lower().lstrip("-"), spelling)
        close = difflib.get_close_matches(unknown.lower().lstrip("-"), by_lower, n=1)
        return [by_lower[name] for name in close]


class SpireGroup(click.Group):
    command_class = SpireCommand
    group_class = type  # subgroups are SpireGroups too


def flag(name: str, *rest: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A click option spelt ``-name`` and ``--name``, stored under ``rest[0]`` when given."""
    return click.option(f"-{name}", f"--{name}", *rest, **kwargs)


def run_flags(fields_doc: str) -> Callable[[FC], FC]:
    """The flags every ``run`` command takes: the config file and the overrides all share.

    ``fields_doc`` names the page that lists the configuration's fields.
    """
    flags = (
        flag(
            "config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"YAML configuration file ({fields_doc} lists every field).",
        ),
        flag("trustDomain", "trust_domain", help="Trust domain; overrides trust_domain."),
        flag(
            "dataDir",
            "data_dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="Data directory; overrides data_dir.",
        ),
        flag("logLevel", "log_level", help="debug, info, warn or error; overrides log_level."),
        flag("logFormat", "log_format", help="text or json; overrides log_format."),
    )

    def apply(command: FC) -> FC:
        for add in reversed(flags):
            command = add(command)
        return command

    return apply


def output_flag() -> Callable[[FC], FC]:
    return flag(
        "output",
        type=click.Choice(["pretty", "json"]),
        default="pretty",
        show_default=True,
        help="Output format.",
    )


def print_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2))


def timestamp(when: datetime | float) -> str:
    """A UTC time as Go prints one, the way SPIRE's commands show it."""
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def check_socket(path: Path, *, what: str, missing_hint: str, denied_hint: str) -> None:
    """Fail with a message naming ``path`` before grpc would fail with a generic one.

    ``what`` names the socket ("admin socket"); the hints say what to do when it is missing
    or not accessible.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise click.ClickException(f"no {what} at {path}: {missing_hint}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot use {what} {path}: {exc}") from None
    if not stat.S_ISSOCK(mode):
        raise click.ClickException(f"{path} is not a socket")
    if not os.access(path, os.R_OK | os.W_OK):
        raise click.ClickException(f"permission denied on {path}: {denied_hint}")


async def connect_once(channel: grpc.aio.Channel, refused: str) -> None:
    """Return once ``channel`` is connected; fail with ``refused`` at the first failed attempt.

    grpc would otherwise retry with backoff until the caller's deadline, hiding why.
    """
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise click.ClickException(refused)
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
