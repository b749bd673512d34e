"""Create or upgrade a node's schema with Alembic, in-process."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``. On SQLite, with foreign keys off while it runs: a
    migration that changes a table's constraints rebuilds it (copy, DROP, rename), and with
    foreign keys on, that DROP would first delete every row pointing at it through ON DELETE
    CASCADE (an edge's memberships, a cloud's assignments and outbox). Their integrity is checked
    before the migration commits."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
        return
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        # on the driver's connection, outside any transaction: SQLite ignores it inside one
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                command.upgrade(alembic_config(conn), revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows whose foreign keys are broken: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")
