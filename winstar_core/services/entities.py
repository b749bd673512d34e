"""Entities as both roles store them: :class:`EntityStore` (look-ups and plain writes, no
outbox), an entity's name scope, and its state as sent to a peer (``EntityState``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.instrumentation import manager_of_class

from winstar_core.entity_types import EntityType, EntityTypeRegister, text_problem
from winstar_core.errors import Conflict, NotFound, WinstarError
from winstar_core.services.constants import ADDED, MAX_SCOPE, UPDATED
from winstar_core.services.ids import chunks, parse_uuid
from winstar_core.services.names import clean_name
from winstar_core.store.models import Assignment, Entity, EntityMember, Tenant, now_ms
from winstar_core.store.rows import buffer_of
from winstar_core.transport.pb import sync_pb2 as pb


def entity_state(entity: Entity, types: EntityTypeRegister) -> pb.EntityState:
    """The entity as a peer receives it (its data serialized by its type)."""
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


#: the entity table, for rows written set-based
ENTITY = cast(sa.Table, Entity.__table__)
_ENTITY_CLASS = manager_of_class(Entity)


class EntityStore:
    """Entity look-ups and plain writes, shared by both roles (no outbox here)."""

    def __init__(self, session: Session, types: EntityTypeRegister) -> None:
        self.session = session
        self.types = types
        #: :meth:`named`'s answers, by (tenant, type, scope, name): the row (held) or None; an
        #: insert or rename through this store forgets the name it takes
        self._named: dict[tuple[uuid.UUID, str, str, str], Entity | None] = {}

    def named(self, tenant_id: uuid.UUID, type_name: str, name: str, scope: str = "") -> Entity | None:
        """The entity of ``tenant_id`` of ``type_name`` named ``name`` in ``scope``, None if none.
        Asked again in the same transaction, answered without a statement (a rule asks for the
        same group for every entity of a batch): the rows this store writes keep it true, and a
        row found before is checked to still hold that name."""
        key = (tenant_id, type_name, scope, name)
        if key in self._named:
            row = self._named[key]
            if row is None:
                return None
            # persistent: not deleted, and not inserted by a savepoint since rolled back
            if sa.inspect(row).persistent and (row.name, row.name_scope) == (name, scope):
                return row
        row = self.session.scalars(
            sa.select(Entity).where(
                Entity.tenant_id == tenant_id,
                Entity.type == type_name,
                Entity.name_scope == scope,
                Entity.name == name,
            )
        ).first()
        self._named[key] = row
        return row

    def _name_taken(self, tenant_id: uuid.UUID, type_name: str, scope: str, name: str) -> None:
        self._named.pop((tenant_id, type_name, scope, name), None)

    def find_tenant(self, ref: str | uuid.UUID) -> Tenant:
        """The tenant with id or name ``ref``; :class:`NotFound` if none."""
        uid = parse_uuid(ref)
        if uid is not None:
            tenant = self.session.get(Tenant, uid)  # from the identity map when already loaded
        else:
            tenant = self.session.scalars(sa.select(Tenant).where(Tenant.name == str(ref))).first()
        if tenant is None:
            raise NotFound(f"no tenant {ref!r}")
        return tenant

    def find_entity(self, type_name: str, ref: str | uuid.UUID, tenant_id: uuid.UUID | None = None) -> Entity:
        """The ``type_name`` entity with id or name ``ref`` (in ``tenant_id`` if given); a name held
        in several tenants or scopes is a :class:`Conflict`."""
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
        """The entities of ``type_name`` (of ``tenant_id`` if given), by name."""
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
        """Refuse (:class:`Conflict`) a name another entity than ``but`` holds in the tenant and scope."""
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

    def prepare(
        self, etype: type[EntityType], name: str, data: Mapping[str, Any] | None
    ) -> tuple[str, dict[str, Any], str]:
        """A new entity's name, data and name scope as :meth:`insert` stores them: the name
        cleaned, the data validated by its type and checked storable (a refusal: a
        :class:`WinstarError`). ``winstar entity import`` checks each of its lines with it."""
        name = clean_name(name, "an entity")
        clean = etype.validate(data)
        etype.check_storable(clean)
        return name, clean, scope_of(etype, clean)

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
        queued: bool = False,
    ) -> Entity:
        """Insert a new entity. ``validated``: ``data`` went through the type's schema already;
        ``checked``: the caller made sure the name and the id are free. ``queued`` (with
        ``checked``): the row joins the session's :class:`~winstar_core.store.rows.RowBuffer`, written
        with the others in one statement before the session's next statement; the entity
        returned is then a transient copy of it, to read (look it up to change it)."""
        etype = self.types.get(type_name)
        if validated:
            name, clean = clean_name(name, "an entity"), dict(data or {})
            scope = scope_of(etype, clean)
        else:
            name, clean, scope = self.prepare(etype, name, data)
        if not checked:
            self.check_name_free(tenant_id, type_name, name, scope)
            if entity_id is not None and self.session.get(Entity, entity_id) is not None:
                raise Conflict(f"an entity with id {entity_id} already exists")
        now = now_ms()
        row = {
            "id": entity_id or uuid.uuid4(),
            "tenant_id": tenant_id,
            "customer_id": customer_id,
            "type": type_name,
            "name": name,
            "name_scope": scope,
            "data": clean,
            "version": 1,
            "origin_edge_id": origin_edge_id,
            "created_time": now,
            "updated_time": now,
        }
        self._name_taken(tenant_id, type_name, scope, name)
        if queued and checked:
            buffer_of(self.session).add(ENTITY, row)
            # a transient copy, to read: built without the ORM's attribute events (16 -> 1 µs),
            # which only matter to an object the session tracks
            copy: Entity = _ENTITY_CLASS.new_instance()
            copy.__dict__.update(row)
            return copy
        entity = Entity(**row)
        self.session.add(entity)
        if not checked:  # surface a constraint's refusal here; a checked insert joins the next flush
            self.session.flush()
        return entity

    def change(
        self, entity: Entity, *, name: str | None, data: dict[str, Any] | None, replace: bool = False
    ) -> bool:
        """Apply an update in place; returns whether anything changed (version bumped).
        ``data``: changes merged by the type's ``merge`` (a user's update), or with ``replace``
        the entity's whole new state, already validated (a peer's UPDATED: the entity becomes
        what its owner says it is, whatever ``merge`` would make of it)."""
        etype = self.types.get(entity.type)
        new_name, new_data = entity.name, entity.data
        if name is not None and name.strip() != entity.name:
            new_name = clean_name(name, "an entity")
        if data is not None:
            # whatever a plugin's merge returns is validated again: it is stored as is otherwise
            merged = dict(data) if replace else etype.validate(etype.merge(entity.data, data))
            if merged != entity.data:
                etype.check_storable(merged)
                new_data = merged
        scope = scope_of(etype, new_data)
        changed = new_name != entity.name or new_data is not entity.data
        if new_name != entity.name or scope != entity.name_scope:
            self.check_name_free(entity.tenant_id, entity.type, new_name, scope, but=entity.id)
            self._name_taken(entity.tenant_id, entity.type, scope, new_name)
        if changed or scope != entity.name_scope:
            entity.name, entity.data, entity.name_scope = new_name, new_data, scope
        if changed:
            entity.version += 1
            entity.updated_time = now_ms()
            self.session.flush()
        return changed

    def current_body(self, event: Any, edge_id: uuid.UUID | None = None) -> bytes | str | None:
        """What a retry of the outbox row ``event`` sends. For an entity's state (ADDED/UPDATED):
        the entity as it is now; a reason not to send it (a ``str``) when the entity no longer
        exists or, for the cloud's stream to ``edge_id``, is no longer assigned to that edge (a
        retried copy goes to the end of the stream, after the DELETED or UNASSIGNED that followed
        the failure: it must not bring the entity back). None: send the stored body (any other
        event)."""
        if event.action not in (ADDED, UPDATED) or event.entity_id is None or event.type not in self.types:
            return None
        entity = self.session.get(Entity, event.entity_id)
        if entity is None or entity.type != event.type:
            return "the entity no longer exists"
        if edge_id is not None and not self._assigned(entity.id, edge_id):
            return "the entity is no longer assigned to this edge"
        return entity_state(entity, self.types).SerializeToString()

    def _assigned(self, entity_id: uuid.UUID, edge_id: uuid.UUID) -> bool:
        """Whether ``entity_id`` is assigned to ``edge_id``, directly or through a container."""
        direct = sa.select(Assignment.entity_id).where(
            Assignment.edge_id == edge_id, Assignment.entity_id == entity_id
        )
        via = (
            sa.select(EntityMember.member_id)
            .join(Assignment, Assignment.entity_id == EntityMember.container_id)
            .where(Assignment.edge_id == edge_id, EntityMember.member_id == entity_id)
        )
        return self.session.execute(sa.union(direct, via).limit(1)).first() is not None

    def members(self, container: Entity) -> list[Entity]:
        """The members of ``container``, by name."""
        stmt = (
            sa.select(Entity)
            .join(EntityMember, EntityMember.member_id == Entity.id)
            .where(EntityMember.container_id == container.id)
            .order_by(Entity.name)
        )
        return list(self.session.scalars(stmt))

    def by_ids(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Entity]:
        """The entities of ``ids`` that exist, by id."""
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
