"""The ``winstar`` command line (a click group); plugins add commands through
``winstar_add_commands``."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click
import sqlalchemy as sa

from winstar_core.cli.api import DB_HELP, CliState
from winstar_core.errors import WinstarError
from winstar_core.plugin.manager import Platform, make_plugin_manager


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"


class UsageMistake(click.ClickException):
    """A command line click could not parse, said in one line (click's own form adds the usage
    text around it); exits 2 like any usage error."""

    exit_code = 2


def _one_line_usage(exc: click.UsageError) -> NoReturn:
    """Raise the one-line form of ``exc``; a bare group (whose help is the answer) keeps click's."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    where = exc.ctx.command_path if exc.ctx is not None else "winstar"
    raise UsageMistake(f"{_first_line(exc.format_message())} (see '{where} --help')") from None


class WinstarGroup(click.Group):
    """Turns a user's mistake into one line on stderr and a non-zero exit, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:  # bytes that are not UTF-8 reach Python as lone surrogates
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                raise click.ClickException(f"argument {arg!r} is not valid UTF-8 text") from None
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _one_line_usage(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _one_line_usage(exc)
        except WinstarError as exc:
            raise click.ClickException(_first_line(str(exc))) from None
        except sa.exc.IntegrityError as exc:
            raise click.ClickException(f"conflict: {_first_line(str(exc.orig))}") from None
        except sa.exc.OperationalError as exc:
            raise click.ClickException(f"database error: {_first_line(str(exc.orig))}") from None
        except sa.exc.ArgumentError as exc:
            raise click.ClickException(f"bad --db URL: {_first_line(str(exc))}") from None


@click.group(cls=WinstarGroup)
@click.option("--db", "db_url", envvar="WINSTAR_DB", metavar="URL", help=DB_HELP)
@click.version_option(package_name="winstar-core")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None) -> None:
    """Winstar Edge: keep edge nodes and a multi-tenant cloud in sync."""
    ctx.obj = CliState(db_url=db_url, platform=ctx.obj if isinstance(ctx.obj, Platform) else _platform())


_PLATFORM: Platform | None = None


def _platform() -> Platform:
    global _PLATFORM
    if _PLATFORM is None:
        _PLATFORM = make_plugin_manager()
        for name, error in _PLATFORM.failures:
            click.echo(f"warning: plugin {name!r} failed to load and is skipped: {error}", err=True)
    return _PLATFORM


def core_commands() -> list[click.Command]:
    """The core's own commands (plugins add theirs through ``winstar_add_commands``)."""
    from winstar_core.cli import cloud_cmds, console_cmds, entity_cmds, node_cmds, retention_cmds, run_cmd

    modules = (node_cmds, cloud_cmds, entity_cmds, retention_cmds, console_cmds)
    return [command for module in modules for command in module.COMMANDS] + [run_cmd.run]


def build_cli(platform: Platform | None = None) -> click.Group:
    global _PLATFORM
    if platform is not None:
        _PLATFORM = platform
    for command in core_commands():
        cli.add_command(command)
    for impl in _platform().hook.winstar_add_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin loses its commands, not the whole CLI
            click.echo(f"warning: plugin {impl.plugin_name!r} failed to add its commands: {exc}", err=True)
    return cli


def main() -> None:
    try:
        build_cli()
    except WinstarError as exc:
        click.echo(f"Error: {_first_line(str(exc))}", err=True)
        sys.exit(1)
    cli(prog_name="winstar")
