"""Applying downlinks: the events of the cloud's stream (users, configuration, entities, memberships,
the sync's end), and the upsert of an entity the cloud sends, new rows written in one statement."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from winstar_core.entity_types import shown
from winstar_core.errors import PermissionDenied, WinstarError
from winstar_core.services.batch import BatchCache
from winstar_core.services.constants import (
    ADDED,
    DELETED,
    EDGE_EVENT_TYPE,
    EDGE_SUFFIX,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    SYNC_EVENT_TYPE,
    UNASSIGNED,
    UPDATED,
    USER_EVENT_TYPE,
)
from winstar_core.services.digest import DIGEST_ACTION
from winstar_core.services.edge_config import EdgeCloudConfig
from winstar_core.services.edge_sync import EdgeSync
from winstar_core.services.entities import scope_of
from winstar_core.services.ids import parse_uuid
from winstar_core.services.names import fit_name, name_problem
from winstar_core.services.peer import event_entity_id, optional_peer_uuid, parse_body, peer_uuid
from winstar_core.store.models import Entity, EntityMember, now_ms
from winstar_core.transport.pb import sync_pb2 as pb


class EdgeDownlinks(EdgeCloudConfig, EdgeSync):
    """Apply the cloud's events. Uses ``batch`` (set by :meth:`prefetch`), ``_new`` (rows
    waiting for :meth:`write_new`), and the configuration, users and sync parts it builds on."""

    def prefetch(self, events: list[pb.Event]) -> None:
        """Before applying a batch of downlinks: load in one go what every upsert would look up,
        and which of the entities the batch removes have uplinks the cloud has not received."""
        self.batch = BatchCache.for_events(self.session, self.types, self.tenant_id, events)
        removed = {
            uid
            for e in events
            if e.action in (DELETED, UNASSIGNED)
            and e.type in self.types
            and (uid := parse_uuid(e.entity_id)) is not None
        }
        self.batch.unacked = self._unacked_seqs(removed)
        self.batch.unacked_known = removed
        # upserts may now collect rows for write_new(); the commit writes any a caller left behind
        sa.event.listen(self.session, "before_commit", lambda _session: self.write_new())

    def apply_downlink(self, event: pb.Event) -> None:
        """Apply one event of the cloud's stream. Raises a :class:`WinstarError` to reject it (the
        cloud records the message as the event's FAILED reason), for what the edge refuses and
        for anything in the event that is not what it should be: a body that does not parse, an
        id that is not a UUID... (a broken or hostile cloud gets its event refused, never the
        batch broken)."""
        if event.type not in self.types or event.action not in (ADDED, UPDATED):
            self.write_new()  # what follows reads or deletes entities: let it see the new ones
        if event.type == USER_EVENT_TYPE:
            if event.action == DELETED:
                self.remove_user(event_entity_id(event))
            elif event.action in (ADDED, UPDATED):
                self.apply_user(parse_body(pb.UserInfo, event.body))
            else:
                raise WinstarError(f"unknown action {shown(event.action)} for a user")
            return
        if event.type == EDGE_EVENT_TYPE:
            self.apply_config(parse_body(pb.EdgeConfig, event.body))
            return
        if event.type == SYNC_EVENT_TYPE and event.action == DIGEST_ACTION:
            self.apply_sync_digest(parse_body(pb.SyncDigest, event.body))
            return
        if event.type == SYNC_EVENT_TYPE:
            self.apply_sync_end(parse_body(pb.SyncEnd, event.body), event.seq)
            return
        if event.type not in self.types:
            raise WinstarError(f"this edge has no plugin for entity type {shown(event.type)}")
        if event.action in (ADDED, UPDATED):
            entity_id = event_entity_id(event)
            state = parse_body(pb.EntityState, event.body)
            if peer_uuid(state.id, "the entity's id") != entity_id or state.type != event.type:
                raise WinstarError("the event's body does not describe its entity")
            self.upsert(state)
        elif event.action in (DELETED, UNASSIGNED):
            entity_id = event_entity_id(event)
            self._keep_unacked(event.type, entity_id)
            self.session.execute(
                sa.delete(EntityMember).where(
                    sa.or_(EntityMember.container_id == entity_id, EntityMember.member_id == entity_id)
                )
            )
            self.session.execute(sa.delete(Entity).where(Entity.id == entity_id))
        elif event.action in (MEMBER_ADDED, MEMBER_REMOVED):
            m = parse_body(pb.Membership, event.body)
            container_id = peer_uuid(m.container_id, "the membership's container id")
            member_id = peer_uuid(m.member_id, "the membership's member id")
            row = self.session.get(EntityMember, (container_id, member_id))
            if event.action == MEMBER_REMOVED:
                if row is not None:
                    self.session.delete(row)
            elif row is None and None not in (
                self.session.get(Entity, member_id),
                self.session.get(Entity, container_id),
            ):
                self.session.add(
                    EntityMember(container_id=container_id, member_id=member_id, created_time=now_ms())
                )
        else:
            raise WinstarError(f"unknown downlink action {shown(event.action)}")

    def upsert(self, state: pb.EntityState) -> None:
        """Store an entity state the cloud sent: insert it, or update the row unless the row is newer.
        Its name held by one of this edge's own entities renames that one, as the cloud did; held by
        another entity, the event is refused."""
        etype = self.types.get(state.type)
        fields = self._row(state)
        if self.tenant_id is not None and fields["tenant_id"] != self.tenant_id:
            raise PermissionDenied("this edge only holds entities of its own tenant")
        why = name_problem(state.name, f"the {state.type}")
        if why:
            raise WinstarError(why)
        fields["data"] = etype.load_payload(state.payload, state.schema_version)
        fields["name_scope"] = scope_of(etype, fields["data"])
        entity_id: uuid.UUID = fields["id"]
        del fields["id"]
        batch = self.batch
        row = self._new.get(entity_id)
        if row is not None and row["name"] == state.name:  # added earlier in this batch, not yet written
            if row["version"] <= state.version or row["origin_edge_id"] == self.edge_id or state.replace:
                row.update(fields)
            return
        if row is not None:  # renamed within the batch: take the general path on the written row
            self.write_new()
        known_absent = batch is not None and entity_id in batch.absent
        entity = None if known_absent else self.session.get(Entity, entity_id)
        older = (
            entity is not None and entity.version > state.version and entity.origin_edge_id != self.edge_id
        )
        if older and not state.replace:  # (replace: a Sync Edge repairs a version the cloud never had)
            return  # an older state than the one we hold: the newer one was applied already
        clash = None
        name_changes = entity is None or entity.name != state.name
        known = batch is not None and batch.name_known(state.type, state.name)
        holder = batch.name_holder(state.type, state.name) if batch is not None and known else True
        if name_changes and holder is not None and holder != entity_id:  # another entity may hold it
            self.write_new()
            clash = self.session.scalars(
                sa.select(Entity).where(
                    Entity.tenant_id == fields["tenant_id"],
                    Entity.type == state.type,
                    Entity.name_scope == fields["name_scope"],
                    Entity.name == state.name,
                    Entity.id != entity_id,
                )
            ).first()
        if clash is not None:
            if clash.origin_edge_id is not None and clash.origin_edge_id == self.edge_id:
                # Our own entity lost the name in the cloud: same deterministic rule as the cloud.
                clash.name = fit_name(clash.name, f" ({str(self.config('edge_name'))[:EDGE_SUFFIX]})")
                self.session.flush()
            else:
                raise WinstarError(
                    f"a different {state.type} named {state.name!r} already exists on this edge"
                )
        if batch is not None:
            batch.absent.discard(entity_id)
            batch.took(state.type, state.name, entity_id)
        if entity is None and known_absent:
            self._new[entity_id] = {"id": entity_id, "created_time": now_ms(), **fields}
            return
        if entity is None:
            entity = Entity(id=entity_id, created_time=now_ms())
            self.session.add(entity)
        for key, value in fields.items():
            setattr(entity, key, value)

    @staticmethod
    def _row(state: pb.EntityState) -> dict[str, Any]:
        """The columns an EntityState sets (``data`` aside), its ids checked: a state whose ids
        are not UUIDs is refused, naming the one at fault."""
        return {
            "id": peer_uuid(state.id, "the entity's id"),
            "tenant_id": peer_uuid(state.tenant_id, "the entity's tenant id"),
            "customer_id": optional_peer_uuid(state.customer_id, "the entity's customer id"),
            "type": state.type,
            "name": state.name,
            "version": state.version,
            "origin_edge_id": optional_peer_uuid(state.origin_edge_id, "the entity's origin edge id"),
            "updated_time": now_ms(),
        }

    def write_new(self) -> None:
        """Insert the entities :meth:`upsert` collected, in one statement. Called before anything
        that reads entities, and by the receiver before it commits a batch."""
        if self._new:
            rows, self._new = list(self._new.values()), {}
            self.session.execute(sa.insert(Entity), rows)
