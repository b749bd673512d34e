"""Which edge database (box) the cloud serves for an edge.

An edge database can be copied (an SD card or a VM image cloned to a second box): both copies then
connect with the same credentials and number their uplinks from the same counter, and a cloud that
kept one "applied up to" mark per edge would silently drop the uplinks of one copy whose seqs the
other had used. So every edge database carries an instance id (``Node.instance_id`` mints a new one
when the database finds itself copied) and names it in its Hello; the cloud serves exactly one
instance per edge and refuses any other with a line the box shows in ``winstar status``. An operator
moves the edge to a new box with ``winstar edge reset-instance EDGE``: the next new instance that
connects becomes the edge and gets a full sync, and the old one is refused from then on.

Pure session-level functions: the transport calls them in its own transaction and sends the
refusal; nothing here speaks the wire.
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.services.views import iso
from winstar_core.store.models import Edge, EdgeEvent, StreamFailure, StreamMark, now_ms
from winstar_core.store.outbox import uplink_mark_stream, uplink_mark_stream_for

__all__ = ["Admission", "admit_instance", "reset_instance", "uplink_mark_stream_for"]


@dataclass(frozen=True)
class Admission:
    """The cloud's answer to a box naming its instance in a Hello."""

    #: serve this box
    ok: bool
    #: when refused: the one line sent to the box as its error (its `winstar status` shows it)
    reason: str = ""
    #: this call made the box's instance the one the cloud serves
    adopted: bool = False
    #: the edge moved to a new box (an operator's reset): the caller must queue a full sync
    full_sync: bool = False


def admit_instance(session: Session, edge: Edge, instance_id: str, peer: str) -> Admission:
    """Decide whether the box ``instance_id`` (connecting from ``peer``) is served as ``edge``.

    The edge's row is locked first (PostgreSQL; SQLite's writer lock already serializes), so two
    boxes connecting at once to two cloud nodes cannot both be adopted. A refusal writes
    ``edge.conflict``: the caller must commit its transaction even when it refuses the box.
    """
    box = _instance_uuid(instance_id)
    if box is None:
        return Admission(ok=False, reason="the Hello names no valid instance id")
    locked = session.scalars(
        sa.select(Edge).where(Edge.id == edge.id).with_for_update().execution_options(populate_existing=True)
    ).one()
    now = now_ms()
    if locked.instance_id is None:
        # the first box of this edge (or the first since this cloud was upgraded to instances)
        _adopt(locked, box, now)
        _carry_legacy_mark(session, locked.id, box)
        return Admission(ok=True, adopted=True)
    served = locked.instance_id
    if box == served:
        if not locked.instance_reset:
            return Admission(ok=True)
        locked.conflict = (
            f"box {box} refused at {iso(now)} from {peer}: it was replaced (reset-instance), "
            "the cloud waits for the new box"
        )
        return Admission(
            ok=False,
            reason=(
                f"this box (instance {box}) was replaced: an operator ran `winstar edge reset-instance`; "
                "the cloud waits for the new box"
            ),
        )
    if locked.instance_reset:
        _adopt(locked, box, now)
        locked.conflict = f"moved from box {served} to box {box} at {iso(now)}"
        return Admission(ok=True, adopted=True, full_sync=True)
    locked.conflict = f"box {box} refused at {iso(now)} from {peer}: another box ({served}) is the edge"
    return Admission(
        ok=False,
        reason=(
            f"another box (instance {served}) is using this edge's credentials; this box is instance "
            f"{box}. If this box should be the edge, run `winstar edge reset-instance {shlex.quote(locked.name)}` "
            "in the cloud"
        ),
    )


def reset_instance(session: Session, edge: Edge) -> None:
    """An operator's move of ``edge`` to a new box: the next box with another instance id becomes
    the edge. Idempotent; nothing to do while no box was ever served (the first one is adopted)."""
    if edge.instance_id is not None and not edge.instance_reset:
        edge.instance_reset = True
        session.flush()


def event_counts(session: Session, edge: Edge) -> dict[str, int]:
    """The number of the edge's downlinks in each status (upper case), for `winstar edge show`."""
    stmt = (
        sa.select(EdgeEvent.status, sa.func.count())
        .where(EdgeEvent.edge_id == edge.id)
        .group_by(EdgeEvent.status)
    )
    return {str(status): int(n) for status, n in session.execute(stmt)}


def _instance_uuid(raw: str) -> str | None:
    """``raw`` as a canonical UUID string (what the edge stores), None if it is not one."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, TypeError, AttributeError):
        return None


def _adopt(edge: Edge, instance_id: str, now: int) -> None:
    edge.instance_id = instance_id
    edge.instance_reset = False
    edge.instance_since = now
    edge.conflict = None


def _carry_legacy_mark(session: Session, edge_id: uuid.UUID, instance_id: str) -> None:
    """Before instances the cloud kept one mark per edge (``uplink:EDGE_ID``); the first instance
    adopted after the upgrade is the box that mark counted (or one of its copies, which the old
    cloud merged anyway), so that mark and its verdicts move to the instance's stream: an uplink
    applied but not yet acknowledged before the upgrade is not applied again. (A box adopted by a
    reset starts a stream of its own: its seqs overlap the old box's.)"""
    old, new = uplink_mark_stream(edge_id), uplink_mark_stream_for(edge_id, instance_id)
    legacy = session.get(StreamMark, old)
    if legacy is None or session.get(StreamMark, new) is not None:
        return
    session.add(StreamMark(stream=new, applied_seq=legacy.applied_seq))
    session.execute(
        sa.insert(StreamFailure).from_select(
            ["stream", "seq", "error", "created_time"],
            sa.select(
                sa.literal(new, sa.String(64)),
                StreamFailure.seq,
                StreamFailure.error,
                StreamFailure.created_time,
            ).where(StreamFailure.stream == old),
        )
    )
    session.execute(
        sa.delete(StreamFailure)
        .where(StreamFailure.stream == old)
        .execution_options(synchronize_session=False)
    )
    session.delete(legacy)
