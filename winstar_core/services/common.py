"""Pieces shared by the cloud and the edge services."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.entity_types import EntityTypeRegister
from winstar_core.errors import Conflict, NotFound, WinstarError
from winstar_core.store.models import Entity, EntityMember, NodeConfig, Tenant, now_ms
from winstar_core.transport.pb import sync_pb2 as pb

# Event actions
ADDED = "ADDED"
UPDATED = "UPDATED"
DELETED = "DELETED"
UNASSIGNED = "UNASSIGNED"
MEMBER_ADDED = "MEMBER_ADDED"
MEMBER_REMOVED = "MEMBER_REMOVED"

#: event types the core itself uses; plugin wire names may not start with "_"
USER_EVENT_TYPE = "_user"
EDGE_EVENT_TYPE = "_edge"
SYNC_EVENT_TYPE = "_sync"
#: entity ids per ``_sync`` event: 100,000 ids are about 3.9 MB, well inside one message
SYNC_IDS_PER_EVENT = 100_000

AUTHORITIES = ("TENANT_ADMIN", "CUSTOMER_USER")

#: a link whose process has not touched its heartbeat for this long is shown as disconnected
#: (the process was killed without a chance to say so); heartbeats come every 5 s
LIVENESS_MS = 20_000


def parse_uuid(ref: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(str(ref))
    except ValueError:
        return None


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    import datetime as dt

    return (
        dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def get_config(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(NodeConfig, key)
    return default if row is None else row.value


def set_config(session: Session, key: str, value: Any) -> None:
    row = session.get(NodeConfig, key)
    if row is None:
        session.add(NodeConfig(key=key, value=value))
    else:
        row.value = value


def entity_state(entity: Entity, types: EntityTypeRegister) -> pb.EntityState:
    etype = types.get(entity.type)
    return pb.EntityState(
        id=str(entity.id),
        type=entity.type,
        name=entity.name,
        tenant_id=str(entity.tenant_id),
        customer_id=str(entity.customer_id) if entity.customer_id else "",
        version=entity.version,
        schema_version=etype.schema_version,
        payload=etype.serialize(entity.data),
        origin_edge_id=str(entity.origin_edge_id) if entity.origin_edge_id else "",
    )


def entity_json(entity: Entity) -> dict[str, Any]:
    return {
        "id": str(entity.id),
        "type": entity.type,
        "name": entity.name,
        "tenant_id": str(entity.tenant_id),
        "customer_id": str(entity.customer_id) if entity.customer_id else None,
        "version": entity.version,
        "data": entity.data,
        "created_time": iso(entity.created_time),
        "updated_time": iso(entity.updated_time),
    }


def event_json(ev: Any) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "created_time": iso(ev.created_time),
        "type": ev.type,
        "action": ev.action,
        "entity_id": str(ev.entity_id) if ev.entity_id else None,
        "status": ev.status.lower(),
        "delivered_time": iso(ev.delivered_time),
        "error": ev.error,
    }


#: names (of tenants, customers, roles, edges, entities) and emails are at most this long
MAX_NAME = 255


def clean_name(raw: str, what: str) -> str:
    """``raw`` stripped, refused when empty or longer than :data:`MAX_NAME` (``what``: "a tenant")."""
    name = raw.strip()
    if not name:
        raise WinstarError(f"{what} needs a non-empty name")
    if "\x00" in name:
        raise WinstarError(f"{what}'s name may not contain the NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise WinstarError(f"{what}'s name is not valid UTF-8 text: {name!r}") from None
    if len(name) > MAX_NAME:
        raise WinstarError(f"{what}'s name may be at most {MAX_NAME} characters, this one has {len(name)}")
    return name


#: how much of an edge's name goes into the suffix of a renamed entity (``NAME (EDGE_NAME)``)
EDGE_SUFFIX = 200


def fit_name(name: str, suffix: str) -> str:
    """``name`` + ``suffix``, ``name`` shortened so that the whole stays within :data:`MAX_NAME`."""
    return name[: MAX_NAME - len(suffix)] + suffix


def parse_json_data(raw: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object, ``@PATH`` to read it from a file, or ``-`` for standard input."""
    if raw is None:
        return None
    import json
    import sys

    if raw == "-":
        try:
            raw = sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise WinstarError(f"--data -: standard input is not UTF-8 text ({exc.reason})") from None
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as fh:
                raw = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise WinstarError(
                f"--data {raw}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WinstarError(
            f"--data is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise WinstarError("--data must be a JSON object")
    return value


class BatchCache:
    """What a receiver learned about a batch before applying it, so that the common case costs no
    statement per event. Only ever used to skip a look-up whose answer is known; a stale entry
    costs a real query, never a wrong answer (and the database's constraints back it up)."""

    def __init__(self) -> None:
        self.absent: set[uuid.UUID] = set()  # ids known not to exist when the batch began
        #: the entities that did exist, held so that the session's identity map (which keeps only
        #: weak references) answers the apply's own look-ups without a statement
        self.loaded: dict[uuid.UUID, Any] = {}
        self.taken: dict[tuple[str, str], uuid.UUID] = {}  # (type, name) -> id holding it

    @classmethod
    def for_events(
        cls, session: Session, types: EntityTypeRegister, tenant_id: uuid.UUID | None, events: list[Any]
    ) -> BatchCache:
        """The cache for a batch: the entities its ADDED/UPDATED events name, and who holds their names."""
        states = [
            pb.EntityState.FromString(e.body)
            for e in events
            if e.action in (ADDED, UPDATED) and e.type in types
        ]
        cache = cls()
        cache.load(session, tenant_id, states)
        return cache

    def load(self, session: Session, tenant_id: uuid.UUID | None, states: list[pb.EntityState]) -> None:
        ids = {uuid.UUID(s.id) for s in states}
        self.loaded = EntityStore(session, None).by_ids(ids)  # type: ignore[arg-type]
        self.absent = ids - set(self.loaded)
        by_type: dict[str, set[str]] = {}
        for s in states:
            by_type.setdefault(s.type, set()).add(s.name)
        for type_name, names in by_type.items():
            stmt = sa.select(Entity.name, Entity.id).where(Entity.type == type_name, Entity.name.in_(names))
            if tenant_id is not None:
                stmt = stmt.where(Entity.tenant_id == tenant_id)
            for name, eid in session.execute(stmt):
                self.taken[(type_name, name)] = eid

    def name_holder(self, type_name: str, name: str) -> uuid.UUID | None:
        """The id holding a name at the start of the batch (kept up to date by the receiver's own
        inserts and renames), None if it was free."""
        return self.taken.get((type_name, name))


class EntityStore:
    """Entity look-ups and plain writes, shared by both roles (no outbox here)."""

    def __init__(self, session: Session, types: EntityTypeRegister) -> None:
        self.session = session
        self.types = types

    def find_tenant(self, ref: str | uuid.UUID) -> Tenant:
        uid = parse_uuid(ref)
        if uid is not None:
            tenant = self.session.get(Tenant, uid)  # from the identity map when already loaded
        else:
            tenant = self.session.scalars(sa.select(Tenant).where(Tenant.name == str(ref))).first()
        if tenant is None:
            raise NotFound(f"no tenant {ref!r}")
        return tenant

    def find_entity(self, type_name: str, ref: str | uuid.UUID, tenant_id: uuid.UUID | None = None) -> Entity:
        self.types.get(type_name)  # unknown type -> clear error
        uid = parse_uuid(ref)
        if uid is not None:
            entity = self.session.get(Entity, uid)
            if entity is not None and entity.type == type_name and tenant_id in (None, entity.tenant_id):
                return entity
        stmt = sa.select(Entity).where(Entity.type == type_name, Entity.name == str(ref))
        if tenant_id is not None:
            stmt = stmt.where(Entity.tenant_id == tenant_id)
        found = list(self.session.scalars(stmt.limit(2)))
        if not found:
            raise NotFound(f"no {type_name} {ref!r}")
        if len(found) > 1:
            raise Conflict(f"{type_name} name {ref!r} exists in several tenants: use --tenant or its id")
        return found[0]

    def list_entities(self, type_name: str, tenant_id: uuid.UUID | None = None) -> list[Entity]:
        self.types.get(type_name)
        stmt = sa.select(Entity).where(Entity.type == type_name)
        if tenant_id is not None:
            stmt = stmt.where(Entity.tenant_id == tenant_id)
        return list(self.session.scalars(stmt.order_by(Entity.name)))

    def check_name_free(
        self, tenant_id: uuid.UUID, type_name: str, name: str, *, but: uuid.UUID | None = None
    ) -> None:
        stmt = sa.select(Entity.id).where(
            Entity.tenant_id == tenant_id, Entity.type == type_name, Entity.name == name
        )
        existing = self.session.scalars(stmt).first()
        if existing is not None and existing != but:
            raise Conflict(f"a {type_name} named {name!r} already exists in this tenant")

    def insert(
        self,
        *,
        type_name: str,
        name: str,
        tenant_id: uuid.UUID,
        data: dict[str, Any] | None,
        customer_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        origin_edge_id: uuid.UUID | None = None,
        validated: bool = False,
        checked: bool = False,
    ) -> Entity:
        """Insert a new entity. ``validated``: ``data`` went through the type's schema already;
        ``checked``: the caller made sure the name and the id are free."""
        etype = self.types.get(type_name)
        name = clean_name(name, "an entity")
        if validated:
            clean = dict(data or {})
        else:
            clean = etype.validate(data)
            etype.check_storable(clean)
        if not checked:
            self.check_name_free(tenant_id, type_name, name)
            if entity_id is not None and self.session.get(Entity, entity_id) is not None:
                raise Conflict(f"an entity with id {entity_id} already exists")
        now = now_ms()
        entity = Entity(
            id=entity_id or uuid.uuid4(),
            tenant_id=tenant_id,
            customer_id=customer_id,
            type=type_name,
            name=name,
            data=clean,
            version=1,
            origin_edge_id=origin_edge_id,
            created_time=now,
            updated_time=now,
        )
        self.session.add(entity)
        if not checked:  # surface a constraint's refusal here; a checked insert joins the next flush
            self.session.flush()
        return entity

    def change(self, entity: Entity, *, name: str | None, data: dict[str, Any] | None) -> bool:
        """Apply an update in place; returns whether anything changed (version bumped)."""
        etype = self.types.get(entity.type)
        changed = False
        if name is not None and name.strip() != entity.name:
            name = clean_name(name, "an entity")
            self.check_name_free(entity.tenant_id, entity.type, name, but=entity.id)
            entity.name = name
            changed = True
        if data is not None:
            merged = etype.merge(entity.data, data)
            if merged != entity.data:
                etype.check_storable(merged)
                entity.data = merged
                changed = True
        if changed:
            entity.version += 1
            entity.updated_time = now_ms()
            self.session.flush()
        return changed

    def members(self, container: Entity) -> list[Entity]:
        stmt = (
            sa.select(Entity)
            .join(EntityMember, EntityMember.member_id == Entity.id)
            .where(EntityMember.container_id == container.id)
            .order_by(Entity.name)
        )
        return list(self.session.scalars(stmt))

    def by_ids(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Entity]:
        ids = list(ids)
        if not ids:
            return {}
        if 0 < len(ids) <= 8:  # usually loaded in this session already: no statement at all
            found = {i: self.session.get(Entity, i) for i in ids}
            return {i: e for i, e in found.items() if e is not None}
        out: dict[uuid.UUID, Entity] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            out.update({e.id: e for e in self.session.scalars(sa.select(Entity).where(Entity.id.in_(chunk)))})
        return out
