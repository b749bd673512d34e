"""What the cloud may not remove from an edge, and the end of a Sync Edge: removing what the edge
should no longer hold, except its own entities the cloud has not received yet."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import cast

import sqlalchemy as sa

from winstar_core.entity_types import shown
from winstar_core.errors import WinstarError
from winstar_core.services import digest
from winstar_core.services.config import get_config, set_config
from winstar_core.services.constants import SYNC_EVENT_TYPE
from winstar_core.services.edge_base import EdgeBase
from winstar_core.services.ids import chunks
from winstar_core.services.peer import peer_uuid
from winstar_core.store.models import (
    HELD,
    PENDING,
    CloudEvent,
    Entity,
    EntityMember,
    NodeConfig,
    StreamFailure,
    now_ms,
)
from winstar_core.store.outbox import DOWNLINK_MARK_STREAM, MAX_SEQ, OutboxEvent
from winstar_core.transport.pb import sync_pb2 as pb

#: how many missing parts of a sync list a refusal names
MISSING_PARTS_SHOWN = 5
#: a sync's id (the cloud makes a UUID) goes into ``node_config`` keys (64 characters) and their
#: LIKE patterns: no wildcard, nothing long
MAX_SYNC_ID = 36
SYNC_ID = re.compile(rf"[A-Za-z0-9-]{{1,{MAX_SYNC_ID}}}")
#: ranges of ids one statement reads (a digest sync's end names up to 2^16 buckets)
MAX_RANGES = 200
#: ``node_config`` key of the digest sync under way: its id and how many of its events this edge
#: refused so far (its answer may come in several transactions, each with its own end)
DIGEST_RUN = "digest_run"


_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _hex_ids(listed: Iterable[str]) -> list[str]:
    """The ids of a sync's list as 32 hex digits, each checked to be a UUID (the cloud writes
    them in the canonical form, checked at the cost of a match; any other is read as a UUID)."""
    return [
        i.replace("-", "") if _CANONICAL.fullmatch(i) else peer_uuid(i, "an entity id of the sync's list").hex
        for i in listed
    ]


class EdgeSync(EdgeBase):
    """Keeping unacknowledged entities, and the sync's end. Uses ``session`` and ``batch`` (its
    ``unacked`` seqs, read by :meth:`~winstar_core.services.edge_downlinks.EdgeDownlinks.prefetch`)."""

    def _hold(self, ids: list[uuid.UUID]) -> None:
        """Lock the rows of ``ids`` until the transaction ends (PostgreSQL): a local change to one
        of them, which writes its uplink in the same transaction, either committed before (and
        its uplink is seen) or waits for this one. SQLite needs nothing: the receiver's
        transaction holds the database's write lock from its start."""
        if ids and self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(sa.select(Entity.id).where(Entity.id.in_(ids)).with_for_update())

    def _unacked_seqs(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
        """For the entities ``ids``: the first PENDING uplink seq of those that have one, a
        statement per :data:`~winstar_core.services.ids.IN_CHUNK` ids."""
        out: dict[uuid.UUID, int] = {}
        for chunk in chunks(sorted(ids)):
            self._hold(chunk)
            stmt = (
                sa.select(CloudEvent.entity_id, sa.func.min(CloudEvent.seq))
                .where(CloudEvent.status.in_((PENDING, HELD)), CloudEvent.entity_id.in_(chunk))
                .group_by(CloudEvent.entity_id)
            )
            out.update({eid: int(seq) for eid, seq in self.session.execute(stmt) if eid is not None})
        return out

    def _keep_unacked(self, type_name: str, entity_id: uuid.UUID) -> None:
        """Refuse to remove an entity with changes the cloud has not received yet (a device this
        edge created and has not sent up, typically): nothing made on an edge is lost. The cloud
        can send the removal again once it has them (`winstar edge retry`)."""
        batch = self.batch
        if batch is not None and entity_id in batch.unacked_known:
            if entity_id not in batch.unacked:
                return  # none when the batch began, and the rows are held since
        else:
            self._hold([entity_id])
        # pending, or not known: ask (an ack may have landed since the batch began)
        seq = self.session.scalars(
            sa.select(CloudEvent.seq)
            .where(CloudEvent.status.in_((PENDING, HELD)), CloudEvent.entity_id == entity_id)
            .order_by(CloudEvent.seq)
            .limit(1)
        ).first()
        if seq is None:
            return
        entity = self.session.get(Entity, entity_id)
        what = f"{entity.type} {entity.name!r}" if entity is not None else f"{type_name} {entity_id}"
        raise WinstarError(
            f"{what} has changes on this edge that the cloud has not received yet (uplink seq {seq}); kept"
        )

    def apply_sync_end(self, end: pb.SyncEnd, seq: int = 0) -> None:
        """End of a full sync: remove what the edge should no longer have. Keeps this edge's own
        entities whose creation the cloud has not acknowledged yet. A list in parts is kept (in
        ``node_config``) until its last part; with a part missing nothing is removed. A part that
        is not one (an id that is not a UUID, a part number past the count) fails by itself, so
        the last part then fails too and nothing is removed."""
        ids = _hex_ids(end.entity_ids)
        if end.parts > 1:
            sync_id = end.sync_id
            if not SYNC_ID.fullmatch(sync_id):
                raise WinstarError(
                    f"the sync's id {shown(sync_id)} is not 1 to {MAX_SYNC_ID} letters, digits or dashes"
                )
            if end.part >= end.parts:
                raise WinstarError(f"the sync's part {end.part} is past its count of {end.parts}")
            prefix = f"sync:{sync_id}:"
            if end.part == 0:  # parts of an older sync that never completed: forget them
                self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like("sync:%")))
            if end.part + 1 < end.parts:
                set_config(self.session, f"{prefix}{end.part}", ids)
                return
            stored = sa.select(NodeConfig.key, NodeConfig.value).where(NodeConfig.key.like(f"{prefix}%"))
            rows: dict[str, list[str]] = {key: value for key, value in self.session.execute(stored)}
            self.session.execute(sa.delete(NodeConfig).where(NodeConfig.key.like(f"{prefix}%")))
            missing: list[int] = []
            part = 0
            # at most a few named: a hostile count of 4 billion parts must not cost 4 billion steps
            while part < end.parts - 1 and len(missing) <= MISSING_PARTS_SHOWN:
                if f"{prefix}{part}" not in rows:
                    missing.append(part)
                part += 1
            if missing:
                named = ", ".join(map(str, missing[:MISSING_PARTS_SHOWN]))
                more = " and more" if len(missing) > MISSING_PARTS_SHOWN else ""
                raise WinstarError(
                    f"Sync Edge incomplete: part(s) {named}{more} of {end.parts}"
                    " never applied here, so nothing was removed; run Sync Edge again"
                )
            ids = [i.replace("-", "") for n in range(end.parts - 1) for i in rows[f"{prefix}{n}"]] + ids
        keep = set(ids)
        del ids
        stale: list[uuid.UUID] = []
        if end.scoped and end.bucket_bits > digest.MAX_BUCKET_BITS:
            raise WinstarError(
                f"the sync's buckets of {end.bucket_bits} bits are past {digest.MAX_BUCKET_BITS}"
            )
        if not end.scoped or end.buckets:  # (a scoped end naming no bucket removes nothing)
            unacked = {i.hex for i in self._sent_since(end.uplink_mark)}
            stale = [uuid.UUID(hex=i) for i in self._held_in(end) if i not in keep and i not in unacked]
        for chunk in chunks(stale):
            self.session.execute(
                sa.delete(EntityMember).where(
                    sa.or_(EntityMember.container_id.in_(chunk), EntityMember.member_id.in_(chunk))
                )
            )
            self.session.execute(sa.delete(Entity).where(Entity.id.in_(chunk)))
        failed = self._sync_failures(end, seq)
        if end.scoped:  # a digest sync's refusals are summed over its ends (one per transaction)
            run = get_config(self.session, DIGEST_RUN)
            if isinstance(run, dict) and run.get("id") == end.digest_id:
                failed = int(run.get("failed") or 0) + (failed or 0)
                set_config(self.session, DIGEST_RUN, {"id": end.digest_id, "failed": failed})
        if end.final or not end.scoped:
            set_config(self.session, "last_sync", now_ms())
            set_config(self.session, "last_sync_failed", failed)

    def _held_in(self, end: pb.SyncEnd) -> list[str]:
        """The entities this edge holds that ``end`` speaks of, as 32 hex digits (no UUID object
        each: an edge may hold 100,000): all of them, or for a digest sync's end those in its
        buckets (read as ranges of ids, not every id of the edge)."""
        column = cast(sa.Table, Entity.__table__).c.id
        raw = sa.select(sa.type_coerce(column, sa.String))  # SQLite's text; PostgreSQL's UUID
        conn = self.session.connection()  # Core rows, no ORM loading
        if not end.scoped:
            return [v.hex if isinstance(v, uuid.UUID) else v for v in conn.scalars(raw)]
        bits = end.bucket_bits
        ranges = digest.id_ranges(sorted({b for b in end.buckets if b < 1 << bits}), bits)
        out: list[str] = []
        for n in range(0, len(ranges), MAX_RANGES):
            where = [
                column >= lo if hi is None else sa.and_(column >= lo, column < hi)
                for lo, hi in ranges[n : n + MAX_RANGES]
            ]
            found = conn.scalars(raw.where(sa.or_(*where)))
            out.extend(v.hex if isinstance(v, uuid.UUID) else v for v in found)
        return out

    def _sent_since(self, uplink_mark: int) -> set[uuid.UUID]:
        """What this edge sent up that a sync cannot name: still pending, or applied by the cloud
        after it wrote the sync (the ack may have come back before the sync did)."""
        return set(
            self.session.scalars(
                sa.select(CloudEvent.entity_id).where(
                    sa.or_(
                        CloudEvent.status.in_((PENDING, HELD)),
                        CloudEvent.seq > min(uplink_mark, MAX_SEQ),
                    ),
                    CloudEvent.entity_id.is_not(None),
                )
            )
        )

    def apply_sync_digest(self, sent: pb.SyncDigest) -> None:
        """Start of a digest sync: compare the cloud's digest with the same one over what this edge
        holds (its own entities the cloud has not received left out: they are kept whatever the
        cloud says), and answer with a ``_sync`` DIFF uplink listing the pairs of each bucket that
        differs (one empty part when none does)."""
        digest.check_digest(sent)
        tenant_id = self._require_configured()[1]
        set_config(self.session, DIGEST_RUN, {"id": sent.sync_id, "failed": 0})
        unacked = self._sent_since(sent.uplink_mark)
        members = list(self.session.execute(sa.select(EntityMember.container_id, EntityMember.member_id)))
        held = self.session.execute(sa.select(Entity.id, Entity.version).execution_options(yield_per=5_000))
        pairs = ((i, v) for i, v in held if i not in unacked)  # streamed: an edge may hold 100,000
        cut = digest.buckets(digest.tagged(pairs, [(c, m) for c, m in members]), sent.bucket_bits)
        counts, hashes = digest.summary(cut)
        for part in digest.diff_parts(sent, cut, counts, hashes):
            body = part.SerializeToString()
            self.outbox.uplink(OutboxEvent(tenant_id, SYNC_EVENT_TYPE, digest.DIFF_ACTION, None, body))

    def _sync_failures(self, end: pb.SyncEnd, seq: int) -> int | None:
        """How many events of the sync ending at ``seq`` this edge refused (None: the cloud did
        not say how many events the sync wrote). Not zero: the edge has not converged."""
        if not end.events or not seq:
            return None
        first = max(seq - int(end.events) + 1, 1)
        return int(
            self.session.scalar(
                sa.select(sa.func.count())
                .select_from(StreamFailure)
                .where(StreamFailure.stream == DOWNLINK_MARK_STREAM, StreamFailure.seq.between(first, seq))
            )
            or 0
        )
