"""Retention commands (both roles): `winstar prune`, and dismissing FAILED events: `winstar edge
dismiss` (cloud, added to the ``edge`` group) and `winstar dismiss` (edge). ``DURATION`` is the
parameter type of `--older-than` here and of `winstar run --retention`."""

from __future__ import annotations

from typing import Any

import click

from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.cli.cloud_cmds import edge_group
from winstar_core.errors import WinstarError
from winstar_core.node import CLOUD, EDGE
from winstar_core.services.retention import (
    DURATION_HELP,
    configured_retention,
    describe,
    parse_duration,
    prune,
)

#: a SEQ argument: a positive 64-bit integer, as `retry` takes it
SEQ = click.IntRange(1, 2**63 - 1)


class Duration(click.ParamType):
    """A duration (``7d``, ``12h``, ``30m``, ``90s``), converted to milliseconds; anything else is
    click's one-line "Invalid value" error."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except WinstarError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


@click.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=DURATION,
    metavar="DURATION",
    help=f"{DURATION_HELP}; default: the retention `winstar run` was started with, else 7d",
)
@node_options
def prune_command(older_than: int | None, as_json: bool) -> None:
    """Delete delivered, superseded and dismissed events older than DURATION, now (cloud: the
    downlinks; edge: the uplinks). PENDING, HELD and FAILED events are never deleted."""
    node = current_node()
    role = node.role()
    if role not in (CLOUD, EDGE):
        node.require(CLOUD, "winstar prune")
    if older_than is None:
        with node.db.begin() as session:
            _, older_than = configured_retention(session)
    deleted = prune(node.db, older_than, wait=True)  # another node's round: wait for it, then go on
    if as_json:
        emit({"deleted": deleted}, True)
    else:
        click.echo(
            f"deleted {deleted} delivered, superseded or dismissed event(s) older than {describe(older_than)}"
        )


def _report(dismissed: list[int], asked: tuple[int, ...], as_json: bool) -> None:
    if as_json:
        emit({"dismissed": len(dismissed)}, True)
        return
    click.echo(f"dismissed {len(dismissed)} failed event(s)")
    skipped = sorted(set(asked) - set(dismissed))
    if skipped:
        shown = ", ".join(str(s) for s in skipped[:20]) + (", …" if len(skipped) > 20 else "")
        click.echo(f"not failed, left as they are (not counted): {shown}")


@edge_group.command("dismiss")
@click.argument("edge_ref", metavar="EDGE")
@click.argument("seqs", metavar="[SEQ]...", nargs=-1, type=SEQ)
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_dismiss(edge_ref: str, seqs: tuple[int, ...], tenant_ref: str | None, as_json: bool) -> None:
    """Mark failed downlinks dismissed (all of them, or the SEQs given): an operator has seen them.
    They are deleted after the retention; a SEQ that is not failed is left as it is."""
    with current_node().cloud("winstar edge dismiss") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        dismissed = cloud.dismiss_failed(edge, list(seqs) or None)
    _report(dismissed, seqs, as_json)


@click.command("dismiss")
@click.argument("seqs", metavar="[SEQ]...", nargs=-1, type=SEQ)
@node_options
def dismiss_uplinks(seqs: tuple[int, ...], as_json: bool) -> None:
    """Edge: mark failed uplinks dismissed (all of them, or the SEQs given): an operator has seen
    them. They are deleted after the retention; a SEQ that is not failed is left as it is."""
    with current_node().edge("winstar dismiss") as edge:
        dismissed = edge.dismiss_failed(list(seqs) or None)
    _report(dismissed, seqs, as_json)


COMMANDS = [prune_command, dismiss_uplinks]
