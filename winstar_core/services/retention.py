"""Retention: how long the outboxes keep what they are done with, pruning it, and dismissing
FAILED events.

An event that needs nothing more is *prunable*: DELIVERED (the receiver has it), SUPERSEDED (a
later event of its entity replaced it before it was sent) or DISMISSED (it FAILED and an operator
has seen it). It is deleted once its ``delivered_time`` is older than the retention (`winstar run
--retention`, default 7 days; `winstar prune` does it on demand). ``delivered_time`` is the time
the event got its status: the receiver's acknowledgement for a delivered event, the dismissal for
a dismissed one (:func:`dismiss` sets it, the time of the failure is not kept), the compaction for
a superseded one (which must set it). PENDING, HELD and FAILED events are never pruned: pruning
never loses an event (DESIGN.md invariant 1), and a failure stays in sight until dismissed.

Pruning deletes a batch of :data:`PRUNE_BATCH` rows per transaction, oldest first, along the
partial index of the prunable rows (``ix_*_prunable``): no batch holds locks for long or scans the
outbox, and senders never wait on it (they write PENDING rows; pruning deletes others). On
PostgreSQL each batch first takes the transaction-level advisory lock :data:`PRUNE_LOCK_KEY`
without waiting: when another node of the cloud is pruning, this one skips its round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Awaitable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from winstar_core.errors import WinstarError
from winstar_core.services.config import get_config, set_config
from winstar_core.services.ids import chunks
from winstar_core.store.db import Database
from winstar_core.store.models import (
    DISMISSED,
    FAILED,
    HELD,
    PENDING,
    PRUNABLE_WHERE,
    CloudEvent,
    EdgeEvent,
    now_ms,
)

log = logging.getLogger(__name__)

#: the retention when none is configured (CLI.md, `winstar run --retention`)
DEFAULT_RETENTION = "7d"
#: the ``node_config`` key holding the retention `winstar run` was last started with (its text)
RETENTION_KEY = "retention"
#: rows deleted per transaction
PRUNE_BATCH = 5000
#: seconds between two pruning rounds of `winstar run` (the first runs at start)
PRUNE_INTERVAL_S = 60.0
#: the environment variable that changes :data:`PRUNE_INTERVAL_S` (seconds, more than 0)
PRUNE_INTERVAL_ENV = "WINSTAR_PRUNE_INTERVAL"
#: the PostgreSQL advisory lock of a pruning transaction ("winstar" + "prune", as 64 bits): one
#: node of a cloud prunes at a time
PRUNE_LOCK_KEY = 0x77696E7374_70726E
#: how long a duration may be: a century (a cutoff far before any event, never an overflow)
MAX_DURATION_MS = 36_500 * 86_400_000

_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_PART = re.compile(r"([0-9]{1,12})([smhdw])")
_DURATION = re.compile(r"(?:[0-9]{1,12}[smhdw])+")
DURATION_HELP = "a number and a unit: s, m, h, d or w (for example 7d, 12h, 30m, 90s; 1h30m)"


def parse_duration(text: str) -> int:
    """``text`` (``7d``, ``12h``, ``30m``, ``90s``, ``2w``, or parts added up: ``1h30m``) in
    milliseconds. Anything else is a :class:`WinstarError` saying what a duration is, in one line."""
    raw = text.strip().lower()
    shown = " ".join(repr(text).split())[:60]
    if raw.startswith("-") and _DURATION.fullmatch(raw[1:]):
        raise WinstarError(f"{shown} is negative: a duration is 0 or more")
    if not _DURATION.fullmatch(raw):
        raise WinstarError(f"{shown} is not a duration: {DURATION_HELP}")
    ms = sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(raw))
    if ms > MAX_DURATION_MS:
        raise WinstarError(f"{shown} is too long: at most {MAX_DURATION_MS // 86_400_000}d")
    return ms


def configured_retention(session: Session) -> tuple[str, int]:
    """The node's retention, as text and in milliseconds: what `winstar run` was last started
    with (:func:`remember_retention`), else :data:`DEFAULT_RETENTION`."""
    text = str(get_config(session, RETENTION_KEY, None) or DEFAULT_RETENTION)
    try:
        return text, parse_duration(text)
    except WinstarError:  # written by hand in the table: not ours to trust
        log.warning("node_config %s=%r is not a duration; using %s", RETENTION_KEY, text, DEFAULT_RETENTION)
        return DEFAULT_RETENTION, parse_duration(DEFAULT_RETENTION)


def remember_retention(db: Database, text: str) -> int:
    """Record ``text`` as the node's retention (`winstar prune` uses it by default); returns it in
    milliseconds. Several nodes of one cloud share the table: the last one started sets it."""
    ms = parse_duration(text)
    with db.begin() as session:
        set_config(session, RETENTION_KEY, text.strip().lower())
    return ms


# --------------------------------------------------------------------------------------------------
# Dismissing
# --------------------------------------------------------------------------------------------------


def dismiss(
    session: Session, model: Any, seqs: list[int] | None, edge_id: uuid.UUID | None = None
) -> list[int]:
    """Mark FAILED events of a stream DISMISSED (those ``seqs``, every one if None) and stamp
    ``delivered_time`` with now, from which their retention runs. An event that is not FAILED
    (unknown, pending, delivered, dismissed already...) is left as it is. Returns the seqs
    dismissed, in order."""
    where = [model.status == FAILED]
    if edge_id is not None:
        where.append(model.edge_id == edge_id)
    stmt = (
        sa.update(model)
        .values(status=DISMISSED, delivered_time=now_ms())
        .returning(model.seq)
        .execution_options(synchronize_session=False)
    )
    if seqs is None:
        done = list(session.scalars(stmt.where(*where)))
    else:
        done = [
            seq
            for part in chunks(sorted(set(seqs)))
            for seq in session.scalars(stmt.where(*where, model.seq.in_(part)))
        ]
    return sorted(int(seq) for seq in done)


# --------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------


def take_prune_lock(session: Session, wait: bool = False) -> bool:
    """On PostgreSQL, the advisory lock of pruning for the rest of ``session``'s transaction:
    False if another transaction holds it (unless ``wait``: then wait for it). Always True on
    SQLite, whose transactions take its one write lock anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    if wait:
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(PRUNE_LOCK_KEY)))
        return True
    return bool(session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(PRUNE_LOCK_KEY))))


def oldest_prunable(model: Any, cutoff: int, batch: int) -> sa.Select[Any]:
    """The ids of at most ``batch`` prunable rows of ``model`` delivered before ``cutoff``, oldest
    first: a walk along ``ix_*_prunable``. The status test is :data:`PRUNABLE_WHERE` as text, not
    bound values: a planner matches a partial index only to a predicate it can read."""
    later = aliased(model)
    same_stream = [later.edge_id == model.edge_id] if model is EdgeEvent else []
    # the newest sent event of each stream stays, whatever its age: the cloud compares an edge's
    # mark with it to notice a box restored from an older backup (server.py, highest_delivered)
    newer_sent = sa.exists().where(*same_stream, later.seq > model.seq, later.status.not_in((PENDING, HELD)))
    return (
        sa.select(model.id)
        .where(sa.text(PRUNABLE_WHERE), model.delivered_time < cutoff, newer_sent)
        .order_by(model.delivered_time)
        .limit(batch)
    )


def _delete_batch(session: Session, model: Any, cutoff: int, batch: int) -> int:
    oldest = oldest_prunable(model, cutoff, batch)
    stmt = sa.delete(model).where(model.id.in_(oldest)).execution_options(synchronize_session=False)
    return int(getattr(session.execute(stmt), "rowcount", 0) or 0)


def prune(
    db: Database,
    older_than_ms: int,
    batch: int = PRUNE_BATCH,
    *,
    wait: bool = False,
    halt: threading.Event | None = None,
) -> int:
    """Delete the delivered, superseded and dismissed events of both outboxes whose
    ``delivered_time`` is more than ``older_than_ms`` ago, ``batch`` rows per transaction; returns
    how many. On PostgreSQL a batch whose advisory lock another node holds ends the round (unless
    ``wait``: `winstar prune` waits for it). ``halt``: stop between two batches once it is set."""
    if older_than_ms < 0:
        raise WinstarError("a retention cannot be negative")
    cutoff = now_ms() - older_than_ms
    deleted = 0
    for model in (EdgeEvent, CloudEvent):
        while halt is None or not halt.is_set():
            with db.begin() as session:
                if not take_prune_lock(session, wait):
                    log.debug("another node is pruning; skipping this round")
                    return deleted
                n = _delete_batch(session, model, cutoff, batch)
            deleted += n
            if n < batch:
                break
    return deleted


def describe(ms: int) -> str:
    """Milliseconds as the shortest duration text that says them (``604800000`` → ``7d``)."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms / 1000:g}s"


async def prune_periodically(
    db: Database,
    retention_ms: int,
    halt: threading.Event,
    *,
    interval: float = PRUNE_INTERVAL_S,
    batch: int = PRUNE_BATCH,
) -> None:
    """Prune now, then every ``interval`` seconds, until cancelled (or ``halt`` is set), in a
    worker thread: the event loop and its senders go on meanwhile. A failed round (the database
    away) is logged and tried again at the next one."""
    while not halt.is_set():
        try:
            n = await asyncio.to_thread(prune, db, retention_ms, batch, halt=halt)
        except Exception as exc:  # a round is lost, not the node
            log.warning("pruning failed, trying again in %g s: %s: %s", interval, type(exc).__name__, exc)
        else:
            if n:
                log.info(
                    "pruned %d delivered, superseded or dismissed event(s) older than %s",
                    n,
                    describe(retention_ms),
                )
        await asyncio.sleep(interval)


def prune_interval() -> float:
    """Seconds between two pruning rounds: :data:`PRUNE_INTERVAL_ENV` if set to a number above
    0, else :data:`PRUNE_INTERVAL_S`."""
    raw = os.environ.get(PRUNE_INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else PRUNE_INTERVAL_S
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        log.warning(
            "%s=%r is not a number of seconds above 0; using %g", PRUNE_INTERVAL_ENV, raw, PRUNE_INTERVAL_S
        )
        return PRUNE_INTERVAL_S
    return value


async def _remember_and_prune(db: Database, retention_ms: int, halt: threading.Event) -> None:
    try:
        await asyncio.to_thread(remember_retention, db, describe(retention_ms))
    except Exception as exc:  # `winstar prune` keeps its previous default; pruning goes on
        log.warning("cannot record the retention: %s: %s", type(exc).__name__, exc)
    await prune_periodically(db, retention_ms, halt, interval=prune_interval())


async def pruning_beside(main: Awaitable[None], db: Database, retention_ms: int) -> None:
    """Await ``main`` (a node's `winstar run`) with :func:`prune_periodically` beside it (every
    :func:`prune_interval` seconds), having recorded ``retention_ms`` as the node's retention
    (:func:`remember_retention`). Both begin once ``main`` first waits: a ``main`` that refuses
    its arguments before that changes nothing. When ``main`` ends (SIGTERM), pruning stops after
    the batch it is in."""
    halt = threading.Event()
    task = asyncio.create_task(_remember_and_prune(db, retention_ms, halt), name="winstar-prune")
    try:
        await main
    finally:
        halt.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
