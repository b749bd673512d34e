"""Events the receiver cannot read yet: held by the sender, sent by themselves once it can.

Each side announces its entity types and their schema versions in the handshake (Hello, Welcome).
A sender holds (status ``HELD``, the reason in ``error``) an event of a type the receiver has no
plugin for, an entity state of a schema version newer than the receiver knows, and every later
event about an entity it holds (so an entity's events still arrive in their order). Held events
block nothing behind them. When the receiver announces the type or version (its plugin installed
or upgraded, it reconnects), the held events that became readable are released: renumbered, in
their order, to the end of the stream, with the pending events of the same entities behind them
(the receiver's mark has moved past their old seqs, and it would take them for duplicates).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import DecodeError
from sqlalchemy.orm import Session

from winstar_core.entity_types import EntityType
from winstar_core.store.models import HELD, PENDING
from winstar_core.store.outbox import UPLINK_STREAM, allocate, downlink_stream
from winstar_core.transport.pb import sync_pb2 as pb

#: actions whose body is an EntityState (its ``schema_version`` says how to read its payload)
STATE_ACTIONS = ("ADDED", "UPDATED")
MEMBER_ACTIONS = ("MEMBER_ADDED", "MEMBER_REMOVED")


def announced(infos: Iterable[pb.EntityTypeInfo]) -> dict[str, int]:
    """The types and schema versions a peer announced (the highest, if one is named twice)."""
    out: dict[str, int] = {}
    for info in infos:
        out[info.type] = max(out.get(info.type, 0), int(info.schema_version))
    return out


def capabilities(
    infos: Sequence[pb.EntityTypeInfo], types: Iterable[type[EntityType]], who: str
) -> Capabilities | None:
    """The :class:`Capabilities` of a peer that announced ``infos``, for a sender whose plugins
    register ``types``; None when the peer announced no type at all (it is sent everything, and
    refuses what it cannot read: a peer that says nothing is not taken to read nothing)."""
    if not infos:
        return None
    return Capabilities(announced(infos), {t.name: t.schema_version for t in types}, who)


def _state_version(body: bytes) -> int:
    try:
        return int(pb.EntityState.FromString(body).schema_version)
    except (DecodeError, ValueError, TypeError, RecursionError):
        return 0  # not readable: the receiver refuses it with the reason, nothing to hold for


def _member_id(body: bytes) -> str:
    try:
        return str(pb.Membership.FromString(body).member_id)
    except (DecodeError, ValueError, TypeError, RecursionError):
        return ""


@dataclass
class Capabilities:
    """What the receiver of a stream can read, and which entities of the stream are held."""

    #: entity type -> the schema version the receiver knows (from its handshake)
    peer: Mapping[str, int]
    #: entity type -> this side's schema version
    local: Mapping[str, int]
    #: who the receiver is, in a reason ("the edge", "the cloud")
    who: str
    #: entity id -> the seq of its first held event
    held_entities: dict[str, int] = field(default_factory=dict)

    def why_held(self, seq: int, type_: str, action: str, entity_id: str, body: bytes) -> str | None:
        """Why the receiver cannot take this event now (and it is held), or None. Records a held
        event's entity, so the events behind it about the same entity are held too."""
        if type_.startswith("_"):
            return None  # the core's own events (users, the edge's config, a sync's end)
        reason: str | None = None
        known = self.peer.get(type_)
        if known is None:
            reason = f"{self.who} has no plugin for entity type {type_!r}"
        elif action in STATE_ACTIONS and self.local.get(type_, 0) > known:
            version = _state_version(body)
            if version > known:
                reason = (
                    f"{type_} data of schema version {version}; {self.who} knows version {known}"
                    " (upgrade its plugin)"
                )
        related = [entity_id] if entity_id else []
        if action in MEMBER_ACTIONS:
            member = _member_id(body)
            if member:
                related.append(member)
        if reason is None:
            for rid in related:
                first = self.held_entities.get(rid)
                if first is not None and first < seq:
                    reason = f"behind held seq {first} of the same entity"
                    break
        if reason is not None and entity_id:
            self.held_entities.setdefault(entity_id, seq)
        return reason

    def needs_body(self, type_: str, action: str) -> bool:
        """Whether :meth:`why_held` needs the event's body to decide (a membership's member, or
        the schema version of a state of a type the receiver knows in an older version)."""
        if action in MEMBER_ACTIONS:
            return True
        known = self.peer.get(type_)
        return action in STATE_ACTIONS and known is not None and self.local.get(type_, 0) > known

    def load_held(self, session_or_conn: Any, model: Any, edge_id: uuid.UUID | None) -> None:
        """Learn the entities the stream holds (the sender starts with them)."""
        where = [model.status == HELD, model.entity_id.is_not(None)]
        if edge_id is not None:
            where.append(model.edge_id == edge_id)
        stmt = sa.select(model.entity_id, sa.func.min(model.seq)).where(*where).group_by(model.entity_id)
        for entity_id, seq in session_or_conn.execute(stmt):
            self.held_entities[str(entity_id)] = int(seq)


def release_held(
    session: Session, model: Any, caps: Capabilities | None, edge_id: uuid.UUID | None = None
) -> int:
    """Send again what the receiver can now read (``caps`` None: a peer that announced nothing,
    which is sent everything): its held events that became readable move, in their order, to the
    end of the stream (status PENDING), with the pending events written after them that concern
    the same entities (naming one, or a membership of one). Returns how many held events were
    released. ``caps`` starts empty and ends knowing the entities still held.

    Reads the held rows without their bodies, then only the bodies the decision needs (entity
    states of a type the peer knows in an older version, memberships), a chunk at a time."""
    where = [model.status == HELD]
    if edge_id is not None:
        where.append(model.edge_id == edge_id)
    held = session.execute(
        sa.select(model.id, model.seq, model.type, model.action, model.entity_id)
        .where(*where)
        .order_by(model.seq)
    ).all()
    if not held:
        return 0
    bodies: dict[uuid.UUID, bytes] = {}
    if caps is not None:
        need = [row[0] for row in held if caps.needs_body(row[2], row[3])]
        for i in range(0, len(need), 500):
            bodies.update(
                session.execute(sa.select(model.id, model.body).where(model.id.in_(need[i : i + 500]))).all()
            )
    released: list[tuple[int, uuid.UUID]] = []
    first_of: dict[uuid.UUID, int] = {}
    for row_id, seq, type_, action, entity_id in held:
        eid = str(entity_id) if entity_id else ""
        if caps is None or caps.why_held(seq, type_, action, eid, bodies.get(row_id, b"")) is None:
            released.append((seq, row_id))
            if entity_id is not None:
                first_of.setdefault(entity_id, seq)
    if not released:
        return 0
    held_count = len(released)
    released.extend(_behind(session, model, edge_id, first_of, released[0][0]))
    released.sort()
    stream = downlink_stream(edge_id) if edge_id is not None else UPLINK_STREAM
    first = allocate(session, stream, len(released))
    table = model.__table__
    session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(seq=sa.bindparam("b_seq"), status=PENDING, error=None),
        [{"b_id": row_id, "b_seq": first + n} for n, (_, row_id) in enumerate(released)],
    )
    return held_count


def _behind(
    session: Session, model: Any, edge_id: uuid.UUID | None, first_of: dict[uuid.UUID, int], lowest: int
) -> list[tuple[int, uuid.UUID]]:
    """The PENDING events after the released ones that must stay behind them: about a released
    entity (after its first released event), or a membership whose member is one. They were never
    sent (the sender holds whatever follows a held event of the same entity), so moving them
    delivers nothing twice."""
    where = [model.status == PENDING, model.seq > lowest]
    if edge_id is not None:
        where.append(model.edge_id == edge_id)
    out: dict[uuid.UUID, int] = {}
    ids = sorted(first_of, key=str)
    for i in range(0, len(ids), 500):
        for row_id, seq, entity_id in session.execute(
            sa.select(model.id, model.seq, model.entity_id).where(
                *where, model.entity_id.in_(ids[i : i + 500])
            )
        ):
            if seq > first_of[entity_id]:
                out[row_id] = seq
    members = {str(e): seq for e, seq in first_of.items()}
    stmt = sa.select(model.id, model.seq, model.body).where(*where, model.action.in_(MEMBER_ACTIONS))
    for row_id, seq, body in session.execute(stmt.execution_options(yield_per=500)):
        first = members.get(_member_id(body or b""))
        if first is not None and seq > first:
            out[row_id] = seq
    return [(seq, row_id) for row_id, seq in out.items()]
