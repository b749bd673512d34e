"""The edge's side: local entities, creation rules, the ``cloud_event`` outbox, the cloud's config."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.entity_types import shown, text_problem
from winstar_core.errors import NotFound, PermissionDenied, WinstarError
from winstar_core.plugin.manager import Platform
from winstar_core.services.common import (
    ADDED,
    AUTHORITIES,
    DELETED,
    EDGE_EVENT_TYPE,
    EDGE_SUFFIX,
    EDITIONS,
    MAX_NAME,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    SYNC_EVENT_TYPE,
    UNASSIGNED,
    UPDATED,
    USER_EVENT_TYPE,
    BatchCache,
    EntityStore,
    chunks,
    clean_name,
    entity_state,
    event_entity_id,
    fit_name,
    get_config,
    name_problem,
    optional_peer_uuid,
    parse_body,
    parse_uuid,
    peer_uuid,
    scope_of,
    set_config,
)
from winstar_core.store.models import (
    HELD,
    PENDING,
    CloudEvent,
    Entity,
    EntityMember,
    NodeConfig,
    StreamFailure,
    Tenant,
    User,
    now_ms,
)
from winstar_core.store.outbox import DOWNLINK_MARK_STREAM, MAX_SEQ, Outbox, OutboxEvent, retry_failed
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger(__name__)

#: how many missing parts of a sync list a refusal names
MISSING_PARTS_SHOWN = 5
#: a sync's id (the cloud makes a UUID) goes into ``node_config`` keys (64 characters) and their
#: LIKE patterns: no wildcard, nothing long
MAX_SYNC_ID = 36
SYNC_ID = re.compile(rf"[A-Za-z0-9-]{{1,{MAX_SYNC_ID}}}")

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

    # -- configuration received from the cloud ---------------------------------------------------

    def config(self, key: str) -> Any:
        if key not in self._config:
            self._config[key] = get_config(self.session, key)
        return self._config[key]

    @property
    def edge_id(self) -> uuid.UUID | None:
        return self._config_uuid("edge_id")

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return self._config_uuid("tenant_id")

    def _config_uuid(self, key: str) -> uuid.UUID | None:
        """A configured id, parsed once per transaction (every upsert asks for it)."""
        parsed = f"{key}:uuid"
        if parsed not in self._config:
            self._config[parsed] = parse_uuid(self.config(key))
        value: uuid.UUID | None = self._config[parsed]
        return value

    @property
    def edition(self) -> str | None:
        edition: str | None = self.config("edition")
        return edition

    def apply_config(self, config: pb.EdgeConfig, users: Iterable[pb.UserInfo] | None = None) -> None:
        """Store what the cloud says this edge is (sent in the Welcome), and its users.

        The users are upserted: the list never removes one (a Welcome without users must not wipe
        the edge's), only a ``_user`` DELETED downlink does. A user the edge cannot take (no UUID,
        no email...) is skipped with a log line: the Welcome is the session's handshake, and one
        bad user must not refuse it, nor keep the others out. A configuration that is not one
        (an edge or tenant id that is not a UUID...) is a :class:`WinstarError`."""
        edge_id = peer_uuid(config.edge_id, "the edge configuration's edge id")
        tenant_id = peer_uuid(config.tenant_id, "the edge configuration's tenant id")
        customer_id = optional_peer_uuid(config.customer_id, "the edge configuration's customer id")
        if config.edition not in EDITIONS:
            raise WinstarError(
                f"the edge configuration's edition {shown(config.edition)} is not one of {', '.join(EDITIONS)}"
            )
        edge_name = clean_name(config.name, "the edge")
        tenant_name = (
            clean_name(config.tenant_name, "the edge's tenant") if config.tenant_name.strip() else ""
        )
        held = self.tenant_id
        if held is not None and held != tenant_id:  # tenants never mix, whatever a cloud says
            raise WinstarError(
                f"the edge configuration names tenant {tenant_id}, and this edge holds tenant {held}'s"
                " entities: a database serves one tenant"
            )
        if self.session.get(Tenant, tenant_id) is None:
            taken = self.session.scalars(sa.select(Tenant.id).where(Tenant.name == tenant_name)).first()
            name = tenant_name if tenant_name and taken is None else str(tenant_id)
            self.session.add(Tenant(id=tenant_id, name=name, created_time=now_ms()))
        for key, value in (
            ("edge_id", str(edge_id)),
            ("edge_name", edge_name),
            ("tenant_id", str(tenant_id)),
            ("customer_id", str(customer_id) if customer_id else None),
            ("edition", config.edition),
        ):
            set_config(self.session, key, value)
        self._config.clear()
        self.session.flush()
        for info in users or ():
            try:
                fields = self._user_fields(info)
            except WinstarError as exc:
                log.warning("the cloud's welcome names a user this edge cannot take; skipped: %s", exc)
                continue
            self._upsert_user(fields)

    def apply_user(self, info: pb.UserInfo) -> None:
        """Add or change one user the cloud sent; a :class:`WinstarError` if it is not one."""
        self._upsert_user(self._user_fields(info))

    def _user_fields(self, info: pb.UserInfo) -> dict[str, Any]:
        """The row a UserInfo describes, checked: everything the store could refuse is refused
        here, with a one-line reason, before anything is written."""
        uid = peer_uuid(info.id, "the user's id")
        email = info.email.strip()
        who = f"user {uid}"
        if not email:
            raise WinstarError(f"{who} has no email address")
        why = text_problem(email)
        if why:
            raise WinstarError(f"{who}'s email may not contain {why}")
        if len(email) > MAX_NAME:
            raise WinstarError(f"{who}'s email has {len(email)} characters, more than {MAX_NAME}")
        if info.authority not in AUTHORITIES:
            raise WinstarError(
                f"{who}'s authority {shown(info.authority)} is not one of {', '.join(AUTHORITIES)}"
            )
        tenant_id = optional_peer_uuid(info.tenant_id, f"{who}'s tenant id") or self.tenant_id
        if tenant_id is None:
            raise WinstarError(f"{who} names no tenant, and this edge does not know its own yet")
        if self.tenant_id is not None and tenant_id != self.tenant_id:
            raise PermissionDenied(f"{who} belongs to another tenant than this edge")
        for permission in info.permissions:
            why = text_problem(permission)
            if why:
                raise WinstarError(f"{who}'s permissions may not contain {why}")
        return {
            "id": uid,
            "tenant_id": tenant_id,
            "email": email,
            "authority": info.authority,
            "customer_id": optional_peer_uuid(info.customer_id, f"{who}'s customer id"),
            "permissions": sorted(info.permissions),
        }

    def _upsert_user(self, fields: dict[str, Any]) -> None:
        uid = fields["id"]
        user = self.session.get(User, uid)
        clash = self.session.scalars(
            sa.select(User).where(User.email == fields["email"], User.id != uid)
        ).first()
        if clash is not None:  # the email moved to another account in the cloud
            self.session.delete(clash)
            self.session.flush()
        if user is None:
            user = User(id=uid, created_time=now_ms())
            self.session.add(user)
        for key, value in fields.items():
            setattr(user, key, value)
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
        return retry_failed(self.session, CloudEvent, seqs, refresh=self.entities.current_body)

    def pending_uplinks(self, status: str = PENDING) -> int:
        """How many uplinks are in ``status`` (PENDING: not delivered yet)."""
        return int(
            self.session.scalar(
                sa.select(sa.func.count()).select_from(CloudEvent).where(CloudEvent.status == status)
            )
            or 0
        )

    # -- downlinks: what the cloud sends -----------------------------------------------------------

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

    # -- what the cloud may not remove -----------------------------------------------------------

    def _hold(self, ids: list[uuid.UUID]) -> None:
        """Lock the rows of ``ids`` until the transaction ends (PostgreSQL): a local change to one
        of them, which writes its uplink in the same transaction, either committed before (and
        its uplink is seen) or waits for this one. SQLite needs nothing: the receiver's
        transaction holds the database's write lock from its start."""
        if ids and self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(sa.select(Entity.id).where(Entity.id.in_(ids)).with_for_update())

    def _unacked_seqs(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
        """For the entities ``ids``: the first PENDING uplink seq of those that have one, a
        statement per :data:`~winstar_core.services.common.IN_CHUNK` ids."""
        out: dict[uuid.UUID, int] = {}
        for chunk in chunks(sorted(ids)):
            self._hold(chunk)
            stmt = (
                sa.select(CloudEvent.entity_id, sa.func.min(CloudEvent.seq))
                .where(CloudEvent.status.in_((PENDING, HELD)), CloudEvent.entity_id.in_(chunk))
                .group_by(CloudEvent.entity_id)
            )
            out.update({eid: int(seq) for eid, seq in self.session.execute(stmt) if eid is not None})
        return out

    def _keep_unacked(self, type_name: str, entity_id: uuid.UUID) -> None:
        """Refuse to remove an entity with changes the cloud has not received yet (a device this
        edge created and has not sent up, typically): nothing made on an edge is lost. The cloud
        can send the removal again once it has them (`winstar edge retry`)."""
        batch = self.batch
        if batch is not None and entity_id in batch.unacked_known:
            if entity_id not in batch.unacked:
                return  # none when the batch began, and the rows are held since
        else:
            self._hold([entity_id])
        # pending, or not known: ask (an ack may have landed since the batch began)
        seq = self.session.scalars(
            sa.select(CloudEvent.seq)
            .where(CloudEvent.status.in_((PENDING, HELD)), CloudEvent.entity_id == entity_id)
            .order_by(CloudEvent.seq)
            .limit(1)
        ).first()
        if seq is None:
            return
        entity = self.session.get(Entity, entity_id)
        what = f"{entity.type} {entity.name!r}" if entity is not None else f"{type_name} {entity_id}"
        raise WinstarError(
            f"{what} has changes on this edge that the cloud has not received yet (uplink seq {seq}); kept"
        )

    # -- entities the cloud sends ----------------------------------------------------------------

    def upsert(self, state: pb.EntityState) -> None:
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
            if row["version"] <= state.version or row["origin_edge_id"] == self.edge_id:
                row.update(fields)
            return
        if row is not None:  # renamed within the batch: take the general path on the written row
            self.write_new()
        known_absent = batch is not None and entity_id in batch.absent
        entity = None if known_absent else self.session.get(Entity, entity_id)
        if entity is not None and entity.version > state.version and entity.origin_edge_id != self.edge_id:
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

    def apply_sync_end(self, end: pb.SyncEnd, seq: int = 0) -> None:
        """End of a full sync: remove what the edge should no longer have. Keeps this edge's own
        entities whose creation the cloud has not acknowledged yet. A list in parts is kept (in
        ``node_config``) until its last part; with a part missing nothing is removed. A part that
        is not one (an id that is not a UUID, a part number past the count) fails by itself, so
        the last part then fails too and nothing is removed."""
        ids = [peer_uuid(i, "an entity id of the sync's list") for i in end.entity_ids]
        if end.parts > 1:
            sync_id = end.sync_id
            if not SYNC_ID.fullmatch(sync_id):
                raise WinstarError(
                    f"the sync's id {shown(sync_id)} is not 1 to {MAX_SYNC_ID} letters, digits or dashes"
                )
            if end.part >= end.parts:
                raise WinstarError(f"the sync's part {end.part} is past its count of {end.parts}")
            prefix = f"sync:{sync_id}:"
            if end.part == 0:  # parts of an older sync that never completed: forget them
                self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like("sync:%")))
            if end.part + 1 < end.parts:
                set_config(self.session, f"{prefix}{end.part}", [str(i) for i in ids])
                return
            stored = sa.select(NodeConfig.key, NodeConfig.value).where(NodeConfig.key.like(f"{prefix}%"))
            rows: dict[str, list[str]] = {key: value for key, value in self.session.execute(stored)}
            self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like(f"{prefix}%")))
            missing: list[int] = []
            part = 0
            # at most a few named: a hostile count of 4 billion parts must not cost 4 billion steps
            while part < end.parts - 1 and len(missing) <= MISSING_PARTS_SHOWN:
                if f"{prefix}{part}" not in rows:
                    missing.append(part)
                part += 1
            if missing:
                named = ", ".join(map(str, missing[:MISSING_PARTS_SHOWN]))
                more = " and more" if len(missing) > MISSING_PARTS_SHOWN else ""
                raise WinstarError(
                    f"Sync Edge incomplete: part(s) {named}{more} of {end.parts}"
                    " never applied here, so nothing was removed; run Sync Edge again"
                )
            ids = [uuid.UUID(i) for n in range(end.parts - 1) for i in rows[f"{prefix}{n}"]] + ids
        keep = set(ids)
        # what this edge sent up that the list cannot name: still pending, or applied by the cloud
        # after it wrote the sync (the ack may have come back before the sync did)
        unacked = set(
            self.session.scalars(
                sa.select(CloudEvent.entity_id).where(
                    sa.or_(
                        CloudEvent.status.in_((PENDING, HELD)),
                        CloudEvent.seq > min(end.uplink_mark, MAX_SEQ),
                    ),
                    CloudEvent.entity_id.is_not(None),
                )
            )
        )
        stale = [i for i in self.session.scalars(sa.select(Entity.id)) if i not in keep and i not in unacked]
        for chunk in chunks(stale):
            self.session.execute(
                sa.delete(EntityMember).where(
                    sa.or_(EntityMember.container_id.in_(chunk), EntityMember.member_id.in_(chunk))
                )
            )
            self.session.execute(sa.delete(Entity).where(Entity.id.in_(chunk)))
        set_config(self.session, "last_sync", now_ms())
        set_config(self.session, "last_sync_failed", self._sync_failures(end, seq))

    def _sync_failures(self, end: pb.SyncEnd, seq: int) -> int | None:
        """How many events of the sync ending at ``seq`` this edge refused (None: the cloud did
        not say how many events the sync wrote). Not zero: the edge has not converged."""
        if not end.events or not seq:
            return None
        first = max(seq - int(end.events) + 1, 1)
        return int(
            self.session.scalar(
                sa.select(sa.func.count())
                .select_from(StreamFailure)
                .where(StreamFailure.stream == DOWNLINK_MARK_STREAM, StreamFailure.seq.between(first, seq))
            )
            or 0
        )
