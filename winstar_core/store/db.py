"""Engine factory and transactions, one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///winstar.db"


#: libpq's TCP keepalive settings for every PostgreSQL connection (docs/operations.md)
TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as psycopg 3 URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kw: Any) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60}, **kw)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transactions into our own hands: pysqlite's implicit BEGIN is deferred, and a
            # deferred reader that later writes can fail with SQLITE_BUSY instead of waiting.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # One writer at a time, taken at BEGIN: SQLite's commit order is then its seq order.
            # Read-only work (Database.read) begins deferred and runs beside the writer (WAL).
            if conn.get_execution_options().get("winstar_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kw.setdefault("pool_pre_ping", True)
    # a database (or a node) that vanishes without closing its connections is noticed in about
    # 25 s instead of the kernel's two hours: idle 10 s, then a probe every 5 s, 3 probes
    connect_args = {**TCP_KEEPALIVES, **kw.pop("connect_args", {})}
    return sa.create_engine(url, connect_args=connect_args, **kw)


def sqlite_path(url: str) -> Path | None:
    u = sa.engine.make_url(normalize_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


class Database:
    """A node's database: an engine and a session factory."""

    def __init__(self, url: str, **engine_kw: Any) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, **engine_kw)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for reading only: on SQLite it does not take the write lock; on PostgreSQL
        it runs without a transaction (each statement is its own, as it sees its own snapshot
        in READ COMMITTED anyway), which spares the BEGIN and ROLLBACK round trips a read paid:
        a sender's fetch is on the path of every change to its edge."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execution_options(winstar_read_only=True)
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def database_from_env(url: str | None) -> Database:
    return Database(url or os.environ.get("WINSTAR_DB") or DEFAULT_URL)
