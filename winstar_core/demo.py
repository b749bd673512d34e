"""`winstar demo`: the guided tour on SQLite, narrated. A real cloud server and a real edge client
run in this process and talk gRPC over loopback; the databases live in a temporary folder.

The tour uses the entity types that are installed: a step whose type no plugin provides says so
and is skipped (the core itself knows no concrete type)."""

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
from winstar_core.entity_types import EntityTypeRegister
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.services.common import event_json, get_config
from winstar_core.transport.inprocess import EdgeHandle, LinkRunner, wait_for
from winstar_core.transport.server import CloudServer

#: the container type of the PE story (from the groups plugin; the story is skipped without it)
GROUP_TYPE = "entity_group"

EVENT_COLUMNS = ["seq", "type", "action", "status", "delivered_time", "error"]


def say(text: str) -> None:
    click.secho(f"\n== {text}", fg="cyan", bold=True)


def show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    click.echo(table(rows, columns))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skipped(what: str, missing: str) -> None:
    click.secho(f"(skipped: {what} needs {missing}, which no installed plugin provides)", fg="yellow")


def creatable_type(types: EntityTypeRegister) -> str | None:
    """The type the demo creates on the edge: ``device`` if installed, else any creatable one."""
    if "device" in types and types.get("device").creatable_on_edge:
        return "device"
    return next((t.name for t in types if t.creatable_on_edge), None)


def run_demo(keep: bool = False, console: str | None = None) -> None:
    """The tour; with ``console`` (``HOST:PORT``), its CE cloud then keeps running with the edge
    connected and the web console on that address, until Ctrl-C."""
    folder = Path(tempfile.mkdtemp(prefix="winstar-demo-"))
    runner = LinkRunner()
    started = time.monotonic()
    types = make_plugin_manager().types
    click.echo(f"entity types installed: {', '.join(types.names()) or 'none'}")
    try:
        _ce_story(folder, runner)
        if GROUP_TYPE in types and creatable_type(types):
            _pe_story(folder, runner)
        else:
            say("PE: entities created on an edge join its '[Edge] NAME All' group")
            skipped("the PE story", f"the {GROUP_TYPE!r} type and a type creatable on an edge")
        say(f"Done in {time.monotonic() - started:.1f}s")
        if console is not None:
            _serve_console(folder, runner, console)
    finally:
        runner.close()
        if keep:
            click.echo(f"\n(databases kept in {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _serve_console(folder: Path, runner: LinkRunner, listen: str) -> None:
    """The CE story's cloud again, serving gRPC with its edge 'Plant 7' connected, and the console
    on ``listen``: its address and a one-time sign-in link for admin@acme.io are printed; Ctrl-C
    stops it all."""
    from winstar_core.console.app import serve
    from winstar_core.node import check_address
    from winstar_core.services import auth

    host, _, port = check_address(listen, "--listen", any_port=True).rpartition(":")
    cloud = Node(f"sqlite:///{folder / 'cloud-ce.db'}")
    edge = Node(f"sqlite:///{folder / 'edge-ce.db'}", platform=cloud.platform)
    grpc_port = int(str(get_config_of(edge, "cloud")).rsplit(":", 1)[1])
    runner.start_cloud(cloud, grpc_port)
    runner.start_edge(edge)
    with cloud.cloud() as c:
        admin = auth.find_user(c.session, "admin@acme.io")
        link = auth.create_sign_in_link(c.session, admin)

    def ready(url: str) -> None:
        say("The console: the cloud of the CE story keeps running, with 'Plant 7' connected")
        click.echo(f"console:  {url}/")
        click.echo(f"sign in:  {url}/sign-in/link/{link}   (once, within the hour, as admin@acme.io)")
        click.echo(f"API:      {url}/api/v1/openapi.json")
        click.echo("Ctrl-C stops the console and the cloud.", nl=True)

    try:
        serve(cloud, host.strip("[]"), int(port), ready=ready)
    finally:
        cloud.close()
        edge.close()


def get_config_of(node: Node, key: str) -> Any:
    with node.db.begin() as s:
        return get_config(s, key)


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
    made = creatable_type(cloud.platform.types)
    with cloud.cloud() as c:
        tenant = c.create_tenant("Acme")
        roles = []
        if edition == "pe" and made is not None:
            resource = cloud.platform.types.get(made).resource()
            roles = [c.create_role(f"{made} writers", tenant, [f"{resource}:WRITE"])]
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
    types = cloud.platform.types
    made = creatable_type(types)
    click.echo(f"cloud serving gRPC on 127.0.0.1:{port}; the edge's secret is kept only as a salted hash")
    click.echo("edge connected: it received its configuration and users from the cloud")

    say("Assign a dashboard to the edge: it is created there, with the same id")
    if "dashboard" in types:
        with cloud.cloud() as c:
            dash = c.create_entity("dashboard", "Plant overview", c.find_tenant("Acme"), {"title": "Plant 7"})
            c.assign(c.find_edge("Plant 7"), dash)
        wait_for(lambda: any(r["id"] == str(dash.id) for r in _edge_rows(edge)))
        show(_edge_rows(edge), ["type", "name", "id", "version"])
    else:
        skipped("this step", "the 'dashboard' type")

    say(
        f"Create a {made or 'device'} on the edge as the tenant administrator: the cloud creates it and assigns it"
    )
    if made is not None:
        with edge.edge() as e:
            dev = e.create_entity(made, "Thermometer 1", None, user_email="admin@acme.io")

        def assigned_in_cloud() -> list[dict[str, Any]]:
            with cloud.cloud() as c:
                rows = [
                    {"type": x.type, "name": x.name, "id": str(x.id)}
                    for x in c.effective_entities(c.find_edge("Plant 7"))
                ]
            return rows if any(r["id"] == str(dev.id) for r in rows) else []

        click.echo("the cloud's `winstar edge entities 'Plant 7'`:")
        show(wait_for(assigned_in_cloud), ["type", "name", "id"])
    else:
        skipped("this step", "a type creatable on an edge")

    say("Cut the link (the cloud goes away); the edge keeps working and queues its changes")
    runner.stop_cloud(scene.server, grace=0.2)
    wait_for(lambda: not link.client.connected.is_set())
    for i in (2, 3, 4):
        if made is not None:
            with edge.edge() as e:
                e.create_entity(made, f"Thermometer {i}", None, user_email="admin@acme.io")
    with edge.edge() as e:
        err = get_config(e.session, "last_error")
        click.echo(f"edge status: connected=no, error: {err}")
        click.echo("the edge's `winstar uplinks`:")
        show([event_json(x) for x in e.uplinks()], EVENT_COLUMNS)

    say("Meanwhile, assign an asset in the cloud while the edge is offline: queued in edge_event")
    if "asset" in types:
        with cloud.cloud() as c:
            c.assign(c.find_edge("Plant 7"), c.create_entity("asset", "Boiler", c.find_tenant("Acme")))
        with cloud.cloud() as c:
            show([event_json(x) for x in c.downlinks(c.find_edge("Plant 7"), "pending")], EVENT_COLUMNS)
    else:
        skipped("this step", "the 'asset' type")

    say("Restore the link: what the edge queued reaches the cloud, what the cloud queued reaches the edge")
    scene.server = runner.start_cloud(cloud, port)

    def drained() -> bool:
        with edge.edge() as e, cloud.cloud() as c:
            return e.pending_uplinks() == 0 and not c.downlinks(c.find_edge("Plant 7"), "pending")

    wait_for(drained, timeout=45)
    if made is not None:
        with cloud.cloud() as c:
            names = sorted(x.name for x in c.entities.list_entities(made))
        click.echo(f"{made} entities in the cloud: {', '.join(names)}")
    click.echo("on the edge:")
    show(_edge_rows(edge), ["type", "name", "id", "version"])
    say("The Downlinks view of 'Plant 7' (`winstar edge downlinks 'Plant 7'`), newest first")
    with cloud.cloud() as c:
        show([event_json(x) for x in c.downlinks(c.find_edge("Plant 7"))], EVENT_COLUMNS)
    _disconnect(runner, scene)


def _pe_story(folder: Path, runner: LinkRunner) -> None:
    scene = _connect(folder, runner, "Plant 9", "pe")
    cloud, edge = scene.cloud, scene.edge
    made = creatable_type(cloud.platform.types)
    assert made is not None  # run_demo checked
    resource = cloud.platform.types.get(made).resource()
    say(f"PE: a cloud whose role '{made} writers' grants {resource}:WRITE, and an edge 'Plant 9'")
    for name in ("Pump A", "Pump B"):
        with edge.edge() as e:
            e.create_entity(made, name, None, user_email="admin@acme.io")

    def group_members() -> list[dict[str, Any]]:
        with cloud.cloud() as c:
            groups = [g for g in c.entities.list_entities(GROUP_TYPE) if g.name == "[Edge] Plant 9 All"]
            if not groups:
                return []
            rows = [{"group": groups[0].name, "member": m.name} for m in c.members(groups[0])]
            return rows if len(rows) == 2 else []

    click.echo(f"the cloud created the {made} group '[Edge] Plant 9 All', added them, assigned it:")
    show(wait_for(group_members), ["group", "member"])
    wait_for(lambda: any(r["name"] == "[Edge] Plant 9 All" for r in _edge_rows(edge)))
    click.echo("on the edge:")
    show(_edge_rows(edge), ["type", "name", "version"])
    _disconnect(runner, scene)
