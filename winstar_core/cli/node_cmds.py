"""Node setup and inspection: init, status, plugins, demo."""

from __future__ import annotations

from typing import Any

import click

from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.node import CLOUD, EDGE
from winstar_core.services.common import LIVENESS_MS, get_config, iso
from winstar_core.services.shapes import edges_view
from winstar_core.store.models import HELD, now_ms


@click.group("init")
def init_group() -> None:
    """Create a cloud or an edge database (the role is decided once)."""


@init_group.command("cloud")
@click.option(
    "--edition", type=click.Choice(["ce", "pe"], case_sensitive=False), default="ce", show_default=True
)
@node_options
def init_cloud(edition: str, as_json: bool) -> None:
    """Create a cloud database; running it again is harmless."""
    node = current_node()
    created = node.init_cloud(edition)
    emit({"role": CLOUD, "edition": edition.lower(), "created": created}, as_json)


@init_group.command("edge")
@click.option("--cloud", "cloud_addr", required=True, metavar="HOST:PORT", help="the cloud's gRPC address")
@click.option("--routing-key", required=True, help="the edge's routing key (from `winstar edge create`)")
@click.option("--secret", required=True, help="the edge's secret (from `winstar edge create`)")
@click.option("--secret-file", default=None, help="where to keep the secret (default: beside the database)")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA certificate to verify a TLS cloud (enables TLS)",
)
@node_options
def init_edge(
    cloud_addr: str,
    routing_key: str,
    secret: str,
    secret_file: str | None,
    ca_file: str | None,
    as_json: bool,
) -> None:
    """Create an edge database that will connect to that cloud."""
    node = current_node()
    created = node.init_edge(cloud_addr, routing_key, secret, secret_file, ca_file)
    emit({"role": EDGE, "cloud": cloud_addr, "routing_key": routing_key, "created": created}, as_json)


@click.command("status")
@node_options
def status(as_json: bool) -> None:
    """What this node is and how its link is doing."""
    node = current_node()
    role = node.role()
    if role == CLOUD:
        with node.cloud() as cloud:
            keys = ("id", "name", "connected", "node", "last_seen", "pending")
            edges = [{k: e[k] for k in keys} for e in edges_view(cloud.session)]
            value: dict[str, Any] = {"role": CLOUD, "edition": cloud.edition, "edges": edges}
        if as_json:
            emit(value, True)
        else:
            click.echo(f"cloud ({value['edition'].upper()}), {len(edges)} edge(s)")
            emit(edges, False, ["id", "name", "connected", "last_seen", "pending"])
        return
    with node.edge() as edge:
        s = edge.session
        value = {
            "role": EDGE,
            "connected": bool(get_config(s, "connected", False))
            and now_ms() - int(get_config(s, "link_heartbeat", 0) or 0) < LIVENESS_MS,
            "cloud": get_config(s, "cloud"),
            "pending_uplinks": edge.pending_uplinks(),
            "held_uplinks": edge.pending_uplinks(HELD),
            "last_sync": iso(get_config(s, "last_sync")),
            # events of that sync this edge refused: not 0, it has not converged (null: unknown)
            "last_sync_failed": get_config(s, "last_sync_failed"),
            "error": get_config(s, "last_error"),
            "edge_id": get_config(s, "edge_id"),
            "edge_name": get_config(s, "edge_name"),
            "edition": edge.edition,
            # read as stored: `winstar run` mints it (and notices a copied database), not status
            "instance": get_config(s, "instance_id"),
        }
    emit(value, as_json)


@click.group("plugins")
def plugins_group() -> None:
    """Inspect the loaded plugins."""


@plugins_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON value on stdout")
@click.pass_context
def plugins_list(ctx: click.Context, as_json: bool) -> None:
    """Loaded plugins and the entity types each registers."""
    from winstar_core.cli.api import CliState

    state = ctx.find_object(CliState)
    assert state is not None
    platform = state.platform
    by_plugin = platform.types.by_plugin()
    rows = [
        {
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "entity_types": sorted(by_plugin.get(p.name, [])),
        }
        for p in platform.plugins
    ]
    if as_json:
        emit(rows, True)
        return
    emit(rows, False, ["name", "distribution", "version", "entity_types"])
    for name, error in platform.failures:
        click.echo(f"failed: {name}: {error}")


@click.command("demo")
@click.option("--keep", is_flag=True, help="keep the temporary folder and print where it is")
@click.option(
    "--console",
    "with_console",
    is_flag=True,
    help="after the tour, keep its cloud running with the web console on it (Ctrl-C stops it)",
)
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="with --console: where the console listens (port 0: a free one)",
)
def demo(keep: bool, with_console: bool, listen: str) -> None:
    """The guided tour on SQLite: a cloud and an edge in temporary folders."""
    from winstar_core.demo import run_demo

    run_demo(keep=keep, console=listen if with_console else None)


COMMANDS = [init_group, status, plugins_group, demo]
