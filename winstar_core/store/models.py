"""The tables. One generic ``entity`` table serves every plugin, so a third-party type needs no
migration. Times are epoch milliseconds (portable, cheap to compare and index)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

PENDING = "PENDING"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
#: not sent: the receiver lacks the event's type or its schema version (``error`` says which); it
#: is sent, with a new seq, once the receiver announces them (transport/holding.py)
HELD = "HELD"
#: a later event of the same entity replaced it before it was sent (compaction; ``error`` names
#: the seq that did); whoever sets it also sets ``delivered_time`` to that moment (retention)
SUPERSEDED = "SUPERSEDED"
#: a FAILED event an operator has seen (`winstar edge dismiss`, `winstar dismiss`);
#: ``delivered_time`` is when it was dismissed (services/retention.py)
DISMISSED = "DISMISSED"
EVENT_STATUSES = (PENDING, DELIVERED, FAILED, HELD, SUPERSEDED, DISMISSED)
#: the events retention deletes once their ``delivered_time`` is older than the retention; the
#: exact text of the partial indexes' predicate, so that both databases' planners match the prune
#: query to them (services/retention.py); PENDING, HELD and FAILED are never pruned
PRUNABLE_STATUSES = (DELIVERED, SUPERSEDED, DISMISSED)
PRUNABLE_WHERE = "status IN ('DELIVERED', 'SUPERSEDED', 'DISMISSED')"


def now_ms() -> int:
    return int(time.time() * 1000)


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class NodeConfig(Base):
    """Key/value facts about this node: its role (cloud or edge), edition, link settings."""

    __tablename__ = "node_config"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONType)


class Tenant(Base):
    __tablename__ = "tenant"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class Customer(Base):
    __tablename__ = "customer"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "name"),)
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenant.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255))
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class Role(Base):
    __tablename__ = "role"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "name"),)
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenant.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255))
    #: ["DEVICE:WRITE", "ASSET:ALL", ...]
    permissions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(sa.String(255), unique=True)
    authority: Mapped[str] = mapped_column(sa.String(32))
    #: on an edge: the permissions the cloud granted this user (the cloud derives them from roles)
    permissions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: no foreign key: an edge knows its users' customer ids, not the customers themselves
    customer_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    updated_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    #: cloud: the console password as ``scrypt$N$R$P$SALT$HASH`` (hex), None: no password set
    #: (services/auth.py); an edge never holds one
    password: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    #: cloud: a console session cookie names the generation it was made in and is good while it
    #: is current; Sign out moves it on (services/auth.py)
    session_generation: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")


class ApiToken(Base):
    """A script's key to the REST API (services/auth.py): only the SHA-256 of the token is kept."""

    __tablename__ = "api_token"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    last_used: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    revoked_time: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


class SignInLink(Base):
    """A one-time sign-in link (`winstar demo --console`): the SHA-256 of its token, until used or expired."""

    __tablename__ = "sign_in_link"
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("app_user.id", ondelete="CASCADE"))
    expires_time: Mapped[int] = mapped_column(sa.BigInteger)


class SignInThrottle(Base):
    """Recent failed sign-ins per email (``key``: a hash of the email, known or not), shared by
    every console process of the cloud."""

    __tablename__ = "sign_in_throttle"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_failure: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class UserRole(Base):
    __tablename__ = "user_role"
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)


class CloudNode(Base):
    """A running `winstar run` of the cloud database (services/nodes.py): removed when it stops,
    expired when its heartbeat is long gone."""

    __tablename__ = "cloud_node"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    address: Mapped[str] = mapped_column(sa.String(255))
    started: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    last_seen: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class Edge(Base):
    __tablename__ = "edge"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "name"),)
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenant.id", ondelete="CASCADE"))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("customer.id", ondelete="SET NULL"), nullable=True
    )
    name: Mapped[str] = mapped_column(sa.String(255))
    routing_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: scrypt(secret, salt); the secret itself is never stored
    secret_salt: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    secret_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(64))
    connected: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    last_seen: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    sync_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    last_sync: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    # A copied edge database (a cloned SD card or VM image) connects with the same credentials as
    # the original; the cloud serves one edge database (its "instance") and refuses the others
    # (services/instances.py).
    #: the instance id (a UUID) of the edge database the cloud serves; None: no box served yet
    instance_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    #: an operator ran `winstar edge reset-instance`: the next new instance becomes the edge
    instance_reset: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    #: when the served instance was adopted
    instance_since: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    #: one line about the last refused box (or the last move to a new box); None if none
    conflict: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Which node serves the edge (services/nodes.py): the edge is connected while that node lives.
    #: the node whose session owns the edge's link; None: no session
    node_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("cloud_node.id", ondelete="SET NULL"), nullable=True, index=True
    )
    #: the owning session (the newest connection of the edge wins)
    session_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)


class Entity(Base):
    __tablename__ = "entity"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "type", "name_scope", "name"),)
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenant.id", ondelete="CASCADE"))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(255))
    #: names are unique per tenant, type and scope (``EntityType.name_scope`` of the data: "" for
    #: most types, the member type for a group)
    name_scope: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    #: the edge that created this entity (cloud side), if any
    origin_edge_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    updated_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class Assignment(Base):
    """An entity assigned directly to an edge (members of an assigned container follow)."""

    __tablename__ = "assignment"
    edge_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("edge.id", ondelete="CASCADE"), primary_key=True)
    entity_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("entity.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    # The unit of work orders INSERTs and DELETEs along relationships, not foreign keys: these
    # never-loaded relationships let an entity and the rows that refer to it go in one flush.
    entity: Mapped[Entity] = relationship(foreign_keys=[entity_id], lazy="raise")


class EntityMember(Base):
    """Membership of an entity in a container entity (for example a group)."""

    __tablename__ = "entity_member"
    container_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("entity.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("entity.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    # write order only, as for Assignment.entity
    container: Mapped[Entity] = relationship(foreign_keys=[container_id], lazy="raise")
    member: Mapped[Entity] = relationship(foreign_keys=[member_id], lazy="raise")


class OutboxColumns:
    """The columns both outboxes declare (``edge_event`` on the cloud, ``cloud_event`` on an edge):
    one row per event of a stream, in stream order (``seq``), with its delivery state. Each table
    adds its own columns and indexes.

    A table's own columns come before a mixin's in its ``CREATE TABLE``; ``id`` sorts first, so the
    order stays the migrations' (``id``, then ``edge_id`` or the unique ``seq``, then the rest)."""

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4, sort_order=-1)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    type: Mapped[str] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    status: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    delivered_time: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    #: for a FAILED event sent again: the seq of its copy (an event is retried at most once)
    retried_as: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


class EdgeEvent(OutboxColumns, Base):
    """Cloud side outbox: one row per edge per change, in that edge's stream order (``seq``)."""

    __tablename__ = "edge_event"
    __table_args__ = (
        sa.UniqueConstraint("edge_id", "seq"),
        sa.Index(
            "ix_edge_event_pending",
            "edge_id",
            "seq",
            postgresql_where=sa.text("status = 'PENDING'"),
            sqlite_where=sa.text("status = 'PENDING'"),
        ),
        # the unsent and the held events of one entity in an edge's stream (compaction,
        # store/outbox.py)
        sa.Index(
            "ix_edge_event_pending_entity",
            "edge_id",
            "entity_id",
            postgresql_where=sa.text("status = 'PENDING'"),
            sqlite_where=sa.text("status = 'PENDING'"),
        ),
        sa.Index(
            "ix_edge_event_held_entity",
            "edge_id",
            "entity_id",
            postgresql_where=sa.text("status = 'HELD'"),
            sqlite_where=sa.text("status = 'HELD'"),
        ),
        # each edge's FAILED downlinks (the console's edges list counts them)
        sa.Index(
            "ix_edge_event_failed",
            "edge_id",
            postgresql_where=sa.text("status = 'FAILED'"),
            sqlite_where=sa.text("status = 'FAILED'"),
        ),
        # what retention may delete, oldest first (services/retention.py)
        sa.Index(
            "ix_edge_event_prunable",
            "delivered_time",
            postgresql_where=sa.text(PRUNABLE_WHERE),
            sqlite_where=sa.text(PRUNABLE_WHERE),
        ),
    )
    #: the edge whose stream the event is in
    edge_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("edge.id", ondelete="CASCADE"))


class CloudEvent(OutboxColumns, Base):
    """Edge side outbox: one row per change pushed to the cloud, in stream order (``seq``)."""

    __tablename__ = "cloud_event"
    __table_args__ = (
        sa.Index(
            "ix_cloud_event_pending",
            "seq",
            postgresql_where=sa.text("status = 'PENDING'"),
            sqlite_where=sa.text("status = 'PENDING'"),
        ),
        # the unsent changes of one entity (a removal of it is refused while there are some)
        sa.Index(
            "ix_cloud_event_pending_entity",
            "entity_id",
            postgresql_where=sa.text("status = 'PENDING'"),
            sqlite_where=sa.text("status = 'PENDING'"),
        ),
        sa.Index(
            "ix_cloud_event_held_entity",
            "entity_id",
            postgresql_where=sa.text("status = 'HELD'"),
            sqlite_where=sa.text("status = 'HELD'"),
        ),
        # what retention may delete, oldest first (services/retention.py)
        sa.Index(
            "ix_cloud_event_prunable",
            "delivered_time",
            postgresql_where=sa.text(PRUNABLE_WHERE),
            sqlite_where=sa.text(PRUNABLE_WHERE),
        ),
    )
    #: the edge has one stream: a seq is unique in the table
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)


class StreamCounter(Base):
    """Last sequence handed out per outbox stream. Writers take the row lock with
    ``UPDATE ... RETURNING``, so for one stream commit order equals sequence order (no holes a
    reader could skip: DESIGN.md invariant 3)."""

    __tablename__ = "stream_counter"
    stream: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class StreamFailure(Base):
    """Events of a peer's stream that this node rejected, with its reason; written with the mark,
    so a redelivered event gets the same verdict without being applied again."""

    __tablename__ = "stream_failure"
    stream: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    error: Mapped[str] = mapped_column(sa.Text)
    created_time: Mapped[int] = mapped_column(sa.BigInteger, default=now_ms)


class StreamMark(Base):
    """How far this node has applied a peer's stream; written in the transaction of the apply."""

    __tablename__ = "stream_mark"
    stream: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    applied_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
