"""The edge's side: local entities, creation rules, the ``cloud_event`` outbox, the cloud's config."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import NotFound, PermissionDenied, WinstarError
from winstar_core.plugin.manager import Platform
from winstar_core.services.common import (
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
    BatchCache,
    EntityStore,
    entity_state,
    fit_name,
    get_config,
    parse_uuid,
    set_config,
)
from winstar_core.store.models import CloudEvent, Entity, EntityMember, NodeConfig, Tenant, User, now_ms
from winstar_core.store.outbox import Outbox, OutboxEvent, retry_failed
from winstar_core.transport.pb import sync_pb2 as pb

NOT_CONFIGURED = (
    "this edge has not connected to its cloud yet, so it does not know its users and edition: "
    "run `winstar run` once the cloud is reachable"
)


def may_write(user: User, resource: str, edition: str) -> bool:
    """The brief's rule for creating an entity on an edge.

    CE: any tenant administrator. PE: any user one of whose roles grants ``RESOURCE:WRITE``
    (``ALL`` matches any resource or operation).
    """
    if edition == "ce":
        return user.authority == "TENANT_ADMIN"
    granted = {p.upper() for p in user.permissions or []}
    wanted = {f"{resource}:WRITE", f"{resource}:ALL", "ALL:WRITE", "ALL:ALL"}
    return bool(granted & wanted)


class EdgeService:
    def __init__(self, session: Session, platform: Platform) -> None:
        self.session = session
        self.platform = platform
        self.types = platform.types
        self.entities = EntityStore(session, self.types)
        self.outbox = Outbox()
        self.batch: BatchCache | None = None
        #: the node's configuration as read in this transaction (read once: every upsert checks it)
        self._config: dict[str, Any] = {}
        #: rows of entities new to this edge, inserted together by :meth:`write_new` (a backlog is
        #: mostly these: one multi-row INSERT instead of an ORM object each)
        self._new: dict[uuid.UUID, dict[str, Any]] = {}

    def prefetch(self, events: list[pb.Event]) -> None:
        """Before applying a batch of downlinks: load in one go what every upsert would look up."""
        self.batch = BatchCache.for_events(self.session, self.types, self.tenant_id, events)
        # upserts may now collect rows for write_new(); the commit writes any a caller left behind
        sa.event.listen(self.session, "before_commit", lambda _session: self.write_new())

    # -- configuration received from the cloud ---------------------------------------------------

    def config(self, key: str) -> Any:
        if key not in self._config:
            self._config[key] = get_config(self.session, key)
        return self._config[key]

    @property
    def edge_id(self) -> uuid.UUID | None:
        return parse_uuid(self.config("edge_id"))

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return parse_uuid(self.config("tenant_id"))

    @property
    def edition(self) -> str | None:
        edition: str | None = self.config("edition")
        return edition

    def apply_config(self, config: pb.EdgeConfig, users: Iterable[pb.UserInfo] | None = None) -> None:
        """Store what the cloud says this edge is (sent in the Welcome), and its users."""
        tenant_id = uuid.UUID(config.tenant_id)
        if self.session.get(Tenant, tenant_id) is None:
            self.session.add(
                Tenant(id=tenant_id, name=config.tenant_name or str(tenant_id), created_time=now_ms())
            )
        for key, value in (
            ("edge_id", config.edge_id),
            ("edge_name", config.name),
            ("tenant_id", config.tenant_id),
            ("customer_id", config.customer_id or None),
            ("edition", config.edition),
        ):
            set_config(self.session, key, value)
        self._config.clear()
        self.session.flush()
        if users is not None:
            users = list(users)
            keep = {uuid.UUID(u.id) for u in users}
            self.session.execute(sa.delete(User).where(User.id.not_in(keep)) if keep else sa.delete(User))
            for info in users:
                self.apply_user(info)

    def apply_user(self, info: pb.UserInfo) -> None:
        uid = uuid.UUID(info.id)
        user = self.session.get(User, uid)
        clash = self.session.scalars(sa.select(User).where(User.email == info.email, User.id != uid)).first()
        if clash is not None:  # the email moved to another account in the cloud
            self.session.delete(clash)
            self.session.flush()
        if user is None:
            user = User(id=uid, created_time=now_ms())
            self.session.add(user)
        user.tenant_id = uuid.UUID(info.tenant_id) if info.tenant_id else (self.tenant_id or uid)
        user.email = info.email
        user.authority = info.authority
        user.customer_id = parse_uuid(info.customer_id) if info.customer_id else None
        user.permissions = sorted(info.permissions)
        user.updated_time = now_ms()
        self.session.flush()

    def remove_user(self, user_id: uuid.UUID) -> None:
        self.session.execute(sa.delete(User).where(User.id == user_id))

    # -- local entities --------------------------------------------------------------------------

    def _require_configured(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        edge_id, tenant_id, edition = self.edge_id, self.tenant_id, self.edition
        if edge_id is None or tenant_id is None or edition is None:
            raise WinstarError(NOT_CONFIGURED)
        return edge_id, tenant_id, edition

    def create_entity(
        self, type_name: str, name: str, data: dict[str, Any] | None, *, user_email: str | None
    ) -> Entity:
        etype = self.types.get(type_name)
        if not etype.creatable_on_edge:
            raise PermissionDenied(
                f"entities of type {type_name} cannot be created on an edge: assign them to it in the cloud"
            )
        if not user_email:
            raise WinstarError("creating an entity on an edge needs --user EMAIL (a user the edge knows)")
        edge_id, tenant_id, edition = self._require_configured()
        user = self.session.scalars(sa.select(User).where(User.email == user_email)).first()
        if user is None:
            raise NotFound(f"no user {user_email!r} is known to this edge")
        if user.tenant_id != tenant_id:
            raise PermissionDenied(f"user {user_email!r} belongs to another tenant than this edge")
        if not may_write(user, etype.resource(), edition):
            need = (
                "a tenant administrator" if edition == "ce" else f"a role granting {etype.resource()}:WRITE"
            )
            raise PermissionDenied(
                f"user {user_email!r} may not create a {type_name} on this edge "
                f"({edition.upper()} needs {need})"
            )
        entity = self.entities.insert(
            type_name=type_name,
            name=name,
            tenant_id=tenant_id,
            data=data,
            customer_id=user.customer_id,
            origin_edge_id=edge_id,
        )
        self._uplink(entity, ADDED)
        return entity

    def _owned(self, entity: Entity) -> None:
        if entity.origin_edge_id is None or entity.origin_edge_id != self.edge_id:
            raise PermissionDenied(
                f"{entity.type} {entity.name!r} is managed by the cloud: change it there, not on the edge"
            )

    def update_entity(
        self, entity: Entity, *, name: str | None = None, data: dict[str, Any] | None = None
    ) -> Entity:
        self._owned(entity)
        if self.entities.change(entity, name=name, data=data):
            self._uplink(entity, UPDATED)
        return entity

    def delete_entity(self, entity: Entity) -> None:
        self._owned(entity)
        self.outbox.uplink(OutboxEvent(entity.tenant_id, entity.type, DELETED, entity.id, b""))
        self.session.delete(entity)
        self.session.flush()

    def _uplink(self, entity: Entity, action: str) -> None:
        body = entity_state(entity, self.types).SerializeToString()
        self.outbox.uplink(OutboxEvent(entity.tenant_id, entity.type, action, entity.id, body))

    # -- uplinks ---------------------------------------------------------------------------------

    def uplinks(self, status: str | None = None, limit: int | None = None) -> list[CloudEvent]:
        stmt = sa.select(CloudEvent)
        if status:
            stmt = stmt.where(CloudEvent.status == status.upper())
        stmt = stmt.order_by(CloudEvent.seq.desc())
        if limit:
            stmt = stmt.limit(limit)
        return list(self.session.scalars(stmt))

    def retry_failed(self, seqs: list[int] | None = None) -> list[int]:
        """Send FAILED uplinks again (all, or those ``seqs``), as new events."""
        return retry_failed(self.session, CloudEvent, seqs)

    def pending_uplinks(self) -> int:
        return int(
            self.session.scalar(
                sa.select(sa.func.count()).select_from(CloudEvent).where(CloudEvent.status == "PENDING")
            )
            or 0
        )

    # -- downlinks: what the cloud sends -----------------------------------------------------------

    def apply_downlink(self, event: pb.Event) -> None:
        """Apply one event of the cloud's stream. Raises a :class:`WinstarError` to reject it (the
        cloud records the message as the event's FAILED reason)."""
        if event.type not in self.types or event.action not in (ADDED, UPDATED):
            self.write_new()  # what follows reads or deletes entities: let it see the new ones
        if event.type == USER_EVENT_TYPE:
            if event.action == DELETED:
                self.remove_user(uuid.UUID(event.entity_id))
            else:
                self.apply_user(pb.UserInfo.FromString(event.body))
            return
        if event.type == EDGE_EVENT_TYPE:
            self.apply_config(pb.EdgeConfig.FromString(event.body))
            return
        if event.type == SYNC_EVENT_TYPE:
            self.apply_sync_end(pb.SyncEnd.FromString(event.body))
            return
        if event.type not in self.types:
            raise WinstarError(f"this edge has no plugin for entity type {event.type!r}")
        if event.action in (ADDED, UPDATED):
            self.upsert(pb.EntityState.FromString(event.body))
        elif event.action in (DELETED, UNASSIGNED):
            entity_id = uuid.UUID(event.entity_id)
            self.session.execute(
                sa.delete(EntityMember).where(
                    sa.or_(EntityMember.container_id == entity_id, EntityMember.member_id == entity_id)
                )
            )
            self.session.execute(sa.delete(Entity).where(Entity.id == entity_id))
        elif event.action in (MEMBER_ADDED, MEMBER_REMOVED):
            m = pb.Membership.FromString(event.body)
            container_id, member_id = uuid.UUID(m.container_id), uuid.UUID(m.member_id)
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
            raise WinstarError(f"unknown downlink action {event.action!r}")

    def upsert(self, state: pb.EntityState) -> None:
        etype = self.types.get(state.type)
        if state.schema_version > etype.schema_version:
            raise WinstarError(
                f"{state.type} payload has schema version {state.schema_version}, this edge knows "
                f"{etype.schema_version}: upgrade the plugin on the edge"
            )
        if self.tenant_id is not None and state.tenant_id != str(self.tenant_id):
            raise PermissionDenied("this edge only holds entities of its own tenant")
        data = etype.deserialize(state.payload)
        entity_id = uuid.UUID(state.id)
        batch = self.batch
        row = self._new.get(entity_id)
        if row is not None and row["name"] == state.name:  # added earlier in this batch, not yet written
            if row["version"] <= state.version or row["origin_edge_id"] == self.edge_id:
                row.update(self._row(state, data))
            return
        if row is not None:  # renamed within the batch: take the general path on the written row
            self.write_new()
        known_absent = batch is not None and entity_id in batch.absent
        entity = None if known_absent else self.session.get(Entity, entity_id)
        if entity is not None and entity.version > state.version and entity.origin_edge_id != self.edge_id:
            return  # an older state than the one we hold: the newer one was applied already
        clash = None
        name_changes = entity is None or entity.name != state.name
        holder = batch.name_holder(state.type, state.name) if batch else True
        if name_changes and holder is not None and holder != entity_id:  # another entity may hold it
            self.write_new()
            clash = self.session.scalars(
                sa.select(Entity).where(
                    Entity.tenant_id == uuid.UUID(state.tenant_id),
                    Entity.type == state.type,
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
            batch.taken[(state.type, state.name)] = entity_id
        if entity is None and known_absent:
            self._new[entity_id] = {"id": entity_id, "created_time": now_ms(), **self._row(state, data)}
            return
        if entity is None:
            entity = Entity(id=entity_id, created_time=now_ms())
            self.session.add(entity)
        for key, value in self._row(state, data).items():
            setattr(entity, key, value)

    @staticmethod
    def _row(state: pb.EntityState, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "tenant_id": uuid.UUID(state.tenant_id),
            "customer_id": parse_uuid(state.customer_id) if state.customer_id else None,
            "type": state.type,
            "name": state.name,
            "data": data,
            "version": state.version,
            "origin_edge_id": parse_uuid(state.origin_edge_id) if state.origin_edge_id else None,
            "updated_time": now_ms(),
        }

    def write_new(self) -> None:
        """Insert the entities :meth:`upsert` collected, in one statement. Called before anything
        that reads entities, and by the receiver before it commits a batch."""
        if self._new:
            rows, self._new = list(self._new.values()), {}
            self.session.execute(sa.insert(Entity), rows)

    def apply_sync_end(self, end: pb.SyncEnd) -> None:
        """End of a full sync: remove what the edge should no longer have. Keeps this edge's own
        entities whose creation the cloud has not acknowledged yet. A list in parts is kept (in
        ``node_config``) until its last part; with a part missing nothing is removed."""
        ids = list(end.entity_ids)
        if end.parts > 1:
            prefix = f"sync:{end.sync_id}:"
            if end.part == 0:  # parts of an older sync that never completed: forget them
                self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like("sync:%")))
            if end.part + 1 < end.parts:
                set_config(self.session, f"{prefix}{end.part}", ids)
                return
            stored = sa.select(NodeConfig.key, NodeConfig.value).where(NodeConfig.key.like(f"{prefix}%"))
            rows: dict[str, list[str]] = {key: value for key, value in self.session.execute(stored)}
            self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like(f"{prefix}%")))
            missing = [n for n in range(end.parts - 1) if f"{prefix}{n}" not in rows]
            if missing:
                raise WinstarError(
                    f"Sync Edge incomplete: part(s) {', '.join(map(str, missing))} of {end.parts}"
                    " never applied here, so nothing was removed; run Sync Edge again"
                )
            ids = [i for n in range(end.parts - 1) for i in rows[f"{prefix}{n}"]] + ids
        keep = {uuid.UUID(i) for i in ids}
        unacked = set(
            self.session.scalars(
                sa.select(CloudEvent.entity_id).where(
                    CloudEvent.status == "PENDING", CloudEvent.entity_id.is_not(None)
                )
            )
        )
        stale = [i for i in self.session.scalars(sa.select(Entity.id)) if i not in keep and i not in unacked]
        for i in range(0, len(stale), 500):
            chunk = stale[i : i + 500]
            self.session.execute(
                sa.delete(EntityMember).where(
                    sa.or_(EntityMember.container_id.in_(chunk), EntityMember.member_id.in_(chunk))
                )
            )
            self.session.execute(sa.delete(Entity).where(Entity.id.in_(chunk)))
        set_config(self.session, "last_sync", now_ms())
