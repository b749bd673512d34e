"""Applying uplinks: the changes an edge sent to the entities it owns, checked against its rights,
renamed when their name is taken in the cloud, and placed by the assignment rules."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from winstar_core.errors import NotFound, PermissionDenied, WinstarError
from winstar_core.services.batch import BatchCache
from winstar_core.services.cloud_digest import CloudDigest
from winstar_core.services.cloud_entities import CloudEntities
from winstar_core.services.constants import ADDED, DELETED, EDGE_SUFFIX, SYNC_EVENT_TYPE, UPDATED
from winstar_core.services.digest import DIFF_ACTION
from winstar_core.services.entities import entity_state, scope_of
from winstar_core.services.ids import parse_uuid
from winstar_core.services.names import clean_name, fit_name
from winstar_core.services.peer import event_entity_id, optional_peer_uuid, parse_body
from winstar_core.services.rules import place_created
from winstar_core.store.models import Customer, Edge, Entity
from winstar_core.store.outbox import OutboxEvent
from winstar_core.transport.pb import sync_pb2 as pb


class CloudUplinks(CloudEntities, CloudDigest):
    """Apply an edge's uplinks. Uses ``batch`` (set by :meth:`prefetch`), ``_fresh``,
    ``_created_by_edge`` and ``_no_echo``, and the entity writes, assignment and tenants of the
    parts it builds on."""

    def prefetch(self, edge: Edge, events: list[pb.Event]) -> None:
        """Before applying a batch of uplinks: load in one go what every event would look up (the
        entities it names, the holders of its names, the edges the edge's own entities are
        assigned to), so that a batch of updates or deletes looks nothing up per event."""
        deleted = {
            uid
            for e in events
            if e.action == DELETED and e.type in self.types and (uid := parse_uuid(e.entity_id)) is not None
        }
        batch = BatchCache.for_events(self.session, self.types, edge.tenant_id, events, also=deleted)
        own = [i for i, e in batch.loaded.items() if e.origin_edge_id == edge.id]
        batch.edges_of = self._effective_edges_of(own)
        self.batch = batch
        self._queue_rows = True

    def free_name_for(
        self, edge: Edge, type_name: str, name: str, entity_id: uuid.UUID, scope: str = ""
    ) -> str:
        """The name an edge-created entity gets in the cloud. If ``name`` is taken in the tenant by
        another entity, the deterministic ``NAME (EDGE_NAME)``, then ``NAME (EDGE_NAME ID8)``; the
        cloud sends the entity back under that name, so the edge ends up agreeing."""
        where = edge.name[:EDGE_SUFFIX]
        batch = self.batch
        for candidate in (
            name,
            fit_name(name, f" ({where})"),
            fit_name(name, f" ({where} {str(entity_id)[:8]})"),
        ):
            if (
                batch is not None
                and batch.name_known(type_name, candidate)
                and batch.name_holder(type_name, candidate) in (None, entity_id)
            ):
                return candidate  # free (or its own) when the batch began, and no event took it since
            clash = self.session.scalars(
                sa.select(Entity.id).where(
                    Entity.tenant_id == edge.tenant_id,
                    Entity.type == type_name,
                    Entity.name_scope == scope,
                    Entity.name == candidate,
                )
            ).first()
            if clash is None or clash == entity_id:
                return candidate
        return fit_name(name, f" ({entity_id})")  # the id alone is unique

    def _check_edge_rights(self, edge: Edge, entity: Entity) -> None:
        """An edge may change or delete an entity only if it created it and still holds it
        (directly or through a container): one unassigned from it, and maybe assigned to another
        edge since, is no longer its to change. One it created in this very transaction is, whatever
        the assignment rules made of it."""
        if entity.origin_edge_id != edge.id:
            raise PermissionDenied(f"{entity.type} {entity.name!r} is not owned by this edge")
        if entity.id not in self._created_by_edge and edge.id not in self.effective_edges(entity.id):
            raise PermissionDenied(f"{entity.type} {entity.name!r} is no longer assigned to this edge")

    def apply_uplink(self, edge: Edge, event: pb.Event) -> None:
        """Apply one change an edge sent. Raises a :class:`WinstarError` (the edge sees its message
        as the event's FAILED reason) for anything outside the edge's rights, and for anything in
        the event that is not what it should be (a body that does not parse, an id that is not a
        UUID...): a broken or hostile edge gets its event refused, never a batch broken. A
        ``_sync`` event is the edge's answer to a digest sync (:meth:`answer_sync_diff`)."""
        if event.type == SYNC_EVENT_TYPE and event.action == DIFF_ACTION:
            self.answer_sync_diff(edge, event)
            return
        if event.type not in self.types:
            raise WinstarError(f"unknown entity type {event.type!r}")
        etype = self.types.get(event.type)
        if not etype.creatable_on_edge:
            raise PermissionDenied(f"entities of type {event.type} cannot be created or changed on an edge")
        entity_id = event_entity_id(event)
        known_absent = self.batch is not None and entity_id in self.batch.absent
        existing = None if known_absent else self.session.get(Entity, entity_id)
        if existing is not None and existing.tenant_id != edge.tenant_id:
            raise PermissionDenied("that entity belongs to another tenant")
        if event.action == DELETED:
            if existing is None:
                return  # already gone: deleting twice has the same effect as once
            self._check_edge_rights(edge, existing)
            self.delete_entity(existing)
            return
        if event.action not in (ADDED, UPDATED):
            raise WinstarError(f"unknown uplink action {event.action!r}")
        state = parse_body(pb.EntityState, event.body)
        if state.id != event.entity_id or state.type != event.type:
            raise WinstarError("the event's body does not describe its entity")
        if state.tenant_id != str(edge.tenant_id):
            raise PermissionDenied("an edge may only create entities in its own tenant")
        wanted = clean_name(state.name, f"the {event.type}")
        customer_id = optional_peer_uuid(state.customer_id, "the entity's customer id")
        data = etype.load_payload(state.payload, state.schema_version)
        scope = scope_of(etype, data)
        if existing is not None:
            self._check_edge_rights(edge, existing)
            name = self.free_name_for(edge, existing.type, wanted, existing.id, scope)
            self.update_entity(existing, name=name, data=data, replace=True)
            if self.batch is not None:
                self.batch.took(existing.type, name, existing.id)
            return
        if event.action == UPDATED:
            raise NotFound(f"{event.type} {wanted!r} is unknown to the cloud")
        name = self.free_name_for(edge, event.type, wanted, entity_id, scope)
        tenant = self.find_tenant(edge.tenant_id)
        customer = self.session.get(Customer, customer_id) if customer_id else None
        entity = self.entities.insert(
            type_name=event.type,
            name=name,
            tenant_id=tenant.id,
            data=data,
            customer_id=customer.id if customer and customer.tenant_id == tenant.id else None,
            entity_id=entity_id,
            origin_edge_id=edge.id,
            validated=True,
            checked=True,  # the id is new (looked up above) and free_name_for found the name free
            queued=self._queue_rows,
        )
        self._fresh.add(entity.id)
        self._created_by_edge.add(entity.id)
        if self.batch is not None:
            self.batch.absent.discard(entity.id)
            self.batch.took(entity.type, name, entity.id)
        self._no_echo = (edge.id, entity.id)  # the edge has it already...
        try:
            place_created(self, edge, entity)
        finally:
            self._no_echo = None
        if name != state.name:  # ...unless the cloud had to rename it: tell the edge
            body = entity_state(entity, self.types).SerializeToString()
            self.outbox.downlink(
                edge.id, OutboxEvent(entity.tenant_id, entity.type, UPDATED, entity.id, body)
            )
