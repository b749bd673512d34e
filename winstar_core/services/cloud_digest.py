"""Sync Edge by digest on the cloud: answering the edge's diff with the states of what differs and
the ids it should hold in the differing buckets, a large answer in several transactions, and the
``_sync`` ends of a sync (see docs/protocol.md, "Sync Edge")."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import WinstarError
from winstar_core.services import common, digest
from winstar_core.services.answer_writer import AnswerWriter
from winstar_core.services.ids import chunks
from winstar_core.services.peer import parse_body
from winstar_core.services.sync_writes import SyncWrites
from winstar_core.store.models import PENDING, Edge, EdgeEvent
from winstar_core.transport.pb import sync_pb2 as pb

log = logging.getLogger("winstar.sync")

#: states (or memberships) one transaction of an answer writes. A diff part that differs in more
#: is answered in several transactions, each committed and closed by a *progress end* (a scoped
#: ``SyncEnd``, not counted: it names no bucket, or once the states are written a group of the
#: part's buckets and what the edge should hold there): memory stays flat, and the first states
#: are on their way while the next are written. Read at call time (tests lower it).
ANSWER_CHUNK = 2_000
#: ids one ``_sync`` end names at most (the protocol allows 100,000): a long list in bodies of
#: 400 KB, not 4 MB, which every copy of it on the way (the outbox, the sender, gRPC) allocates
END_IDS_PER_EVENT = 10_000
#: how far (in chunks not delivered yet) an answer's writer runs ahead of the edge, and how long it
#: waits for the edge at most before it writes anyway (an edge gone: the answer still ends)
LEAD_CHUNKS = 2
PACE_WAIT_S = 5.0


_PENDING_PG = sa.text(
    """
    SELECT n.id FROM unnest(CAST(:ids AS uuid[])) AS n(id)
    CROSS JOIN LATERAL (
      SELECT 1 FROM edge_event e WHERE e.edge_id = :edge_id AND e.entity_id = n.id AND e.status = 'PENDING' LIMIT 1
    ) AS w
    LIMIT 1
    """
)


class CloudDigest(SyncWrites):
    """The digest sync's answers. Uses ``session``, ``outbox`` and what a sync reads and writes
    (:class:`SyncWrites`)."""

    #: set once this transaction answered a diff part (several may come in one batch of uplinks):
    #: the digest, the part it waits for next and the bucket that part starts from
    _next_part: tuple[pb.SyncDigest, int, int] | None = None
    #: the answers to finish once this transaction commits, in order (None: none)
    _answers: list[digest.Answer] | None = None

    def _queue_ends(
        self, edge: Edge, ids: Iterable[str], before: int, earlier: int = 0, **fields: Any
    ) -> int:
        """The ``_sync`` ends naming ``ids``, in parts of ``SYNC_IDS_PER_EVENT``; the last one
        carries ``fields`` (counts, final...) and how many events the sync wrote since ``before``
        queued events (plus ``earlier`` it flushed before). Returns that number."""
        # read through common at call time (tests lower it there)
        per = min(common.SYNC_IDS_PER_EVENT, END_IDS_PER_EVENT)
        parts = [pb.SyncEnd()]
        for i in ids:  # into the messages as they come: no list of 100,000 strings
            if len(parts[-1].entity_ids) == per:
                parts.append(pb.SyncEnd())
            parts[-1].entity_ids.append(i)
        sync_id = str(uuid.uuid4()) if len(parts) > 1 else ""
        written = earlier + self._queued(edge) - before + len(parts)
        scope = {k: fields[k] for k in ("scoped", "bucket_bits", "buckets", "digest_id") if k in fields}
        rest = {k: v for k, v in fields.items() if k not in scope}
        for n, end in enumerate(parts):
            end.MergeFrom(pb.SyncEnd(sync_id=sync_id, part=n, parts=len(parts), **scope))
            if n == len(parts) - 1:
                end.MergeFrom(pb.SyncEnd(events=written, **rest))
            self._queue_end(edge, end)
        return written

    def _awaited(self, edge: Edge, diff: pb.SyncDiff) -> tuple[pb.SyncDigest, int]:
        """The digest ``diff`` answers and the first bucket its part may name, if the cloud waits
        for that very part; else the diff is refused (superseded, answered, or never asked)."""
        waiting = self._next_part or AnswerWriter.expects(edge.id)  # this transaction, or the writer
        if waiting is not None:  # answered the part before (or is writing it)
            sent, part, start = waiting
            if diff.sync_id == sent.sync_id and diff.part == part:
                return sent, start
        elif (last := self.last_sync_events(edge)) is not None and (
            sent_event := self.last_sync_events(edge, digest.DIGEST_ACTION)
        ) is not None:
            found = pb.SyncDigest.FromString(sent_event.body)
            if last.seq == sent_event.seq and diff.part == 0 and diff.sync_id == found.sync_id:
                return found, 0
            if last.action == digest.SYNC_ACTION:
                end = pb.SyncEnd.FromString(last.body)
                ours = end.scoped and not end.final and end.digest_id == found.sync_id == diff.sync_id
                if ours and not end.counted:  # a progress end: an answer being written (or cut short)
                    raise WinstarError(
                        f"the cloud is still answering part {end.answers} of Sync Edge {found.sync_id!r}"
                        f" (if it was cut short, a Sync Edge requested again starts over); part {diff.part} ignored"
                    )
                if ours and diff.part == end.answers + 1:
                    return found, int(end.covered_to)
        raise WinstarError(
            f"the cloud is not waiting for part {diff.part} of Sync Edge {diff.sync_id[:36]!r}"
            " (answered already, superseded by a later sync, or never started); ignored"
        )

    def answer_sync_diff(self, edge: Edge, event: pb.Event) -> None:
        """Answer one part of the edge's diff: the states of the entities missing or different
        there, then a scoped ``_sync`` end naming what the edge should hold in the part's buckets
        (it removes the rest there), with this part's counts. Refuses a part the cloud is not
        waiting for, or one that does not read as a diff of the digest. An answer of more than
        :data:`ANSWER_CHUNK` states is written in chunks, each in a transaction of its own after
        this one commits (:meth:`_finish`, by the edge's writer thread)."""
        diff = parse_body(pb.SyncDiff, event.body)
        sent, start = self._awaited(edge, diff)
        bits = sent.bucket_bits
        theirs = digest.read_diff(diff, bits, start - 1)
        final = diff.part + 1 == diff.parts
        covered_to = (1 << bits) if final else (max(theirs) + 1 if theirs else start)
        # what the edge should hold in the part's buckets (None once it is too long: the answer
        # then takes several transactions and its last one reads it again); the ids to send, as
        # their 16 bytes (an edge may hold 100,000: a bytes object each, not a UUID and an int)
        held: list[uuid.UUID] | None = []
        new: set[bytes] = set()
        changed: set[bytes] = set()
        unchanged = 0
        if theirs:  # streamed
            for entity_id, tag in self._effective_tags(edge):
                pairs = theirs.get(digest.bucket_of(entity_id, bits))
                if pairs is None:
                    continue
                seen = pairs.pop(entity_id, None)  # what is left of theirs: to remove
                if seen is None:
                    new.add(entity_id.bytes)
                elif seen != tag:
                    changed.add(entity_id.bytes)
                else:
                    unchanged += 1
                if held is not None:
                    held = held if len(new) + len(changed) <= ANSWER_CHUNK else None
                    if held is not None:
                        held.append(entity_id)
        removed = sum(len(pairs) for pairs in theirs.values())
        unchanged += sum(sent.counts[b] for b in range(start, covered_to) if b not in theirs)
        counts = {"added": len(new), "updated": len(changed), "removed": removed, "unchanged": unchanged}
        log.info(
            "edge %s: Sync Edge %s: part %d/%d of the diff: %d of %d buckets differ: %d added, %d updated,"
            " %d to remove, %d unchanged",
            edge.name, sent.sync_id, diff.part + 1, diff.parts, len(theirs), 1 << bits, len(new),
            len(changed), removed, unchanged,
        )  # fmt: skip
        answer = digest.Answer(
            edge.id,
            sent,
            pb.SyncDiff(sync_id=diff.sync_id, part=diff.part, parts=diff.parts, buckets=diff.buckets),
            start,
            covered_to,
            counts,
            len(event.body),
            self._ranked(edge, new | changed if changed else new),
            changed,
        )
        del new
        self._next_part = (sent, diff.part + 1, covered_to)
        if self._answers is not None or AnswerWriter.expects(edge.id):  # one before is being written
            self._finish_after_commit(answer)
            return
        before = self._queued(edge)
        if not self._write_some(edge, answer, before, held):
            log.info(
                "edge %s: Sync Edge %s: %d states to send for part %d: written %d at a time",
                edge.name, sent.sync_id, counts["added"] + counts["updated"], diff.part + 1, ANSWER_CHUNK,
            )  # fmt: skip
            self._finish_after_commit(answer)

    def _write_some(
        self, edge: Edge, a: digest.Answer, before: int, held: list[uuid.UUID] | None = None
    ) -> bool:
        """Queue the next :data:`ANSWER_CHUNK` states (then memberships) of answer ``a``, or once
        they are all written, the end naming what the edge should hold in the part's buckets:
        ``held``, as this transaction's answer read it, in one end; None: read now, a group of
        about :data:`END_IDS_PER_EVENT` ids per transaction, each group's end a progress end but
        the last. Returns whether the answer is complete; if not, this transaction's chunk ends
        with a progress end."""
        budget, written = ANSWER_CHUNK, 0
        if a.todo:
            written = self._write_states(edge, a, budget)
        if not a.todo:
            self._write_members(edge, a, budget - written)
        bits = a.digest.bucket_bits
        if not a.done_writing or (held is None and a.groups is None):
            if a.done_writing:  # the ends come next, a group a transaction
                a.groups = deque(digest.groups(a.diff.buckets, a.digest.counts, END_IDS_PER_EVENT))
            self._write_progress(edge, a, before)
            return False
        if held is not None:
            named: Iterable[str] = (str(i) for i in held)
            buckets = list(a.diff.buckets)
        else:
            assert a.groups is not None
            buckets = a.groups.popleft()
            named = self._held_in(edge, buckets, bits) if buckets else ()
            if a.groups:
                self._write_progress(edge, a, before, buckets, named)
                return False
        self._queue_ends(
            edge,
            named,
            before,
            scoped=True,
            bucket_bits=bits,
            buckets=buckets,
            digest_id=a.digest.sync_id,
            answers=a.diff.part,
            uplink_mark=self._uplink_mark(edge),
            covered_to=a.covered_to,
            final=a.final,
            counted=True,
            received_bytes=a.received_bytes,
            **a.counts,
        )
        return True

    def _finish_after_commit(self, answer: digest.Answer) -> None:
        """Have the rest of ``answer`` written once this transaction commits, after any answer
        before it, by the edge's writer (:class:`AnswerWriter`): the receiver's call returns, so the
        edge's acks keep coming and the first chunks are on their way while the next are written."""
        if self._answers is not None:
            self._answers.append(answer)
            return
        self._answers = [answer]
        bind = self.session.get_bind()

        def after_commit(session: Session) -> None:
            if session.in_nested_transaction():
                return  # a savepoint released: the transaction goes on
            answers, self._answers = self._answers or [], None
            if answers:
                AnswerWriter.hand_over(self, bind, answers, self._next_part)

        sa.event.listen(self.session, "after_commit", after_commit)

    def _finish(self, bind: Any, a: digest.Answer) -> bool:
        """Write the rest of answer ``a``, a transaction per chunk, each committed. Returns False
        when it stopped: the sync was superseded (a later Sync Edge: the end written last is not
        this answer's), or a failure (the database went away, say) cut it short, which asks for a
        Sync Edge again (so does a node that dies here: ``sync_if_due`` finds the progress end)."""
        try:
            while True:
                self._pace(bind, a, LEAD_CHUNKS * ANSWER_CHUNK, PACE_WAIT_S)
                with Session(bind, expire_on_commit=False) as s, s.begin():
                    service = type(self)(s, self.platform)
                    done = service._next_chunk(a)
                    service.outbox.flush(s)
                if done is not False:
                    return bool(done)
        except Exception as exc:
            log.warning(
                "Sync Edge %s: the answer to part %d was cut short: %s", a.digest.sync_id, a.diff.part, exc
            )
            # (the database away: sync_if_due asks at the next connect)
            with contextlib.suppress(Exception), Session(bind, expire_on_commit=False) as s, s.begin():
                s.execute(sa.update(Edge).where(Edge.id == a.edge_id).values(sync_requested=True))
            return False

    def _next_chunk(self, a: digest.Answer) -> bool | None:
        """One more transaction of answer ``a``: whether it is complete, None if it was superseded
        (or the edge deleted). Holds the edge's row, as ``sync_if_due`` does before a new sync."""
        edge = self.session.get(Edge, a.edge_id, with_for_update=True)
        last = self.last_sync_events(edge) if edge is not None else None
        end = (
            pb.SyncEnd.FromString(last.body)
            if last is not None and last.action == digest.SYNC_ACTION
            else None
        )
        if edge is None or end is None or (end.sync_id != a.token if a.token else not (
            end.counted and end.digest_id == a.digest.sync_id and end.answers + 1 == a.diff.part
        )):  # fmt: skip
            log.info(
                "Sync Edge %s: superseded before the answer to part %d was written",
                a.digest.sync_id,
                a.diff.part,
            )
            return None
        done = self._write_some(edge, a, 0)
        if self._nothing_to_supersede(edge):  # (the usual case: a first sync, a drifted edge)
            self.outbox.dependents = None
        return done

    def _nothing_to_supersede(self, edge: Edge) -> bool:
        """Whether no event of the entities this transaction queued for ``edge`` waits in its
        stream (PENDING): its flush then has nothing to compact, and may skip the statement."""
        queued = [e.entity_id for e in self.outbox.downlinks.get(edge.id, []) if e.entity_id is not None]
        if queued and self.session.get_bind().dialect.name == "postgresql":
            # one index probe per entity: an IN list lets a planner with a new stream's statistics
            # (a first sync) walk every pending row of the stream
            found = self.session.execute(_PENDING_PG, {"edge_id": edge.id, "ids": queued}).first()
            return found is None
        for chunk in chunks(queued):
            waiting = sa.select(EdgeEvent.entity_id).where(
                EdgeEvent.edge_id == edge.id, EdgeEvent.status == PENDING, EdgeEvent.entity_id.in_(chunk)
            )
            if self.session.execute(waiting).first() is not None:
                return False
        return True
