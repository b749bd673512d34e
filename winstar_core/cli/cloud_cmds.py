"""Cloud commands: tenants, customers, roles, users, edges, assignment, downlinks."""

from __future__ import annotations

from typing import Any

import click

from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.services.cloud import CloudService, edge_connected
from winstar_core.services.common import event_json
from winstar_core.services.instances import reset_instance
from winstar_core.services.nodes import nodes_view
from winstar_core.services.shapes import (
    customer_json,
    edge_details,
    edges_view,
    role_json,
    tenant_json,
    user_json,
)
from winstar_core.store.models import (
    EVENT_STATUSES,
)

STATUS = click.Choice([s.lower() for s in EVENT_STATUSES], case_sensitive=False)


# --------------------------------------------------------------------------------------------------
@click.group("tenant")
def tenant_group() -> None:
    """Tenants (cloud)."""


@tenant_group.command("create")
@click.argument("name")
@node_options
def tenant_create(name: str, as_json: bool) -> None:
    with current_node().cloud("winstar tenant create") as cloud:
        value = tenant_json(cloud.create_tenant(name))
    emit(value, as_json)


@tenant_group.command("list")
@node_options
def tenant_list(as_json: bool) -> None:
    with current_node().cloud("winstar tenant list") as cloud:
        value = [tenant_json(t) for t in cloud.list_tenants()]
    emit(value, as_json)


# --------------------------------------------------------------------------------------------------
@click.group("customer")
def customer_group() -> None:
    """Customers of a tenant (cloud)."""


@customer_group.command("create")
@click.argument("name")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@node_options
def customer_create(name: str, tenant_ref: str | None, as_json: bool) -> None:
    with current_node().cloud("winstar customer create") as cloud:
        value = customer_json(cloud.create_customer(name, cloud.default_tenant(tenant_ref)))
    emit(value, as_json)


# --------------------------------------------------------------------------------------------------
@click.group("role")
def role_group() -> None:
    """Roles and their permissions (PE cloud)."""


@role_group.command("create")
@click.argument("name")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    metavar="RESOURCE:OPERATION",
    help="for example DEVICE:WRITE; repeat for several",
)
@node_options
def role_create(name: str, tenant_ref: str | None, permissions: tuple[str, ...], as_json: bool) -> None:
    with current_node().cloud("winstar role create") as cloud:
        value = role_json(cloud.create_role(name, cloud.default_tenant(tenant_ref), permissions))
    emit(value, as_json)


# --------------------------------------------------------------------------------------------------
@click.group("user")
def user_group() -> None:
    """Users of a tenant (cloud)."""


@user_group.command("create")
@click.argument("email")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@click.option(
    "--authority", required=True, type=click.Choice(["TENANT_ADMIN", "CUSTOMER_USER"], case_sensitive=False)
)
@click.option("--customer", "customer_ref", help="customer name or id (for a CUSTOMER_USER)")
@click.option("--role", "role_refs", multiple=True, help="role name or id (PE); repeat for several")
@node_options
def user_create(
    email: str,
    tenant_ref: str | None,
    authority: str,
    customer_ref: str | None,
    role_refs: tuple[str, ...],
    as_json: bool,
) -> None:
    with current_node().cloud("winstar user create") as cloud:
        tenant = cloud.default_tenant(tenant_ref)
        customer = cloud.find_customer(customer_ref, tenant) if customer_ref else None
        roles = [cloud.find_role(r, tenant) for r in role_refs]
        user = cloud.create_user(email, tenant, authority, customer, roles)
        value = user_json(cloud, user)
    emit(value, as_json)


@user_group.command("list")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@node_options
def user_list(tenant_ref: str | None, as_json: bool) -> None:
    with current_node().cloud("winstar user list") as cloud:
        tenant = cloud.default_tenant(tenant_ref)
        value = [user_json(cloud, u) for u in cloud.tenant_users(tenant.id)]
    emit(value, as_json, ["id", "email", "authority", "roles"])


# --------------------------------------------------------------------------------------------------
@click.group("edge")
def edge_group() -> None:
    """Edges: create, list, assign entities, sync, downlinks (cloud)."""


@edge_group.command("create")
@click.argument("name")
@click.option("--tenant", "tenant_ref", help="tenant name or id (default: the only tenant)")
@click.option("--customer", "customer_ref", help="customer name or id")
@node_options
def edge_create(name: str, tenant_ref: str | None, customer_ref: str | None, as_json: bool) -> None:
    """Create an edge; its secret is shown this once."""
    with current_node().cloud("winstar edge create") as cloud:
        tenant = cloud.default_tenant(tenant_ref)
        customer = cloud.find_customer(customer_ref, tenant) if customer_ref else None
        edge, secret = cloud.create_edge(name, tenant, customer)
        value = {
            "id": str(edge.id),
            "name": edge.name,
            "tenant_id": str(edge.tenant_id),
            "routing_key": edge.routing_key,
            "secret": secret,
        }
    emit(value, as_json)


@edge_group.command("list")
@node_options
def edge_list(as_json: bool) -> None:
    with current_node().cloud("winstar edge list") as cloud:
        value = edges_view(cloud.session)
    emit(value, as_json, ["id", "name", "tenant_id", "connected", "node", "last_seen", "pending"])


@edge_group.command("show")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_show(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """One edge: its link, the box (instance) the cloud serves, its downlinks and its last sync.

    `instance` is the edge database the cloud serves (null: none yet) and `conflict` a line about
    the last refused box (null if none); see `winstar edge reset-instance`. The sync's counts
    (added, updated, removed, unchanged: entities the sync sent, had the edge remove, found equal;
    a full sync counts only `added`) and `bytes` (the bodies it queued both ways) are null until
    a sync ran; `failed` and `held` count the events of the last sync that failed or are held
    (state "failed": the edge has not converged).
    """
    with current_node().cloud("winstar edge show") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        value = edge_details(cloud, edge)
    if not as_json:
        value["sync"] = sync_line(value["sync"])
    emit(value, as_json)


def sync_line(sync: dict[str, Any]) -> str:
    """A sync's outcome in one readable line: its state, when it ended, what it counted."""
    line = str(sync["state"]) + (f" at {sync['finished']}" if sync["finished"] else "")
    line += " (requested again)" if sync["requested"] and sync["state"] != "pending" else ""
    counts = [f"{sync[k]} {k}" for k in ("added", "updated", "removed", "unchanged") if sync[k] is not None]
    counts += [f"{sync[k]} {k}" for k in ("failed", "held") if sync[k]]
    if sync["bytes"] is not None:
        counts.append(f"{sync['bytes']:,} bytes")
    return line + (": " + ", ".join(counts) if counts else "")


@edge_group.command("reset-instance")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_reset_instance(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Move the edge to a new box: the next edge database that connects with this edge's
    credentials becomes the edge and gets a full sync; the box that had it is refused from then on.
    """
    with current_node().cloud("winstar edge reset-instance") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        reset_instance(cloud.session, edge)
        value = {"edge_id": str(edge.id), "reset": True}
    emit(value, as_json)


@edge_group.command("rotate-secret")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_rotate_secret(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Give the edge a new secret, shown this once: the old one opens nothing from now on (a link
    up now runs until it drops; the box then needs `winstar init edge` with the new secret)."""
    with current_node().cloud("winstar edge rotate-secret") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        secret = cloud.rotate_secret(edge)
        value = {"id": str(edge.id), "routing_key": edge.routing_key, "secret": secret}
    emit(value, as_json)


@edge_group.command("delete")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_delete(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Delete an edge with its assignments and downlinks (its entities stay)."""
    with current_node().cloud("winstar edge delete") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        edge_id = edge.id
        cloud.delete_edge(edge)
    emit({"id": str(edge_id), "deleted": True}, as_json)


def _edge_and_entity(cloud: CloudService, edge_ref: str, type_name: str, ref: str, tenant_ref: str | None):  # type: ignore[no-untyped-def]
    tenant = cloud.find_tenant(tenant_ref) if tenant_ref else None
    edge = cloud.find_edge(edge_ref, tenant)
    entity = cloud.entities.find_entity(type_name, ref, edge.tenant_id)
    return edge, entity


@edge_group.command("assign")
@click.argument("edge_ref", metavar="EDGE")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_assign(edge_ref: str, type_name: str, ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Assign an entity to an edge (queued while the edge is offline)."""
    with current_node().cloud("winstar edge assign") as cloud:
        edge, entity = _edge_and_entity(cloud, edge_ref, type_name, ref, tenant_ref)
        cloud.assign(edge, entity)
        value = {"edge_id": str(edge.id), "entity_id": str(entity.id), "type": entity.type}
    emit(value, as_json)


@edge_group.command("unassign")
@click.argument("edge_ref", metavar="EDGE")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_unassign(edge_ref: str, type_name: str, ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Unassign an entity from an edge."""
    with current_node().cloud("winstar edge unassign") as cloud:
        edge, entity = _edge_and_entity(cloud, edge_ref, type_name, ref, tenant_ref)
        cloud.unassign(edge, entity)
        value = {"edge_id": str(edge.id), "entity_id": str(entity.id), "type": entity.type}
    emit(value, as_json)


@edge_group.command("entities")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_entities(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """The entities effectively assigned to the edge (directly or through a group)."""
    with current_node().cloud("winstar edge entities") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        value = [
            {"id": str(e.id), "type": e.type, "name": e.name, "version": e.version}
            for e in cloud.effective_entities(edge)
        ]
    emit(value, as_json)


@edge_group.command("sync")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_sync(edge_ref: str, tenant_ref: str | None, as_json: bool) -> None:
    """Sync Edge: runs now if the edge is connected, else when it reconnects."""
    with current_node().cloud("winstar edge sync") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        cloud.request_sync(edge)
        value = {"edge_id": str(edge.id), "requested": True, "connected": edge_connected(edge)}
    emit(value, as_json)


@edge_group.command("downlinks")
@click.argument("edge_ref", metavar="EDGE")
@click.option("--status", type=STATUS, help="only events in this state")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many (newest first)")
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_downlinks(
    edge_ref: str, status: str | None, limit: int | None, tenant_ref: str | None, as_json: bool
) -> None:
    """Messages sent (or waiting to be sent) from the cloud to the edge, newest first."""
    with current_node().cloud("winstar edge downlinks") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        value = [event_json(ev) for ev in cloud.downlinks(edge, status, limit)]
    emit(
        value,
        as_json,
        ["seq", "created_time", "type", "action", "entity_id", "status", "delivered_time", "error"],
    )


@edge_group.command("retry")
@click.argument("edge_ref", metavar="EDGE")
@click.argument("seqs", metavar="[SEQ]...", nargs=-1, type=click.IntRange(1, 2**63 - 1))
@click.option("--tenant", "tenant_ref", help="tenant name or id, when the edge name is ambiguous")
@node_options
def edge_retry(edge_ref: str, seqs: tuple[int, ...], tenant_ref: str | None, as_json: bool) -> None:
    """Send failed downlinks again (all of them, or the SEQs given), as new events."""
    with current_node().cloud("winstar edge retry") as cloud:
        edge = cloud.find_edge(edge_ref, cloud.find_tenant(tenant_ref) if tenant_ref else None)
        new = cloud.retry_failed(edge, list(seqs) or None)
        value = {"edge_id": str(edge.id), "retried": len(new), "seqs": new}
    emit(value, as_json)


@click.group("cloud")
def cloud_group() -> None:
    """The cloud's nodes (every `winstar run` of this cloud database)."""


@cloud_group.command("nodes")
@node_options
def cloud_nodes(as_json: bool) -> None:
    """The cloud's live nodes: name, address, start, heartbeat, how many edges each serves.

    A node stopped cleanly is gone; a node killed stops counting as live after 15 s and its
    registration is removed after 60 s."""
    with current_node().cloud("winstar cloud nodes") as cloud:
        rows = [row for row in nodes_view(cloud.session) if row.pop("alive")]
    emit(rows, as_json, ["name", "address", "started", "last_seen", "edges"])


COMMANDS = [tenant_group, customer_group, role_group, user_group, edge_group, cloud_group]
