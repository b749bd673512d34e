"""The ``entity_group`` entity type, the ``winstar group`` commands, and the PE rule of the brief.

A group's data names the type of its members (``{"entity_type": "device"}``). Memberships are kept
by the core's generic container machinery, so assigning a group to an edge assigns its members,
including members added later.

PE rule: an entity created on an edge is added to the group ``[Edge] ${EDGE_NAME} All`` of its
type (one group per edge and member type, created once), and that group is assigned to the edge.
"""

from __future__ import annotations

from typing import Any

import click
from marshmallow import RAISE, Schema, fields, validate

from winstar_core import EntityType, EntityTypeRegister, hookimpl
from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.errors import WinstarError
from winstar_core.node import CLOUD
from winstar_core.plugin.api import EdgeCreation

GROUP_TYPE = "entity_group"


def edge_group_name(edge_name: str) -> str:
    return f"[Edge] {edge_name} All"


class EntityGroupSchema(Schema):
    class Meta:
        unknown = RAISE

    entity_type = fields.String(required=True, validate=validate.Length(min=1))
    description = fields.String(load_default=None, allow_none=True)


class EntityGroupType(EntityType):
    name = GROUP_TYPE
    schema = EntityGroupSchema
    schema_version = 1
    container = True

    @classmethod
    def name_scope(cls, data: Any) -> str:
        """Groups of different member types may share a name (as in PE: ``[Edge] Plant 7 All``
        exists once per type an edge creates)."""
        return str(data.get("entity_type") or "")

    @classmethod
    def accepts_member(cls, data: Any, member_type: str) -> bool:
        return bool(data.get("entity_type") == member_type)

    @classmethod
    def merge(cls, current: Any, changes: Any) -> dict[str, Any]:
        if "entity_type" in changes and changes["entity_type"] != current.get("entity_type"):
            raise WinstarError("the member type of a group cannot change")
        return super().merge(current, changes)


@hookimpl
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    register.add(EntityGroupType)


@hookimpl(trylast=True)  # a fallback: a third party's own rule runs first and overrides it
def winstar_edge_entity_created(created: EdgeCreation) -> Any:
    """PE: an entity created on an edge joins the group ``[Edge] EDGE_NAME All`` of its type
    (one group per edge and member type, created once), and that group is assigned to the edge."""
    if created.edition != "pe":
        return None
    member_type = created.entity.type
    name = edge_group_name(created.edge.name)
    group = created.find_entity(GROUP_TYPE, name, scope=member_type)
    if group is None:
        group = created.create_entity(GROUP_TYPE, name, {"entity_type": member_type})
    created.add_member(group)
    created.assign(group)
    return "group"


# --------------------------------------------------------------------------------------------------
# winstar group ...
# --------------------------------------------------------------------------------------------------


@click.group("group")
def group_cli() -> None:
    """Entity groups: members (from the groups plugin)."""


def _resolve(
    svc: Any, group_ref: str, type_name: str | None = None, ref: str | None = None
) -> tuple[Any, Any]:
    group = svc.entities.find_entity(GROUP_TYPE, group_ref)
    member = (
        svc.entities.find_entity(type_name, ref, group.tenant_id)
        if type_name is not None and ref is not None
        else None
    )
    return group, member


@group_cli.command("add")
@click.argument("group_ref", metavar="GROUP")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@node_options
def group_add(group_ref: str, type_name: str, ref: str, as_json: bool) -> None:
    """Add an entity to a group (edges the group is assigned to receive it)."""
    with current_node().cloud("winstar group add") as cloud:
        group, member = _resolve(cloud, group_ref, type_name, ref)
        cloud.add_member(group, member)
        value = {"group_id": str(group.id), "entity_id": str(member.id)}
    emit(value, as_json)


@group_cli.command("remove")
@click.argument("group_ref", metavar="GROUP")
@click.argument("type_name", metavar="TYPE")
@click.argument("ref", metavar="REF")
@node_options
def group_remove(group_ref: str, type_name: str, ref: str, as_json: bool) -> None:
    """Remove an entity from a group."""
    with current_node().cloud("winstar group remove") as cloud:
        group, member = _resolve(cloud, group_ref, type_name, ref)
        cloud.remove_member(group, member)
        value = {"group_id": str(group.id), "entity_id": str(member.id)}
    emit(value, as_json)


@group_cli.command("members")
@click.argument("group_ref", metavar="GROUP")
@node_options
def group_members(group_ref: str, as_json: bool) -> None:
    """The members of a group."""
    node = current_node()
    with node.cloud() if node.role() == CLOUD else node.edge() as svc:
        group, _ = _resolve(svc, group_ref)
        value = [{"id": str(m.id), "type": m.type, "name": m.name} for m in svc.entities.members(group)]
    emit(value, as_json)


@hookimpl
def winstar_add_commands(cli: click.Group) -> None:
    cli.add_command(group_cli)
