"""Pieces shared by the cloud and the edge services."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message
from sqlalchemy.orm import Session

from winstar_core.entity_types import EntityType, EntityTypeRegister, shown, text_problem
from winstar_core.errors import Conflict, NotFound, WinstarError
from winstar_core.store.models import Entity, EntityMember, NodeConfig, Tenant, now_ms
from winstar_core.transport.pb import sync_pb2 as pb

T = TypeVar("T")

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
EDITIONS = ("ce", "pe")

#: values per ``IN (...)`` of one statement: a peer's batch may name 80,000 entities, and
#: PostgreSQL takes at most 65,535 parameters per statement
IN_CHUNK = 500

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


def chunks(values: Iterable[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most :data:`IN_CHUNK`, one per statement."""
    values = list(values)
    for i in range(0, len(values), IN_CHUNK):
        yield values[i : i + IN_CHUNK]


# -- what a peer sends: every way it can be wrong is a WinstarError with a one-line reason ---------

M = TypeVar("M", bound=Message)


def parse_body(kind: type[M], body: bytes) -> M:
    """An event's ``body`` read as the protobuf message ``kind``. A peer's garbage is refused
    with the message's name, not a DecodeError."""
    try:
        return kind.FromString(body)
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        detail = str(exc).rsplit(": ", 1)[-1].strip() or type(exc).__name__
        raise WinstarError(
            f"the event's body is not a valid {kind.DESCRIPTOR.name} ({' '.join(detail.split())})"
        ) from None


def peer_uuid(raw: str, what: str) -> uuid.UUID:
    """``raw``, an id a peer sent, as a UUID; an empty or malformed one is refused, naming
    ``what`` it was ("the membership's container id")."""
    uid = parse_uuid(raw) if raw else None
    if uid is None:
        raise WinstarError(f"{what} {shown(raw)} is not a UUID" if raw else f"{what} is empty")
    return uid


def optional_peer_uuid(raw: str, what: str) -> uuid.UUID | None:
    """As :func:`peer_uuid`, the empty string meaning "none" (a customer id, say)."""
    return peer_uuid(raw, what) if raw else None


def event_entity_id(event: pb.Event) -> uuid.UUID:
    """The id of the entity an event is about."""
    if not event.entity_id:
        raise WinstarError("the event names no entity")
    return peer_uuid(event.entity_id, "the event's entity id")


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


def name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot be stored as ``what``'s name ("a tenant"), in one line; None if it can."""
    if not name:
        return f"{what} needs a non-empty name"
    if "\x00" in name:
        return f"{what}'s name may not contain the NUL character"
    if text_problem(name):
        return f"{what}'s name is not valid UTF-8 text: {shown(name)}"
    if len(name) > MAX_NAME:
        return f"{what}'s name may be at most {MAX_NAME} characters, this one has {len(name)}"
    return None


def clean_name(raw: str, what: str) -> str:
    """``raw`` stripped, refused when empty or longer than :data:`MAX_NAME` (``what``: "a tenant")."""
    name = raw.strip()
    why = name_problem(name, what)
    if why:
        raise WinstarError(why)
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
    except RecursionError:
        raise WinstarError("--data nests too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise WinstarError(f"--data cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(value, dict):
        raise WinstarError("--data must be a JSON object")
    return value


class BatchCache:
    """What a receiver learned about a batch before applying it, so that the common case costs no
    statement per event. Only ever used to skip a look-up whose answer is known; a stale entry
    costs a real query, never a wrong answer (and the database's constraints back it up).

    Built from a peer's events, so it must never fail on them: an event it cannot make sense of
    (a body that is not an EntityState, an id that is not a UUID, a name no row can hold) is left
    out here, and refused with its reason when the receiver applies it."""

    def __init__(self) -> None:
        self.absent: set[uuid.UUID] = set()  # ids known not to exist when the batch began
        #: the entities that did exist, held so that the session's identity map (which keeps only
        #: weak references) answers the apply's own look-ups without a statement
        self.loaded: dict[uuid.UUID, Any] = {}
        self.taken: dict[tuple[str, str], uuid.UUID] = {}  # (type, name) -> id holding it
        #: the (type, name) pairs whose holder is known: in ``taken``, or free when the batch began
        self.names: set[tuple[str, str]] = set()
        #: cloud: for the batch's edge's own entities in ``loaded``, the edges each is effectively
        #: assigned to (an entry is dropped when the transaction changes its assignments)
        self.edges_of: dict[uuid.UUID, set[uuid.UUID]] = {}
        #: edge: for the entities the batch removes, the first PENDING uplink seq of each (an
        #: entity of ``unacked_known`` missing here had none when the batch began)
        self.unacked: dict[uuid.UUID, int] = {}
        self.unacked_known: set[uuid.UUID] = set()

    @classmethod
    def for_events(
        cls,
        session: Session,
        types: EntityTypeRegister,
        tenant_id: uuid.UUID | None,
        events: list[Any],
        also: Iterable[uuid.UUID] = (),
    ) -> BatchCache:
        """The cache for a batch: the entities its ADDED/UPDATED events name (and the ids
        ``also``), and who holds their names."""
        states = readable_states(types, events)
        cache = cls()
        ids = {uuid.UUID(s.id) for s in states} | set(also)
        names: dict[str, set[str]] = {}
        for s in states:
            names.setdefault(s.type, set()).add(s.name)
        cache.load(session, tenant_id, ids, names)
        return cache

    def load(
        self,
        session: Session,
        tenant_id: uuid.UUID | None,
        ids: set[uuid.UUID],
        names: dict[str, set[str]],
    ) -> None:
        """Load the entities ``ids`` and the holders of ``names`` (by type), a chunk of
        :data:`IN_CHUNK` values per statement."""
        for chunk in chunks(ids):  # a batch's session is new: nothing to find in its identity map
            self.loaded.update(
                {e.id: e for e in session.scalars(sa.select(Entity).where(Entity.id.in_(chunk)))}
            )
        self.absent = ids - set(self.loaded)
        for type_name, wanted in names.items():
            for some in chunks(sorted(wanted)):
                stmt = sa.select(Entity.name, Entity.id).where(
                    Entity.type == type_name, Entity.name.in_(some)
                )
                if tenant_id is not None:
                    stmt = stmt.where(Entity.tenant_id == tenant_id)
                for name, eid in session.execute(stmt):
                    self.taken[(type_name, name)] = eid
            self.names.update((type_name, n) for n in wanted)

    def name_known(self, type_name: str, name: str) -> bool:
        """Whether :meth:`name_holder` knows who holds this name (a name no event of the batch
        carried was never looked up: ask the database)."""
        return (type_name, name) in self.names

    def name_holder(self, type_name: str, name: str) -> uuid.UUID | None:
        """The id holding a name at the start of the batch (kept up to date by the receiver's own
        inserts and renames), None if it was free. Only for a :meth:`name_known` name."""
        return self.taken.get((type_name, name))

    def took(self, type_name: str, name: str, entity_id: uuid.UUID) -> None:
        """The receiver gave ``name`` to ``entity_id`` in this batch."""
        self.taken[(type_name, name)] = entity_id
        self.names.add((type_name, name))


def readable_states(types: EntityTypeRegister, events: Iterable[Any]) -> list[pb.EntityState]:
    """The EntityState bodies of the ADDED/UPDATED events of ``events`` that are fit to look up:
    of a known type (the event's own), with a UUID for id and a name a row could hold. The others
    are skipped: their apply refuses them, one by one, with the reason."""
    out: list[pb.EntityState] = []
    for e in events:
        if e.action not in (ADDED, UPDATED) or e.type not in types:
            continue
        try:
            state = pb.EntityState.FromString(e.body)
        except (DecodeError, ValueError, TypeError, RecursionError):
            continue
        if state.type != e.type or not state.id or parse_uuid(state.id) is None:
            continue
        if name_problem(state.name, "") is not None:
            continue
        out.append(state)
    return out


def scope_of(etype: type[EntityType], data: Mapping[str, Any]) -> str:
    """The name scope of an entity of ``etype`` with ``data`` (see ``EntityType.name_scope``)."""
    try:
        scope = etype.name_scope(data)
    except Exception as exc:
        raise WinstarError(f"{etype.name}.name_scope failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE or text_problem(scope):
        raise WinstarError(
            f"{etype.name}.name_scope returned {scope!r}: not a text of at most {MAX_SCOPE} characters"
        )
    return scope


#: the longest name scope (``entity.name_scope``)
MAX_SCOPE = 64


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
            where = "tenants" if found[0].tenant_id != found[1].tenant_id else "scopes"
            raise Conflict(
                f"{type_name} name {ref!r} exists in several {where}: use its id"
                + (
                    " or --tenant"
                    if where == "tenants"
                    else f" ({found[0].name_scope!r}, {found[1].name_scope!r}...)"
                )
            )
        return found[0]

    def list_entities(self, type_name: str, tenant_id: uuid.UUID | None = None) -> list[Entity]:
        self.types.get(type_name)
        stmt = sa.select(Entity).where(Entity.type == type_name)
        if tenant_id is not None:
            stmt = stmt.where(Entity.tenant_id == tenant_id)
        return list(self.session.scalars(stmt.order_by(Entity.name)))

    def check_name_free(
        self,
        tenant_id: uuid.UUID,
        type_name: str,
        name: str,
        scope: str = "",
        *,
        but: uuid.UUID | None = None,
    ) -> None:
        stmt = sa.select(Entity.id).where(
            Entity.tenant_id == tenant_id,
            Entity.type == type_name,
            Entity.name_scope == scope,
            Entity.name == name,
        )
        existing = self.session.scalars(stmt).first()
        if existing is not None and existing != but:
            within = f" (scope {scope!r})" if scope else ""
            raise Conflict(f"a {type_name} named {name!r}{within} already exists in this tenant")

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
        scope = scope_of(etype, clean)
        if not checked:
            self.check_name_free(tenant_id, type_name, name, scope)
            if entity_id is not None and self.session.get(Entity, entity_id) is not None:
                raise Conflict(f"an entity with id {entity_id} already exists")
        now = now_ms()
        entity = Entity(
            id=entity_id or uuid.uuid4(),
            tenant_id=tenant_id,
            customer_id=customer_id,
            type=type_name,
            name=name,
            name_scope=scope,
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
        new_name, new_data = entity.name, entity.data
        if name is not None and name.strip() != entity.name:
            new_name = clean_name(name, "an entity")
        if data is not None:
            # whatever a plugin's merge returns is validated again: it is stored as is otherwise
            merged = etype.validate(etype.merge(entity.data, data))
            if merged != entity.data:
                etype.check_storable(merged)
                new_data = merged
        scope = scope_of(etype, new_data)
        changed = new_name != entity.name or new_data is not entity.data
        if new_name != entity.name or scope != entity.name_scope:
            self.check_name_free(entity.tenant_id, entity.type, new_name, scope, but=entity.id)
        if changed or scope != entity.name_scope:
            entity.name, entity.data, entity.name_scope = new_name, new_data, scope
        if changed:
            entity.version += 1
            entity.updated_time = now_ms()
            self.session.flush()
        return changed

    def current_body(self, event: Any) -> bytes | None:
        """For an outbox row about an entity's state (ADDED/UPDATED): the entity's state as it is
        now, None when the entity no longer exists (or the row is about something else)."""
        if event.action not in (ADDED, UPDATED) or event.entity_id is None or event.type not in self.types:
            return None
        entity = self.session.get(Entity, event.entity_id)
        if entity is None or entity.type != event.type:
            return None
        return entity_state(entity, self.types).SerializeToString()

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
        for chunk in chunks(ids):
            out.update({e.id: e for e in self.session.scalars(sa.select(Entity).where(Entity.id.in_(chunk)))})
        return out
