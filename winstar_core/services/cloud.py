"""The cloud's side of the lifecycle: tenants, users, edges, entities, assignment, downlinks.

Every method runs inside the caller's transaction and writes the ``edge_event`` rows that its
change implies into the same transaction (through :class:`Outbox`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import Conflict, NotFound, PermissionDenied, WinstarError
from winstar_core.plugin.manager import Platform
from winstar_core.services import common
from winstar_core.services.common import (
    ADDED,
    AUTHORITIES,
    DELETED,
    EDGE_SUFFIX,
    LIVENESS_MS,
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
    optional_peer_uuid,
    parse_body,
    parse_uuid,
    scope_of,
)
from winstar_core.services.common import (
    EDITIONS as EDITIONS,  # node.py takes it from here
)
from winstar_core.services.rules import place_created
from winstar_core.store.models import (
    DELIVERED,
    FAILED,
    HELD,
    PENDING,
    Assignment,
    Customer,
    Edge,
    EdgeEvent,
    Entity,
    EntityMember,
    Role,
    StreamMark,
    Tenant,
    User,
    UserRole,
    now_ms,
)
from winstar_core.store.outbox import (
    Outbox,
    OutboxEvent,
    downlink_stream,
    ensure_stream,
    notify_senders,
    retry_failed,
    uplink_mark_stream,
    uplink_mark_stream_for,
)
from winstar_core.transport.pb import sync_pb2 as pb

SCRYPT = {"n": 2**14, "r": 8, "p": 1}

#: what a secret may be: the ones we issue are ``secrets.token_urlsafe(24)`` (32 characters).
#: Anything else is refused before it can count: scrypt keys its HMAC with the secret, and HMAC
#: pads a key with zero bytes (and hashes one longer than its block), so "SECRET" + "\x00" and
#: "SECRET" would otherwise open the same door
MAX_SECRET = 128
SECRET_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SECRET}}}")
#: hashed instead of a malformed secret, so that a refusal costs the same scrypt work as a check
_STAND_IN = "x" * 32


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=64, **SCRYPT)


def well_formed_secret(secret: str) -> bool:
    """Whether ``secret`` could be one we issued (length first: a hello may carry megabytes)."""
    return (
        isinstance(secret, str) and len(secret) <= MAX_SECRET and SECRET_PATTERN.fullmatch(secret) is not None
    )


def check_secret(edge: Edge, secret: str) -> bool:
    """Whether ``secret`` is the edge's, compared exactly and in constant time: a malformed one
    costs the same scrypt work and comparison as a wrong one (no fast path to time)."""
    ok = well_formed_secret(secret)
    match = hmac.compare_digest(hash_secret(secret if ok else _STAND_IN, edge.secret_salt), edge.secret_hash)
    return ok and match


def edge_connected(edge: Edge) -> bool:
    return bool(edge.connected) and now_ms() - (edge.last_seen or 0) < LIVENESS_MS


def parse_permission(raw: str) -> str:
    parts = raw.strip().upper().split(":")
    if len(parts) != 2 or not all(parts):
        raise WinstarError(f"permission {raw!r} is not RESOURCE:OPERATION (for example DEVICE:WRITE)")
    return f"{parts[0]}:{parts[1]}"


T = TypeVar("T")


class CloudService:
    def __init__(self, session: Session, platform: Platform) -> None:
        self.session = session
        self.platform = platform
        self.types = platform.types
        self.entities = EntityStore(session, self.types)
        self.outbox = Outbox()
        #: (edge, entity) whose ADDED event is not sent back to the edge that just created it
        self._no_echo: tuple[uuid.UUID, uuid.UUID] | None = None
        #: entities inserted by this transaction and not yet assigned nor made members anywhere
        self._fresh: set[uuid.UUID] = set()
        #: entities this transaction created from an edge's uplinks: that edge may change them
        #: in the same batch, whatever an assignment rule made of them
        self._created_by_edge: set[uuid.UUID] = set()
        self.batch: BatchCache | None = None
        #: rows held for this transaction by id (the identity map keeps only weak references)
        self.pinned: dict[uuid.UUID, Any] = {}

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

    @functools.cached_property
    def edition(self) -> str:
        """Fixed at `winstar init cloud`; read once per transaction."""
        return str(get_config(self.session, "edition", "ce"))

    # ---------------------------------------------------------------------------------------------
    # tenants, customers, roles, users
    # ---------------------------------------------------------------------------------------------

    def create_tenant(self, name: str) -> Tenant:
        name = clean_name(name, "a tenant")
        if self.session.scalars(sa.select(Tenant).where(Tenant.name == name)).first():
            raise Conflict(f"a tenant named {name!r} already exists")
        tenant = Tenant(name=name, created_time=now_ms())
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def held(self, model: type[T], row_id: uuid.UUID) -> T | None:
        """The row ``row_id`` of ``model``, read once per transaction (the session's identity map
        keeps only weak references: a bare ``session.get`` per event would reload it, flushing first)."""
        row = self.pinned.get(row_id)
        if row is None:
            row = self.pinned[row_id] = self.session.get(model, row_id)
        return row if isinstance(row, model) else None

    def find_tenant(self, ref: str | uuid.UUID) -> Tenant:
        tenant = self.held(Tenant, ref) if isinstance(ref, uuid.UUID) else None
        if tenant is None:
            tenant = self.entities.find_tenant(ref)
            self.pinned[tenant.id] = tenant
        return tenant

    def default_tenant(self, ref: str | None) -> Tenant:
        """The tenant named by ``--tenant``, or the only tenant there is."""
        if ref:
            return self.find_tenant(ref)
        tenants = list(self.session.scalars(sa.select(Tenant).limit(2)))
        if len(tenants) == 1:
            return tenants[0]
        if not tenants:
            raise NotFound("no tenant yet: create one with `winstar tenant create NAME`")
        raise WinstarError("several tenants exist: say which with --tenant")

    def list_tenants(self) -> list[Tenant]:
        return list(self.session.scalars(sa.select(Tenant).order_by(Tenant.name)))

    def create_customer(self, name: str, tenant: Tenant) -> Customer:
        name = clean_name(name, "a customer")
        if self.session.scalars(
            sa.select(Customer).where(Customer.tenant_id == tenant.id, Customer.name == name)
        ).first():
            raise Conflict(f"a customer named {name!r} already exists in tenant {tenant.name!r}")
        customer = Customer(tenant_id=tenant.id, name=name, created_time=now_ms())
        self.session.add(customer)
        self.session.flush()
        return customer

    def find_customer(self, ref: str, tenant: Tenant) -> Customer:
        uid = parse_uuid(ref)
        stmt = sa.select(Customer).where(
            Customer.tenant_id == tenant.id, Customer.id == uid if uid else Customer.name == ref
        )
        customer = self.session.scalars(stmt).first()
        if customer is None:
            raise NotFound(f"no customer {ref!r} in tenant {tenant.name!r}")
        return customer

    def create_role(self, name: str, tenant: Tenant, permissions: Iterable[str]) -> Role:
        if self.edition != "pe":
            raise WinstarError("roles exist only on a PE cloud (this cloud is CE)")
        perms = sorted({parse_permission(p) for p in permissions})
        if not perms:
            raise WinstarError("a role needs at least one --permission RESOURCE:OPERATION")
        name = clean_name(name, "a role")
        if self.session.scalars(
            sa.select(Role).where(Role.tenant_id == tenant.id, Role.name == name)
        ).first():
            raise Conflict(f"a role named {name!r} already exists in tenant {tenant.name!r}")
        role = Role(tenant_id=tenant.id, name=name, permissions=perms, created_time=now_ms())
        self.session.add(role)
        self.session.flush()
        return role

    def find_role(self, ref: str, tenant: Tenant) -> Role:
        uid = parse_uuid(ref)
        stmt = sa.select(Role).where(Role.tenant_id == tenant.id, Role.id == uid if uid else Role.name == ref)
        role = self.session.scalars(stmt).first()
        if role is None:
            raise NotFound(f"no role {ref!r} in tenant {tenant.name!r}")
        return role

    def create_user(
        self,
        email: str,
        tenant: Tenant,
        authority: str,
        customer: Customer | None = None,
        roles: Iterable[Role] = (),
    ) -> User:
        authority = authority.upper()
        if authority not in AUTHORITIES:
            raise WinstarError(f"authority must be one of {', '.join(AUTHORITIES)}")
        if authority == "CUSTOMER_USER" and customer is None:
            raise WinstarError("a CUSTOMER_USER needs --customer")
        roles = list(roles)
        if roles and self.edition != "pe":
            raise WinstarError("roles exist only on a PE cloud (this cloud is CE)")
        email = email.strip()
        if "@" not in email:
            raise WinstarError(f"{email!r} is not an email address")
        if len(email) > MAX_NAME:
            raise WinstarError(
                f"an email address may be at most {MAX_NAME} characters, this one has {len(email)}"
            )
        if self.session.scalars(sa.select(User).where(User.email == email)).first():
            raise Conflict(f"a user with email {email!r} already exists")
        now = now_ms()
        user = User(
            tenant_id=tenant.id,
            email=email,
            authority=authority,
            customer_id=customer.id if customer else None,
            permissions=[],
            created_time=now,
            updated_time=now,
        )
        self.session.add(user)
        self.session.flush()
        for role in roles:
            self.session.add(UserRole(user_id=user.id, role_id=role.id))
        self.session.flush()
        self._user_changed(user)
        return user

    def user_roles(self, user: User) -> list[Role]:
        stmt = sa.select(Role).join(UserRole, UserRole.role_id == Role.id).where(UserRole.user_id == user.id)
        return list(self.session.scalars(stmt.order_by(Role.name)))

    def user_permissions(self, user: User) -> list[str]:
        return sorted({p for role in self.user_roles(user) for p in role.permissions})

    def user_info(self, user: User) -> pb.UserInfo:
        return pb.UserInfo(
            id=str(user.id),
            email=user.email,
            authority=user.authority,
            customer_id=str(user.customer_id) if user.customer_id else "",
            permissions=self.user_permissions(user),
            tenant_id=str(user.tenant_id),
        )

    def tenant_users(self, tenant_id: uuid.UUID) -> list[User]:
        return list(
            self.session.scalars(sa.select(User).where(User.tenant_id == tenant_id).order_by(User.email))
        )

    def _user_changed(self, user: User) -> None:
        body = self.user_info(user).SerializeToString()
        for edge_id in self.session.scalars(sa.select(Edge.id).where(Edge.tenant_id == user.tenant_id)):
            self.outbox.downlink(
                edge_id, OutboxEvent(user.tenant_id, USER_EVENT_TYPE, UPDATED, user.id, body)
            )

    # ---------------------------------------------------------------------------------------------
    # edges
    # ---------------------------------------------------------------------------------------------

    def create_edge(self, name: str, tenant: Tenant, customer: Customer | None = None) -> tuple[Edge, str]:
        name = clean_name(name, "an edge")
        if self.session.scalars(
            sa.select(Edge).where(Edge.tenant_id == tenant.id, Edge.name == name)
        ).first():
            raise Conflict(f"an edge named {name!r} already exists in tenant {tenant.name!r}")
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        edge = Edge(
            tenant_id=tenant.id,
            customer_id=customer.id if customer else None,
            name=name,
            routing_key=str(uuid.uuid4()),
            secret_salt=salt,
            secret_hash=hash_secret(secret, salt),
            connected=False,
            sync_requested=False,
            created_time=now_ms(),
        )
        self.session.add(edge)
        self.session.flush()
        ensure_stream(self.session, downlink_stream(edge.id))
        return edge, secret

    def find_edge(self, ref: str | uuid.UUID, tenant: Tenant | None = None) -> Edge:
        uid = parse_uuid(ref)
        stmt = sa.select(Edge).where(Edge.id == uid if uid else Edge.name == str(ref))
        if tenant is not None:
            stmt = stmt.where(Edge.tenant_id == tenant.id)
        found = list(self.session.scalars(stmt.limit(2)))
        if not found:
            raise NotFound(f"no edge {ref!r}")
        if len(found) > 1:
            raise Conflict(f"edge name {ref!r} exists in several tenants: use --tenant or its id")
        return found[0]

    def edge_by_routing_key(self, routing_key: str) -> Edge | None:
        return self.session.scalars(sa.select(Edge).where(Edge.routing_key == routing_key)).first()

    def list_edges(self) -> list[Edge]:
        return list(self.session.scalars(sa.select(Edge).order_by(Edge.name)))

    def pending_counts(self) -> dict[uuid.UUID, int]:
        stmt = (
            sa.select(EdgeEvent.edge_id, sa.func.count())
            .where(EdgeEvent.status == "PENDING")
            .group_by(EdgeEvent.edge_id)
        )
        return {edge_id: int(n) for edge_id, n in self.session.execute(stmt)}

    def downlinks(self, edge: Edge, status: str | None = None, limit: int | None = None) -> list[EdgeEvent]:
        stmt = sa.select(EdgeEvent).where(EdgeEvent.edge_id == edge.id)
        if status:
            stmt = stmt.where(EdgeEvent.status == status.upper())
        stmt = stmt.order_by(EdgeEvent.seq.desc())
        if limit:
            stmt = stmt.limit(limit)
        return list(self.session.scalars(stmt))

    def retry_failed(self, edge: Edge, seqs: list[int] | None = None) -> list[int]:
        """Send FAILED downlinks of ``edge`` again (all, or those ``seqs``), as new events."""
        return retry_failed(self.session, EdgeEvent, seqs, edge.id, self.entities.current_body)

    def request_sync(self, edge: Edge) -> None:
        """Sync Edge: the node serving the edge runs it now, or when the edge reconnects."""
        edge.sync_requested = True
        self.session.flush()
        notify_senders(self.session, [edge.id], uplinks=False)

    # ---------------------------------------------------------------------------------------------
    # entities
    # ---------------------------------------------------------------------------------------------

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
        # A new entity is assigned to no edge yet, so it writes no event.
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
        self, entity: Entity, *, name: str | None = None, data: dict[str, Any] | None = None
    ) -> Entity:
        if self.entities.change(entity, name=name, data=data):
            body = entity_state(entity, self.types).SerializeToString()
            for edge_id in sorted(self.effective_edges(entity.id), key=str):
                self.outbox.downlink(
                    edge_id, OutboxEvent(entity.tenant_id, entity.type, UPDATED, entity.id, body)
                )
        return entity

    def delete_entity(self, entity: Entity) -> None:
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
        for edge_id in sorted(edges, key=str):
            self.outbox.downlink(edge_id, OutboxEvent(entity.tenant_id, entity.type, DELETED, entity.id, b""))
        self._emit_removed(before)
        self.session.delete(entity)
        self.session.flush()

    # ---------------------------------------------------------------------------------------------
    # assignment (the effective set of an edge: its direct assignments plus members of assigned
    # containers)
    # ---------------------------------------------------------------------------------------------

    def _direct_edges(self, entity_id: uuid.UUID) -> set[uuid.UUID]:
        return set(
            self.session.scalars(sa.select(Assignment.edge_id).where(Assignment.entity_id == entity_id))
        )

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
        if self.batch is not None:
            for i in entity_ids:
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
        return set(self.session.scalars(self._effective_ids_stmt(edge_id)))

    def effective_entities(self, edge: Edge) -> list[Entity]:
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
            if self.session.get(Assignment, (edge.id, entity.id)) is not None:
                return False
            members = self.entities.members(entity) if etype.container else []
            candidates = [entity.id, *(m.id for m in members)]
            before = self._effective_subset(edge.id, candidates)
        self._assignment_changes(candidates)
        self.session.add(Assignment(edge_id=edge.id, entity_id=entity.id, created_time=now_ms()))
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
        self._check_container(container, member)
        fresh = member.id in self._fresh
        self._fresh.discard(member.id)
        if not fresh and self.session.get(EntityMember, (container.id, member.id)) is not None:
            return False
        edges = sorted(self._direct_edges(container.id), key=str)
        # a member inserted by this transaction is on no edge yet
        before = {e: set() if fresh else self._effective_subset(e, [member.id]) for e in edges}
        self._assignment_changes([member.id])
        self.session.add(EntityMember(container_id=container.id, member_id=member.id, created_time=now_ms()))
        body = self._membership_body(container, member)
        for edge_id in edges:
            if not before[edge_id]:
                self._emit_added(edge_id, [member.id])
            self.outbox.downlink(
                edge_id, OutboxEvent(container.tenant_id, container.type, MEMBER_ADDED, container.id, body)
            )
        return True

    def remove_member(self, container: Entity, member: Entity) -> None:
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
        if not self.types.get(container.type).container:
            raise WinstarError(f"{container.type} {container.name!r} cannot hold members")
        return self.entities.members(container)

    # ---------------------------------------------------------------------------------------------
    # uplinks: changes an edge made to the entities it owns
    # ---------------------------------------------------------------------------------------------

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
        UUID...): a broken or hostile edge gets its event refused, never a batch broken."""
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
            self.update_entity(existing, name=name, data=data)
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

    # ---------------------------------------------------------------------------------------------
    # Sync Edge
    # ---------------------------------------------------------------------------------------------

    def _uplink_mark(self, edge: Edge) -> int:
        """How far the cloud applied the uplinks of the box it serves as ``edge``."""
        stream = (
            uplink_mark_stream_for(edge.id, edge.instance_id)
            if edge.instance_id
            else uplink_mark_stream(edge.id)
        )
        return int(
            self.session.scalar(sa.select(StreamMark.applied_seq).where(StreamMark.stream == stream)) or 0
        )

    def sync_outcome(self, edge: Edge) -> dict[str, Any]:
        """How the edge's last Sync Edge went, from its events: ``state`` "none" (never synced),
        "pending" (requested, not queued yet), "running" (queued, its end not delivered), "done"
        (every event of it delivered) or "failed" (some of its events failed or are held: the
        edge has not converged); ``finished``: when its end was delivered (ms); ``failed`` and
        ``held``: how many of its events."""
        outcome: dict[str, Any] = {"state": "none", "finished": None, "failed": None, "held": None}
        last = self.session.scalars(
            sa.select(EdgeEvent)
            .where(EdgeEvent.edge_id == edge.id, EdgeEvent.type == SYNC_EVENT_TYPE)
            .order_by(EdgeEvent.seq.desc())
            .limit(1)
        ).first()
        if last is not None:
            end = pb.SyncEnd.FromString(last.body)
            first = last.seq - max(int(end.events), 1) + 1
            counts = dict(
                self.session.execute(
                    sa.select(EdgeEvent.status, sa.func.count())
                    .where(EdgeEvent.edge_id == edge.id, EdgeEvent.seq.between(first, last.seq))
                    .group_by(EdgeEvent.status)
                ).all()
            )
            failed, held = int(counts.get(FAILED, 0)), int(counts.get(HELD, 0))
            outcome.update(failed=failed, held=held)
            if last.status == PENDING:
                outcome["state"] = "running"
            else:
                outcome["state"] = "failed" if failed or held or last.status != DELIVERED else "done"
                outcome["finished"] = last.delivered_time
        if edge.sync_requested:
            outcome["state"] = "pending"
        return outcome

    def sync_in_flight(self, edge: Edge) -> bool:
        """Whether a Sync Edge written earlier has not reached the edge yet (its ``_sync`` end is
        still PENDING): another one would only repeat it, and a peer asking again and again would
        otherwise grow the outbox by the edge's whole state each time."""
        stmt = sa.select(EdgeEvent.seq).where(
            EdgeEvent.edge_id == edge.id, EdgeEvent.status == "PENDING", EdgeEvent.type == SYNC_EVENT_TYPE
        )
        return self.session.scalars(stmt.limit(1)).first() is not None

    def sync_if_due(self, edge: Edge) -> bool:
        """Run the Sync Edge that was requested, unless one is still on its way (it runs once that
        one is delivered). Returns whether it ran."""
        if not edge.sync_requested or self.sync_in_flight(edge):
            return False
        self.run_sync(edge)
        return True

    def run_sync(self, edge: Edge) -> int:
        """Queue the edge's whole state: its users, every effective entity (dependencies first),
        container memberships, then a ``_sync`` event naming every entity the edge should hold, so
        that it removes the rest. Returns the number of events queued."""
        before = len(self.outbox.downlinks.get(edge.id, []))
        # read before the entities: what the cloud applied up to here is in the list below, and the
        # edge keeps what it sent after (its ack may reach the edge before this sync does)
        uplink_mark = self._uplink_mark(edge)
        for user in self.tenant_users(edge.tenant_id):
            body = self.user_info(user).SerializeToString()
            self.outbox.downlink(
                edge.id, OutboxEvent(user.tenant_id, USER_EVENT_TYPE, UPDATED, user.id, body)
            )
        entities = self.effective_entities(edge)
        self._emit_added(edge.id, [e.id for e in entities])
        for container in (e for e in entities if self.types.get(e.type).container):
            for member in self.entities.members(container):
                body = self._membership_body(container, member)
                self.outbox.downlink(
                    edge.id,
                    OutboxEvent(container.tenant_id, container.type, MEMBER_ADDED, container.id, body),
                )
        ids = [str(e.id) for e in entities]
        per = common.SYNC_IDS_PER_EVENT
        parts = [ids[i : i + per] for i in range(0, len(ids), per)] or [[]]
        sync_id = str(uuid.uuid4()) if len(parts) > 1 else ""
        written = len(self.outbox.downlinks.get(edge.id, [])) - before + len(parts)
        for n, part in enumerate(parts):
            end = pb.SyncEnd(
                entity_ids=part,
                sync_id=sync_id,
                part=n,
                parts=len(parts),
                uplink_mark=uplink_mark,
                events=written,
            ).SerializeToString()
            self.outbox.downlink(edge.id, OutboxEvent(edge.tenant_id, SYNC_EVENT_TYPE, "SYNC", None, end))
        edge.sync_requested = False
        edge.last_sync = now_ms()  # when it was queued; its outcome: sync_outcome()
        self.session.flush()
        return written
