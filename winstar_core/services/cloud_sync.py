"""Sync Edge on the cloud: running a requested one when due (a digest sync, see
:mod:`~winstar_core.services.cloud_digest`), the full sync that queues an edge's whole state
(users, effective entities, memberships, then ``_sync`` events naming what it should hold), and
how the last sync went."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa

from winstar_core.services import answer_writer, cloud_digest, digest
from winstar_core.services.cloud_digest import CloudDigest
from winstar_core.services.constants import SYNC_EVENT_TYPE, UPDATED, USER_EVENT_TYPE
from winstar_core.store.models import DELIVERED, FAILED, HELD, PENDING, Edge, EdgeEvent, now_ms
from winstar_core.store.outbox import OutboxEvent
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger("winstar.sync")

#: how long the cloud waits for the edge's answer to a delivered digest before another requested
#: sync may start (an edge that never answers must not block Sync Edge for ever)
ANSWER_WAIT_MS = 120_000
_COUNTS = ("added", "updated", "removed", "unchanged")
#: how recent the edge's last Sync Edge must be for ``sync_if_due`` to look for an answer cut short
RECENT_SYNC_MS = 3_600_000


class CloudSync(CloudDigest):
    """Sync Edge. Uses ``session``, ``outbox``, ``entities``, the tenant's users and the effective
    set (through :class:`CloudDigest`)."""

    def sync_outcome(self, edge: Edge) -> dict[str, Any]:
        """How the edge's last Sync Edge went, from its ``_sync`` events: ``state`` "none" (never
        synced), "pending" (requested, not queued yet), "running" (queued, its end not delivered),
        "done" (every event of it delivered) or "failed" (some of its events failed or are held:
        the edge has not converged); ``finished``: when its end was delivered (ms); ``failed``
        and ``held``: how many of its events; ``added``, ``updated``, ``removed``, ``unchanged``:
        the cloud's counts (None: not counted, a full sync counts only ``added``); ``bytes``: the
        bodies the sync queued, and the diffs the edge sent up."""
        outcome: dict[str, Any] = {"state": "none", "finished": None, "failed": None, "held": None}
        outcome.update(dict.fromkeys((*_COUNTS, "bytes")))
        last = self.last_sync_events(edge)
        if last is not None:
            self._read_outcome(edge, last, outcome)
        if edge.sync_requested:
            outcome["state"] = "pending"
        return outcome

    def _read_outcome(self, edge: Edge, last: EdgeEvent, outcome: dict[str, Any]) -> None:
        blocks: list[tuple[int, int]] = []
        ends: list[pb.SyncEnd] = []
        running = last.status == PENDING
        if last.action == digest.DIGEST_ACTION:
            start: EdgeEvent | None = last
            running = last.status in (PENDING, DELIVERED)
        else:
            end = pb.SyncEnd.FromString(last.body)
            start = self.last_sync_events(edge, digest.DIGEST_ACTION, below=last.seq) if end.scoped else None
            if end.scoped and start is not None:
                rows = self.session.execute(
                    sa.select(EdgeEvent.seq, EdgeEvent.body).where(
                        EdgeEvent.edge_id == edge.id,
                        EdgeEvent.type == SYNC_EVENT_TYPE,
                        EdgeEvent.action == digest.SYNC_ACTION,
                        EdgeEvent.seq.between(start.seq + 1, last.seq),
                    )
                ).all()
                ends = [e for e in (pb.SyncEnd.FromString(body) for _, body in rows)]
                blocks += [
                    (seq - max(int(e.events), 1) + 1, seq)
                    for (seq, _), e in zip(rows, ends, strict=True)
                    if e.events
                ]
                running = running or not end.final
            else:
                ends = [end]
                blocks.append((last.seq - max(int(end.events), 1) + 1, last.seq))
        if start is not None:
            sent = pb.SyncDigest.FromString(start.body)
            blocks.append((start.seq - max(int(sent.events), 1) + 1, start.seq))
        counts: dict[str, int] = {}
        size = 0
        for first, seq in blocks:
            for status, n, length in self.session.execute(
                sa.select(EdgeEvent.status, sa.func.count(), sa.func.sum(sa.func.length(EdgeEvent.body)))
                .where(EdgeEvent.edge_id == edge.id, EdgeEvent.seq.between(first, seq))
                .group_by(EdgeEvent.status)
            ):
                counts[status] = counts.get(status, 0) + int(n)
                size += int(length or 0)
        failed, held = int(counts.get(FAILED, 0)), int(counts.get(HELD, 0))
        outcome.update(failed=failed, held=held, bytes=size + sum(int(e.received_bytes) for e in ends))
        counted = [e for e in ends if e.counted]
        if counted:
            outcome.update({k: sum(int(getattr(e, k)) for e in counted) for k in _COUNTS})
        elif ends and ends[-1].events and not ends[-1].scoped:  # a full sync: it counts its states
            outcome["added"] = sum(int(e.added) for e in ends)
        if running and not failed and not held:
            outcome["state"] = "running"
        else:
            outcome["state"] = "failed" if failed or held or last.status != DELIVERED else "done"
            outcome["finished"] = last.delivered_time

    def sync_in_flight(self, edge: Edge) -> bool:
        """Whether a Sync Edge written earlier has not reached the edge yet (a ``_sync`` event
        still PENDING), or its digest was delivered less than :data:`ANSWER_WAIT_MS` ago and the
        edge has not finished answering it: another one would only repeat it, and a peer asking
        again and again would otherwise grow the outbox each time."""
        stmt = sa.select(EdgeEvent.seq).where(
            EdgeEvent.edge_id == edge.id, EdgeEvent.status == PENDING, EdgeEvent.type == SYNC_EVENT_TYPE
        )
        if self.session.scalars(stmt.limit(1)).first() is not None:
            return True
        last = self.last_sync_events(edge)
        if last is None or last.status != DELIVERED or (last.delivered_time or 0) < now_ms() - ANSWER_WAIT_MS:
            return False
        if last.action == digest.DIGEST_ACTION:
            return True
        end = pb.SyncEnd.FromString(last.body)
        return end.scoped and not end.final

    def sync_if_due(self, edge: Edge) -> bool:
        """Run the Sync Edge that was requested (a digest sync), unless one is still on its way
        (it runs once that one is over). An answer cut short (its node died between two of its
        transactions: its progress end is the sync's last event) requests one. Returns whether it
        ran. Holds the edge's row: an answer written in several transactions checks, under the
        same lock, that no later sync started before each of them."""
        recent = (edge.last_sync or 0) > now_ms() - RECENT_SYNC_MS
        if not edge.sync_requested and recent and not answer_writer.answering(edge.id):
            last = self.last_sync_events(edge)
            if last is not None and last.action == digest.SYNC_ACTION:
                end = pb.SyncEnd.FromString(last.body)
                if end.scoped and not end.counted and not end.final:
                    log.info(
                        "edge %s: Sync Edge %s: its answer was cut short: requested again",
                        edge.name,
                        end.digest_id,
                    )
                    edge.sync_requested = True
        if not edge.sync_requested:
            return False
        self.session.execute(sa.select(Edge.id).where(Edge.id == edge.id).with_for_update())
        if self.sync_in_flight(edge):
            return False
        self.run_digest_sync(edge)
        return True

    def _queue_users(self, edge: Edge) -> None:
        for user in self.tenant_users(edge.tenant_id):
            body = self.user_info(user).SerializeToString()
            self.outbox.downlink(
                edge.id, OutboxEvent(user.tenant_id, USER_EVENT_TYPE, UPDATED, user.id, body)
            )

    def run_digest_sync(self, edge: Edge) -> int:
        """Queue a digest sync: the tenant's users, then a ``_sync`` DIGEST event summing up every
        entity the edge should hold. The edge answers with what differs (:meth:`answer_sync_diff`).
        Returns the number of events queued."""
        before = self._queued(edge)
        uplink_mark = self._uplink_mark(edge)  # read before the entities, as run_sync does
        self._queue_users(edge)
        held = self._effective_count(edge)
        bits = digest.bucket_bits_for(held)
        counts, hashes = digest.summary(digest.buckets(self._effective_tags(edge), bits))
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
            sum(counts),
            1 << bits,
        )
        return written

    def run_sync(self, edge: Edge) -> int:
        """Queue a full sync, the edge's whole state: its users, every effective entity
        (dependencies first), container memberships, then a ``_sync`` event naming every entity
        the edge should hold, so that it removes the rest. Returns the number of events queued.
        One transaction, its events flushed every :data:`~cloud_digest.ANSWER_CHUNK` states."""
        self.session.execute(sa.select(Edge.id).where(Edge.id == edge.id).with_for_update())
        # read before the entities: what the cloud applied up to here is in the list below, and the
        # edge keeps what it sent after (its ack may reach the edge before this sync does)
        uplink_mark = self._uplink_mark(edge)
        before, earlier = self._queued(edge), 0
        self._queue_users(edge)
        ranked = self._ranked(edge, None)
        full = digest.Answer(edge.id, pb.SyncDigest(), pb.SyncDiff(), 0, 0, {}, 0, bytearray(ranked), set())
        while not full.done_writing:  # in chunks, flushed: the outbox never holds the whole edge
            if full.todo:
                self._write_states(edge, full, cloud_digest.ANSWER_CHUNK)
            else:
                self._write_members(edge, full, cloud_digest.ANSWER_CHUNK)
            earlier += self._queued(edge) - before
            self.outbox.flush(self.session)
            before = 0
        ids = (str(uuid.UUID(bytes=bytes(ranked[i : i + 16]))) for i in range(0, len(ranked), 16))
        written = self._queue_ends(
            edge, ids, before, earlier, uplink_mark=uplink_mark, final=True, added=len(ranked) // 16
        )
        edge.sync_requested = False
        edge.last_sync = now_ms()  # when it was queued; its outcome: sync_outcome()
        self.session.flush()
        return written
