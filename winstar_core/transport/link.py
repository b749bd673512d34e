"""The delivery engine, one implementation for both directions.

Sender: reads PENDING events of one outbox stream in sequence order, in batches, with several
batches in flight; each ack marks its events DELIVERED or FAILED (with the receiver's reason). A
FAILED event never blocks the ones behind it.

Receiver: applies a batch in one transaction together with its "applied up to" mark for that
stream (and the reasons of rejected events), so a batch delivered twice takes effect once and a
redelivered event gets its first verdict again. Whatever is wrong with one event (its body, its
id, its data, its seq out of range) is that event's FAILED verdict and the rest of the batch
applies; only a failure of the database itself leaves a batch unacknowledged, to be sent again.

Both ends hold the peer to the protocol's rules (docs/protocol.md): a batch of at most
``MAX_BATCH_EVENTS`` events with increasing seqs, none above the ``last_seq`` the sender announces
with it; an ack that answers exactly the oldest batch in flight. Breaking one is a
:class:`ProtocolViolation`: the session ends, nothing of that message is applied or marked.

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
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message
from sqlalchemy.orm import Session

from winstar_core import metrics
from winstar_core.store.db import Database
from winstar_core.store.models import (
    DELIVERED,
    FAILED,
    HELD,
    PENDING,
    CloudEvent,
    Edge,
    EdgeEvent,
    StreamCounter,
    StreamFailure,
    StreamMark,
    now_ms,
)
from winstar_core.store.outbox import DOWNLINK_MARK_STREAM, UPLINK_STREAM, downlink_stream, held_mark
from winstar_core.transport.holding import Capabilities
from winstar_core.transport.limits import (
    BATCH_SIZE,
    ENVELOPE_BYTES,
    MAX_BATCH_EVENTS,
    MAX_IN_FLIGHT,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    MAX_SEQ_JUMP,
)
from winstar_core.transport.logsummary import LogSummary
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger(__name__)
warnings = LogSummary(log)

__all__ = ["BATCH_SIZE", "ENVELOPE_BYTES", "MAX_IN_FLIGHT", "MAX_MESSAGE_BYTES"]

#: seconds between two progress lines of a long drain; a drain shorter than this says nothing
PROGRESS_EVERY_S = 2.0
#: an event's stored error is cut to this many characters
MAX_ERROR_CHARS = 2000

Offload = Callable[..., Awaitable[Any]]
M = TypeVar("M", bound=Message)


class ProtocolViolation(Exception):
    """The peer broke a rule of the protocol (not a bad event): the session ends with
    ``INVALID_ARGUMENT`` and this reason."""


#: SQLSTATE classes that say the database (not the statement's data) failed: connection (08),
#: transaction rollback such as a deadlock (40), resources (53), operator intervention (57),
#: system (58), internal (XX)
_INFRASTRUCTURE_SQLSTATES = {"08", "40", "53", "57", "58", "XX"}


def is_infrastructure(exc: BaseException, db: Database | None = None) -> bool:
    """Whether ``exc`` is a failure of the database or the machine, after which the batch must be
    delivered again, rather than something wrong with the event being applied (its FAILED
    verdict). When the error itself does not say, a database that still answers means it was the
    event's fault: a peer's event must never put the stream in a redelivery loop."""
    if isinstance(exc, MemoryError | ConnectionError | sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, UnicodeError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate:
        return str(sqlstate)[:2] in _INFRASTRUCTURE_SQLSTATES
    text = str(exc.orig).lower()
    if any(w in text for w in ("locked", "busy", "disk i/o", "unable to open", "readonly", "full")):
        return True  # SQLite's words for a database that cannot work now
    if not isinstance(exc, sa.exc.OperationalError) or db is None:
        return False
    try:  # an OperationalError that does not say why: is the database still there?
        with db.read() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception:
        return True
    return False


def decode(cls: type[M], raw: Any, what: str) -> M:
    """A peer's message, parsed here rather than by gRPC, so garbage is a protocol error."""
    if not isinstance(raw, bytes):
        raise ProtocolViolation(f"{what} is not a message")
    try:
        return cls.FromString(raw)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise ProtocolViolation(f"{what} is not a valid {cls.DESCRIPTOR.name} ({len(raw):,} bytes)") from exc


def clean_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A peer's or an exception's text as something both databases can store."""
    text = text.replace("\x00", "\\0")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


# --------------------------------------------------------------------------------------------------
# sender side
# --------------------------------------------------------------------------------------------------


def event_batch(rows: Any, max_bytes: int) -> list[pb.Event]:
    """Events from outbox rows (seq, type, action, entity_id, body, created_time), in order, up
    to ``max_bytes`` of bodies (at least one event)."""
    out: list[pb.Event] = []
    size = 0
    for seq, type_, action, entity_id, body, created in rows:
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


@dataclass
class OutboxStream:
    """Database access to one outbox stream: the cloud's ``edge_event`` rows of one edge, or the
    edge's ``cloud_event`` rows."""

    db: Database
    edge_id: uuid.UUID | None = None
    #: the cloud's session sending this stream: events are held only while it owns the edge (a
    #: session taken over by another node must not hold again what the new one just released)
    owner: uuid.UUID | None = None

    @property
    def model(self) -> Any:
        return EdgeEvent if self.edge_id is not None else CloudEvent

    @property
    def direction(self) -> str:
        """``downlink`` (the cloud's stream to an edge) or ``uplink`` (an edge's to the cloud)."""
        return "downlink" if self.edge_id is not None else "uplink"

    @property
    def counter(self) -> str:
        """The stream's counter row (see :mod:`winstar_core.store.outbox`)."""
        return downlink_stream(self.edge_id) if self.edge_id is not None else UPLINK_STREAM

    def _where(self) -> list[Any]:
        m = self.model
        return [m.edge_id == self.edge_id] if self.edge_id is not None else []

    def fetch(
        self, after: int, limit: int, max_bytes: int = MAX_MESSAGE_BYTES // 2
    ) -> tuple[list[pb.Event], int]:
        """The next PENDING events after seq ``after``, and the stream's last seq, read in the
        same statement, so it is at least as high as every one of them (the peer checks that);
        0 when no event is found (nothing to send, nothing to announce)."""
        m = self.model
        counter = sa.select(StreamCounter.last_seq).where(StreamCounter.stream == self.counter)
        # the counter rides along each row: one statement, one snapshot, in which it is at least
        # the seq of every event it shows (a seq is taken in its event's own transaction)
        stmt = (
            sa.select(m.seq, m.type, m.action, m.entity_id, m.body, m.created_time, counter.scalar_subquery())
            .where(*self._where(), m.status == PENDING, m.seq > after)
            .order_by(m.seq)
            .limit(limit)
        )
        with self.db.read() as conn:
            rows = conn.execute(stmt).all()
        out = event_batch((r[:6] for r in rows), max_bytes)
        last = rows[0][6] if rows else 0  # nothing found: nothing to send, no counter needed
        return out, max(int(last or 0), out[-1].seq if out else 0)

    def acknowledge(self, results: Sequence[pb.EventResult]) -> None:
        """Mark a batch's events from the peer's verdicts (see :meth:`acknowledge_in`)."""
        with self.db.begin() as s:
            self.acknowledge_in(s, results, now_ms())

    def acknowledge_in(
        self, s: Session, results: Sequence[pb.EventResult], now: int, delivered: bool = True
    ) -> None:
        """Mark a batch's events from the peer's verdicts, set-based: the DELIVERED ones by ranges
        of seqs (unless ``delivered`` is False: the caller marks them), the FAILED ones in one
        executemany with their reasons."""
        m = self.model
        failed = [
            {"b_seq": r.seq, "b_error": clean_text(r.error or "rejected by the peer")}
            for r in results
            if not r.ok
        ]
        if failed:  # Core table, not the ORM class: a plain executemany, one round trip
            t = m.__table__
            where = [t.c.edge_id == self.edge_id] if self.edge_id is not None else []
            s.execute(
                sa.update(t)
                .where(*where, t.c.seq == sa.bindparam("b_seq"), t.c.status == PENDING)
                .values(status=FAILED, error=sa.bindparam("b_error"), delivered_time=now),
                failed,
            )
        oks = [r.seq for r in results if r.ok] if delivered else []
        for i in range(0, len(oks), 500):
            s.execute(
                sa.update(m)
                .where(*self._where(), m.seq.in_(oks[i : i + 500]), m.status == PENDING)
                .values(status=DELIVERED, delivered_time=now)
            )

    def hold(self, held: Sequence[tuple[int, str]]) -> None:
        """Mark events HELD with their reasons: ``held`` is (seq, reason) pairs."""
        t = self.model.__table__
        where = [t.c.edge_id == self.edge_id] if self.edge_id is not None else []
        if self.owner is not None:
            where.append(sa.exists().where(Edge.id == self.edge_id, Edge.session_id == self.owner))
        with self.db.begin() as s:
            s.execute(
                sa.update(t)
                .where(*where, t.c.seq == sa.bindparam("b_seq"), t.c.status == PENDING)
                .values(status=HELD, error=sa.bindparam("b_error")),
                [{"b_seq": seq, "b_error": clean_text(why)} for seq, why in held],
            )

    def load_held(self, caps: Capabilities) -> None:
        with self.db.read() as conn:
            caps.load_held(conn, self.model, self.edge_id)

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
                conn.scalar(
                    sa.select(sa.func.max(m.seq)).where(*self._where(), m.status.not_in((PENDING, HELD)))
                )
                or 0
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


class StreamAccess(Protocol):
    """Reads and marks streams for many senders at once (:mod:`winstar_core.transport.batched`)."""

    async def fetch(
        self, stream: OutboxStream, after: int, limit: int, max_bytes: int
    ) -> tuple[list[pb.Event], int]: ...

    async def acknowledge(self, stream: OutboxStream, results: list[pb.EventResult]) -> None: ...


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@dataclass
class Sender:
    """Pushes one outbox stream to the peer: batches in order, up to ``max_in_flight`` unacked.

    ``send(events, last_seq)`` puts one batch on the wire. ``offload(fn, *args)`` runs the
    stream's blocking database work (by default on a thread; the cloud passes its fair executor).
    """

    stream: OutboxStream
    send: Callable[[list[pb.Event], int], Awaitable[None]]
    batch_size: int = BATCH_SIZE
    max_in_flight: int = MAX_IN_FLIGHT
    #: seconds between the sender's own looks at its outbox; None: only when woken
    poll_interval: float | None = 0.2
    max_bytes: int = MAX_MESSAGE_BYTES // 2
    #: the largest message the peer accepts: an event that cannot fit in one is FAILED, not sent
    peer_limit: int = MAX_MESSAGE_BYTES
    offload: Offload = _to_thread
    #: what the receiver can read (from its handshake); None: send everything
    caps: Capabilities | None = None
    #: reads and acks go through it, gathered with other senders' (None: each its own transaction)
    access: StreamAccess | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: whether the stream may hold events beyond the last fetched (False: fetch only when woken)
    _more: bool = True
    #: the seqs of each batch sent and not yet acknowledged, oldest first
    _in_flight: collections.deque[tuple[int, ...]] = field(default_factory=collections.deque)
    sent: int = 0
    progress: DrainProgress = field(default_factory=lambda: DrainProgress("events"))

    def wake(self) -> None:
        """New events may be there: look again."""
        self._more = True
        self._wake.set()

    async def run(self) -> None:
        cursor = 0  # everything still PENDING is (re)sent; the receiver's mark drops duplicates
        if self.caps is not None:
            await self.offload(self.stream.load_held, self.caps)
        while True:
            self._wake.clear()
            while len(self._in_flight) < self.max_in_flight:
                events, last_seq = await self._fetch(cursor)
                # the stream's counter was read after the events: nothing beyond the last of them
                # means a fetch now would find nothing (until a wake says new events came)
                self._more = bool(events) and last_seq > events[-1].seq
                if not events:
                    if not self._in_flight:
                        self.progress.idle()
                    break
                cursor = events[-1].seq
                self.progress.sending()
                events = await self._hold(events)
                events = await self._refuse_oversize(events)
                if events:
                    self._in_flight.append(tuple(e.seq for e in events))
                    self.sent += len(events)
                    metrics.batch_sent(self.stream.direction, len(events))
                    await self.send(events, last_seq)
                if not self._more:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def _fetch(self, cursor: int) -> tuple[list[pb.Event], int]:
        limit = min(self.batch_size, MAX_BATCH_EVENTS)
        if self.access is not None:
            return await self.access.fetch(self.stream, cursor, limit, self.max_bytes)
        result: tuple[list[pb.Event], int] = await self.offload(
            self.stream.fetch, cursor, limit, self.max_bytes
        )
        return result

    async def _hold(self, events: list[pb.Event]) -> list[pb.Event]:
        """HOLD the events the receiver cannot read yet (see :mod:`winstar_core.transport.holding`):
        they are sent by themselves once it announces their type or version."""
        caps = self.caps
        if caps is None:
            return events
        held = [
            (e.seq, why)
            for e in events
            if (why := caps.why_held(e.seq, e.type, e.action, e.entity_id, e.body)) is not None
        ]
        if not held:
            return events
        warnings.warning(
            f"held:{self.stream.counter}",
            f"{len(held)} event(s) of {self.stream.counter} held, first seq {held[0][0]}: {held[0][1]}",
        )
        await self.offload(self.stream.hold, held)
        seqs = {seq for seq, _ in held}
        return [e for e in events if e.seq not in seqs]

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
        warnings.warning(
            f"oversize:{self.stream.counter}",
            f"{len(refused)} event(s) of {self.stream.counter} not sent, first seq {refused[0].seq}:"
            f" {refused[0].error}",
        )
        await self.offload(self.stream.acknowledge, refused)
        self.progress.acked(refused)
        return [e for e in events if len(e.body) <= room]

    def check_ack(self, ack: pb.BatchAck) -> None:
        """An ack must answer the oldest batch in flight: one verdict for each of its events,
        nothing else. Anything else is a :class:`ProtocolViolation`, and marks nothing."""
        if not self._in_flight:
            raise ProtocolViolation("an ack arrived with no batch in flight")
        expected = self._in_flight[0]
        got = [r.seq for r in ack.results]
        if len(got) != len(expected) or set(got) != set(expected):
            raise ProtocolViolation(
                f"the ack does not answer the batch in flight (seqs {expected[0]}..{expected[-1]},"
                f" {len(expected)} events; the ack names {len(got)} results)"
            )

    async def on_ack(self, ack: pb.BatchAck) -> None:
        self.check_ack(ack)
        if self.access is not None:
            await self.access.acknowledge(self.stream, list(ack.results))
        else:
            await self.offload(self.stream.acknowledge, list(ack.results))
        ok = sum(1 for r in ack.results if r.ok)
        metrics.delivered(self.stream.direction, ok, len(ack.results) - ok)
        # the last batch of a drain that found nothing more: its end line says it all (a change
        # fanned out to many edges, slow to come back, must not cost each of them a count)
        ending = not self._more and len(self._in_flight) == 1
        pending = await self.offload(self.stream.pending) if self.progress.due() and not ending else None
        self.progress.acked(ack.results, pending)
        self._in_flight.popleft()
        if self._more:  # the window was full: send what waits behind it
            self._wake.set()
        elif not self._in_flight:  # nothing sent waits, nothing more was there: the drain is over
            self.progress.idle()


# --------------------------------------------------------------------------------------------------
# receiver side
# --------------------------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def reason(exc: BaseException) -> str:
    """One storable line saying why an event was rejected."""
    if isinstance(exc, RecursionError):
        return "the event is nested too deeply to read"
    text = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return clean_text(text, 1000)


def check_batch(events: Sequence[pb.Event], last_seq: int | None, known: int | None = None) -> None:
    """The rules a batch itself must keep (docs/protocol.md); a batch that breaks one is a
    :class:`ProtocolViolation`. ``last_seq`` None: a local caller, no announced limit. ``known``:
    the highest seq of the stream the receiver knows of (its mark, or what the sender announced
    before); the batch may announce at most :data:`MAX_SEQ_JUMP` beyond it."""
    if len(events) > MAX_BATCH_EVENTS:
        raise ProtocolViolation(f"a batch of {len(events):,} events (at most {MAX_BATCH_EVENTS:,})")
    if last_seq is not None and events and not 1 <= last_seq <= MAX_SEQ:
        raise ProtocolViolation(f"the batch announces last seq {last_seq}, outside 1..{MAX_SEQ}")
    if last_seq is not None and known is not None and last_seq > known + MAX_SEQ_JUMP:
        raise ProtocolViolation(
            f"the batch announces last seq {last_seq}, more than {MAX_SEQ_JUMP:,} past seq {known},"
            " the last this receiver knows of: not a seq the sender could have written"
        )
    previous = 0
    for e in events:
        if not 1 <= e.seq <= MAX_SEQ:
            continue  # that event's own FAILED verdict
        if e.seq <= previous:
            raise ProtocolViolation(f"seq {e.seq} after seq {previous}: a batch's seqs must increase")
        if last_seq is not None and e.seq > last_seq:
            raise ProtocolViolation(
                f"seq {e.seq} is beyond the last seq {last_seq} the sender announced for its stream"
            )
        previous = e.seq


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
    #: the highest seq of the stream this receiver knows of: its mark, then what the sender announced
    known: int | None = None

    @property
    def direction(self) -> str:
        """The stream applied: ``downlink`` on an edge, ``uplink`` in the cloud."""
        return "downlink" if self.stream == DOWNLINK_MARK_STREAM else "uplink"

    def mark(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.scalar(sa.select(StreamMark.applied_seq).where(StreamMark.stream == self.stream)) or 0
            )

    def apply_batch(
        self, events: Sequence[pb.Event], last_seq: int | None = None
    ) -> tuple[pb.BatchAck, set[uuid.UUID]]:
        """Apply ``events`` in one transaction. Returns the ack and the edges whose downlink
        streams got new events (to wake their senders). ``last_seq``: the highest seq the sender
        announced for its stream. Raises :class:`ProtocolViolation` for a batch that breaks the
        protocol, and a database error (the batch must come again) only when the database failed."""
        if last_seq is not None and self.known is None:
            self.known = self.mark()
        check_batch(events, last_seq, self.known)
        if last_seq is not None and events:
            self.known = max(self.known or 0, last_seq)
        valid = [e for e in events if 1 <= e.seq <= MAX_SEQ]
        if valid:
            started = time.monotonic()
            applied_before = self.applied
            try:
                ack, touched = self._attempt(valid, savepoints=False)
            except _Rejected:
                # One event is refused: apply again, each event in a savepoint, to keep the others.
                ack, touched = self._attempt(valid, savepoints=True)
            direction = self.direction
            metrics.applied(direction, self.applied - applied_before, time.monotonic() - started)
            refused = sum(1 for r in ack.results if not r.ok)
            if refused:
                metrics.rejected(direction, refused)
        else:
            ack, touched = pb.BatchAck(applied_seq=self.mark()), set()
        if len(valid) == len(events):
            return ack, touched
        verdicts = iter(ack.results)
        results = [
            next(verdicts)
            if 1 <= e.seq <= MAX_SEQ
            else pb.EventResult(seq=e.seq, ok=False, error=f"seq {e.seq} is outside 1..{MAX_SEQ}")
            for e in events
        ]
        warnings.warning(
            f"range:{self.stream}",
            f"{self.stream}: {len(events) - len(valid)} event(s) with a seq out of range",
        )
        return pb.BatchAck(results=results, applied_seq=ack.applied_seq), touched

    def _prepare(self, session: Session, service: Any, fresh: list[pb.Event]) -> None:
        """Batch look-ups are an optimization: if the peer's garbage trips them, go without."""
        if self.prepare is None or len(fresh) < 2:
            return  # one event looks up what it needs itself, without the savepoint
        try:
            # in a savepoint: on PostgreSQL a failed statement would otherwise abort the whole
            # transaction, and every event after it would fail for that
            with session.begin_nested():
                self.prepare(service, fresh)
        except Exception as exc:
            if is_infrastructure(exc, self.db):
                raise
            warnings.warning(
                f"prepare:{self.stream}", f"{self.stream}: batch look-ups skipped: {reason(exc)}"
            )

    def _attempt(self, events: Sequence[pb.Event], *, savepoints: bool) -> tuple[pb.BatchAck, set[uuid.UUID]]:
        rejected: list[pb.EventResult] = []
        with self.db.begin() as session:
            service = self.open_service(session)
            row = held_mark(session, self.stream)
            mark = row.applied_seq
            fresh = [e for e in events if e.seq > mark]
            if not savepoints:
                self._prepare(session, service, fresh)
            dups = [e.seq for e in events if e.seq <= mark]
            old_failures: dict[int, str] = {}
            for i in range(0, len(dups), 500):
                old_failures.update(
                    session.execute(
                        sa.select(StreamFailure.seq, StreamFailure.error).where(
                            StreamFailure.stream == self.stream, StreamFailure.seq.in_(dups[i : i + 500])
                        )
                    ).all()
                )
            results: list[pb.EventResult] = []
            applied = 0
            touched: set[uuid.UUID] = set()
            for ev in events:
                if ev.seq <= mark:
                    err = old_failures.get(ev.seq)
                    results.append(pb.EventResult(seq=ev.seq, ok=err is None, error=err or ""))
                    continue
                if not savepoints:
                    try:
                        self.apply_one(service, ev)
                    except Exception as exc:
                        if is_infrastructure(exc, self.db):
                            raise
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
                        # the events this one fans out are written here too: one that cannot be
                        # written (another stream's counter at its end...) is this event's fault
                        touched |= service.outbox.flush(session)
                except Exception as exc:
                    if is_infrastructure(exc, self.db):
                        raise
                    service.outbox.rollback_to(point)
                    why = reason(exc)
                    session.add(
                        StreamFailure(stream=self.stream, seq=ev.seq, error=why, created_time=now_ms())
                    )
                    result = pb.EventResult(seq=ev.seq, ok=False, error=why)
                    results.append(result)
                    rejected.append(result)
                else:
                    results.append(pb.EventResult(seq=ev.seq, ok=True))
                    applied += 1
            top = max((e.seq for e in events), default=mark)
            row.applied_seq = max(mark, top)
            try:
                if self.finish is not None:
                    self.finish(service)
                session.flush()  # the optimistic pass writes its rows here, in a few statements
                touched |= service.outbox.flush(session)
            except Exception as exc:
                if savepoints or is_infrastructure(exc, self.db):
                    raise
                raise _Rejected(exc) from exc
        if rejected:
            warnings.warning(
                f"rejected:{self.stream}",
                f"{self.stream}: rejected {len(rejected)} of {len(events)} event(s), first seq"
                f" {rejected[0].seq}: {rejected[0].error}",
            )
        self.applied += applied
        return pb.BatchAck(results=results, applied_seq=max(mark, top)), touched
