"""`winstar demo`: the guided tour on SQLite, narrated. A real cloud server and a real edge client
run in this process and talk gRPC over loopback; the databases live in a temporary folder."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from winstar_core.cli.api import table
from winstar_core.node import Node
from winstar_core.services.common import event_json, get_config
from winstar_core.transport.inprocess import EdgeHandle, LinkRunner, wait_for
from winstar_core.transport.server import CloudServer

EVENT_COLUMNS = ["seq", "type", "action", "status", "delivered_time", "error"]


def say(text: str) -> None:
    click.secho(f"\n== {text}", fg="cyan", bold=True)


def show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    click.echo(table(rows, columns))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(keep: bool = False) -> None:
    folder = Path(tempfile.mkdtemp(prefix="winstar-demo-"))
    runner = LinkRunner()
    started = time.monotonic()
    try:
        _ce_story(folder, runner)
        _pe_story(folder, runner)
    finally:
        runner.close()
        if keep:
            click.echo(f"\n(databases kept in {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    say(f"Done in {time.monotonic() - started:.1f}s")


def _edge_rows(node: Node) -> list[dict[str, Any]]:
    with node.edge() as e:
        rows = []
        for type_name in e.types.names():
            rows += [
                {"type": x.type, "name": x.name, "id": str(x.id), "version": x.version}
                for x in e.entities.list_entities(type_name)
            ]
        return rows


@dataclass
class Scene:
    """A cloud serving in process and one edge connected to it."""

    cloud: Node
    edge: Node
    port: int
    server: CloudServer
    link: EdgeHandle


def _connect(folder: Path, runner: LinkRunner, name: str, edition: str) -> Scene:
    """A cloud (SQLite) with tenant Acme, its administrator and an edge ``name``, serving; the edge
    initialized and connected."""
    cloud = Node(f"sqlite:///{folder / f'cloud-{edition}.db'}")
    cloud.init_cloud(edition)
    with cloud.cloud() as c:
        tenant = c.create_tenant("Acme")
        roles = [c.create_role("device writers", tenant, ["DEVICE:WRITE"])] if edition == "pe" else []
        c.create_user("admin@acme.io", tenant, "TENANT_ADMIN", roles=roles)
        edge_row, secret = c.create_edge(name, tenant)
    port = _free_port()
    server = runner.start_cloud(cloud, port)
    edge = Node(f"sqlite:///{folder / f'edge-{edition}.db'}", platform=cloud.platform)
    edge.init_edge(f"127.0.0.1:{port}", edge_row.routing_key, secret)
    link = runner.start_edge(edge)
    runner.wait_connected(link)
    return Scene(cloud, edge, port, server, link)


def _disconnect(runner: LinkRunner, scene: Scene) -> None:
    runner.stop_edge(scene.link)
    runner.stop_cloud(scene.server, grace=0.2)
    scene.cloud.close()
    scene.edge.close()


def _ce_story(folder: Path, runner: LinkRunner) -> None:
    say("A CE cloud (SQLite) with tenant Acme, its administrator, and an edge 'Plant 7'")
    scene = _connect(folder, runner, "Plant 7", "ce")
    cloud, edge, port, link = scene.cloud, scene.edge, scene.port, scene.link
    click.echo(f"cloud serving gRPC on 127.0.0.1:{port}; the edge's secret is kept only as a salted hash")
    click.echo("edge connected: it received its configuration and users from the cloud")

    say("Assign a dashboard to the edge: it is created there, with the same id")
    with cloud.cloud() as c:
        dash = c.create_entity("dashboard", "Plant overview", c.find_tenant("Acme"), {"title": "Plant 7"})
        c.assign(c.find_edge("Plant 7"), dash)
    wait_for(lambda: any(r["id"] == str(dash.id) for r in _edge_rows(edge)))
    show(_edge_rows(edge), ["type", "name", "id", "version"])

    say("Create a device on the edge as the tenant administrator: the cloud creates it and assigns it")
    with edge.edge() as e:
        dev = e.create_entity("device", "Thermometer 1", {"label": "boiler room"}, user_email="admin@acme.io")

    def assigned_in_cloud() -> list[dict[str, Any]]:
        with cloud.cloud() as c:
            rows = [
                {"type": x.type, "name": x.name, "id": str(x.id)}
                for x in c.effective_entities(c.find_edge("Plant 7"))
            ]
        return rows if any(r["id"] == str(dev.id) for r in rows) else []

    click.echo("the cloud's `winstar edge entities 'Plant 7'`:")
    show(wait_for(assigned_in_cloud), ["type", "name", "id"])

    say("Cut the link (the cloud goes away); the edge keeps working and queues its changes")
    runner.stop_cloud(scene.server, grace=0.2)
    wait_for(lambda: not link.client.connected.is_set())
    for i in (2, 3, 4):
        with edge.edge() as e:
            e.create_entity("device", f"Thermometer {i}", None, user_email="admin@acme.io")
    with edge.edge() as e:
        err = get_config(e.session, "last_error")
        click.echo(f"edge status: connected=no, error: {err}")
        click.echo("the edge's `winstar uplinks`:")
        show([event_json(x) for x in e.uplinks()], EVENT_COLUMNS)

    say("Meanwhile, assign an asset in the cloud while the edge is offline: queued in edge_event")
    with cloud.cloud() as c:
        c.assign(c.find_edge("Plant 7"), c.create_entity("asset", "Boiler", c.find_tenant("Acme")))
    with cloud.cloud() as c:
        show([event_json(x) for x in c.downlinks(c.find_edge("Plant 7"), "pending")], EVENT_COLUMNS)

    say("Restore the link: the queued devices reach the cloud, the asset reaches the edge")
    scene.server = runner.start_cloud(cloud, port)

    def drained() -> bool:
        with edge.edge() as e, cloud.cloud() as c:
            return e.pending_uplinks() == 0 and not c.downlinks(c.find_edge("Plant 7"), "pending")

    wait_for(drained, timeout=45)
    with cloud.cloud() as c:
        names = sorted(x.name for x in c.entities.list_entities("device"))
    click.echo(f"devices in the cloud: {', '.join(names)}")
    click.echo("on the edge:")
    show(_edge_rows(edge), ["type", "name", "id", "version"])
    say("The Downlinks view of 'Plant 7' (`winstar edge downlinks 'Plant 7'`), newest first")
    with cloud.cloud() as c:
        show([event_json(x) for x in c.downlinks(c.find_edge("Plant 7"))], EVENT_COLUMNS)
    _disconnect(runner, scene)


def _pe_story(folder: Path, runner: LinkRunner) -> None:
    say("PE: a cloud whose role 'device writers' grants DEVICE:WRITE, and an edge 'Plant 9'")
    scene = _connect(folder, runner, "Plant 9", "pe")
    cloud, edge = scene.cloud, scene.edge
    for name in ("Pump A", "Pump B"):
        with edge.edge() as e:
            e.create_entity("device", name, None, user_email="admin@acme.io")

    def group_members() -> list[dict[str, Any]]:
        with cloud.cloud() as c:
            groups = [g for g in c.entities.list_entities("entity_group") if g.name == "[Edge] Plant 9 All"]
            if not groups:
                return []
            rows = [{"group": groups[0].name, "member": m.name} for m in c.members(groups[0])]
            return rows if len(rows) == 2 else []

    click.echo("the cloud created the group '[Edge] Plant 9 All', added the devices, assigned it:")
    show(wait_for(group_members), ["group", "member"])
    wait_for(lambda: any(r["name"] == "[Edge] Plant 9 All" for r in _edge_rows(edge)))
    click.echo("on the edge:")
    show(_edge_rows(edge), ["type", "name", "version"])
    _disconnect(runner, scene)
