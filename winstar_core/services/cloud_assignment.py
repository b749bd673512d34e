"""Assignment: the effective set of an edge (its direct assignments plus the members of its
assigned containers), assigning and unassigning, container membership, and the ``ADDED`` /
``UNASSIGNED`` / ``MEMBER_*`` downlinks those changes imply (the outbox rules of
docs/architecture.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import cast

import sqlalchemy as sa

from winstar_core.errors import NotFound, PermissionDenied, WinstarError
from winstar_core.services.cloud_base import CloudBase
from winstar_core.services.constants import ADDED, MEMBER_ADDED, MEMBER_REMOVED, UNASSIGNED
from winstar_core.services.entities import entity_state
from winstar_core.services.ids import chunks
from winstar_core.store.models import Assignment, Edge, Entity, EntityMember, now_ms
from winstar_core.store.outbox import OutboxEvent
from winstar_core.store.rows import buffer_of
from winstar_core.transport.pb import sync_pb2 as pb


class CloudAssignment(CloudBase):
    """Effective sets, assign/unassign, members, and the downlinks they write. Uses ``session``,
    ``types``, ``entities``, ``outbox``; ``batch`` (its ``edges_of``, forgotten on every change
    of assignment), ``_fresh`` (entities this transaction inserted: nothing to look up) and
    ``_no_echo`` (no ``ADDED`` back to the edge that created the entity)."""

    def _direct_edges(self, entity_id: uuid.UUID) -> set[uuid.UUID]:
        """The edges ``entity_id`` is directly assigned to. Kept for the transaction only in a
        batch's optimistic pass (:attr:`_queue_rows`), which has no partial rollback: in the pass
        that applies each event in a savepoint, a refused event's rollback would leave an answer
        that is no longer true."""
        known = self._direct.get(entity_id)
        if known is None:
            known = set(
                self.session.scalars(sa.select(Assignment.edge_id).where(Assignment.entity_id == entity_id))
            )
            if self._queue_rows:
                self._direct[entity_id] = known
        return set(known)

    def _add_link(
        self, model: type[Assignment] | type[EntityMember], *parents: Entity, **row: object
    ) -> None:
        """Write an assignment or membership row: queued with the batch's other rows when the
        transaction writes set-based (:attr:`_queue_rows`), else added to the session. A parent
        the ORM has not written yet is written first (the queued rows go before the ORM's)."""
        if not self._queue_rows:
            self.session.add(model(**row))
            return
        if any(sa.inspect(p).pending for p in parents):
            self.session.flush()
        buffer_of(self.session).add(cast(sa.Table, model.__table__), row)

    def effective_edges(self, entity_id: uuid.UUID) -> set[uuid.UUID]:
        """The edges ``entity_id`` is assigned to, directly or through a container (from the
        batch's look-up when it holds the answer)."""
        known = self.batch.edges_of.get(entity_id) if self.batch is not None else None
        if known is not None:
            return set(known)
        via_container = (
            sa.select(Assignment.edge_id)
            .join(EntityMember, EntityMember.container_id == Assignment.entity_id)
            .where(EntityMember.member_id == entity_id)
        )
        direct = sa.select(Assignment.edge_id).where(Assignment.entity_id == entity_id)
        return set(self.session.scalars(sa.union(direct, via_container)))

    def _effective_edges_of(self, entity_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, set[uuid.UUID]]:
        """:meth:`effective_edges` of many entities, a statement per chunk of ids."""
        out: dict[uuid.UUID, set[uuid.UUID]] = {i: set() for i in entity_ids}
        for chunk in chunks(out):
            direct = sa.select(Assignment.entity_id, Assignment.edge_id).where(
                Assignment.entity_id.in_(chunk)
            )
            via = (
                sa.select(EntityMember.member_id, Assignment.edge_id)
                .join(Assignment, Assignment.entity_id == EntityMember.container_id)
                .where(EntityMember.member_id.in_(chunk))
            )
            for entity_id, edge_id in self.session.execute(sa.union(direct, via)):
                out[entity_id].add(edge_id)
        return out

    def _assignment_changes(self, entity_ids: Iterable[uuid.UUID]) -> None:
        """The edges of ``entity_ids`` are about to change: forget what the batch knew of them."""
        for i in entity_ids:
            self._direct.pop(i, None)
            if self.batch is not None:
                self.batch.edges_of.pop(i, None)

    def _effective_ids_stmt(self, edge_id: uuid.UUID) -> sa.CompoundSelect:
        direct = sa.select(Assignment.entity_id.label("entity_id")).where(Assignment.edge_id == edge_id)
        via = (
            sa.select(EntityMember.member_id.label("entity_id"))
            .join(Assignment, Assignment.entity_id == EntityMember.container_id)
            .where(Assignment.edge_id == edge_id)
        )
        return sa.union(direct, via)

    def effective_entity_ids(self, edge_id: uuid.UUID) -> set[uuid.UUID]:
        """The ids of the entities effectively assigned to ``edge_id`` (directly or through a container)."""
        return set(self.session.scalars(self._effective_ids_stmt(edge_id)))

    def effective_entities(self, edge: Edge) -> list[Entity]:
        """The entities effectively assigned to ``edge``, by type and name."""
        ids = self._effective_ids_stmt(edge.id).subquery()
        stmt = (
            sa.select(Entity)
            .where(Entity.id.in_(sa.select(ids.c.entity_id)))
            .order_by(Entity.type, Entity.name)
        )
        return list(self.session.scalars(stmt))

    def _effective_subset(self, edge_id: uuid.UUID, candidates: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        candidates = list(candidates)
        if not candidates:
            return set()
        out: set[uuid.UUID] = set()
        for chunk in chunks(candidates):
            direct = sa.select(Assignment.entity_id).where(
                Assignment.edge_id == edge_id, Assignment.entity_id.in_(chunk)
            )
            via = (
                sa.select(EntityMember.member_id)
                .join(Assignment, Assignment.entity_id == EntityMember.container_id)
                .where(Assignment.edge_id == edge_id, EntityMember.member_id.in_(chunk))
            )
            out.update(self.session.scalars(sa.union(direct, via)))
        return out

    def _emit_added(self, edge_id: uuid.UUID, ids: Iterable[uuid.UUID]) -> None:
        ids = [i for i in ids if self._no_echo != (edge_id, i)]
        entities = sorted(
            self.entities.by_ids(ids).values(), key=lambda e: (self.types.rank(e.type), e.type, e.name)
        )
        for e in entities:
            body = entity_state(e, self.types).SerializeToString()
            self.outbox.downlink(edge_id, OutboxEvent(e.tenant_id, e.type, ADDED, e.id, body))

    def _emit_removed(self, before: dict[uuid.UUID, set[uuid.UUID]]) -> None:
        """For each edge, UNASSIGNED for every id of ``before`` that is no longer effective."""
        for edge_id in sorted(before, key=str):
            gone = before[edge_id] - self._effective_subset(edge_id, before[edge_id])
            entities = sorted(
                self.entities.by_ids(gone).values(), key=lambda e: (-self.types.rank(e.type), e.type, e.name)
            )
            for e in entities:
                self.outbox.downlink(edge_id, OutboxEvent(e.tenant_id, e.type, UNASSIGNED, e.id, b""))

    def _membership_body(self, container: Entity, member: Entity) -> bytes:
        return pb.Membership(container_id=str(container.id), member_id=str(member.id)).SerializeToString()

    def assign(self, edge: Edge, entity: Entity) -> bool:
        """Assign ``entity`` (and, for a container, its members) to ``edge``. Idempotent: returns
        False if it was already assigned directly."""
        if entity.tenant_id != edge.tenant_id:
            raise PermissionDenied(
                f"{entity.type} {entity.name!r} belongs to another tenant than edge {edge.name!r}"
            )
        etype = self.types.get(entity.type)
        if entity.id in self._fresh and not etype.container:
            # inserted by this transaction and never assigned nor grouped: nothing to look up
            self._fresh.discard(entity.id)
            members: list[Entity] = []
            candidates = [entity.id]
            before: set[uuid.UUID] = set()
        else:
            if edge.id in self._direct_edges(entity.id):  # read once per transaction
                return False
            members = self.entities.members(entity) if etype.container else []
            candidates = [entity.id, *(m.id for m in members)]
            before = self._effective_subset(edge.id, candidates)
        self._assignment_changes(candidates)
        self._add_link(Assignment, entity, edge_id=edge.id, entity_id=entity.id, created_time=now_ms())
        self._emit_added(edge.id, [i for i in candidates if i not in before])
        for m in members:
            self.outbox.downlink(
                edge.id,
                OutboxEvent(
                    entity.tenant_id, entity.type, MEMBER_ADDED, entity.id, self._membership_body(entity, m)
                ),
            )
        return True

    def unassign(self, edge: Edge, entity: Entity) -> None:
        """Remove ``entity``'s direct assignment to ``edge`` (:class:`NotFound` if there is none);
        UNASSIGNED for what the edge no longer holds."""
        row = self.session.get(Assignment, (edge.id, entity.id))
        if row is None:
            raise NotFound(f"{entity.type} {entity.name!r} is not assigned to edge {edge.name!r}")
        etype = self.types.get(entity.type)
        candidates = (
            [entity.id, *(m.id for m in self.entities.members(entity))] if etype.container else [entity.id]
        )
        before = self._effective_subset(edge.id, candidates)
        self._assignment_changes(candidates)
        self.session.delete(row)
        self.session.flush()
        self._emit_removed({edge.id: before})

    def _check_container(self, container: Entity, member: Entity) -> None:
        ctype = self.types.get(container.type)
        if not ctype.container:
            raise WinstarError(f"{container.type} {container.name!r} cannot hold members")
        if self.types.get(member.type).container:
            raise WinstarError(f"a {member.type} cannot be a member of another container")
        if not ctype.accepts_member(container.data, member.type):
            raise WinstarError(
                f"{container.type} {container.name!r} does not hold entities of type {member.type}"
            )
        if container.tenant_id != member.tenant_id:
            raise PermissionDenied(f"{member.type} {member.name!r} belongs to another tenant")

    def add_member(self, container: Entity, member: Entity) -> bool:
        """Make ``member`` a member of ``container``; the container's edges get it. Returns False if it
        was one already."""
        self._check_container(container, member)
        fresh = member.id in self._fresh
        self._fresh.discard(member.id)
        if not fresh and self.session.get(EntityMember, (container.id, member.id)) is not None:
            return False
        edges = sorted(self._direct_edges(container.id), key=str)
        # a member inserted by this transaction is on no edge yet
        before = {e: set() if fresh else self._effective_subset(e, [member.id]) for e in edges}
        self._assignment_changes([member.id])
        self._add_link(
            EntityMember,
            container,
            member,
            container_id=container.id,
            member_id=member.id,
            created_time=now_ms(),
        )
        body = self._membership_body(container, member)
        for edge_id in edges:
            if not before[edge_id]:
                self._emit_added(edge_id, [member.id])
            self.outbox.downlink(
                edge_id, OutboxEvent(container.tenant_id, container.type, MEMBER_ADDED, container.id, body)
            )
        return True

    def remove_member(self, container: Entity, member: Entity) -> None:
        """Remove ``member`` from ``container`` (:class:`NotFound` if it is not one): MEMBER_REMOVED, then
        UNASSIGNED where it is no longer effective."""
        row = self.session.get(EntityMember, (container.id, member.id))
        if row is None:
            raise NotFound(
                f"{member.type} {member.name!r} is not a member of {container.type} {container.name!r}"
            )
        edges = sorted(self._direct_edges(container.id), key=str)
        before = {e: self._effective_subset(e, [member.id]) for e in edges}
        self._assignment_changes([member.id])
        self.session.delete(row)
        self.session.flush()
        body = self._membership_body(container, member)
        for edge_id in edges:
            self.outbox.downlink(
                edge_id, OutboxEvent(container.tenant_id, container.type, MEMBER_REMOVED, container.id, body)
            )
        self._emit_removed(before)

    def members(self, container: Entity) -> list[Entity]:
        """The members of ``container`` (a :class:`WinstarError` for a type that holds none)."""
        if not self.types.get(container.type).container:
            raise WinstarError(f"{container.type} {container.name!r} cannot hold members")
        return self.entities.members(container)
