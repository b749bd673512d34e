"""`winstar demo`: the guided tour on SQLite, narrated."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from winstar_core.cli.api import table
from winstar_core.node import Node
from winstar_core.services.common import event_json


def say(text: str) -> None:
    click.secho(f"\n== {text}", fg="cyan", bold=True)


def run_demo(keep: bool = False) -> None:
    folder = Path(tempfile.mkdtemp(prefix="winstar-demo-"))
    try:
        _tour(folder)
    finally:
        if keep:
            click.echo(f"\n(kept {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _tour(folder: Path) -> None:
    cloud = Node(f"sqlite:///{folder / 'cloud.db'}")
    say("A CE cloud, a tenant with an administrator, and an edge")
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        tenant = c.create_tenant("Acme")
        c.create_user("admin@acme.io", tenant, "TENANT_ADMIN")
        edge, secret = c.create_edge("Plant 7", tenant)
        routing_key = edge.routing_key
    click.echo(f"edge 'Plant 7' routing key {routing_key}; its secret is stored only as a salted hash")

    edge_node = Node(f"sqlite:///{folder / 'edge.db'}", platform=cloud.platform)
    edge_node.init_edge("127.0.0.1:7070", routing_key, secret)

    say("Assign a dashboard to the edge: queued in edge_event while the edge is offline")
    with cloud.cloud() as c:
        dash = c.create_entity("dashboard", "Plant overview", c.find_tenant("Acme"), {"title": "Plant 7"})
        c.assign(c.find_edge("Plant 7"), dash)
    with cloud.cloud() as c:
        click.echo(
            table(
                [event_json(e) for e in c.downlinks(c.find_edge("Plant 7"))],
                ["seq", "type", "action", "status"],
            )
        )

    from winstar_core.testing import seed_edge_from_cloud

    seed_edge_from_cloud(cloud, edge_node, "Plant 7")
    say("Create a device on the edge as the tenant administrator: queued in cloud_event")
    with edge_node.edge() as e:
        e.create_entity("device", "Thermometer 1", {"label": "boiler room"}, user_email="admin@acme.io")
    with edge_node.edge() as e:
        click.echo(table([event_json(x) for x in e.uplinks()], ["seq", "type", "action", "status"]))
    cloud.close()
    edge_node.close()
    say("Done")
