"""Entity commands (both roles) and the edge's uplinks."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.node import CLOUD
from winstar_core.services.bulk import ImportRefused, import_entities
from winstar_core.services.common import entity_json, event_json, parse_json_data
from winstar_core.store.models import EVENT_STATUSES

STATUS = click.Choice([s.lower() for s in EVENT_STATUSES], case_sensitive=False)
ENTITY_COLUMNS = ["id", "type", "name", "version", "data"]


@click.group("entity")
def entity_cli() -> None:
    """Create, change, delete and read entities of any registered type."""


@entity_cli.command("create")
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.option("--tenant", "tenant_ref", help="tenant name or id (cloud; default: the only tenant)")
@click.option(
    "--data",
    "raw_data",
    metavar="JSON",
    help="the entity's data as a JSON object (@FILE: read from a file, -: from stdin)",
)
@click.option("--user", "user_email", metavar="EMAIL", help="on an edge: the user creating the entity")
@click.option("--customer", "customer_ref", help="cloud: customer name or id that owns the entity")
@node_options
def entity_create(
    type_name: str,
    name: str,
    tenant_ref: str | None,
    raw_data: str | None,
    user_email: str | None,
    customer_ref: str | None,
    as_json: bool,
) -> None:
    node = current_node()
    data = parse_json_data(raw_data)
    if node.role() == CLOUD:
        with node.cloud() as cloud:
            tenant = cloud.default_tenant(tenant_ref)
            customer = cloud.find_customer(customer_ref, tenant) if customer_ref else None
            entity = cloud.create_entity(type_name, name, tenant, data, customer=customer)
            value = entity_json(entity)
    else:
        with node.edge("winstar entity create") as edge:
            entity = edge.create_entity(type_name, name, data, user_email=user_email)
            value = entity_json(entity)
    emit(value, as_json)


@entity_cli.command("update")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@click.option("--name", "new_name", help="the new name")
@click.option(
    "--data",
    "raw_data",
    metavar="JSON",
    help="keys to change, as a JSON object (@FILE: read from a file, -: from stdin)",
)
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the name is ambiguous")
@node_options
def entity_update(
    type_name: str,
    ref: str,
    new_name: str | None,
    raw_data: str | None,
    tenant_ref: str | None,
    as_json: bool,
) -> None:
    node = current_node()
    data = parse_json_data(raw_data)
    if node.role() == CLOUD:
        with node.cloud() as cloud:
            tenant = cloud.find_tenant(tenant_ref) if tenant_ref else None
            entity = cloud.entities.find_entity(type_name, ref, tenant.id if tenant else None)
            value = entity_json(cloud.update_entity(entity, name=new_name, data=data))
    else:
        with node.edge() as edge:
            entity = edge.entities.find_entity(type_name, ref)
            value = entity_json(edge.update_entity(entity, name=new_name, data=data))
    emit(value, as_json)


@entity_cli.command("delete")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the name is ambiguous")
@node_options
def entity_delete(type_name: str, ref: str, tenant_ref: str | None, as_json: bool) -> None:
    node = current_node()
    if node.role() == CLOUD:
        with node.cloud() as cloud:
            tenant = cloud.find_tenant(tenant_ref) if tenant_ref else None
            entity = cloud.entities.find_entity(type_name, ref, tenant.id if tenant else None)
            entity_id = entity.id
            cloud.delete_entity(entity)
    else:
        with node.edge() as edge:
            entity = edge.entities.find_entity(type_name, ref)
            entity_id = entity.id
            edge.delete_entity(entity)
    emit({"id": str(entity_id), "deleted": True}, as_json)


@entity_cli.command("list")
@click.argument("type_name", metavar="TYPE")
@click.option("--tenant", "tenant_ref", help="tenant name or id")
@node_options
def entity_list(type_name: str, tenant_ref: str | None, as_json: bool) -> None:
    node = current_node()
    with node.cloud() if node.role() == CLOUD else node.edge() as svc:
        tenant = svc.entities.find_tenant(tenant_ref) if tenant_ref else None
        value = [entity_json(e) for e in svc.entities.list_entities(type_name, tenant.id if tenant else None)]
    emit(value, as_json, ENTITY_COLUMNS)


@entity_cli.command("show")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the name is ambiguous")
@node_options
def entity_show(type_name: str, ref: str, tenant_ref: str | None, as_json: bool) -> None:
    node = current_node()
    with node.cloud() if node.role() == CLOUD else node.edge() as svc:
        tenant = svc.entities.find_tenant(tenant_ref) if tenant_ref else None
        value = entity_json(svc.entities.find_entity(type_name, ref, tenant.id if tenant else None))
    emit(value, as_json)


@entity_cli.command("import")
@click.argument("type_name", metavar="TYPE")
@click.argument("path", metavar="FILE")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@click.option("--assign", "edge_refs", metavar="EDGE", multiple=True, help="assign every entity to EDGE")
@node_options
def entity_import(
    type_name: str, path: str, tenant_ref: str | None, edge_refs: tuple[str, ...], as_json: bool
) -> None:
    """Cloud: create entities of TYPE from FILE, JSON Lines of {"name", "data"} (-: stdin). Every
    line is checked first; one bad line and nothing is written (each bad line named)."""
    node = current_node()
    node.require(CLOUD, "winstar entity import")
    progress = _progress()
    try:
        with click.open_file(path, "rb") as fh, node.cloud("winstar entity import") as cloud:
            done = import_entities(
                cloud, type_name, fh, tenant_ref=tenant_ref, assign=edge_refs, progress=progress
            )
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    except ImportRefused as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise click.ClickException(str(exc)) from None
    finally:
        if progress is not None:
            click.echo("\r\x1b[K", err=True, nl=False)  # the progress line, cleared
    value = {"created": done.created, "assigned": done.assigned}
    if as_json:
        emit(value, as_json)
    else:
        click.echo(f"created {done.created} {type_name} entities, {done.assigned} assignments")


def _progress() -> Callable[[str], None] | None:
    """Progress on stderr, when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    return lambda line: click.echo(f"\r  .. {line}\x1b[K", err=True, nl=False)


@click.command("uplinks")
@click.option("--status", type=STATUS, help="only events in this state")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many (newest first)")
@node_options
def uplinks(status: str | None, limit: int | None, as_json: bool) -> None:
    """Messages sent (or waiting to be sent) from this edge to the cloud, newest first."""
    with current_node().edge("winstar uplinks") as edge:
        value = [event_json(ev) for ev in edge.uplinks(status, limit)]
    emit(
        value,
        as_json,
        ["seq", "created_time", "type", "action", "entity_id", "status", "delivered_time", "error"],
    )


@click.command("retry")
@click.argument("seqs", metavar="[SEQ]...", nargs=-1, type=click.IntRange(1, 2**63 - 1))
@node_options
def retry_uplinks(seqs: tuple[int, ...], as_json: bool) -> None:
    """Edge: send failed uplinks again (all of them, or the SEQs given), as new events."""
    with current_node().edge("winstar retry") as edge:
        new = edge.retry_failed(list(seqs) or None)
    emit({"retried": len(new), "seqs": new}, as_json)


COMMANDS = [entity_cli, uplinks, retry_uplinks]
