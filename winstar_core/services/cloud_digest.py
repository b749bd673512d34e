"""Sync Edge by digest on the cloud: queueing the digest of what an edge should hold, answering the
edge's diff with the states of what differs and the ids it should hold in the differing buckets,
and writing a sync's ``_sync`` ends (see docs/protocol.md, "Sync Edge")."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa

from winstar_core.errors import WinstarError
from winstar_core.services import common, digest
from winstar_core.services.cloud_assignment import CloudAssignment
from winstar_core.services.cloud_tenancy import CloudTenancy
from winstar_core.services.constants import ADDED, MEMBER_ADDED, SYNC_EVENT_TYPE, UPDATED, USER_EVENT_TYPE
from winstar_core.services.entities import entity_state
from winstar_core.services.peer import parse_body
from winstar_core.store.models import Edge, EdgeEvent, Entity, EntityMember, StreamMark, now_ms
from winstar_core.store.outbox import OutboxEvent, uplink_mark_stream, uplink_mark_stream_for
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger("winstar.sync")


class CloudDigest(CloudAssignment, CloudTenancy):
    """The digest sync. Uses ``session``, ``outbox``, ``entities``, the tenant's users
    (:class:`CloudTenancy`) and the effective set (:class:`CloudAssignment`)."""

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

    def _queue_users(self, edge: Edge) -> None:
        for user in self.tenant_users(edge.tenant_id):
            body = self.user_info(user).SerializeToString()
            self.outbox.downlink(
                edge.id, OutboxEvent(user.tenant_id, USER_EVENT_TYPE, UPDATED, user.id, body)
            )

    def _queue_memberships(self, edge: Edge, containers: list[Entity]) -> None:
        for container in containers:
            for member in self.entities.members(container):
                body = self._membership_body(container, member)
                self.outbox.downlink(
                    edge.id,
                    OutboxEvent(container.tenant_id, container.type, MEMBER_ADDED, container.id, body),
                )

    def _queue_ends(self, edge: Edge, ids: list[str], before: int, **fields: Any) -> int:
        """The ``_sync`` ends naming ``ids``, in parts of ``SYNC_IDS_PER_EVENT``; the last one
        carries ``fields`` (counts, final...) and how many events the sync wrote since ``before``
        queued events. Returns that number."""
        per = common.SYNC_IDS_PER_EVENT  # read through common at call time: tests lower it there
        parts = [ids[i : i + per] for i in range(0, len(ids), per)] or [[]]
        sync_id = str(uuid.uuid4()) if len(parts) > 1 else ""
        written = self._queued(edge) - before + len(parts)
        scope = {k: fields[k] for k in ("scoped", "bucket_bits", "buckets", "digest_id") if k in fields}
        for n, part in enumerate(parts):
            end = pb.SyncEnd(entity_ids=part, sync_id=sync_id, part=n, parts=len(parts), **scope)
            if n == len(parts) - 1:
                rest = {k: v for k, v in fields.items() if k not in scope}
                end.MergeFrom(pb.SyncEnd(events=written, **rest))
            self.outbox.downlink(
                edge.id,
                OutboxEvent(
                    edge.tenant_id, SYNC_EVENT_TYPE, digest.SYNC_ACTION, None, end.SerializeToString()
                ),
            )
        return written

    def _effective_tags(self, edge: Edge) -> dict[uuid.UUID, int]:
        """The tag (version, or version and members) of each entity effectively assigned to ``edge``."""
        ids = sa.select(self._effective_ids_stmt(edge.id).subquery().c.entity_id)
        pairs = [
            (i, v)
            for i, v in self.session.execute(sa.select(Entity.id, Entity.version).where(Entity.id.in_(ids)))
        ]
        stmt = sa.select(EntityMember.container_id, EntityMember.member_id)
        members = [(c, m) for c, m in self.session.execute(stmt.where(EntityMember.container_id.in_(ids)))]
        return digest.tags(pairs, members)

    def run_digest_sync(self, edge: Edge) -> int:
        """Queue a digest sync: the tenant's users, then a ``_sync`` DIGEST event summing up every
        entity the edge should hold. The edge answers with what differs (:meth:`answer_sync_diff`).
        Returns the number of events queued."""
        before = self._queued(edge)
        uplink_mark = self._uplink_mark(edge)  # read before the entities, as run_sync does
        self._queue_users(edge)
        tagged = self._effective_tags(edge)
        bits = digest.bucket_bits_for(len(tagged))
        counts, hashes = digest.summary(digest.buckets(tagged, bits))
        written = self._queued(edge) - before + 1
        body = pb.SyncDigest(
            sync_id=str(uuid.uuid4()),
            bucket_bits=bits,
            counts=counts,
            hashes=hashes,
            uplink_mark=uplink_mark,
            events=written,
        )
        self.outbox.downlink(
            edge.id,
            OutboxEvent(
                edge.tenant_id, SYNC_EVENT_TYPE, digest.DIGEST_ACTION, None, body.SerializeToString()
            ),
        )
        edge.sync_requested = False
        edge.last_sync = now_ms()  # when it was queued; its outcome: sync_outcome()
        self.session.flush()
        log.info(
            "edge %s: Sync Edge %s: digest of %d entities in %d buckets queued",
            edge.name,
            body.sync_id,
            len(tagged),
            1 << bits,
        )
        return written

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

    def _awaited(self, edge: Edge, diff: pb.SyncDiff) -> tuple[pb.SyncDigest, int]:
        """The digest ``diff`` answers and the first bucket its part may name, if the cloud waits
        for that very part; else the diff is refused (superseded, answered, or never asked)."""
        last = self.last_sync_events(edge)
        sent = self.last_sync_events(edge, digest.DIGEST_ACTION)
        if last is not None and sent is not None:
            found = pb.SyncDigest.FromString(sent.body)
            if last.seq == sent.seq and diff.part == 0 and diff.sync_id == found.sync_id:
                return found, 0
            if last.action == digest.SYNC_ACTION:
                end = pb.SyncEnd.FromString(last.body)
                waiting = end.scoped and not end.final and end.digest_id == found.sync_id == diff.sync_id
                if waiting and diff.part == end.answers + 1:
                    return found, int(end.covered_to)
        raise WinstarError(
            f"the cloud is not waiting for part {diff.part} of Sync Edge {diff.sync_id[:36]!r}"
            " (answered already, superseded by a later sync, or never started); ignored"
        )

    def answer_sync_diff(self, edge: Edge, event: pb.Event) -> None:
        """Answer one part of the edge's diff: the states of the entities missing or different
        there, then a scoped ``_sync`` end naming what the edge should hold in the part's buckets
        (it removes the rest there), with this part's counts. Refuses a part the cloud is not
        waiting for, or one that does not read as a diff of the digest."""
        diff = parse_body(pb.SyncDiff, event.body)
        sent, start = self._awaited(edge, diff)
        bits = sent.bucket_bits
        theirs = digest.read_diff(diff, bits, start - 1)
        final = diff.part + 1 == diff.parts
        covered_to = (1 << bits) if final else (max(theirs) + 1 if theirs else start)
        before = self._queued(edge)
        ours: dict[int, dict[uuid.UUID, int]] = {b: {} for b in theirs}
        if theirs:
            for entity_id, tag in self._effective_tags(edge).items():
                held = ours.get(digest.bucket_of(entity_id, bits))
                if held is not None:
                    held[entity_id] = tag
        new: set[uuid.UUID] = set()
        changed: set[uuid.UUID] = set()
        unchanged = removed = 0
        for b, pairs in theirs.items():
            for entity_id, tag in ours[b].items():
                seen = pairs.get(entity_id)
                if seen is None:
                    new.add(entity_id)
                elif seen != tag:
                    changed.add(entity_id)
                else:
                    unchanged += 1
            removed += sum(1 for entity_id in pairs if entity_id not in ours[b])
        unchanged += sum(sent.counts[b] for b in range(start, covered_to) if b not in theirs)
        entities = sorted(
            self.entities.by_ids(new | changed).values(),
            key=lambda e: (self.types.rank(e.type), e.type, e.name),
        )
        for e in entities:
            state = entity_state(e, self.types)
            state.replace = e.id in changed  # the edge's version may be above the cloud's
            body = state.SerializeToString()
            action = ADDED if e.id in new else UPDATED
            self.outbox.downlink(edge.id, OutboxEvent(e.tenant_id, e.type, action, e.id, body))
        self._queue_memberships(edge, [e for e in entities if self.types.get(e.type).container])
        ids = sorted(str(i) for held in ours.values() for i in held)
        self._queue_ends(
            edge,
            ids,
            before,
            scoped=True,
            bucket_bits=bits,
            buckets=sorted(theirs),
            digest_id=sent.sync_id,
            answers=diff.part,
            uplink_mark=self._uplink_mark(edge),
            covered_to=covered_to,
            final=final,
            counted=True,
            added=len(new),
            updated=len(changed),
            removed=removed,
            unchanged=unchanged,
            received_bytes=len(event.body),
        )
        log.info(
            "edge %s: Sync Edge %s: part %d/%d of the diff: %d of %d buckets differ: %d added, %d updated,"
            " %d to remove, %d unchanged",
            edge.name,
            sent.sync_id,
            diff.part + 1,
            diff.parts,
            len(theirs),
            1 << bits,
            len(new),
            len(changed),
            removed,
            unchanged,
        )
