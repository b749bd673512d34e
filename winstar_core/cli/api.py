"""Helpers for commands, the core's and the plugins': ``--db``, ``--json``, output, the node.

A plugin's command looks like::

    @click.command("hello")
    @node_options
    def hello(as_json: bool) -> None:
        node = current_node()
        with node.cloud("winstar hello") as cloud:
            ...
        emit({"ok": True}, as_json)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from winstar_core.node import Node
from winstar_core.plugin.manager import Platform
from winstar_core.store.db import DEFAULT_URL

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = "the node's database as an SQLAlchemy URL (default: $WINSTAR_DB or sqlite:///winstar.db)"


@dataclass
class CliState:
    db_url: str | None
    platform: Platform
    node: Node | None = None


def _store_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["winstar.db"] = value


def db_option(f: F) -> F:
    """``--db URL`` on a leaf command (also accepted before the command name)."""
    return click.option("--db", metavar="URL", expose_value=False, callback=_store_db, help=DB_HELP)(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print exactly one JSON value on stdout")(f)


def node_options(f: F) -> F:
    return db_option(json_option(f))


def current_node() -> Node:
    ctx = click.get_current_context()
    state = ctx.find_object(CliState)
    if state is None:  # pragma: no cover - only when a command is invoked outside `winstar`
        raise click.UsageError("no winstar context")
    if state.node is None:
        url = ctx.meta.get("winstar.db") or state.db_url or os.environ.get("WINSTAR_DB") or DEFAULT_URL
        state.node = Node(url, platform=state.platform)
        ctx.call_on_close(state.node.close)
    return state.node


def emit(value: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print ``value`` as one JSON value, or as a readable table (a list) or key/value lines."""
    if as_json:
        click.echo(json.dumps(value, default=str))
        return
    if isinstance(value, list):
        click.echo(table(value, columns))
    elif isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for key, v in value.items():
            click.echo(f"{key:<{width}}  {_cell(v)}")
    else:
        click.echo(str(value))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
