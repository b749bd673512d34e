"""Sync Edge on the cloud: queueing an edge's whole state (users, effective entities, memberships,
then ``_sync`` events naming what it should hold), running a requested one when due, and how
the last one went."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from winstar_core.services import common
from winstar_core.services.cloud_assignment import CloudAssignment
from winstar_core.services.cloud_tenancy import CloudTenancy
from winstar_core.services.constants import MEMBER_ADDED, SYNC_EVENT_TYPE, UPDATED, USER_EVENT_TYPE
from winstar_core.store.models import DELIVERED, FAILED, HELD, PENDING, Edge, EdgeEvent, StreamMark, now_ms
from winstar_core.store.outbox import OutboxEvent, uplink_mark_stream, uplink_mark_stream_for
from winstar_core.transport.pb import sync_pb2 as pb


class CloudSync(CloudAssignment, CloudTenancy):
    """Sync Edge. Uses ``session``, ``outbox``, ``entities``, the tenant's users
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
        per = common.SYNC_IDS_PER_EVENT  # read through common at call time: tests lower it there
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
