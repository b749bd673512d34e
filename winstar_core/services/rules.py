"""Where an entity created on an edge goes: the plugins' rules, then the core's default.

The rules (``winstar_edge_entity_created``) see an :class:`~winstar_core.plugin.api.EdgeCreation`,
implemented here on top of the cloud service; the service itself is never handed to a plugin.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from winstar_core.errors import NotFound
from winstar_core.plugin.api import EdgeCreation, EdgeInfo, EntityInfo
from winstar_core.store.models import Edge, Entity

if TYPE_CHECKING:
    from winstar_core.services.cloud_uplinks import CloudUplinks


def entity_info(entity: Entity) -> EntityInfo:
    """A read-only snapshot of ``entity`` for a plugin's rule."""
    return EntityInfo(
        id=entity.id,
        type=entity.type,
        name=entity.name,
        tenant_id=entity.tenant_id,
        data=types.MappingProxyType(dict(entity.data or {})),
        origin_edge_id=entity.origin_edge_id,
    )


def edge_info(edge: Edge) -> EdgeInfo:
    """What a plugin's rule sees of ``edge``."""
    return EdgeInfo(id=edge.id, name=edge.name, tenant_id=edge.tenant_id, customer_id=edge.customer_id)


class Creation(EdgeCreation):
    """The :class:`EdgeCreation` of one entity, bound to the cloud service's transaction."""

    def __init__(self, cloud: CloudUplinks, edge: Edge, entity: Entity) -> None:
        self._cloud = cloud
        self._edge = edge
        self._entity = entity
        #: rows behind the snapshots this rule was given or made
        self._rows: dict[uuid.UUID, Entity] = {entity.id: entity}
        self.edge = edge_info(edge)
        self.entity = entity_info(entity)
        self.edition = cloud.edition

    def _row(self, info: EntityInfo | None) -> Entity:
        if info is None:
            return self._entity
        row = self._rows.get(info.id) or self._cloud.session.get(Entity, info.id)
        if row is None or row.tenant_id != self._edge.tenant_id:
            raise NotFound(f"no {info.type} {info.name!r} in the edge's tenant")
        self._rows[row.id] = row
        return row

    def _info(self, row: Entity) -> EntityInfo:
        self._rows[row.id] = row
        return entity_info(row)

    def find_entity(self, type_name: str, name: str, scope: str = "") -> EntityInfo | None:
        """The entity of the edge's tenant of ``type_name`` named ``name`` in ``scope``, None if none."""
        self._cloud.types.get(type_name)  # an unknown type: a clear error
        row = self._cloud.entities.named(self._edge.tenant_id, type_name, name, scope)
        return self._info(row) if row is not None else None

    def create_entity(self, type_name: str, name: str, data: Mapping[str, Any] | None = None) -> EntityInfo:
        """Create an entity in the edge's tenant, as the cloud's own ``create_entity`` does."""
        tenant = self._cloud.find_tenant(self._edge.tenant_id)
        row = self._cloud.create_entity(type_name, name, tenant, dict(data or {}))
        return self._info(row)

    def add_member(self, container: EntityInfo, member: EntityInfo | None = None) -> None:
        """Make ``member`` (by default the new entity) a member of ``container``."""
        self._cloud.add_member(self._row(container), self._row(member))

    def assign(self, entity: EntityInfo | None = None) -> None:
        """Assign ``entity`` (by default the new entity) to the edge."""
        self._cloud.assign(self._edge, self._row(entity))


def place_created(cloud: CloudUplinks, edge: Edge, entity: Entity) -> Any:
    """Run the rules for ``entity``, just created by ``edge``; if none answers, the core's default
    assigns it to that edge. Returns the answering rule's value (``"assigned"`` for the default)."""
    created = Creation(cloud, edge, entity)
    answer = cloud.platform.hook.winstar_edge_entity_created(created=created)
    if answer is None:
        created.assign()
        answer = "assigned"
    return answer
