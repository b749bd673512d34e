"""A cloud node's downlink streams read and marked many at a time.

When a change fans out, every session of the node wakes at once to read one event from its stream
and, a moment later, to mark it delivered. :class:`DownlinkAccess` gathers those requests
(:class:`~winstar_core.transport.gather.Gatherer`) and serves each gathered set in one transaction:
on PostgreSQL one statement reads the next events of every stream in the set (a ``LATERAL`` look-up
per stream along ``ix_edge_event_pending``) and one reads their counters; one statement marks every
acknowledged event of the set. On SQLite (a one-node cloud) the same transaction runs each stream's
own statements. What a sender gets is exactly what :meth:`OutboxStream.fetch` and
:meth:`OutboxStream.acknowledge` would have given it: the same rows, and the stream's counter
read in the same statement (0 when nothing is found: there is nothing to send).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa

from winstar_core.store.db import Database
from winstar_core.store.models import DELIVERED, PENDING, EdgeEvent, now_ms
from winstar_core.transport.gather import Gatherer
from winstar_core.transport.link import OutboxStream, event_batch
from winstar_core.transport.pb import sync_pb2 as pb

#: (stream, after, limit, max_bytes)
FetchRequest = tuple[OutboxStream, int, int, int]
FetchResult = tuple[list[pb.Event], int]
AckRequest = tuple[OutboxStream, list[pb.EventResult]]

#: the most events one gathered mark may cover
MAX_GATHERED_EVENTS = 16_000
#: the most streams one gathered read may cover: each brings at least its first pending event,
#: whatever its size (up to an entity's 4 MiB), so this bounds a read's memory in the worst case
MAX_GATHERED_READS = 64
#: the bodies one gathered read may load in all: each request's ``max_bytes`` is cut to its share
#: (a batch's first event always comes, whatever its size, as in a stream's own read)
MAX_GATHERED_BYTES = 32 * 1024 * 1024

_FETCH_PG = sa.text(
    """
    SELECT r.i, e.seq, e.type, e.action, e.entity_id, e.body, e.created_time,
           (SELECT c.last_seq FROM stream_counter AS c WHERE c.stream = r.counter)
    FROM unnest(
        CAST(:edges AS uuid[]), CAST(:afters AS bigint[]), CAST(:limits AS integer[]),
        CAST(:max_bytes AS bigint[]), CAST(:counters AS text[])
    ) WITH ORDINALITY AS r(edge_id, after, lim, max_bytes, counter, i)
    CROSS JOIN LATERAL (
        SELECT w.* FROM (
            SELECT p.*,
                   sum(coalesce(octet_length(p.body), 0) + 64) OVER (ORDER BY p.seq) AS run,
                   row_number() OVER (ORDER BY p.seq) AS n
            FROM (
                SELECT seq, type, action, entity_id, body, created_time FROM edge_event
                WHERE edge_event.edge_id = r.edge_id AND edge_event.status = 'PENDING'
                  AND edge_event.seq > r.after
                ORDER BY edge_event.seq LIMIT r.lim
            ) AS p
        ) AS w
        WHERE w.n = 1 OR w.run <= r.max_bytes
    ) AS e
    ORDER BY r.i, e.seq
    """
)

_DELIVERED_PG = sa.text(
    """
    UPDATE edge_event SET status = :delivered, delivered_time = :now
    FROM unnest(CAST(:edges AS uuid[]), CAST(:seqs AS bigint[])) AS r(edge_id, seq)
    WHERE edge_event.edge_id = r.edge_id AND edge_event.seq = r.seq AND edge_event.status = :pending
    """
)


def fetch_many(db: Database, requests: Sequence[FetchRequest]) -> list[FetchResult]:
    """Each request's :meth:`OutboxStream.fetch`, in one read transaction."""
    if not db.is_postgres:
        return [stream.fetch(after, limit, max_bytes) for stream, after, limit, max_bytes in requests]
    rows: list[list[Any]] = [[] for _ in requests]
    lasts = [0] * len(requests)
    share = max(MAX_GATHERED_BYTES // len(requests), 64 * 1024)
    max_bytes = [min(m, share) for *_, m in requests]
    with db.read() as conn:  # one statement: the counters ride along, in the events' snapshot
        result = conn.execute(
            _FETCH_PG,
            {
                "edges": [stream.edge_id for stream, *_ in requests],
                "afters": [after for _, after, _, _ in requests],
                "limits": [limit for _, _, limit, _ in requests],
                "max_bytes": max_bytes,
                "counters": [stream.counter for stream, *_ in requests],
            },
        )
        for i, *row in result:
            rows[i - 1].append(row[:6])
            lasts[i - 1] = int(row[6] or 0)
    out: list[FetchResult] = []
    for most, found, last in zip(max_bytes, rows, lasts, strict=True):
        events = event_batch(found, most)
        out.append((events, max(last, events[-1].seq if events else 0)))
    return out


def acknowledge_many(db: Database, requests: Sequence[AckRequest]) -> list[None]:
    """Each request's :meth:`OutboxStream.acknowledge`, in one transaction: on PostgreSQL the
    delivered events of all of them by one statement."""
    now = now_ms()
    with db.begin() as s:
        if not db.is_postgres:
            for stream, results in requests:
                stream.acknowledge_in(s, results, now)
            return [None] * len(requests)
        edges: list[uuid.UUID | None] = []
        seqs: list[int] = []
        for stream, results in requests:
            stream.acknowledge_in(s, results, now, delivered=False)
            for r in results:
                if r.ok:
                    edges.append(stream.edge_id)
                    seqs.append(r.seq)
        if seqs:
            s.execute(
                _DELIVERED_PG,
                {"delivered": DELIVERED, "pending": PENDING, "now": now, "edges": edges, "seqs": seqs},
            )
    return [None] * len(requests)


class DownlinkAccess:
    """The :class:`~winstar_core.transport.link.StreamAccess` of a cloud node's senders.
    ``offload(kind, fn, *args)`` runs a gathered job (the node's executor, in a lane of its own)."""

    def __init__(self, db: Database, offload: Callable[..., Awaitable[Any]]) -> None:
        self.db = db
        self._offload = offload
        self.reads: Gatherer[FetchRequest, FetchResult] = Gatherer(self._read, MAX_GATHERED_READS)
        self.acks: Gatherer[AckRequest, None] = Gatherer(self._mark, MAX_GATHERED_EVENTS)

    async def _read(self, requests: Sequence[FetchRequest]) -> Sequence[FetchResult]:
        result: list[FetchResult] = await self._offload("read", fetch_many, self.db, requests)
        return result

    async def _mark(self, requests: Sequence[AckRequest]) -> Sequence[None]:
        result: list[None] = await self._offload("mark", acknowledge_many, self.db, requests)
        return result

    async def fetch(self, stream: OutboxStream, after: int, limit: int, max_bytes: int) -> FetchResult:
        assert stream.edge_id is not None and stream.model is EdgeEvent
        return await self.reads.submit((stream, after, limit, max_bytes))

    async def acknowledge(self, stream: OutboxStream, results: list[pb.EventResult]) -> None:
        await self.acks.submit((stream, results), len(results))
