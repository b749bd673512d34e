"""The transactional outboxes (``edge_event`` in the cloud, ``cloud_event`` on an edge).

A service collects the events of a change in an :class:`Outbox` and flushes it just before its
transaction commits. Flushing numbers the events of each stream from that stream's counter row,
locked with ``UPDATE ... RETURNING`` in a fixed (sorted) order: two transactions writing one
stream serialize on that row, so the stream's commit order is its sequence order and a reader that
has seen seq N can never later find a newly committed seq below N (DESIGN.md invariant 3).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.store.models import CloudEvent, EdgeEvent, StreamCounter, StreamMark, now_ms

UPLINK_STREAM = "uplink"
NOTIFY_CHANNEL_DOWNLINK = "winstar_downlink"
NOTIFY_CHANNEL_UPLINK = "winstar_uplink"
NOTIFY_MAX_PAYLOAD = 7000  # PostgreSQL caps a payload at 8000 bytes


def downlink_stream(edge_id: uuid.UUID) -> str:
    return f"downlink:{edge_id}"


def uplink_mark_stream(edge_id: uuid.UUID) -> str:
    """Cloud side: how far the cloud applied that edge's uplink stream."""
    return f"uplink:{edge_id}"


def uplink_mark_stream_for(edge_id: uuid.UUID | str, instance_id: str) -> str:
    """The cloud's mark of one edge instance's uplink stream: two copies of an edge database
    number their uplinks from the same counter, so each instance has its own mark. 16 hex digits
    of the instance keep the name within ``stream_mark.stream`` (64 characters)."""
    return f"uplink:{edge_id}:{uuid.UUID(instance_id).hex[:16]}"


DOWNLINK_MARK_STREAM = "downlink"  # edge side: how far the edge applied the cloud's stream


@dataclass
class OutboxEvent:
    tenant_id: uuid.UUID
    type: str
    action: str
    entity_id: uuid.UUID | None
    body: bytes


def allocate(session: Session, stream: str, count: int) -> int:
    """Reserve ``count`` sequence numbers of ``stream``; return the first. Holds the stream's row
    lock until the transaction ends."""
    stmt = (
        sa.update(StreamCounter)
        .where(StreamCounter.stream == stream)
        .values(last_seq=StreamCounter.last_seq + count)
        .returning(StreamCounter.last_seq)
    )
    last = session.execute(stmt).scalar_one_or_none()
    if last is None:
        ensure_stream(session, stream)
        last = session.execute(stmt).scalar_one()
    return int(last) - count + 1


_ALLOCATE_PG = sa.text(
    """
    UPDATE stream_counter SET last_seq = stream_counter.last_seq + r.n
    FROM unnest(CAST(:streams AS text[]), CAST(:counts AS bigint[])) AS r(stream, n)
    WHERE stream_counter.stream = r.stream
    RETURNING stream_counter.stream, stream_counter.last_seq
    """
)
_LOCK_PG = sa.text(
    """
    SELECT stream FROM stream_counter WHERE stream = ANY(CAST(:streams AS text[]))
    ORDER BY stream COLLATE "C" FOR UPDATE
    """
)
_MISSING_PG = sa.text(
    """
    INSERT INTO stream_counter (stream, last_seq)
    SELECT s, 0 FROM unnest(CAST(:streams AS text[])) AS s ORDER BY s COLLATE "C"
    ON CONFLICT DO NOTHING
    """
)


def allocate_many(session: Session, counts: dict[str, int]) -> dict[str, int]:
    """:func:`allocate` for many streams at once: the first seq reserved in each. On PostgreSQL
    three statements whatever the number of streams: the missing counters are inserted, the rows
    locked in byte order of their names (the order of ``sorted`` on these ASCII names: every
    writer locks the streams of a transaction in one order, so two cannot deadlock), then moved
    on together."""
    if len(counts) < 2 or session.get_bind().dialect.name != "postgresql":
        return {stream: allocate(session, stream, n) for stream, n in sorted(counts.items())}
    streams = sorted(counts)
    session.execute(_MISSING_PG, {"streams": streams})
    session.execute(_LOCK_PG, {"streams": streams})
    rows = session.execute(_ALLOCATE_PG, {"streams": streams, "counts": [counts[s] for s in streams]})
    return {stream: int(last) - counts[stream] + 1 for stream, last in rows}


def ensure_stream(session: Session, stream: str) -> None:
    _insert_missing(session, StreamCounter, stream=stream, last_seq=0)


def held_mark(session: Session, stream: str) -> StreamMark:
    """The receiver's mark of ``stream``, created if missing and locked until the transaction
    ends: two sessions of one peer (a reconnect while a batch is still being applied) apply one
    after the other, and the second sees the first's mark (no event applied twice)."""
    row = session.get(StreamMark, stream, with_for_update=True, populate_existing=True)
    if row is None:  # the stream's first batch: one statement more, once
        _insert_missing(session, StreamMark, stream=stream, applied_seq=0)
        row = session.get(StreamMark, stream, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def _insert_missing(session: Session, model: Any, **values: Any) -> None:
    """INSERT the row unless its key exists (no error, whoever inserts it first)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(model).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(model).values(**values).on_conflict_do_nothing())


def _rows(
    first: int, created: int, events: list[OutboxEvent], edge_id: uuid.UUID | None = None
) -> list[dict[str, object]]:
    """Outbox rows for ``events``, numbered from ``first``."""
    extra = {"edge_id": edge_id} if edge_id is not None else {}
    return [
        dict(
            id=uuid.uuid4(),
            seq=first + i,
            created_time=created,
            tenant_id=ev.tenant_id,
            type=ev.type,
            action=ev.action,
            entity_id=ev.entity_id,
            body=ev.body,
            status="PENDING",
            **extra,
        )
        for i, ev in enumerate(events)
    ]


def notify_senders(session: Session, edge_ids: list[uuid.UUID], uplinks: bool) -> None:
    """Wake the senders in other processes (PostgreSQL): at most one NOTIFY per channel."""
    if session.get_bind().dialect.name != "postgresql":
        return
    if edge_ids:
        payload = ",".join(str(e) for e in edge_ids)
        if len(payload) > NOTIFY_MAX_PAYLOAD:
            payload = "*"
        session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL_DOWNLINK, payload)))
    if uplinks:
        session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL_UPLINK, "")))


#: actions whose body is the entity's whole state (the receivers upsert either one), and those
#: that remove the entity from the receiver
STATE_ACTIONS = ("ADDED", "UPDATED")
REMOVAL_ACTIONS = ("DELETED", "UNASSIGNED")

# Compaction (docs/protocol.md, "Compaction"): the older PENDING events of an entity that the
# newest event of the flush replaces. ``n`` is one row per (stream, entity): the newest event of
# the entity in the flush (``seq``), whether it removes the entity (``removal``), the types whose
# events may need the entity first (``deps``, comma-separated) and whether a membership may name
# it (``members``). An older row ``r`` is superseded when the new one carries everything ``r``
# would have done (a state replaces states; a removal replaces states and removals), the entity
# has no HELD event in the stream, and no event between the two still to be sent (PENDING or
# HELD) needs ``r`` first: a non-replaceable event of the entity itself (a membership of a
# container, a removal before a re-create), a membership (it may name the entity as its member),
# or an event of a type that depends on the entity's.
_COMPACT = """
UPDATE {t} AS r
SET status = 'SUPERSEDED', delivered_time = :now, error = 'superseded by seq ' || n.seq
FROM {n}
WHERE {r_stream} r.entity_id = n.entity_id AND r.status = 'PENDING' AND r.seq < n.seq
  AND (r.action IN ('ADDED', 'UPDATED') OR (n.removal AND r.action IN ('DELETED', 'UNASSIGNED')))
  AND NOT EXISTS (
    SELECT 1 FROM {t} AS h WHERE {h_stream} h.entity_id = n.entity_id AND h.status = 'HELD'
  )
  AND NOT EXISTS (
    SELECT 1 FROM {t} AS b
    WHERE {b_stream} b.seq > r.seq AND b.seq < n.seq AND b.status IN ('PENDING', 'HELD')
      AND CASE WHEN b.entity_id = n.entity_id
          THEN NOT (b.action IN ('ADDED', 'UPDATED') OR (n.removal AND b.action IN ('DELETED', 'UNASSIGNED')))
          ELSE (n.members AND b.action IN ('MEMBER_ADDED', 'MEMBER_REMOVED')) OR {b_dep}
      END
  )
RETURNING {returning}
"""


def _compact_sql(table: str, postgres: bool) -> sa.TextClause:
    stream = table == "edge_event"
    if postgres:
        cols = ["edge_id"] if stream else []
        casts = ["uuid[]"] if stream else []
        cols += ["entity_id", "seq", "removal", "deps", "members"]
        casts += ["uuid[]", "bigint[]", "boolean[]", "text[]", "boolean[]"]
        args = ", ".join(f"CAST(:{c}s AS {cast})" for c, cast in zip(cols, casts, strict=True))
        n = f"unnest({args}) AS n({', '.join(cols)})"
        dep = "b.type = ANY(string_to_array(n.deps, ','))"
    else:  # one statement per (stream, entity): a row of values
        names = (["edge_id"] if stream else []) + ["entity_id", "seq", "removal", "deps", "members"]
        n = f"(SELECT {', '.join(f':{c} AS {c}' for c in names)}) AS n"
        dep = "instr(',' || n.deps || ',', ',' || b.type || ',') > 0"
    text = _COMPACT.format(
        t=table,
        n=n,
        r_stream="r.edge_id = n.edge_id AND" if stream else "",
        h_stream="h.edge_id = n.edge_id AND" if stream else "",
        b_stream="b.edge_id = n.edge_id AND" if stream else "",
        b_dep=dep,
        # SQLite's RETURNING names the updated table's columns without its alias
        returning=", ".join(
            f"{'r.' if postgres else ''}{c}"
            for c in (["edge_id"] if stream else []) + ["entity_id", "action"]
        ),
    )
    clause = sa.text(text)
    if not postgres:
        uuids = [sa.bindparam("entity_id", type_=sa.Uuid())]
        if stream:
            uuids.append(sa.bindparam("edge_id", type_=sa.Uuid()))
        clause = clause.bindparams(*uuids)
    return clause


_REWRITE_PG = {
    "edge_event": sa.text(
        """
        UPDATE edge_event SET action = 'ADDED'
        FROM unnest(CAST(:edge_ids AS uuid[]), CAST(:seqs AS bigint[])) AS w(edge_id, seq)
        WHERE edge_event.edge_id = w.edge_id AND edge_event.seq = w.seq
        """
    ),
    "cloud_event": sa.text(
        "UPDATE cloud_event SET action = 'ADDED' WHERE seq = ANY(CAST(:seqs AS bigint[]))"
    ),
}


@dataclass
class _Newest:
    """The newest event of an entity in one stream of a flush: what compaction starts from."""

    seq: int
    action: str
    deps: str
    members: bool


def compact(
    session: Session,
    model: Any,
    rows: list[dict[str, object]],
    dependents: Callable[[str], tuple[tuple[str, ...], bool]],
    now: int,
) -> int:
    """Supersede the older PENDING events of the entities the just inserted ``rows`` (of one
    outbox table, numbered) change, where the newest of them replaces them (see ``_COMPACT``
    and docs/protocol.md "Compaction"). A superseded ADDED makes its replacing UPDATED an ADDED:
    the receiver may never have seen the entity (and the cloud refuses an UPDATED of an entity
    it does not know). On PostgreSQL one statement for every stream of the flush (and one more
    only if an action is rewritten); on SQLite one per entity changed. Returns how many events
    were superseded. Runs in the flush's transaction, which holds the streams' counter rows: no
    other writer of these streams runs until it commits."""
    table = model.__tablename__
    stream = table == "edge_event"
    newest: dict[tuple[Any, Any], _Newest] = {}
    known: dict[str, tuple[str, bool]] = {}
    for row in rows:
        entity_id, type_, action = row["entity_id"], str(row["type"]), str(row["action"])
        if entity_id is None or type_.startswith("_"):
            continue  # the core's own events (users, the edge's config, a sync) are not compacted
        key = (row.get("edge_id"), entity_id)
        if action not in STATE_ACTIONS and action not in REMOVAL_ACTIONS:
            continue
        if type_ not in known:
            deps, members = dependents(type_)
            known[type_] = (",".join(deps), members)
        newest[key] = _Newest(cast(int, row["seq"]), action, *known[type_])
    if not newest:
        return 0
    postgres = session.get_bind().dialect.name == "postgresql"
    stmt = _compact_sql(table, postgres)
    keys = sorted(newest, key=lambda k: (str(k[0]), str(k[1])))
    found: list[Any] = []
    if postgres:
        params: dict[str, Any] = {
            "now": now,
            "entity_ids": [k[1] for k in keys],
            "seqs": [newest[k].seq for k in keys],
            "removals": [newest[k].action in REMOVAL_ACTIONS for k in keys],
            "depss": [newest[k].deps for k in keys],
            "memberss": [newest[k].members for k in keys],
        }
        if stream:
            params["edge_ids"] = [k[0] for k in keys]
        found = list(session.execute(stmt, params))
    else:
        for k in keys:
            new = newest[k]
            one: dict[str, Any] = {
                "now": now,
                "entity_id": k[1],
                "seq": new.seq,
                "removal": new.action in REMOVAL_ACTIONS,
                "deps": new.deps,
                "members": new.members,
            }
            if stream:
                one["edge_id"] = k[0]
            found.extend(session.execute(stmt, one))
    rewrite: set[tuple[Any, int]] = set()
    for hit in found:
        edge_id, entity_id, action = (hit[0], hit[1], hit[2]) if stream else (None, hit[0], hit[1])
        key = (_as_uuid(edge_id) if stream else None, _as_uuid(entity_id))
        new = newest[key]
        if action == "ADDED" and new.action == "UPDATED":
            rewrite.add((key[0], new.seq))
    if rewrite:
        ordered = sorted(rewrite, key=lambda w: (str(w[0]), w[1]))
        if postgres:
            args: dict[str, Any] = {"seqs": [w[1] for w in ordered]}
            if stream:
                args["edge_ids"] = [w[0] for w in ordered]
            session.execute(_REWRITE_PG[table], args)
        else:
            where = [model.seq == sa.bindparam("w_seq")]
            if stream:
                where.append(model.edge_id == sa.bindparam("w_edge", type_=sa.Uuid()))
            session.execute(
                sa.update(model.__table__).where(*where).values(action="ADDED"),
                [{"w_seq": seq, "w_edge": edge} if stream else {"w_seq": seq} for edge, seq in ordered],
            )
    return len(found)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass
class Outbox:
    """The events of one transaction, waiting to be numbered and written. ``dependents``: for an
    entity type, the types whose events may need an entity of it first and whether a membership
    may name one (``EntityTypeRegister.dependents``); with it, :meth:`flush` compacts (see
    :func:`compact`), without it nothing is superseded."""

    downlinks: dict[uuid.UUID, list[OutboxEvent]] = field(default_factory=dict)
    uplinks: list[OutboxEvent] = field(default_factory=list)
    dependents: Callable[[str], tuple[tuple[str, ...], bool]] | None = None

    def downlink(self, edge_id: uuid.UUID, event: OutboxEvent) -> None:
        self.downlinks.setdefault(edge_id, []).append(event)

    def uplink(self, event: OutboxEvent) -> None:
        self.uplinks.append(event)

    def checkpoint(self) -> tuple[dict[uuid.UUID, int], int]:
        """A point to come back to if the change being applied is rejected."""
        return {k: len(v) for k, v in self.downlinks.items()}, len(self.uplinks)

    def rollback_to(self, point: tuple[dict[uuid.UUID, int], int]) -> None:
        lengths, uplinks = point
        for edge_id in list(self.downlinks):
            keep = lengths.get(edge_id, 0)
            del self.downlinks[edge_id][keep:]
            if not self.downlinks[edge_id]:
                del self.downlinks[edge_id]
        del self.uplinks[uplinks:]

    def edges(self) -> set[uuid.UUID]:
        return set(self.downlinks)

    def __bool__(self) -> bool:
        return bool(self.downlinks or self.uplinks)

    def flush(self, session: Session) -> set[uuid.UUID]:
        """Number and insert the collected events; NOTIFY once (PostgreSQL) with the edge ids.
        Returns the edges whose streams got events."""
        if not self:
            return set()
        touched = set(self.downlinks)
        created = now_ms()
        rows: list[dict[str, object]] = []
        firsts = allocate_many(
            session, {downlink_stream(edge_id): len(events) for edge_id, events in self.downlinks.items()}
        )  # in a fixed lock order across transactions
        for edge_id in sorted(self.downlinks, key=str):
            first = firsts[downlink_stream(edge_id)]
            rows.extend(_rows(first, created, self.downlinks[edge_id], edge_id))
        if rows:
            session.execute(sa.insert(EdgeEvent), rows)
            if self.dependents is not None:
                compact(session, EdgeEvent, rows, self.dependents, created)
        if self.uplinks:
            first = allocate(session, UPLINK_STREAM, len(self.uplinks))
            up = _rows(first, created, self.uplinks)
            session.execute(sa.insert(CloudEvent), up)
            if self.dependents is not None:
                compact(session, CloudEvent, up, self.dependents, created)
        notify_senders(session, sorted(self.downlinks, key=str), bool(self.uplinks))
        self.downlinks.clear()
        self.uplinks.clear()
        return touched


def copy_rows(
    session: Session, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """INSERT ``rows`` (tuples, their values in the order of ``columns``) into ``table``, in the
    session's transaction: on PostgreSQL a ``COPY ... FROM STDIN`` on the session's own
    connection (two to three times the rows per second of an executemany), elsewhere one
    executemany. The ORM's pending changes are flushed first. Values as an executemany binds
    them, except JSON: a JSON column takes the JSON text (``json.dumps`` of the value, what the
    psycopg dialect sends) on PostgreSQL, the value itself elsewhere."""
    session.flush()
    if session.get_bind().dialect.name != "postgresql":
        session.execute(sa.insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    driver = session.connection().connection.driver_connection  # psycopg's, in this transaction
    assert driver is not None
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


#: the columns :func:`write_new_downlinks` writes (the others are NULL, as after a flush)
_EDGE_EVENT_COLUMNS = (
    "id", "edge_id", "seq", "created_time", "tenant_id", "type", "action", "entity_id", "body", "status",
)  # fmt: skip


def write_new_downlinks(
    session: Session, downlinks: dict[uuid.UUID, Sequence[OutboxEvent]]
) -> set[uuid.UUID]:
    """What :meth:`Outbox.flush` writes for ``downlinks`` (edge id -> its events, in stream order),
    set-based for many events (``winstar entity import``): each edge's seqs reserved at once
    (:func:`allocate_many`, in its lock order), the rows written by :func:`copy_rows` (COPY on
    PostgreSQL), one NOTIFY naming the edges. Without compaction: only for events that supersede nothing,
    such as those of entities created in this transaction (an entity with no older event in the
    stream). Events the transaction's :class:`Outbox` still holds are not written: flush it first
    to number them before these. Returns the edges whose streams got events."""
    downlinks = {edge_id: events for edge_id, events in downlinks.items() if events}
    if not downlinks:
        return set()
    created = now_ms()
    firsts = allocate_many(session, {downlink_stream(e): len(evs) for e, evs in downlinks.items()})
    edge_ids = sorted(downlinks, key=str)
    if session.get_bind().dialect.name != "postgresql":
        for edge_id in edge_ids:
            rows = _rows(firsts[downlink_stream(edge_id)], created, list(downlinks[edge_id]), edge_id)
            session.execute(sa.insert(EdgeEvent), rows)
    else:
        copy_rows(
            session,
            cast(sa.Table, EdgeEvent.__table__),
            _EDGE_EVENT_COLUMNS,
            _tuples(downlinks, firsts, created),
        )
    notify_senders(session, edge_ids, False)
    return set(edge_ids)


def _tuples(
    downlinks: dict[uuid.UUID, Sequence[OutboxEvent]], firsts: dict[str, int], created: int
) -> Iterable[tuple[Any, ...]]:
    """The rows ``_rows`` makes for ``downlinks``, as tuples of ``_EDGE_EVENT_COLUMNS``."""
    for edge_id in sorted(downlinks, key=str):
        first = firsts[downlink_stream(edge_id)]
        for i, ev in enumerate(downlinks[edge_id]):
            yield (uuid.uuid4(), edge_id, first + i, created, ev.tenant_id, ev.type, ev.action, ev.entity_id, ev.body, "PENDING")  # fmt: skip


#: sequence numbers are 1 .. 2^63-1 (a signed 64-bit column on both databases)
MAX_SEQ = 2**63 - 1
#: how far past the stream's own counter a peer's mark may be and still be taken as real: far
#: more than any stream grows between two connections, and it would take a broken peer billions
#: of connections to bring a counter near MAX_SEQ
MAX_SEQ_JUMP = 2**32


class MarkOutOfReach(ValueError):
    """A peer's mark of a stream no database of ours could have written."""


def move_past(session: Session, model: Any, peer_mark: int, edge_id: uuid.UUID | None = None) -> int:
    """The peer says it applied this stream up to ``peer_mark``, beyond the stream's own counter:
    this database is older than the stream (restored from a backup). Its PENDING events may reuse
    seqs the peer already applied for other events, and the peer would take them for duplicates
    (acknowledged, never applied). So they move, in order, to just past the peer's mark, and the
    counter with them; an event the peer had in fact applied is then applied again, the lesser
    harm. Returns how many events moved (0 when the counter is not behind).

    A mark more than :data:`MAX_SEQ_JUMP` past the counter is :class:`MarkOutOfReach`: the counter
    then grows by at most that (plus the pending events' span) per connection, never towards
    MAX_SEQ in any number of connections a peer could make."""
    stream = downlink_stream(edge_id) if edge_id is not None else UPLINK_STREAM
    ensure_stream(session, stream)
    counter = session.get(StreamCounter, stream, with_for_update=True)
    assert counter is not None
    last = counter.last_seq
    if peer_mark <= last:
        return 0
    if peer_mark > last + MAX_SEQ_JUMP:
        raise MarkOutOfReach(
            f"the peer says it applied this stream up to seq {peer_mark}, far beyond seq {last},"
            " the last this database wrote to it"
        )
    where = [model.status == "PENDING"]
    if edge_id is not None:
        where.append(model.edge_id == edge_id)
    first, moved = session.execute(sa.select(sa.func.min(model.seq), sa.func.count()).where(*where)).one()
    if not moved:
        counter.last_seq = peer_mark
        return 0
    shift = peer_mark + 1 - int(first)  # the first pending event becomes peer_mark + 1
    session.execute(
        sa.update(model)
        .where(*where)
        .values(seq=model.seq + shift)
        .execution_options(synchronize_session=False)
    )
    counter.last_seq = last + shift
    return int(moved)


def retry_failed(
    session: Session,
    model: Any,
    seqs: list[int] | None,
    edge_id: uuid.UUID | None = None,
    refresh: Callable[[Any], bytes | str | None] | None = None,
) -> list[int]:
    """Queue FAILED events again, as new events at the end of their stream (new seqs), each at
    most once: the failed rows stay, with ``retried_as`` (and their error) naming the seq of their
    copy, and are not retried again (a copy that fails in turn is retried as itself).
    ``refresh(row)``: the body to send instead of the stored one (the entity's current state,
    read again: a retry after a plugin upgrade sends what the entity is now), None to keep it, or
    a reason not to send the event again at all (the entity is gone): the row stays FAILED, its
    error says why, and it is not counted. Returns the new seqs."""
    where = [model.status == "FAILED", model.retried_as.is_(None)]
    if edge_id is not None:
        where.append(model.edge_id == edge_id)
    stmt = sa.select(model).where(*where).order_by(model.seq)
    if seqs:
        wanted = sorted(set(seqs))
        failed = [
            row
            for i in range(0, len(wanted), 500)
            for row in session.scalars(stmt.where(model.seq.in_(wanted[i : i + 500])))
        ]
        failed.sort(key=lambda row: row.seq)
    else:
        failed = list(session.scalars(stmt))
    bodies: list[bytes] = []
    kept = []
    for old in failed:
        fresh = refresh(old) if refresh is not None else None
        if isinstance(fresh, str):  # not to be sent again
            note = f" (not retried: {fresh})"
            if not (old.error or "").endswith(note):
                old.error = f"{old.error or ''}{note}"
            continue
        kept.append(old)
        bodies.append(bytes(old.body or b"") if fresh is None else fresh)
    failed = kept
    if not failed:
        return []
    stream = downlink_stream(edge_id) if edge_id is not None else UPLINK_STREAM
    first = allocate(session, stream, len(failed))
    again = [
        OutboxEvent(old.tenant_id, old.type, old.action, old.entity_id, body)
        for old, body in zip(failed, bodies, strict=True)
    ]
    session.execute(sa.insert(model), _rows(first, now_ms(), again, edge_id))
    for i, old in enumerate(failed):
        old.retried_as = first + i
        old.error = f"{old.error} (retried as seq {first + i})"
    notify_senders(session, [edge_id] if edge_id is not None else [], edge_id is None)
    return [first + i for i in range(len(failed))]


def list_events(
    session: Session, model: Any, status: str | None, limit: int | None, edge_id: uuid.UUID | None = None
) -> list[Any]:
    """An outbox's rows, newest first: those of ``edge_id`` (the cloud's), in ``status``, at most
    ``limit``, when given (the Downlinks and Uplinks views)."""
    stmt = sa.select(model)
    if edge_id is not None:
        stmt = stmt.where(model.edge_id == edge_id)
    if status:
        stmt = stmt.where(model.status == status.upper())
    stmt = stmt.order_by(model.seq.desc())
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
