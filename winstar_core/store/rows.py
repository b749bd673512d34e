"""Rows written set-based: a transaction queues plain rows (:class:`RowBuffer`) instead of adding
ORM objects one by one, and they are written in one statement per table.

The buffer keeps the session's view whole: the queued rows are written before anything else the
session executes (a query, a ``Session.get``, the ORM's flush, the commit), so no statement of
the transaction ever misses one of them — the same promise as the ORM's autoflush. Tables are
written parents first (the order of their foreign keys: entities, then their assignments and
memberships).

On PostgreSQL a table's rows go in as one ``INSERT ... SELECT FROM json_to_recordset(...)``
(one round trip, one parameter, one plan for any number of rows); elsewhere as an
``executemany``. The rows are written exactly as given: defaults are the caller's to fill in.

A buffer belongs to one transaction: its rollback drops the rows not written yet, and a savepoint
cannot begin over queued rows (they would be written inside it, and lost if it rolled back):
write them first (:func:`write_queued`)."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

_KEY = "winstar_rows"


class RowBuffer:
    """Rows queued for insertion, by table, in the order the tables were first used."""

    def __init__(self) -> None:
        self.tables: dict[sa.Table, list[dict[str, Any]]] = {}

    def add(self, table: sa.Table, row: dict[str, Any]) -> None:
        self.tables.setdefault(table, []).append(row)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


def buffer_of(session: Session) -> RowBuffer:
    """The session's buffer (made on first use)."""
    buf = session.info.get(_KEY)
    if buf is None:
        buf = session.info[_KEY] = RowBuffer()
    return buf


def queued(session: Session) -> RowBuffer | None:
    """The session's buffer if it has one."""
    buf: RowBuffer | None = session.info.get(_KEY)
    return buf


def discard(session: Session) -> None:
    """Drop the rows queued and not written (their transaction is rolled back)."""
    session.info.pop(_KEY, None)


def write_queued(session: Session) -> int:
    """Write the rows queued in ``session`` now, on its connection; returns how many."""
    buf = session.info.get(_KEY)
    if buf is None or not buf.tables:
        return 0
    tables, buf.tables = buf.tables, {}  # emptied first: the writes below must not come back here
    conn = session.connection()
    n = 0
    order = _write_order(next(iter(tables)).metadata)
    for table, rows in sorted(tables.items(), key=lambda item: order.get(item[0], len(order))):
        insert_rows(conn, table, rows)
        n += len(rows)
    return n


@functools.lru_cache(maxsize=4)
def _write_order(metadata: sa.MetaData) -> dict[sa.Table, int]:
    """Each table's place, parents first (``sorted_tables`` sorts the whole schema at every
    call: once is enough, the schema does not change while the process runs)."""
    return {t: i for i, t in enumerate(metadata.sorted_tables)}


def insert_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same keys) into ``table`` in one statement."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) == 1:
        conn.execute(sa.insert(table), list(rows))
        return
    # One JSON document of every row, read back into typed columns by the server: json.dumps is
    # C code, where psycopg's dumpers of one array per column spent ~2 µs a value in Python
    columns = [table.c[name] for name in rows[0]]
    record = ", ".join(f'"{c.name}" {_pg_type(c, conn)}' for c in columns)
    targets = ", ".join(f'"{c.name}"' for c in columns)
    stmt = sa.text(
        f'INSERT INTO "{table.name}" ({targets}) SELECT {targets}'
        f" FROM json_to_recordset(CAST(:rows AS json)) AS r({record})"
    )
    conn.execute(stmt, {"rows": json.dumps(rows, separators=(",", ":"), default=_plain)})


def _plain(value: Any) -> str:
    """A value json.dumps does not know: a UUID (the only such type in our tables)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} set-based")


def _pg_type(col: sa.Column[Any], conn: sa.Connection) -> str:
    """The PostgreSQL type of ``col``."""
    return "jsonb" if isinstance(col.type, sa.JSON) else col.type.compile(dialect=conn.dialect)


@event.listens_for(Session, "do_orm_execute")
def _before_statement(state: Any) -> None:
    if state.session.info.get(_KEY):
        write_queued(state.session)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(_KEY):
        write_queued(session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if session.info.get(_KEY):
        write_queued(session)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous: Any) -> None:
    if not previous.nested:  # the transaction is gone, and what it queued with it
        discard(session)


@event.listens_for(Session, "after_transaction_create")
def _no_savepoint_over_queued_rows(session: Session, transaction: Any) -> None:
    if transaction.nested and session.info.get(_KEY):
        # written inside the savepoint, they would vanish with its rollback; written here, they
        # would land in it all the same (the SAVEPOINT is already under way)
        raise RuntimeError("rows are queued for a set-based write: write_queued() them before a savepoint")
