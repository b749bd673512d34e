"""The delivery engine, one implementation for both directions.

Sender: reads PENDING events of one outbox stream in sequence order, in batches, with several
batches in flight; each ack marks its events DELIVERED or FAILED (with the receiver's reason). A
FAILED event never blocks the ones behind it.

Receiver: applies a batch in one transaction together with its "applied up to" mark for that
stream (and the reasons of rejected events), so a batch delivered twice takes effect once and a
redelivered event gets its first verdict again.

DrainProgress: what an operator sees of a long drain in `winstar run`'s log (its stderr).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import DecodeError
from sqlalchemy.orm import Session

from winstar_core.errors import WinstarError
from winstar_core.store.db import Database
from winstar_core.store.models import (
    DELIVERED,
    FAILED,
    PENDING,
    CloudEvent,
    EdgeEvent,
    StreamFailure,
    StreamMark,
    now_ms,
)
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_IN_FLIGHT = 4
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: room left in a message for the batch's envelope around one event's body
ENVELOPE_BYTES = 64 * 1024
#: seconds between two progress lines of a long drain; a drain shorter than this says nothing
PROGRESS_EVERY_S = 2.0
#: errors that reject one event (a FAILED verdict); anything else (the database is down...) is
#: an infrastructure failure: the batch is not acknowledged and will be delivered again.
REJECTIONS: tuple[type[BaseException], ...] = (
    WinstarError,
    DecodeError,
    ValueError,
    TypeError,
    KeyError,
    sa.exc.IntegrityError,
    sa.exc.DataError,  # a value the database refuses (too long, out of range): the data's fault
)


# --------------------------------------------------------------------------------------------------
# sender side
# --------------------------------------------------------------------------------------------------


@dataclass
class OutboxStream:
    """Database access to one outbox stream: the cloud's ``edge_event`` rows of one edge, or the
    edge's ``cloud_event`` rows."""

    db: Database
    edge_id: uuid.UUID | None = None

    @property
    def model(self) -> Any:
        return EdgeEvent if self.edge_id is not None else CloudEvent

    def _where(self) -> list[Any]:
        m = self.model
        return [m.edge_id == self.edge_id] if self.edge_id is not None else []

    def fetch(self, after: int, limit: int, max_bytes: int = MAX_MESSAGE_BYTES // 2) -> list[pb.Event]:
        m = self.model
        stmt = (
            sa.select(m.seq, m.type, m.action, m.entity_id, m.body, m.created_time)
            .where(*self._where(), m.status == PENDING, m.seq > after)
            .order_by(m.seq)
            .limit(limit)
        )
        out: list[pb.Event] = []
        size = 0
        with self.db.read() as conn:
            for seq, type_, action, entity_id, body, created in conn.execute(stmt):
                size += len(body or b"") + 64
                if out and size > max_bytes:
                    break
                out.append(
                    pb.Event(
                        seq=seq,
                        type=type_,
                        action=action,
                        entity_id=str(entity_id) if entity_id else "",
                        body=body or b"",
                        created_time=created,
                    )
                )
        return out

    def acknowledge(self, results: Sequence[pb.EventResult]) -> None:
        m = self.model
        now = now_ms()
        oks = [r.seq for r in results if r.ok]
        with self.db.begin() as s:
            for r in results:
                if not r.ok:
                    s.execute(
                        sa.update(m)
                        .where(*self._where(), m.seq == r.seq, m.status == PENDING)
                        .values(status=FAILED, error=(r.error or "rejected")[:2000], delivered_time=now)
                    )
            for i in range(0, len(oks), 500):
                s.execute(
                    sa.update(m)
                    .where(*self._where(), m.seq.in_(oks[i : i + 500]), m.status == PENDING)
                    .values(status=DELIVERED, delivered_time=now)
                )

    def pending(self) -> int:
        m = self.model
        with self.db.read() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.count()).select_from(m).where(*self._where(), m.status == PENDING)
                )
                or 0
            )

    def highest_delivered(self) -> int:
        m = self.model
        with self.db.read() as conn:
            return int(
                conn.scalar(sa.select(sa.func.max(m.seq)).where(*self._where(), m.status != PENDING)) or 0
            )


@dataclass
class DrainProgress:
    """Reports a long drain: a line every ``every`` seconds while acknowledgements come in (how
    many delivered, failed and still pending, the rate, the time left at that rate), and a last
    line when the sender has nothing left to send. A drain shorter than ``every`` says nothing, so
    the steady trickle of single changes does not fill the log."""

    what: str
    every: float = field(default_factory=lambda: PROGRESS_EVERY_S)
    report: Callable[[str], None] = log.info
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    delivered: int = 0
    failed: int = 0
    _last: float = 0.0
    _reported: bool = False

    def sending(self) -> None:
        if self.started is None:
            self.started = self._last = self.clock()

    def due(self) -> bool:
        return self.started is not None and self.clock() - self._last >= self.every

    def acked(self, results: Sequence[pb.EventResult], pending: int | None = None) -> None:
        """Count one ack; ``pending`` (read by the caller when :meth:`due`) prints a line."""
        ok = sum(1 for r in results if r.ok)
        self.delivered += ok
        self.failed += len(results) - ok
        if pending is None or self.started is None:
            return
        now = self.clock()
        rate = (self.delivered + self.failed) / max(now - self.started, 1e-6)
        left = f", about {pending / rate:,.0f}s left" if rate > 0 and pending else ""
        self.report(
            f"{self.what}: {self.delivered:,} delivered, {self.failed:,} failed, {pending:,} pending"
            f" ({rate:,.0f} events/s{left})"
        )
        self._last = now
        self._reported = True

    def idle(self) -> None:
        """The sender found nothing more to send and nothing is in flight: the drain is over."""
        if self.started is None:
            return
        if self._reported:
            secs = self.clock() - self.started
            self.report(
                f"{self.what}: drained {self.delivered + self.failed:,} events in {secs:,.1f}s"
                f" ({(self.delivered + self.failed) / max(secs, 1e-6):,.0f} events/s),"
                f" {self.failed:,} failed"
            )
        self.started, self.delivered, self.failed, self._reported = None, 0, 0, False


@dataclass
class Sender:
    """Pushes one outbox stream to the peer: batches in order, up to ``max_in_flight`` unacked."""

    stream: OutboxStream
    send: Callable[[list[pb.Event]], Awaitable[None]]
    batch_size: int = BATCH_SIZE
    max_in_flight: int = MAX_IN_FLIGHT
    poll_interval: float = 0.2
    max_bytes: int = MAX_MESSAGE_BYTES // 2
    #: the largest message the peer accepts: an event that cannot fit in one is FAILED, not sent
    peer_limit: int = MAX_MESSAGE_BYTES
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: collections.deque[int] = field(default_factory=collections.deque)
    sent: int = 0
    progress: DrainProgress = field(default_factory=lambda: DrainProgress("events"))

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        cursor = 0  # everything still PENDING is (re)sent; the receiver's mark drops duplicates
        while True:
            self._wake.clear()
            while len(self._in_flight) < self.max_in_flight:
                events = await asyncio.to_thread(self.stream.fetch, cursor, self.batch_size, self.max_bytes)
                if not events:
                    if not self._in_flight:
                        self.progress.idle()
                    break
                cursor = events[-1].seq
                self.progress.sending()
                events = await self._refuse_oversize(events)
                if not events:
                    continue
                self._in_flight.append(cursor)
                self.sent += len(events)
                await self.send(events)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def _refuse_oversize(self, events: list[pb.Event]) -> list[pb.Event]:
        """FAIL the events no message to the peer can carry (sending one would break the link,
        and the reconnect would send it again: the stream would never move past it)."""
        room = self.peer_limit - ENVELOPE_BYTES
        if all(len(e.body) <= room for e in events):
            return events
        refused = [
            pb.EventResult(
                seq=e.seq,
                ok=False,
                error=f"the event is {len(e.body):,} bytes, larger than the {room:,} bytes"
                " one message to the peer can carry",
            )
            for e in events
            if len(e.body) > room
        ]
        for r in refused:
            log.warning("event %s not sent: %s", r.seq, r.error)
        await asyncio.to_thread(self.stream.acknowledge, refused)
        self.progress.acked(refused)
        return [e for e in events if len(e.body) <= room]

    async def on_ack(self, ack: pb.BatchAck) -> None:
        await asyncio.to_thread(self.stream.acknowledge, list(ack.results))
        pending = await asyncio.to_thread(self.stream.pending) if self.progress.due() else None
        self.progress.acked(ack.results, pending)
        if self._in_flight:
            self._in_flight.popleft()
        self._wake.set()


# --------------------------------------------------------------------------------------------------
# receiver side
# --------------------------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def reason(exc: BaseException) -> str:
    text = (
        str(exc.orig)
        if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError)
        else str(exc) or type(exc).__name__
    )
    return text.strip().splitlines()[0][:1000] if text.strip() else type(exc).__name__


@dataclass
class Receiver:
    """Applies batches of one peer stream.

    ``open_service(session)`` returns the service the events are applied with (it must have an
    ``outbox``); ``apply_one(service, event)`` applies one event or raises to reject it.
    """

    db: Database
    stream: str
    open_service: Callable[[Session], Any]
    apply_one: Callable[[Any, pb.Event], None]
    #: ``prepare(service, events)``: load what the batch will look up, before the optimistic pass
    prepare: Callable[[Any, list[pb.Event]], None] | None = None
    #: ``finish(service)``: write what ``apply_one`` collected to write in bulk (before a commit)
    finish: Callable[[Any], None] | None = None
    applied: int = 0

    def mark(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.scalar(sa.select(StreamMark.applied_seq).where(StreamMark.stream == self.stream)) or 0
            )

    def apply_batch(self, events: Sequence[pb.Event]) -> tuple[pb.BatchAck, set[uuid.UUID]]:
        """Apply ``events`` in one transaction. Returns the ack and the edges whose downlink
        streams got new events (to wake their senders)."""
        try:
            return self._attempt(events, savepoints=False)
        except _Rejected:
            # One event is refused: apply again, each event in a savepoint, to keep the others.
            return self._attempt(events, savepoints=True)

    def _attempt(self, events: Sequence[pb.Event], *, savepoints: bool) -> tuple[pb.BatchAck, set[uuid.UUID]]:
        with self.db.begin() as session:
            service = self.open_service(session)
            row = session.get(StreamMark, self.stream)
            if row is None:
                row = StreamMark(stream=self.stream, applied_seq=0)
                session.add(row)
            mark = row.applied_seq
            fresh = [e for e in events if e.seq > mark]
            if self.prepare is not None and not savepoints and fresh:
                self.prepare(service, fresh)
            dups = [e.seq for e in events if e.seq <= mark]
            old_failures: dict[int, str] = {}
            if dups:
                old_failures = dict(
                    session.execute(
                        sa.select(StreamFailure.seq, StreamFailure.error).where(
                            StreamFailure.stream == self.stream, StreamFailure.seq.in_(dups)
                        )
                    ).all()
                )
            results: list[pb.EventResult] = []
            applied = 0
            for ev in events:
                if ev.seq <= mark:
                    err = old_failures.get(ev.seq)
                    results.append(pb.EventResult(seq=ev.seq, ok=err is None, error=err or ""))
                    continue
                if not savepoints:
                    try:
                        self.apply_one(service, ev)
                    except REJECTIONS as exc:
                        raise _Rejected(exc) from exc
                    results.append(pb.EventResult(seq=ev.seq, ok=True))
                    applied += 1
                    continue
                point = service.outbox.checkpoint()
                try:
                    with session.begin_nested():
                        self.apply_one(service, ev)
                        if self.finish is not None:
                            self.finish(service)
                        session.flush()
                except REJECTIONS as exc:
                    service.outbox.rollback_to(point)
                    why = reason(exc)
                    session.add(
                        StreamFailure(stream=self.stream, seq=ev.seq, error=why, created_time=now_ms())
                    )
                    results.append(pb.EventResult(seq=ev.seq, ok=False, error=why))
                    log.warning("rejected event %s of %s: %s", ev.seq, self.stream, why)
                else:
                    results.append(pb.EventResult(seq=ev.seq, ok=True))
                    applied += 1
            top = max((e.seq for e in events), default=mark)
            row.applied_seq = max(mark, top)
            try:
                if self.finish is not None:
                    self.finish(service)
                session.flush()  # the optimistic pass writes its rows here, in a few statements
            except REJECTIONS as exc:
                if savepoints:
                    raise
                raise _Rejected(exc) from exc
            touched = service.outbox.flush(session)
        self.applied += applied
        return pb.BatchAck(results=results, applied_seq=max(mark, top)), touched
