"""The cloud's entity writes: create, update, delete, each with the downlinks it implies to the
edges the entity is effectively assigned to."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from winstar_core.services.cloud_assignment import CloudAssignment
from winstar_core.services.constants import DELETED, UPDATED
from winstar_core.services.entities import entity_state
from winstar_core.store.models import Assignment, Customer, Edge, Entity, EntityMember, Tenant
from winstar_core.store.outbox import OutboxEvent


class CloudEntities(CloudAssignment):
    """Create, update and delete entities. Uses ``entities``, ``outbox``, ``_fresh`` (a created
    entity is on no edge yet), and the effective sets of :class:`CloudAssignment`."""

    def create_entity(
        self,
        type_name: str,
        name: str,
        tenant: Tenant,
        data: dict[str, Any] | None = None,
        *,
        customer: Customer | None = None,
        entity_id: uuid.UUID | None = None,
        origin_edge: Edge | None = None,
    ) -> Entity:
        """Create an entity in ``tenant``, its data validated by its type. It is assigned to no edge
        yet, so it writes no event."""
        entity = self.entities.insert(
            type_name=type_name,
            name=name,
            tenant_id=tenant.id,
            data=data,
            customer_id=customer.id if customer else None,
            entity_id=entity_id,
            origin_edge_id=origin_edge.id if origin_edge else None,
        )
        self._fresh.add(entity.id)
        return entity

    def update_entity(
        self,
        entity: Entity,
        *,
        name: str | None = None,
        data: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> Entity:
        """Change ``entity``'s name and/or data (merged, or its whole state with ``replace``: see
        ``EntityStore.change``); if anything changed, UPDATED to every edge it is effectively
        assigned to."""
        if self.entities.change(entity, name=name, data=data, replace=replace):
            body = entity_state(entity, self.types).SerializeToString()
            for edge_id in sorted(self.effective_edges(entity.id), key=str):
                self.outbox.downlink(
                    edge_id, OutboxEvent(entity.tenant_id, entity.type, UPDATED, entity.id, body)
                )
        return entity

    def delete_entity(self, entity: Entity) -> None:
        """Delete ``entity``: DELETED to its edges and, for a container, UNASSIGNED for the members no
        longer effective."""
        etype = self.types.get(entity.type)
        edges = self.effective_edges(entity.id)
        member_ids = [m.id for m in self.entities.members(entity)] if etype.container else []
        self._assignment_changes([entity.id, *member_ids])
        direct_edges = self._direct_edges(entity.id) if etype.container else set()
        before = {e: self._effective_subset(e, member_ids) for e in direct_edges}
        self.session.execute(sa.delete(Assignment).where(Assignment.entity_id == entity.id))
        self.session.execute(
            sa.delete(EntityMember).where(
                sa.or_(EntityMember.container_id == entity.id, EntityMember.member_id == entity.id)
            )
        )
        self._assignment_changes([entity.id])  # read above, before its assignments went
        for edge_id in sorted(edges, key=str):
            self.outbox.downlink(edge_id, OutboxEvent(entity.tenant_id, entity.type, DELETED, entity.id, b""))
        self._emit_removed(before)
        self.session.delete(entity)
        self.session.flush()
