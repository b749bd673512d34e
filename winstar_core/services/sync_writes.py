"""What a Sync Edge writes and reads on the cloud, below its logic (:mod:`cloud_digest`,
:mod:`cloud_sync`): the states of an edge's entities in the order they are sent, a chunk at a
time without ORM objects, their containers' memberships, the edge's effective set and tags, its
uplink mark and its last ``_sync`` events."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.services import digest
from winstar_core.services.cloud_assignment import CloudAssignment
from winstar_core.services.cloud_tenancy import CloudTenancy
from winstar_core.services.constants import ADDED, MEMBER_ADDED, SYNC_EVENT_TYPE, UPDATED
from winstar_core.services.entities import entity_state
from winstar_core.services.ids import IN_CHUNK, chunks
from winstar_core.store.models import PENDING, Edge, EdgeEvent, Entity, EntityMember, StreamMark
from winstar_core.store.outbox import OutboxEvent, uplink_mark_stream, uplink_mark_stream_for
from winstar_core.transport.pb import sync_pb2 as pb

#: what an entity's state is made of, read as plain rows (the table's columns: no ORM loading)
_ENTITY = cast(sa.Table, Entity.__table__)
_STATE_COLUMNS = tuple(
    _ENTITY.c[n]
    for n in ("id", "type", "name", "tenant_id", "customer_id", "version", "data", "origin_edge_id")
)


#: rows a large read fetches at a time (streamed: 100,000 ids are never all in memory as rows)
STREAM_ROWS = 5_000


def _streamed(stmt: Any) -> Any:
    """``stmt`` read :data:`STREAM_ROWS` rows at a time (a server-side cursor on PostgreSQL)."""
    return stmt.execution_options(yield_per=STREAM_ROWS)


class SyncWrites(CloudAssignment, CloudTenancy):
    """Reads and writes of a Sync Edge. Uses ``session``, ``outbox``, ``types`` and the effective
    set (:class:`CloudAssignment`)."""

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

    def _queued(self, edge: Edge) -> int:
        return len(self.outbox.downlinks.get(edge.id, []))

    def _effective_ids(self, edge: Edge) -> sa.Select[tuple[uuid.UUID]]:
        return sa.select(self._effective_ids_stmt(edge.id).subquery().c.entity_id)

    def _effective_tags(self, edge: Edge) -> Iterator[tuple[uuid.UUID, int]]:
        """The tag (version, or version and members) of each entity effectively assigned to
        ``edge``, streamed (an edge may hold 100,000)."""
        ids = self._effective_ids(edge)
        stmt = sa.select(EntityMember.container_id, EntityMember.member_id)
        members = [(c, m) for c, m in self.session.execute(stmt.where(EntityMember.container_id.in_(ids)))]
        pairs = self.session.execute(
            _streamed(sa.select(Entity.id, Entity.version).where(Entity.id.in_(ids)))
        )
        return digest.tagged(((i, v) for i, v in pairs), members)

    def _effective_count(self, edge: Edge) -> int:
        stmt = sa.select(sa.func.count()).select_from(Entity).where(Entity.id.in_(self._effective_ids(edge)))
        return int(self.session.scalar(stmt) or 0)

    def _ranked(self, edge: Edge, ids: set[bytes] | None) -> bytearray:
        """``ids`` (their 16 bytes; None: every entity effectively assigned to ``edge``) in the
        order they are sent, dependencies first (by type rank), then by type and name, packed
        (:func:`digest.pack`)."""
        if ids is not None and len(ids) <= 4 * IN_CHUNK:
            named = sa.select(Entity.id, Entity.type, Entity.name)
            listed = [uuid.UUID(bytes=i) for i in ids]
            rows = [
                r for chunk in chunks(listed) for r in self.session.execute(named.where(Entity.id.in_(chunk)))
            ]
            by_type = {t: self.types.rank(t) for t in {r.type for r in rows}}
            rows.sort(key=lambda r: (by_type[r.type], r.type, r.name))
            return digest.pack(r.id for r in rows)
        # most of the edge: sorted by the database, a rank at a time, read as ids only, streamed
        effective = self._effective_ids(edge)
        types = set(self.session.scalars(sa.select(Entity.type).where(Entity.id.in_(effective)).distinct()))
        ranks = {t: self.types.rank(t) for t in types}
        out = bytearray()
        for rank in sorted(set(ranks.values())):
            group = sorted(t for t in types if ranks[t] == rank)
            stmt = sa.select(Entity.id).where(Entity.id.in_(effective), Entity.type.in_(group))
            for i in self.session.scalars(_streamed(stmt.order_by(Entity.type, Entity.name))):
                if ids is None or i.bytes in ids:
                    out += i.bytes
        return out

    def _queue_end(self, edge: Edge, end: pb.SyncEnd) -> None:
        body = end.SerializeToString()
        self.outbox.downlink(
            edge.id, OutboxEvent(edge.tenant_id, SYNC_EVENT_TYPE, digest.SYNC_ACTION, None, body)
        )

    def _write_progress(
        self,
        edge: Edge,
        a: digest.Answer,
        before: int,
        buckets: list[int] | None = None,
        ids: Iterable[str] = (),
    ) -> None:
        """Close this transaction's chunk of answer ``a`` with a progress end (scoped, not
        counted, not final): its events (the sync's outcome counts them), a mark that the answer
        goes on (``_awaited`` refuses the next part until it is over; ``sync_in_flight`` sees the
        sync running), and, once the states are all written, a group of the part's ``buckets``
        with the ``ids`` the edge should hold there (it removes the rest there)."""
        a.token = str(uuid.uuid4())
        end = pb.SyncEnd(
            entity_ids=ids,
            sync_id=a.token,
            part=0,
            parts=1,
            scoped=True,
            bucket_bits=a.digest.bucket_bits,
            buckets=buckets or [],
            digest_id=a.digest.sync_id,
            answers=a.diff.part,
            covered_to=a.start,
            uplink_mark=self._uplink_mark(edge),
            events=self._queued(edge) - before + 1,
        )
        self._queue_end(edge, end)

    def _held_in(self, edge: Edge, buckets: list[int], bits: int) -> Iterator[str]:
        """The ids (text) of the entities ``edge`` should hold in ``buckets``, streamed: read as
        ranges of ids (:func:`digest.id_ranges`), not the whole effective set each time."""
        ranges = digest.id_ranges(buckets, bits)
        where = [
            Entity.id >= lo if hi is None else sa.and_(Entity.id >= lo, Entity.id < hi) for lo, hi in ranges
        ]
        stmt = sa.select(Entity.id).where(sa.or_(*where), Entity.id.in_(self._effective_ids(edge)))
        scope = set(buckets)
        return (str(i) for i in self.session.scalars(_streamed(stmt)) if digest.bucket_of(i, bits) in scope)

    def _pace(self, bind: Any, a: digest.Answer, lead: int, wait_s: float) -> None:
        """Wait (at most ``wait_s``) until the edge's stream holds at most ``lead`` events not
        delivered yet, none once the ends are being written (a few hundred KB each): an answer
        stays a little ahead of the edge, not 100,000 events (nor all its ends in one message)."""
        most = 0 if a.groups is not None else lead
        pending = sa.select(EdgeEvent.seq).where(EdgeEvent.edge_id == a.edge_id, EdgeEvent.status == PENDING)
        stmt = sa.select(sa.func.count()).select_from(pending.limit(most + 1).subquery())
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with Session(bind) as s:
                if int(s.scalar(stmt) or 0) <= most:
                    return
            time.sleep(0.02)

    def last_sync_events(
        self, edge: Edge, action: str | None = None, below: int | None = None
    ) -> EdgeEvent | None:
        """The edge's latest ``_sync`` event (of ``action``, below seq ``below``), or None."""
        stmt = sa.select(EdgeEvent).where(EdgeEvent.edge_id == edge.id, EdgeEvent.type == SYNC_EVENT_TYPE)
        if action is not None:
            stmt = stmt.where(EdgeEvent.action == action)
        if below is not None:
            stmt = stmt.where(EdgeEvent.seq < below)
        return self.session.scalars(stmt.order_by(EdgeEvent.seq.desc()).limit(1)).first()

    def _write_states(self, edge: Edge, a: digest.Answer, budget: int) -> int:
        """Queue the states of the next ``budget`` entities of ``a.todo`` that still exist.
        Returns how many were queued. (One unassigned since the answer began may be sent: the
        answer's end, which names what the edge should hold when it is written, removes it.)"""
        ids = a.take(budget)
        rows: dict[uuid.UUID, Any] = {}
        for chunk in chunks(ids):
            stmt = sa.select(*_STATE_COLUMNS).where(_ENTITY.c.id.in_(chunk))
            rows.update((r.id, r) for r in self.session.execute(stmt))
        containers = {t: self.types.get(t).container for t in {r.type for r in rows.values()}}
        added: list[uuid.UUID] = []
        for entity_id in ids:
            row = rows.get(entity_id)
            if row is None:
                continue
            state = entity_state(cast(Entity, row), self.types)
            state.replace = entity_id.bytes in a.changed  # the edge's version may be above the cloud's
            action = UPDATED if state.replace else ADDED
            self.outbox.downlink(
                edge.id, OutboxEvent(row.tenant_id, row.type, action, entity_id, state.SerializeToString())
            )
            if containers[row.type]:
                a.containers.append((entity_id, row.tenant_id, row.type))
            added.append(entity_id)
        if a.start:  # a later part of the diff: the containers of earlier ones sent before these
            self._relink(edge, a, [i for i in added if i.bytes not in a.changed])
        return len(added)

    def _relink(self, edge: Edge, a: digest.Answer, new: list[uuid.UUID]) -> None:
        """The memberships of the entities ``new`` to this edge in the containers of the buckets
        an earlier part of the diff answered: sent with their container, they reached the edge
        before their member did (and it skipped them)."""
        bits = a.digest.bucket_bits
        effective = sa.select(self._effective_ids_stmt(edge.id).subquery().c.entity_id)
        stmt = sa.select(EntityMember.container_id, EntityMember.member_id, Entity.tenant_id, Entity.type)
        stmt = stmt.join(Entity, Entity.id == EntityMember.container_id)
        for chunk in chunks(new):
            where = (EntityMember.member_id.in_(chunk), EntityMember.container_id.in_(effective))
            for container_id, member_id, tenant_id, type_name in self.session.execute(stmt.where(*where)):
                if digest.bucket_of(container_id, bits) < a.start:
                    body = pb.Membership(container_id=str(container_id), member_id=str(member_id))
                    self.outbox.downlink(
                        edge.id,
                        OutboxEvent(
                            tenant_id, type_name, MEMBER_ADDED, container_id, body.SerializeToString()
                        ),
                    )

    def _write_members(self, edge: Edge, a: digest.Answer, budget: int) -> None:
        """Queue up to ``budget`` memberships of the containers ``a`` sent (each container's by
        member name), after every state: a membership never arrives before its member."""
        while budget > 0 and (a.members or a.containers):
            if not a.members:
                a.member_of = a.containers.popleft()
                a.members = deque(
                    self.session.scalars(
                        sa.select(EntityMember.member_id)
                        .join(Entity, Entity.id == EntityMember.member_id)
                        .where(EntityMember.container_id == a.member_of[0])
                        .order_by(Entity.name)
                    )
                )
                continue
            assert a.member_of is not None
            container_id, tenant_id, type_name = a.member_of
            while a.members and budget > 0:
                member = pb.Membership(container_id=str(container_id), member_id=str(a.members.popleft()))
                self.outbox.downlink(
                    edge.id,
                    OutboxEvent(tenant_id, type_name, MEMBER_ADDED, container_id, member.SerializeToString()),
                )
                budget -= 1
